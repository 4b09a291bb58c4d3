//! A PostgreSQL server started for one test: `initdb` + `pg_ctl` on a free
//! port in a temp folder (as the `postgres` user when run as root), stopped
//! on drop. A missing PostgreSQL is a failure, never a skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

const HINT: &str = "`cargo xtask setup` installs PostgreSQL (Debian package `postgresql`)";

fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("no {} ({e}): {HINT}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no initdb under {}: {HINT}", root.display()))
}

pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    root: bool,
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root
/// (initdb refuses to run as root).
fn pg(root: bool, bin: &Path, args: &[&str]) {
    let out = if root {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(bin).args(args).output()
    } else {
        Command::new(bin).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {} ({e}): {HINT}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let st = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().unwrap();
            assert!(st.success(), "chown the data folder to postgres");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = data.to_str().unwrap();
        pg(root, &bin.join("initdb"), &["-D", d, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let opts = format!("-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off");
        let log = format!("{d}/log");
        pg(root, &bin.join("pg_ctl"), &["-D", d, "-o", &opts, "-l", &log, "-w", "start"]);
        Postgres { _dir: dir, data, bin, port, root }
    }

    pub fn params(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let d = self.data.to_str().unwrap_or_default().to_string();
        let bin = self.bin.join("pg_ctl");
        let args = ["-D", d.as_str(), "-m", "immediate", "stop"];
        let _ = if self.root {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&bin).args(args).output()
        } else {
            Command::new(&bin).args(args).output()
        };
    }
}

impl Postgres {
    /// The same server as a `postgresql://` URL (what `ops.store` takes).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}
