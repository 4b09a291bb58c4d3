//! A fleet rollout with the operations center and the gateways on separate
//! networks: `outpost-ops serve` and its Mosquitto in this namespace, three
//! real `outpost` agents in another one (`ip netns`, a veth pair between
//! them). The first rollout installs a service everywhere; during the second
//! the uplink is cut for longer than the MQTT keep-alive (both sides drop
//! the connection), then restored. The fleet converges on the new version,
//! the rollout succeeds, and every gateway's reports reach the operations
//! side with no sequence number missing.

use outpost_tests::{binary, find_binary, free_port, make_world_accessible, Mosquitto, Subscriber, TrustedProvider};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GATEWAYS: usize = 3;
const OPS: (&str, &str) = ("ops", "ops-secret");

fn sh(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (iproute2's `ip` is needed)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace joined to this one by a veth pair; removed on drop.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: String,
}

impl NetNs {
    fn new() -> NetNs {
        let id = std::process::id() % 10_000;
        let (name, host_if, ns_if) = (format!("outpost-gw-{id}"), format!("opo{id}"), format!("opg{id}"));
        let net = format!("10.{}.{}", 100 + id / 250 % 100, id % 250);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        sh(&["ip", "link", "set", &ns_if, "netns", &name]);
        sh(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "netns", "exec", &name, "ip", "addr", "add", &format!("{net}.2/24"), "dev", &ns_if]);
        sh(&["ip", "netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        sh(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        NetNs { name, host_if, host_ip: format!("{net}.1") }
    }

    fn link(&self, up: bool) {
        sh(&["ip", "link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ops_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary("outpost-ops")).arg("--config").arg(config).args(args).output().expect("outpost-ops");
    assert!(
        out.status.success(),
        "outpost-ops {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn reports_by_gateway(sub: &Subscriber) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (t, p) in sub.received() {
        if let (Some(gw), Ok(v)) = (t.strip_prefix("outpost/fleet/").and_then(|r| r.strip_suffix("/reported")), serde_json::from_str(&p)) {
            by.entry(gw.to_owned()).or_default().push(v);
        }
    }
    by
}

fn version(report: &serde_json::Value) -> Option<&str> {
    report["services"].as_array()?.iter().find(|s| s["service"] == "testbed")?["version"].as_str()
}

fn wait_rollout(config: &Path, id: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let shown = ops_cli(config, &["rollout", "show", id]);
        // First line: `{id} {service} {version}: {phase}`.
        let phase = shown.lines().next().and_then(|l| l.rsplit(": ").next()).unwrap_or_default().trim().to_owned();
        if matches!(phase.as_str(), "succeeded" | "rolled_back") {
            return shown;
        }
        assert!(start.elapsed() < limit, "rollout {id} did not finish in {limit:?}:\n{shown}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_rollout_to_agents_on_another_network_survives_an_uplink_cut() {
    let net = NetNs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    make_world_accessible(dir.path(), 0o755);
    let d = |p: &str| dir.path().join(p);
    let provider = TrustedProvider::new();

    // The operations side: Mosquitto (loopback for ops, the veth address for gateways) and outpost-ops.
    let passwords = d("passwords");
    let ok = Command::new(find_binary("mosquitto_passwd")).args(["-c", "-b"]).arg(&passwords).args([OPS.0, OPS.1]).status();
    assert!(ok.expect("mosquitto_passwd").success());
    make_world_accessible(&passwords, 0o666);
    std::fs::write(d("acl"), outpost_fleet::acl::mosquitto_acl(OPS.0)).expect("acl");
    make_world_accessible(&d("acl"), 0o644);
    let gw_port = free_port();
    let mut broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\nlistener {gw_port} {}\n",
        passwords.display(),
        d("acl").display(),
        net.host_ip
    ));
    std::fs::write(d("ops.pass"), OPS.1).expect("ops password");
    let keys = outpost_package::keygen(&d("ops-keys"), "ops-test").expect("ops key");
    let http = format!("{}:{}", net.host_ip, free_port());
    let config = d("ops.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"mqtt://127.0.0.1:{}\"\nuser = \"{}\"\npassword_file = \"{}\"\ngateway_password_file = \"{}\"\n\n\
             [ops]\nkey = \"{}\"\nstore = \"{}\"\nartifacts = \"{}\"\ntrust = \"{}\"\n\n\
             [http]\nlisten = \"{http}\"\ntoken_file = \"{}\"\nartifacts_url = \"http://{http}\"\n",
            broker.port,
            OPS.0,
            d("ops.pass").display(),
            passwords.display(),
            keys.private_path.display(),
            d("fleet.redb").display(),
            d("artifacts").display(),
            provider.trust.path().display(),
            d("api.token").display(),
        ),
    )
    .expect("ops.toml");
    let _ops = Proc(
        Command::new(binary("outpost-ops"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("outpost-ops serve"),
    );
    let http_port: u16 = http.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let start = Instant::now();
    while std::net::TcpStream::connect(&http).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "outpost-ops serve did not listen on {http}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = http_port;
    let ids: Vec<String> = (0..GATEWAYS).map(|i| format!("gw-{i}")).collect();
    for id in &ids {
        ops_cli(&config, &["gateway", "add", id, "--site", "quarry", "--out", d(&format!("{id}.cred")).to_str().expect("utf-8")]);
    }
    broker.restart(); // reads the gateways' new passwords
    let start = Instant::now();
    while std::net::TcpStream::connect((net.host_ip.as_str(), gw_port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the gateways' listener is not up");
        std::thread::sleep(Duration::from_millis(50));
    }
    for v in ["1.0.0", "2.0.0"] {
        let file = d(&format!("testbed-{v}.opkg"));
        std::fs::write(&file, provider.testbed(v, None)).expect("package");
        ops_cli(&config, &["package", "add", file.to_str().expect("utf-8")]);
    }
    let digest = |v: &str| {
        format!("sha256:{}", outpost_package::format::sha256_hex(&std::fs::read(d(&format!("testbed-{v}.opkg"))).expect("read")))
    };
    let sub = Subscriber::start_as(broker.port, &["outpost/fleet/+/reported"], Some(OPS));

    // The gateways, on the other network.
    let mut agents = Vec::new();
    for id in &ids {
        let root = d(id);
        std::fs::create_dir_all(root.join("services")).expect("mkdir");
        let cfg = root.join("outpost.toml");
        std::fs::write(
            &cfg,
            format!(
                "gateway = \"{id}\"\nsite = \"quarry\"\nservices_dir = \"{0}/services\"\nstate_dir = \"{0}/state\"\n{1}\
                 [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{2}\"\nkeep_alive_s = 5\n[metrics]\nlisten = \"127.0.0.1:{3}\"\n[api]\nlisten = \"127.0.0.1:{4}\"\n\
                 [fleet]\nbroker = \"mqtt://{5}:{gw_port}\"\nops_key = \"{6}\"\ncredentials_file = \"{7}\"\nartifacts_url = \"http://{http}\"\nprovider = \"outpost-tests\"\nreport_interval_s = 1\n",
                root.display(),
                provider.config_line(),
                free_port(),
                free_port(),
                free_port(),
                net.host_ip,
                keys.public_path.display(),
                d(&format!("{id}.cred")).display(),
            ),
        )
        .expect("agent config");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.name])
            .arg(binary("outpost"))
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start the agent in its namespace");
        agents.push(Proc(child));
    }
    let reporting = sub.wait_until(Duration::from_secs(30), |_| reports_by_gateway(&sub).len() == GATEWAYS);
    assert_eq!(reports_by_gateway(&sub).len(), GATEWAYS, "every gateway reports across the veth: {} messages", reporting.len());

    // Rollout 1: install 1.0.0 everywhere.
    let plan = |id: &str, v: &str, waves: &str, bake: u64| {
        let p = d(&format!("{id}.json"));
        std::fs::write(
            &p,
            format!(
                "{{\"id\":\"{id}\",\"service\":\"testbed\",\"version\":\"{v}\",\"digest\":\"{}\",\"waves\":{waves},\"gates\":[{{\"bake_secs\":{bake},\"apply_timeout_secs\":120}}]}}",
                digest(v)
            ),
        )
        .expect("plan");
        p
    };
    ops_cli(&config, &["rollout", "start", plan("install", "1.0.0", "[1, \"100%\"]", 0).to_str().expect("utf-8")]);
    let shown = wait_rollout(&config, "install", Duration::from_secs(90));
    assert!(shown.starts_with("install testbed 1.0.0: succeeded"), "{shown}");

    // Rollout 2: 2.0.0 in three waves; the uplink is cut once wave 1 has passed.
    ops_cli(&config, &["rollout", "start", plan("upgrade", "2.0.0", "[1, \"50%\", \"100%\"]", 2).to_str().expect("utf-8")]);
    let start = Instant::now();
    while !reports_by_gateway(&sub).values().any(|r| r.last().and_then(version) == Some("2.0.0")) {
        assert!(start.elapsed() < Duration::from_secs(60), "wave 1 never reported 2.0.0");
        std::thread::sleep(Duration::from_millis(100));
    }
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    net.link(false);
    let cut_at = now_ms();
    std::thread::sleep(Duration::from_secs(12)); // > 1.5 x the 5 s keep-alive: both ends drop the connection
    let during = ops_cli(&config, &["rollout", "show", "upgrade"]);
    assert!(during.contains(": running"), "the cut falls in the middle of the rollout:\n{during}");
    let restored_at = now_ms();
    net.link(true);
    let shown = wait_rollout(&config, "upgrade", Duration::from_secs(120));
    assert!(
        shown.starts_with("upgrade testbed 2.0.0: succeeded"),
        "after the cut the rollout completes:\n{shown}\n(during the cut:\n{during})"
    );

    // Converged, and no report lost: per gateway, every sequence number from
    // the first seen to the last arrived (a resend after the cut may repeat one).
    std::thread::sleep(Duration::from_secs(2));
    let by = reports_by_gateway(&sub);
    for id in &ids {
        let reports = &by[id];
        assert_eq!(reports.last().and_then(version), Some("2.0.0"), "{id} runs 2.0.0");
        let mut seqs: Vec<u64> = reports.iter().filter_map(|r| r["seq"].as_u64()).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
        assert_eq!(seqs.len() as u64, last - first + 1, "{id}: reports missing between {first} and {last}: {seqs:?}");
        assert!(reports.iter().all(|r| r["outbox_dropped"] == 0), "{id} dropped nothing");
        let made_offline = reports
            .iter()
            .filter(|r| r["at_ms"].as_u64().is_some_and(|t| t > cut_at + 1000 && t < restored_at))
            .count();
        assert!(made_offline >= 5, "{id}: reports made during the cut were kept and delivered after it ({made_offline})");
    }
    let gateways = ops_cli(&config, &["gateways"]);
    assert_eq!(gateways.matches("testbed=2.0.0").count(), GATEWAYS, "{gateways}");
    drop(agents);
}
