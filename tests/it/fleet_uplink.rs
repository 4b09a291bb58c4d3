//! The gateway's side of the fleet, against a real Mosquitto acting as the
//! operations center's broker (its own users, password file and the fleet
//! ACL): signed desired state installs, upgrades and rolls back a service
//! through the lifecycle, a forged one is refused, reports carry versions
//! and only the KPIs the customer allows, site data leaves only as the
//! customer's sharing policy says (checked by an independent subscriber on
//! the operations side), a policy change takes effect live, every export
//! batch is in the hash-chained audit log (`outpostctl audit verify/show`,
//! a tampered entry detected), and reports queued while the operations
//! center's broker is down arrive in order once it is back.

use outpost_fleet::{topic, DesiredService, DesiredState};
use outpost_tests::{
    binary, find_binary, make_world_accessible, publish_bytes, AgentDir, Mosquitto, Subscriber, TestAgent,
    TrustedProvider,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GW: &str = "test-gw";
const OPS: (&str, &str) = ("ops", "ops-secret");
const GW_LOGIN: (&str, &str) = ("test-gw", "gw-secret");

/// A folder of files served over HTTP/1.1 (the operations center's artifacts).
fn serve_artifacts(dir: PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').replace("..", "");
            match std::fs::read(dir.join(&path)) {
                Ok(body) => {
                    let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                    let _ = s.write_all(&body);
                }
                Err(_) => {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                }
            }
        }
    });
    port
}

struct Ops {
    broker: Mosquitto,
    key: outpost_package::SigningKey,
    key_file: PathBuf,
    artifacts: PathBuf,
    http_port: u16,
    revision: u64,
    _dir: tempfile::TempDir,
}

