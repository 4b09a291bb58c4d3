//! A Mosquitto broker started for one test (or the bench): free port on
//! 127.0.0.1, its own temp folder, no anonymous access, a password file and
//! an ACL, optionally a TLS listener with a CA made by `openssl`. Killed on
//! drop. A missing `mosquitto` binary is a failure, never a skip.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SETUP_HINT: &str = "`cargo xtask setup` installs mosquitto (Debian package `mosquitto`)";

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn find(bin: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{bin}` not found in /usr/sbin, /usr/bin or /usr/local: {SETUP_HINT}");
}

/// CA, server certificate and key files for a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): `cargo xtask setup` installs it"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA named `name` and a server certificate for localhost / 127.0.0.1
/// signed by it, in `dir`.
pub fn make_tls(dir: &Path, name: &str) -> TlsFiles {
    std::fs::create_dir_all(dir).expect("tls dir");
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &ca_key]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let key = format!("{name}-server.key");
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(dir, &["req", "-new", "-key", &key, "-out", "server.csr", "-subj", "/CN=localhost"]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    let cert = format!("{name}-server.pem");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    TlsFiles { ca: dir.join(ca), cert: dir.join(cert), key: dir.join(key) }
}

/// Writes a Mosquitto password file: plain `user:password` lines hashed in
/// one go by `mosquitto_passwd -U` (one process, however many users).
pub fn write_passwords(path: &Path, users: &[(String, String)]) {
    let mut f = std::fs::File::create(path).expect("password file");
    for (u, p) in users {
        writeln!(f, "{u}:{p}").expect("write password");
    }
    drop(f);
    let out = Command::new(find("mosquitto_passwd")).arg("-U").arg(path).output().expect("run mosquitto_passwd");
    assert!(out.status.success(), "mosquitto_passwd -U: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Mosquitto {
    /// Starts a broker with these users (ops user first) and ACL text.
    pub fn start(users: &[(String, String)], acl: &str, tls: Option<&TlsFiles>) -> Mosquitto {
        let bin = find("mosquitto");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let passwd = dir.path().join("passwd");
        write_passwords(&passwd, users);
        let acl_path = dir.path().join("acl");
        std::fs::write(&acl_path, acl).expect("acl");
        let log = dir.path().join("mosquitto.log");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut conf = format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n\
             log_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\n\
             # A fleet's reports arrive in bursts: queue them all for the operations center.\n\
             max_queued_messages 0\nmax_inflight_messages 0\n\
             listener {port} 127.0.0.1\n",
            passwd.display(),
            acl_path.display(),
            log.display()
        );
        if root {
            conf.push_str("user root\n");
        }
        let tls_port = tls.map(|t| {
            let p = free_port();
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            ));
            p
        });
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("conf");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}): {SETUP_HINT}"));
        let mut m = Mosquitto { child, port, tls_port, dir, log };
        m.wait_ready(port);
        if let Some(p) = tls_port {
            m.wait_ready(p);
        }
        m
    }

    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mosquitto exited at start ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "mosquitto did not listen on {port} within 10 s: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("mqtts://localhost:{}", self.tls_port.expect("started with TLS"))
    }

    pub fn passwd_path(&self) -> PathBuf {
        self.dir.path().join("passwd")
    }

    /// SIGHUP: Mosquitto rereads its password file and ACL.
    pub fn reload(&self) {
        // SAFETY: kill with a pid we started and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP to mosquitto");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
