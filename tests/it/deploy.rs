//! The site technician's path: `deploy/gateway/install.sh` into a temporary
//! prefix, the installed config and unit checked, a re-run keeping an edited
//! config, then the installed agent started on its installed config (moved
//! to free loopback ports), healthy on `/status`, and stopped by SIGTERM
//! with exit status 0.

use outpost_tests::{free_port, http_get, make_world_accessible, wait_for_port, workspace};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARIES: [&str; 3] = ["outpost", "outpostctl", "outpost-sim"];

fn installer() -> PathBuf {
    workspace().join("deploy/gateway/install.sh")
}

/// Folder of the built `outpost`, `outpostctl` and `outpost-sim`.
fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("OUTPOST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
            let target = if target.is_absolute() { target } else { workspace().join(target) };
            target.join("debug")
        }
    };
    for b in BINARIES {
        assert!(
            dir.join(b).is_file(),
            "{} is not built; run the tests with `cargo xtask test` (it builds the binaries first), or build them with \
             `cargo build -p outpost-runtime -p outpost-devtools --bins` and set OUTPOST_BIN_DIR to their folder",
            dir.join(b).display()
        );
    }
    dir
}

/// Built service packages, or an empty folder when none are built (the agent
/// then runs with zero services).
fn packages_dir(scratch: &Path) -> (PathBuf, Vec<String>) {
    let dir = std::env::var_os("OUTPOST_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/outpost/packages"));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("service.toml").is_file() && p.join("service.wasm").is_file())
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        let empty = scratch.join("no-packages");
        fs::create_dir_all(&empty).expect("mkdir");
        eprintln!("no built packages in {}; installing none (run `cargo xtask build` to include them)", dir.display());
        return (empty, names);
    }
    (dir, names)
}

fn run_installer(args: &[&str]) -> Output {
    Command::new(installer()).args(args).stdin(Stdio::null()).output().expect("run deploy/gateway/install.sh")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn assert_ok(o: &Output, what: &str) -> (String, String) {
    let (out, err) = text(o);
    assert!(o.status.success(), "{what} failed with {}\n--- stdout\n{out}\n--- stderr\n{err}", o.status);
    (out, err)
}

fn check_config(outpost: &Path, config: &Path) {
    let o = Command::new(outpost)
        .arg("--check")
        .arg("--config")
        .arg(config)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("outpost --check");
    let (out, _) = assert_ok(&o, &format!("outpost --check --config {}", config.display()));
    assert!(out.contains(": ok"), "outpost --check printed {out:?}");
}

/// `Key=Value` lines of a unit file.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect()
}

/// Replaces `key = ...` (uncommented) inside `[section]` (`""` = top level);
/// panics unless exactly one line matched.
fn set_key(config: &str, section: &str, key: &str, value: &str) -> String {
    let mut current = String::new();
    let mut hits = 0;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            let t = line.trim();
            if t.starts_with('[') {
                current = t.trim_matches(['[', ']']).trim().to_owned();
            } else if current == section && t.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
                hits += 1;
                return format!("{key} = \"{value}\"");
            }
            line.to_owned()
        })
        .collect();
    assert_eq!(hits, 1, "expected one `{key} = ...` line in [{section}] of the installed config:\n{config}");
    lines.join("\n") + "\n"
}

