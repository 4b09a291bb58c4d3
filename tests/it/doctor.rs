//! `outpostctl doctor` as a site technician runs it: all well on a healthy
//! gateway (exit 0), then each thing it checks broken on purpose, each
//! named on a FAIL line with its fix, and exit 1.

use outpost::client::{self, Upload};
use outpost_tests::TrustedProvider as Provider;
use outpost_tests::*;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Runs `outpostctl doctor --config CONFIG ARGS`: (exit 0, stdout).
fn doctor(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("outpostctl"))
        .args(["doctor", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run outpostctl doctor");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn failures(report: &str) -> Vec<&str> {
    report.lines().filter(|l| l.starts_with("FAIL")).collect()
}

/// An SNTP server on loopback whose clock is `offset_s` ahead of ours.
fn fake_ntp(offset_s: f64) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = socket.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 48];
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() + offset_s + 2_208_988_800.0;
            let (secs, frac) = (now.trunc() as u32, (now.fract() * 4_294_967_296.0) as u32);
            let mut reply = [0u8; 48];
            reply[0] = 0x24; // version 4, mode 4 (server)
            for at in [32, 40] {
                reply[at..at + 4].copy_from_slice(&secs.to_be_bytes());
                reply[at + 4..at + 8].copy_from_slice(&frac.to_be_bytes());
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

#[test]
fn doctor_passes_a_healthy_gateway_and_names_each_thing_broken() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let (text, mqtt, http, api) = dir.config_with(None, &provider.config_line(), "");
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, &text).expect("write config");
    let agent = TestAgent::start_text(&dir, &text, mqtt, http, api);
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "t", |_, _| {}).await.expect("deploy");
    });

    // Healthy, with a clock that agrees.
    let ntp = fake_ntp(0.0);
    let (ok, report) = doctor(&config, &["--ntp", &ntp]);
    assert!(ok, "a healthy gateway passes:\n{report}");
    for needle in [
        "ok    broker",
        "ok    services   testbed@1.0.0: 1/1 running, no faults",
        "(store, signed by",
        "ok    token",
        "ok    clock",
    ] {
        assert!(report.contains(needle), "{needle:?} missing:\n{report}");
    }

    // The clock an hour off.
    let (ok, report) = doctor(&config, &["--ntp", &fake_ntp(3600.0)]);
    assert!(!ok);
    assert!(failures(&report).iter().any(|l| l.contains("clock") && l.contains("+3600.0 s off")), "{report}");

    // Not enough disk for the threshold.
    let (ok, report) = doctor(&config, &["--min-free-mib", "1000000000"]);
    assert!(!ok);
    assert!(failures(&report).iter().any(|l| l.contains("disk") && l.contains("under 1000000000 MiB")), "{report}");

    // A token anyone can read.
    let token = dir.path().join("state/api.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, report) = doctor(&config, &[]);
    assert!(!ok);
    assert!(
        failures(&report).iter().any(|l| l.contains("token") && l.contains("mode 644") && l.contains("chmod 600")),
        "{report}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A service that faulted.
    publish_bytes(agent.mqtt_port, "test/in/x", b"trap");
    let mut report = String::new();
    for _ in 0..50 {
        report = doctor(&config, &[]).1;
        if report.contains("FAIL  faults") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        failures(&report).iter().any(|l| l.contains("testbed: 1 faults") && l.contains("outpostctl logs testbed")),
        "{report}"
    );

    // A package in the store altered after it was verified.
    let store = dir.path().join("state/store/sha256");
    let pkg = std::fs::read_dir(&store).expect("store").next().expect("one package").expect("entry").path();
    let wasm = pkg.join("service.wasm");
    let mut bytes = std::fs::read(&wasm).expect("component");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&wasm, bytes).expect("tamper");
    let (ok, report) = doctor(&config, &[]);
    assert!(!ok);
    assert!(failures(&report).iter().any(|l| l.contains("packages") && l.contains("store package")), "{report}");

    // The agent stopped, its API port taken by another program, its state store garbage.
    agent.stop().expect("stop");
    let squatter = std::net::TcpListener::bind(("127.0.0.1", api)).expect("take the API port");
    std::fs::write(dir.path().join("state/state.redb"), b"not a database").expect("garbage state");
    let (ok, report) = doctor(&config, &[]);
    assert!(!ok);
    let fails = failures(&report);
    assert!(
        fails
            .iter()
            .any(|l| l.contains("agent") && l.contains("no agent answers") && l.contains("systemctl start outpost")),
        "{report}"
    );
    assert!(fails.iter().any(|l| l.contains("ports") && l.contains(&format!("api 127.0.0.1:{api}"))), "{report}");
    assert!(fails.iter().any(|l| l.contains("state") && l.contains("state.redb")), "{report}");
    drop(squatter);

    // A certificate about to expire.
    let pki = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let o = Command::new("openssl").current_dir(pki.path()).args(args).output().expect("openssl runs");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "api.key"]);
    run(&["req", "-x509", "-new", "-key", "api.key", "-subj", "/CN=localhost", "-days", "1", "-out", "api.pem"]);
    let tls = format!(
        "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.path().join("api.pem").display(),
        pki.path().join("api.key").display()
    );
    std::fs::write(&config, text.replacen("[api]\n", &tls, 1)).expect("config with TLS");
    let (_, report) = doctor(&config, &[]);
    assert!(failures(&report).iter().any(|l| l.contains("tls") && l.contains("within 30 days")), "{report}");

    // A config the agent would refuse.
    std::fs::write(&config, format!("{text}\nfrobnicate = 1\n")).expect("bad config");
    let (ok, report) = doctor(&config, &[]);
    assert!(!ok);
    assert!(failures(&report).iter().any(|l| l.contains("config") && l.contains("outpost --check")), "{report}");
}