impl Ops {
    fn start() -> Ops {
        let dir = tempfile::tempdir().expect("tempdir");
        make_world_accessible(dir.path(), 0o755);
        let passwords = dir.path().join("passwords");
        for (i, (user, pw)) in [OPS, GW_LOGIN, ("other-gw", "other-secret")].iter().enumerate() {
            let mut cmd = Command::new(find_binary("mosquitto_passwd"));
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd.args(["-b"]).arg(&passwords).args([user, pw]).status().expect("mosquitto_passwd");
            assert!(ok.success(), "mosquitto_passwd failed");
        }
        let acl = dir.path().join("acl");
        std::fs::write(&acl, outpost_fleet::acl::mosquitto_acl(OPS.0)).expect("write acl");
        for f in [&passwords, &acl] {
            make_world_accessible(f, 0o644);
        }
        let broker = Mosquitto::start_with(&format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            passwords.display(),
            acl.display()
        ));
        let keys = dir.path().join("keys");
        let generated = outpost_package::keygen(&keys, "ops-test").expect("keygen");
        let key = outpost_package::ProviderSigningKey::load(&generated.private_path).expect("load").key;
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir_all(artifacts.join("sha256")).expect("mkdir");
        let http_port = serve_artifacts(artifacts.clone());
        Ops { broker, key, key_file: generated.public_path, artifacts, http_port, revision: 0, _dir: dir }
    }

    /// Stores a package and returns what desired state says of it.
    fn artifact(&self, version: &str, opkg: &[u8]) -> DesiredService {
        let digest = outpost_package::format::sha256_hex(opkg);
        std::fs::write(self.artifacts.join("sha256").join(&digest), opkg).expect("write artifact");
        DesiredService {
            version: version.into(),
            digest: digest.clone(),
            artifact: format!("/sha256/{digest}"),
            size: opkg.len() as u64,
        }
    }

    fn publish_desired(&mut self, services: BTreeMap<String, Option<DesiredService>>, key: &outpost_package::SigningKey) {
        self.revision += 1;
        let state = DesiredState { gateway: GW.into(), revision: self.revision, issued_ms: 0, services };
        let signed = state.sign("ops-test", key).to_json();
        let status = Command::new(find_binary("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &self.broker.port.to_string(), "-q", "1", "-r"])
            .args(["-u", OPS.0, "-P", OPS.1, "-t", &topic::desired(GW), "-s"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().expect("stdin").write_all(&signed)?;
                c.wait()
            })
            .expect("mosquitto_pub");
        assert!(status.success(), "publishing desired state failed");
    }

    fn subscriber(&self) -> Subscriber {
        Subscriber::start_as(self.broker.port, &["outpost/fleet/#"], Some(OPS))
    }
}

fn fleet_section(ops: &Ops, dir: &Path, policy: &Path) -> String {
    let creds = dir.join("fleet.credentials");
    std::fs::write(&creds, format!("{}:{}\n", GW_LOGIN.0, GW_LOGIN.1)).expect("write credentials");
    format!(
        "[fleet]\nbroker = \"mqtt://127.0.0.1:{}\"\nops_key = \"{}\"\ncredentials_file = \"{}\"\nartifacts_url = \"http://127.0.0.1:{}\"\nprovider = \"acme\"\nsharing_policy = \"{}\"\nreport_interval_s = 1\n",
        ops.broker.port,
        ops.key_file.display(),
        creds.display(),
        ops.http_port,
        policy.display()
    )
}

const POLICY: &str = r#"
# The customer's: positions leave coarsened and without the driver; nothing else.
version = 1
[[export]]
provider = "acme"
topics = ["test/out/pos"]
purpose = "fleet positions for the monthly service review"
drop = ["driver"]
[export.round_position]
metres = 100

[[kpis]]
provider = "acme"
allow = ["testbed.rate"]
"#;

fn reports(got: &[(String, String)]) -> Vec<serde_json::Value> {
    got.iter()
        .filter(|(t, _)| t == &topic::reported(GW))
        .filter_map(|(_, p)| serde_json::from_str(p).ok())
        .collect()
}

fn version_of(report: &serde_json::Value, service: &str) -> Option<String> {
    report["services"].as_array()?.iter().find(|s| s["service"] == service)?["version"].as_str().map(str::to_owned)
}

fn wait_version(sub: &Subscriber, service: &str, version: &str, what: &str) {
    let got = sub.wait_until(Duration::from_secs(60), |got| {
        reports(got).iter().any(|r| version_of(r, service).as_deref() == Some(version))
    });
    assert!(
        reports(&got).iter().any(|r| version_of(r, service).as_deref() == Some(version)),
        "{what}: no report of {service}@{version}; last reports: {:?}",
        reports(&got).iter().rev().take(2).collect::<Vec<_>>()
    );
}

fn data_messages(got: &[(String, String)]) -> Vec<(String, serde_json::Value)> {
    let prefix = format!("outpost/fleet/{GW}/data/");
    got.iter()
        .filter_map(|(t, p)| Some((t.strip_prefix(&prefix)?.to_owned(), serde_json::from_str(p).ok()?)))
        .collect()
}

#[test]
fn desired_state_reports_sharing_policy_audit_and_store_and_forward() {
    let mut ops = Ops::start();
    let provider = TrustedProvider::new();
    let dir = AgentDir::new();
    let policy = dir.path().join("sharing.toml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let sub = ops.subscriber();
    let agent = TestAgent::start_with(&dir, None, &provider.config_line(), &fleet_section(&ops, dir.path(), &policy));

    // 1. Install through signed desired state; the report confirms it.
    let v1 = ops.artifact("1.0.0", &provider.testbed("1.0.0", None));
    let key = ops.key.clone();
    ops.publish_desired(BTreeMap::from([("testbed".to_string(), Some(v1.clone()))]), &key);
    wait_version(&sub, "testbed", "1.0.0", "install");

    // 2. Site data: only what the policy allows leaves, transformed.
    let (lat, lon) = (-23.361_234_5, 119.731_987_6);
    for i in 0..5 {
        let pos = serde_json::json!({"lat": lat, "lon": lon + i as f64 * 1e-5, "driver": "J. Smith", "speed": 7.5});
        publish_bytes(agent.mqtt_port, "test/in/pos", pos.to_string().as_bytes());
        publish_bytes(agent.mqtt_port, "test/in/secret", br#"{"lat": 1.0, "lon": 2.0, "payroll": 1}"#);
    }
    publish_bytes(agent.mqtt_port, "test/in/kpi", b"kpi:12.5");
    let got = sub.wait_until(Duration::from_secs(30), |got| data_messages(got).len() >= 5);
    let data = data_messages(&got);
    assert_eq!(data.len(), 5, "five positions leave: {data:?}");
    for (t, v) in &data {
        assert_eq!(t, "test/out/pos", "only the allowed topic leaves: {t}");
        assert!(v.get("driver").is_none(), "the driver field is dropped: {v}");
        assert_eq!(v["speed"], 7.5, "fields the rule keeps are untouched: {v}");
        let (rlat, rlon) = (v["lat"].as_f64().expect("lat"), v["lon"].as_f64().expect("lon"));
        assert!((rlat, rlon) != (lat, lon), "positions are coarsened: {v}");
        let dy = (rlat - lat) * 111_320.0;
        let dx = (rlon - lon) * 111_320.0 * lat.to_radians().cos();
        assert!(dx.hypot(dy) <= 100.0, "a rounded position stays within the grid: {v}");
    }
    let kpi_reported = sub.wait_until(Duration::from_secs(15), |got| {
        reports(got).iter().any(|r| r["services"][0]["kpis"]["rate"] == 12.5)
    });
    assert!(reports(&kpi_reported).iter().any(|r| r["services"][0]["kpis"]["rate"] == 12.5), "the allowed KPI is reported");

    // 3. A policy change takes effect live: positions stop leaving, KPIs too.
    std::fs::write(&policy, "version = 1\n").expect("rewrite policy");
    std::thread::sleep(Duration::from_millis(2500));
    let before = data_messages(&sub.received()).len();
    let reports_before = reports(&sub.received()).len();
    for _ in 0..5 {
        publish_bytes(agent.mqtt_port, "test/in/pos", br#"{"lat": 1.5, "lon": 2.5, "driver": "x"}"#);
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = sub.received();
    assert_eq!(data_messages(&after).len(), before, "nothing leaves once the policy says so");
    let late: Vec<_> = reports(&after).into_iter().skip(reports_before).collect();
    assert!(!late.is_empty(), "reports still go (versions and health)");
    assert!(late.iter().all(|r| r["services"][0]["kpis"].as_object().is_none_or(|k| k.is_empty())), "KPIs no longer leave: {late:?}");
    assert!(!after.iter().any(|(t, _)| t.contains("secret")), "a topic no rule allows never leaves");
    assert!(agent.metric("outpost_uplink_held_total", &[]) >= 10.0, "held-back data is counted:\n{}", agent.metrics());

    // 4. The audit log: intact, readable per provider, and tampering is caught.
    let audit = dir.path().join("state/sharing-audit.jsonl");
    let ctl = |args: &[&str]| Command::new(binary("outpostctl")).args(args).output().expect("run outpostctl");
    let verified = ctl(&["audit", "verify", "--file", audit.to_str().expect("utf-8")]);
    assert!(verified.status.success(), "audit verify: {}", String::from_utf8_lossy(&verified.stderr));
    let shown = ctl(&["audit", "show", "--file", audit.to_str().expect("utf-8"), "--provider", "acme"]);
    let shown_text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success() && shown_text.contains("test/out/pos") && !shown_text.contains("J. Smith"), "{shown_text}");
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "export batches are recorded: {}", lines.len());
    let mut tampered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let victim = tampered.iter().position(|l| l.contains("\"lat\"")).expect("a recorded position");
    tampered[victim] = tampered[victim].replacen("\"lat\"", "\"lat \"", 1);
    let copy = dir.path().join("tampered.jsonl");
    std::fs::write(&copy, tampered.join("\n") + "\n").expect("write copy");
    let refused = ctl(&["audit", "verify", "--file", copy.to_str().expect("utf-8")]);
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && why.contains(&format!("line {}", victim + 1)),
        "a tampered entry is detected and named: {why}"
    );

    // 5. A forged desired state (another key) is refused; nothing changes.
    let forger = outpost_package::SigningKey::from_bytes(&[7; 32]);
    let v2 = ops.artifact("2.0.0", &provider.testbed("2.0.0", None));
    ops.publish_desired(BTreeMap::from([("testbed".to_string(), Some(v2.clone()))]), &forger);
    let got = sub.wait_until(Duration::from_secs(15), |got| {
        got.iter().any(|(t, p)| t == &topic::events(GW) && p.contains("desired_refused"))
    });
    assert!(got.iter().any(|(t, p)| t == &topic::events(GW) && p.contains("desired_refused")), "the refusal is reported");
    assert_eq!(agent.metric("outpost_fleet_desired_refused_total", &[]), 1.0);

    // 5b. Signed desired state naming an unsigned package: the agent's own
    // check of the provider's signature refuses it; nothing changes.
    let dir_pkg = outpost_tests::test_package("testbed");
    let manifest = std::fs::read_to_string(dir_pkg.join("service.toml")).expect("manifest").replace("0.1.0", "3.0.0");
    let wasm = std::fs::read(dir_pkg.join("service.wasm")).expect("component");
    let unsigned = outpost_package::pack(manifest.as_bytes(), &wasm, None).expect("pack unsigned");
    let v3 = ops.artifact("3.0.0", &unsigned);
    ops.publish_desired(BTreeMap::from([("testbed".to_string(), Some(v3))]), &key);
    let got = sub.wait_until(Duration::from_secs(15), |got| {
        got.iter().any(|(t, p)| t == &topic::events(GW) && p.contains("apply_failed"))
    });
    let failed = got.iter().find(|(t, p)| t == &topic::events(GW) && p.contains("apply_failed")).map(|(_, p)| p.clone());
    let failed = failed.expect("the refusal of an unsigned package is reported");
    assert!(failed.to_lowercase().contains("unsigned") || failed.contains("signature"), "{failed}");
    let last = reports(&sub.received()).last().cloned().expect("reports");
    assert_eq!(version_of(&last, "testbed").as_deref(), Some("1.0.0"), "nothing changed: {last}");

    // 6. Upgrade, then roll back, through desired state.
    ops.publish_desired(BTreeMap::from([("testbed".to_string(), Some(v2))]), &key);
    wait_version(&sub, "testbed", "2.0.0", "upgrade");
    ops.publish_desired(BTreeMap::from([("testbed".to_string(), Some(v1))]), &key);
    let start = Instant::now();
    loop {
        let last = reports(&sub.received()).last().cloned().expect("reports");
        if version_of(&last, "testbed").as_deref() == Some("1.0.0") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "rollback not reported: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 7. Store and forward: reports made while the broker is down arrive,
    // in order and without gaps, once it is back.
    let last_seq = reports(&sub.received()).last().and_then(|r| r["seq"].as_u64()).expect("seq");
    drop(sub);
    ops.broker.stop();
    std::thread::sleep(Duration::from_secs(4));
    let queued = agent.metric("outpost_uplink_queued", &[]);
    assert!(queued >= 3.0, "reports queue while the broker is away: {queued}");
    ops.broker.restart();
    let sub = ops.subscriber();
    let got = sub.wait_until(Duration::from_secs(30), |got| reports(got).len() as f64 >= queued);
    let seqs: Vec<u64> = reports(&got).iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(!seqs.is_empty(), "nothing arrived after the broker came back");
    assert_eq!(seqs[0], last_seq + 1, "the first report after the outage is the next one: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gaps: {seqs:?}");
    assert_eq!(reports(&got)[0]["outbox_dropped"], 0);
    agent.stop().expect("agent stops cleanly");
}

/// The link over TLS (`mqtts://` and the operations center's CA): a gateway
/// that trusts the CA reports; one given another CA never connects and
/// says why in its metrics.
#[test]
fn the_fleet_link_over_tls_trusts_the_configured_ca_only() {
    let certs = tempfile::tempdir().expect("tempdir");
    outpost_tests::site_ca(certs.path(), "ops");
    outpost_tests::site_ca(certs.path(), "stranger");
    make_world_accessible(certs.path(), 0o755);
    for f in ["ops-ca.pem", "ops.pem", "ops.key"] {
        make_world_accessible(&certs.path().join(f), 0o644);
    }
    let mut ops = Ops::start();
    let tls_port = outpost_tests::free_port();
    let conf = std::fs::read_to_string(&ops.broker.conf).expect("conf");
    std::fs::write(
        &ops.broker.conf,
        format!(
            "{conf}\nlistener {tls_port} 127.0.0.1\ncafile {0}/ops-ca.pem\ncertfile {0}/ops.pem\nkeyfile {0}/ops.key\n",
            certs.path().display()
        ),
    )
    .expect("add TLS listener");
    ops.broker.restart();
    assert!(outpost_tests::wait_for_port(tls_port, Duration::from_secs(10)), "TLS listener not up");
    let sub = ops.subscriber();

    let start_gateway = |ca: &str| {
        let dir = AgentDir::new();
        let policy = dir.path().join("sharing.toml");
        let fleet = fleet_section(&ops, dir.path(), &policy)
            .replace(&format!("mqtt://127.0.0.1:{}", ops.broker.port), &format!("mqtts://127.0.0.1:{tls_port}"))
            + &format!("ca_file = \"{}\"\n", certs.path().join(ca).display());
        let agent = TestAgent::start_with(&dir, None, "", &fleet);
        (dir, agent)
    };
    let (_dir, trusted) = start_gateway("ops-ca.pem");
    let got = sub.wait_until(Duration::from_secs(15), |got| !reports(got).is_empty());
    assert!(!reports(&got).is_empty(), "a gateway that trusts the CA reports over TLS");
    assert_eq!(trusted.metric("outpost_fleet_connected", &[]), 1.0);
    drop(trusted);

    let seen = reports(&sub.received()).len();
    let (_dir2, stranger) = start_gateway("stranger-ca.pem");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(stranger.metric("outpost_fleet_connected", &[]), 0.0, "a CA that did not sign the broker's certificate is refused");
    assert!(stranger.metric("outpost_uplink_queued", &[]) >= 1.0, "its reports wait in the outbox");
    assert_eq!(reports(&sub.received()).len(), seen, "nothing arrives from it");
}