/// The agent process, killed if a test fails before it exits.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn install_check_start_and_stop_a_gateway() {
    let bins = bin_dir();
    let scratch = tempfile::tempdir().expect("tempdir");
    let prefix = scratch.path().join("root");
    let (packages, names) = packages_dir(scratch.path());
    let prefix_s = prefix.to_str().expect("utf-8 path");
    let args = [
        "--prefix",
        prefix_s,
        "--bin-dir",
        bins.to_str().expect("utf-8 path"),
        "--packages",
        packages.to_str().expect("utf-8 path"),
        "--gateway",
        "gw-test",
        "--site",
        "s1",
        "--broker",
        "embedded",
        "--no-start",
    ];

    let mode = fs::metadata(installer()).expect("install.sh exists").permissions().mode();
    assert!(mode & 0o111 != 0, "deploy/gateway/install.sh must be executable (mode {mode:o})");

    // --- first install --------------------------------------------------
    let (out, _) = assert_ok(&run_installer(&args), "install.sh");
    for b in BINARIES {
        let p = prefix.join("usr/local/bin").join(b);
        let m = fs::metadata(&p).unwrap_or_else(|e| panic!("{} not installed: {e}", p.display()));
        assert!(m.permissions().mode() & 0o111 != 0, "{} is not executable", p.display());
        assert_eq!(m.len(), fs::metadata(bins.join(b)).expect("built binary").len(), "{b} copied whole");
    }
    let config = prefix.join("etc/outpost/outpost.toml");
    let installed = fs::read_to_string(&config).expect("config installed");
    assert!(installed.lines().any(|l| l == "gateway = \"gw-test\""), "gateway filled in:\n{installed}");
    assert!(installed.lines().any(|l| l == "site = \"s1\""), "site filled in:\n{installed}");
    let outpost = prefix.join("usr/local/bin/outpost");
    check_config(&outpost, &config);

    let services = prefix.join("var/lib/outpost/services");
    let state = prefix.join("var/lib/outpost/state");
    assert!(services.is_dir() && state.is_dir(), "services/ and state/ created under var/lib/outpost");
    let mut installed_names: Vec<String> = fs::read_dir(&services)
        .expect("services dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    installed_names.sort();
    assert_eq!(installed_names, names, "every package installed, nothing else");
    for n in &names {
        for f in ["service.toml", "service.wasm"] {
            let got = fs::read(services.join(n).join(f)).unwrap_or_else(|e| panic!("{n}/{f} not installed: {e}"));
            assert_eq!(got, fs::read(packages.join(n).join(f)).expect("package file"), "{n}/{f} copied unchanged");
        }
    }

    // --- the systemd unit -----------------------------------------------
    let unit_path = prefix.join("etc/systemd/system/outpost.service");
    let unit = fs::read_to_string(&unit_path).expect("unit installed");
    assert_eq!(unit, fs::read_to_string(workspace().join("deploy/gateway/outpost.service")).expect("unit source"));
    let d = directives(&unit);
    let has = |k: &str, v: &str| d.iter().any(|(dk, dv)| dk == k && dv == v);
    for (k, v) in [
        ("Type", "simple"),
        ("ExecStart", "/usr/local/bin/outpost --config /etc/outpost/outpost.toml"),
        ("User", "outpost"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("StateDirectory", "outpost"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "/var/lib/outpost"),
        ("Environment", "RUST_LOG=info"),
        ("Environment", "OUTPOST_LOG_FORMAT=json"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert!(has(k, v), "unit lacks {k}={v}:\n{unit}");
    }
    for k in ["RestartSec", "LimitNOFILE"] {
        assert!(d.iter().any(|(dk, _)| dk == k), "unit lacks {k}=");
    }
    let stop_s: u64 = d
        .iter()
        .find(|(k, _)| k == "TimeoutStopSec")
        .and_then(|(_, v)| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    // Default drain 10 s plus up to 5 s closing the MQTT session.
    assert!(stop_s >= 15, "TimeoutStopSec={stop_s}s is shorter than the agent's drain (10 s) + close (5 s)");
    verify_unit_if_possible(&unit, &outpost, scratch.path());

    // --- the technician's instructions ----------------------------------
    for needle in [
        "http://127.0.0.1:9464/",
        "curl -s 127.0.0.1:9464/status",
        "outpostctl status",
        "outpostctl watch",
        "journalctl -u outpost",
    ] {
        assert!(out.contains(needle), "installer output lacks {needle:?}:\n{out}");
    }

    // --- re-run keeps an edited config ----------------------------------
    let edited = installed.replace("# keep_alive_s = 30", "keep_alive_s = 45") + "# edited on site\n";
    assert_ne!(edited, installed, "the template has a commented keep_alive_s to edit");
    fs::write(&config, &edited).expect("edit config");
    let rerun_args: Vec<&str> = args.iter().map(|a| if *a == "gw-test" { "gw-other" } else { a }).collect();
    let (out, err) = assert_ok(&run_installer(&rerun_args), "install.sh (re-run)");
    assert_eq!(fs::read_to_string(&config).expect("config"), edited, "re-run must keep the edited config");
    assert!(out.contains("keeping the existing config"), "re-run says it kept the config:\n{out}");
    assert!(err.contains("gw-other not applied"), "re-run warns that --gateway was not applied:\n{err}");
    check_config(&outpost, &config);

    // --- run the installed agent on the installed config ----------------
    let (mqtt, http, api) = (free_port(), free_port(), free_port());
    let mut cfg = edited;
    cfg = set_key(&cfg, "", "services_dir", services.to_str().expect("utf-8"));
    cfg = set_key(&cfg, "", "state_dir", state.to_str().expect("utf-8"));
    cfg = set_key(&cfg, "broker", "listen", &format!("127.0.0.1:{mqtt}"));
    cfg = set_key(&cfg, "metrics", "listen", &format!("127.0.0.1:{http}"));
    cfg = set_key(&cfg, "api", "listen", &format!("127.0.0.1:{api}"));
    fs::write(&config, &cfg).expect("rewrite config");
    check_config(&outpost, &config);

    let log = scratch.path().join("agent.log");
    let log_file = fs::File::create(&log).expect("log file");
    let child = Command::new(&outpost)
        .arg("--config")
        .arg(&config)
        .current_dir(scratch.path())
        .env("RUST_LOG", "info")
        .env("OUTPOST_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("start the installed outpost");
    let mut agent = Agent { child, log };

    let addr = format!("127.0.0.1:{http}");
    let start = Instant::now();
    let status = loop {
        if let Some(exit) = agent.child.try_wait().expect("try_wait") {
            panic!("agent exited early with {exit}:\n{}", agent.log());
        }
        let status = http_get(&addr, "/status").and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
        if let Some(s) = status.filter(|s| s["state"] == "ready") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "agent not ready within 60 s:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["gateway"], "gw-test", "{status:#}");
    assert_eq!(status["site"], "s1", "{status:#}");
    assert_eq!(status["mqtt_connected"], true, "{status:#}");
    assert_eq!(status["rejected"], serde_json::json!([]), "no package rejected: {status:#}");
    let mut running: Vec<String> = status["services"]
        .as_array()
        .expect("services list")
        .iter()
        .inspect(|s| assert!(s["running"].as_u64().unwrap_or(0) >= 1, "service not running: {s}"))
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    running.sort();
    assert_eq!(running, names, "every installed service runs");
    assert!(wait_for_port(mqtt, Duration::from_secs(5)), "embedded broker listens on {mqtt}");
    let (code, body) = http_get(&addr, "/healthz").expect("GET /healthz");
    assert_eq!((code, body.as_str()), (200, "ok"), "healthz");
    let (code, page) = http_get(&addr, "/").expect("GET /");
    assert!(code == 200 && page.contains("gw-test"), "status page names the gateway ({code}):\n{page}");

    // The management API answers `outpostctl status`, as the installer says.
    let o = Command::new(prefix.join("usr/local/bin/outpostctl"))
        .args(["status", "--json", "--agent", &format!("http://127.0.0.1:{api}")])
        .arg("--token-file")
        .arg(state.join("api.token"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("outpostctl status");
    let (out, _) = assert_ok(&o, "outpostctl status");
    let ctl: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("outpostctl status --json: {e}: {out}"));
    assert_eq!((ctl["gateway"].as_str(), ctl["state"].as_str()), (Some("gw-test"), Some("ready")), "{ctl:#}");

    let pid = agent.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");
    let stopping = Instant::now();
    let exit = loop {
        if let Some(exit) = agent.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "agent still running 15 s after SIGTERM:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = agent.log();
    assert!(exit.success(), "agent exited with {exit} after SIGTERM:\n{log}");

    // Logs are JSON lines, as the unit's OUTPOST_LOG_FORMAT=json asks.
    let messages: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_owned))
        .collect();
    for m in ["agent ready", "agent stopped"] {
        assert!(messages.iter().any(|x| x == m), "no JSON log line {m:?}:\n{log}");
    }
    assert!(state.join("state.redb").is_file(), "agent keeps its state in the installed state dir");
}

/// `systemd-analyze verify` on the unit (with ExecStart pointing at the
/// installed binary, which it requires to exist), when systemd-analyze is here.
fn verify_unit_if_possible(unit: &str, outpost: &Path, scratch: &Path) {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed; unit not verified");
        return;
    };
    if !probe.status.success() {
        eprintln!("systemd-analyze not usable; unit not verified");
        return;
    }
    let dir = scratch.join("unit-check");
    fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("outpost.service");
    fs::write(&path, unit.replace("/usr/local/bin/outpost ", &format!("{} ", outpost.display()))).expect("write unit");
    let o = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze verify");
    let (out, err) = text(&o);
    // Unknown or misspelt keys are only warnings, so any line about the unit fails.
    let about_unit: Vec<&str> = out.lines().chain(err.lines()).filter(|l| l.contains("outpost.service")).collect();
    assert!(o.status.success() && about_unit.is_empty(), "systemd-analyze verify:\n{out}{err}");
}

#[test]
fn shipped_configs_parse() {
    let outpost = bin_dir().join("outpost");
    for rel in ["deploy/gateway/outpost.toml", "deploy/sites/quarry-north.toml"] {
        check_config(&outpost, &workspace().join(rel));
    }
}

#[test]
fn installer_fails_loudly_with_the_fix() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let prefix = scratch.path().join("root");
    let prefix_s = prefix.to_str().expect("utf-8");
    let missing = scratch.path().join("no-such-dir");
    let empty = scratch.path().join("empty");
    fs::create_dir_all(&empty).expect("mkdir");
    let cases: [(Vec<&str>, &[&str]); 5] = [
        (
            vec!["--prefix", prefix_s, "--bin-dir", missing.to_str().expect("utf-8"), "--no-start"],
            &["--bin-dir", "not a folder", "cargo build"],
        ),
        (
            vec!["--prefix", prefix_s, "--bin-dir", empty.to_str().expect("utf-8"), "--no-start"],
            &["outpost outpostctl outpost-sim", "--bin-dir"],
        ),
        (vec!["--prefix", prefix_s, "--gateway", "gw 1", "--no-start"], &["--gateway 'gw 1'", "letters, digits"]),
        (vec!["--prefix", prefix_s, "--frobnicate"], &["unknown option '--frobnicate'", "--help"]),
        (vec!["--prefix"], &["--prefix needs a value"]),
    ];
    for (args, needles) in cases {
        let o = run_installer(&args);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "install.sh {args:?} should fail:\n{out}{err}");
        for n in needles {
            assert!(err.contains(n), "install.sh {args:?}: stderr lacks {n:?}:\n{err}");
        }
    }
    assert!(!prefix.join("etc").exists(), "nothing installed when the options are wrong");

    match Command::new("shellcheck").arg(installer()).output() {
        Ok(o) => {
            let (out, err) = text(&o);
            assert!(o.status.success(), "shellcheck deploy/gateway/install.sh:\n{out}{err}");
        }
        Err(e) => panic!("shellcheck cannot run ({e}): `cargo xtask setup` installs it (Debian's shellcheck)"),
    }
}

/// Mosquitto, the default: the production setup that loses nothing in a
/// crash. The installer writes a Mosquitto config with persistence and the
/// message size limit, points the new agent config at it, orders the unit
/// after Mosquitto; the real Mosquitto starts with that config and the
/// installed agent checks and serves through it.
#[test]
fn installer_sets_up_mosquitto_as_the_production_broker() {
    let bins = bin_dir();
    let scratch = tempfile::tempdir().expect("tempdir");
    let prefix = scratch.path().join("root");
    let prefix_s = prefix.to_str().expect("utf-8 path");
    let args = [
        "--prefix",
        prefix_s,
        "--bin-dir",
        bins.to_str().expect("utf-8"),
        "--site",
        "s1",
        "--no-start",
    ];
    // No --broker: Mosquitto is the default.
    let (out, _) = assert_ok(&run_installer(&args), "install.sh (default broker)");
    assert!(out.contains("configuring Mosquitto"), "{out}");
    let mq = fs::read_to_string(prefix.join("etc/mosquitto/conf.d/outpost.conf")).expect("mosquitto conf written");
    for line in ["persistence true", "message_size_limit 16777216", "listener 1883 127.0.0.1"] {
        assert!(mq.lines().any(|l| l == line), "{line} missing in:\n{mq}");
    }
    let cfg = fs::read_to_string(prefix.join("etc/outpost/outpost.toml")).expect("config");
    assert!(cfg.contains("mode = \"external\"") && cfg.contains("url = \"mqtt://127.0.0.1:1883\""), "{cfg}");
    let unit = fs::read_to_string(prefix.join("etc/systemd/system/outpost.service")).expect("unit");
    assert!(unit.lines().any(|l| l.starts_with("After=") && l.contains("mosquitto.service")), "{unit}");
    // The written Mosquitto config, on a free port and a scratch persistence
    // folder, starts a real Mosquitto that the installed agent serves through.
    let port = free_port();
    // Mosquitto started as root drops to its own user: it must reach these.
    make_world_accessible(scratch.path(), 0o755);
    let data = scratch.path().join("mosquitto-data");
    fs::create_dir_all(&data).expect("mkdir");
    make_world_accessible(&data, 0o777);
    let conf = scratch.path().join("mosquitto.conf");
    fs::write(
        &conf,
        mq.replace("listener 1883 127.0.0.1", &format!("listener {port} 127.0.0.1"))
            .replace("persistence_location /var/lib/mosquitto/", &format!("persistence_location {}/", data.display())),
    )
    .expect("conf");
    make_world_accessible(&conf, 0o644);
    let mut broker = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    assert!(wait_for_port(port, Duration::from_secs(10)), "mosquitto did not start with the installer's config");
    let services = scratch.path().join("services");
    fs::create_dir_all(&services).expect("mkdir");
    let state = scratch.path().join("state");
    let (http, api) = (free_port(), free_port());
    let mut c = cfg.replace("url = \"mqtt://127.0.0.1:1883\"", &format!("url = \"mqtt://127.0.0.1:{port}\""));
    c = set_key(&c, "", "services_dir", services.to_str().expect("utf-8"));
    c = set_key(&c, "", "state_dir", state.to_str().expect("utf-8"));
    c = set_key(&c, "metrics", "listen", &format!("127.0.0.1:{http}"));
    c = set_key(&c, "api", "listen", &format!("127.0.0.1:{api}"));
    let config = scratch.path().join("outpost.toml");
    fs::write(&config, &c).expect("config");
    let outpost = prefix.join("usr/local/bin/outpost");
    check_config(&outpost, &config);
    let mut agent = Command::new(&outpost)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("outpost");
    let start = Instant::now();
    let mut ready = false;
    while start.elapsed() < Duration::from_secs(60) {
        let s = http_get(&format!("127.0.0.1:{http}"), "/status")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
        if s.is_some_and(|s| s["state"] == "ready" && s["mqtt_connected"] == true) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = broker.kill();
    let _ = broker.wait();
    assert!(ready, "the installed agent did not get ready on the installer's Mosquitto");
}