/// The fleet and sharing checks: a missing operations-center key, missing
/// credentials, an invalid sharing policy and a tampered export audit are
/// each one FAIL line with its fix; once repaired they pass.
#[test]
fn doctor_checks_the_fleet_link_files_the_sharing_policy_and_the_audit() {
    let dir = AgentDir::new();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let (ops_key, creds, policy) =
        (dir.path().join("ops.pub"), dir.path().join("fleet.credentials"), dir.path().join("sharing.toml"));
    let fleet = format!(
        "[fleet]\nbroker = \"mqtt://127.0.0.1:1\"\nops_key = \"{}\"\ncredentials_file = \"{}\"\nprovider = \"acme\"\nsharing_policy = \"{}\"\n",
        ops_key.display(),
        creds.display(),
        policy.display()
    );
    let (text, ..) = dir.config_with(None, "", &fleet);
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, &text).expect("write config");
    std::fs::write(&policy, "version = 1\n[[export]]\nprovider = \"acme\"\ntopics = [\"a/#/b\"]\n").expect("policy");
    // An audit log with one entry, then altered.
    let audit = state.join("sharing-audit.jsonl");
    let mut log = outpost_sharing::AuditLog::open(&audit).expect("open audit");
    let msg = outpost_sharing::AuditMessage::new("svc/x/fix", "review", br#"{"lat":1.0}"#);
    log.append(1, "acme", "mqtt://ops", &"0".repeat(64), vec![msg]).expect("append");
    drop(log);
    let text_log = std::fs::read_to_string(&audit).expect("read");
    std::fs::write(&audit, text_log.replace("\"lat\":1.0", "\"lat\":2.0")).expect("tamper");

    let (passed, report) = doctor(&config, &[]);
    assert!(!passed, "{report}");
    let fails = failures(&report).join("\n");
    for needle in [ops_key.display().to_string(), creds.display().to_string(), "sharing".into(), "audit".into()] {
        assert!(fails.contains(&needle), "no FAIL line names {needle}:\n{report}");
    }
    assert!(fails.contains("line 1"), "the tampered audit line is named:\n{report}");

    // Repaired: each of these checks passes.
    let keys = tempfile::tempdir().expect("tempdir");
    let generated = outpost_package::keygen(keys.path(), "ops-eu").expect("keygen");
    std::fs::copy(&generated.public_path, &ops_key).expect("copy key");
    std::fs::write(&creds, "test-gw:secret\n").expect("creds");
    std::fs::write(&policy, "version = 1\n").expect("policy");
    std::fs::remove_file(&audit).expect("rm audit");
    let (_, report) = doctor(&config, &[]);
    let fails = failures(&report).join("\n");
    for needle in ["ops.pub", "fleet.credentials", "sharing", "audit"] {
        assert!(!fails.contains(needle), "{needle} still fails:\n{report}");
    }
    assert!(report.lines().any(|l| l.contains("ops-eu")), "the key's operations center is named:\n{report}");
}
