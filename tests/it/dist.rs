//! The release package as a site technician installs it: `cargo xtask
//! dist`'s Debian package installed with dpkg into a fresh root (no Rust,
//! no network), its post-install run against that root, and the installed
//! agent started from the installed files, serving the shipped services.

use outpost_tests::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `target/outpost/dist/outpost_*_amd64.deb`, made by `cargo xtask test`
/// (or `cargo xtask dist --arch amd64`).
fn package(ext: &str) -> PathBuf {
    let dir = workspace().join("target/outpost/dist");
    let found = fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(&format!("_amd64{ext}")));
    found.unwrap_or_else(|| panic!("no amd64 {ext} in {}: run the tests with `cargo xtask test`", dir.display()))
}

/// An empty system as an image builder starts one: the dpkg database and
/// the account files, nothing else.
fn fresh_root(root: &Path) {
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).expect("dpkg dirs");
    fs::create_dir_all(root.join("var/lib/dpkg/info")).expect("dpkg dirs");
    fs::write(root.join("var/lib/dpkg/status"), "").expect("dpkg status");
    fs::create_dir_all(root.join("etc")).expect("etc");
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").expect("shadow");
    fs::write(root.join("etc/gshadow"), "root:*::\n").expect("gshadow");
}

fn dpkg(root: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // The scripts run with the host's tools (useradd) against the root,
        // whose dpkg database holds no base system to satisfy Depends.
        .args(["--force-script-chrootless", "--force-depends", "--log=/dev/null"])
        .args(args)
        .output()
        .expect("dpkg runs (Debian's dpkg)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_debian_package_installs_into_a_fresh_root_and_its_agent_serves_the_shipped_services() {
    let deb = package(".deb");
    let scratch = tempfile::tempdir().expect("tempdir");
    let root = scratch.path().join("root");
    fresh_root(&root);
    let (ok, out) = dpkg(&root, &["-i", deb.to_str().expect("utf-8")]);
    assert!(ok, "dpkg -i {}:\n{out}", deb.display());
    let (ok, out) = dpkg(&root, &["-s", "outpost"]);
    assert!(ok && out.contains("Status: install ok installed"), "{out}");

    // Files where Debian puts them.
    for b in ["outpost", "outpostctl", "outpost-sim"] {
        let m = fs::metadata(root.join("usr/bin").join(b)).unwrap_or_else(|e| panic!("usr/bin/{b}: {e}"));
        assert!(m.permissions().mode() & 0o111 != 0, "{b} is executable");
    }
    let unit = fs::read_to_string(root.join("lib/systemd/system/outpost.service")).expect("unit");
    assert!(unit.lines().any(|l| l == "ExecStart=/usr/bin/outpost --config /etc/outpost/outpost.toml"), "{unit}");
    assert!(root.join("etc/outpost/trust").is_dir());
    let (_, conffiles) = dpkg(&root, &["--status", "outpost"]);
    assert!(conffiles.contains("/etc/outpost/outpost.toml"), "the config is a conffile:\n{conffiles}");

    // The post-install: user, private state, token, services.
    let passwd = fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("outpost:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the outpost user was created:\n{passwd}"));
    let state = root.join("var/lib/outpost/state");
    let m = fs::metadata(&state).expect("state dir");
    assert_eq!((m.mode() & 0o777, m.uid()), (0o700, uid), "state is the agent's alone");
    let token = fs::metadata(state.join("api.token")).expect("token created");
    assert_eq!((token.mode() & 0o777, token.uid(), token.len()), (0o600, uid, 64), "a private 32-byte token");
    let mut services: Vec<String> = fs::read_dir(root.join("var/lib/outpost/services"))
        .expect("services")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    services.sort();
    assert_eq!(services, ["leak-detection", "positioning", "traffic-awareness", "weight-loading"]);

    // The installed agent, from the installed config with the paths moved
    // into the root and free ports.
    let (mqtt, http, api) = (free_port(), free_port(), free_port());
    let config = fs::read_to_string(root.join("etc/outpost/outpost.toml"))
        .expect("config")
        .replace("/var/lib/outpost", &root.join("var/lib/outpost").display().to_string())
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{mqtt}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:9465", &format!("127.0.0.1:{api}"));
    let config = format!("trust_dir = \"{}\"\n{config}", root.join("etc/outpost/trust").display());
    let config_path = scratch.path().join("outpost.toml");
    fs::write(&config_path, config).expect("config");
    let mut agent = Command::new(root.join("usr/bin/outpost"))
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the installed agent");
    let started = Instant::now();
    let mut status = None;
    while started.elapsed() < Duration::from_secs(60) {
        if let Some((200, body)) = http_get(&format!("127.0.0.1:{http}"), "/status") {
            let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
            if v["services"].as_array().is_some_and(|s| s.len() == 4) && v["state"] == "ready" {
                status = Some(v);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill").arg("-TERM").arg(agent.id().to_string()).status();
    let exit = agent.wait().expect("agent exits");
    let status = status.unwrap_or_else(|| panic!("the installed agent did not serve 4 services within 60 s"));
    for s in status["services"].as_array().expect("services") {
        assert_eq!(s["running"], s["instances"], "{s}");
    }
    assert!(exit.success(), "SIGTERM drains and exits 0: {exit}");

    // The tarball holds the same tree for gateways without dpkg.
    let listing = Command::new("tar").arg("tzf").arg(package(".tar.gz")).output().expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in
        ["usr/bin/outpost", "lib/systemd/system/outpost.service", "usr/share/outpost/packages/positioning/service.wasm"]
    {
        assert!(listing.lines().any(|l| l.trim_start_matches("./") == f), "tarball lacks {f}");
    }

    // Removing keeps the state; purging removes it.
    let (ok, out) = dpkg(&root, &["--purge", "outpost"]);
    assert!(ok, "{out}");
    assert!(!root.join("usr/bin/outpost").exists() && !root.join("var/lib/outpost").exists(), "purged");
}
