//! Two `outpost-ops serve` replicas on one PostgreSQL store and one
//! Mosquitto, with simulated gateways: only the lease holder acts (the
//! standby publishes nothing and refuses writes with 503 naming the leader,
//! but answers reads); the leader is killed with SIGKILL mid-rollout, the
//! standby takes over within the lease ttl and the rollout reaches 100 %,
//! every gateway acting on one desired revision once and installing the
//! version once, and the audit holding each wave start once. Then B's lease
//! is taken from under it and B stops acting at its next renewal.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_ops::sim::{self, always_ok, SimConfig, SimGateway};
use outpost_ops::transport::{self, Inbound, LinkConfig};
use outpost_ops::{FleetStore, PgStore};
use outpost_package::ProviderSigningKey;
use serde_json::Value;

use support::fixture::{pack, OPS_PASSWORD, OPS_USER, SVC};
use support::mosquitto::{free_port, Mosquitto};
use support::postgres::Postgres;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-ops");
const LEASE_TTL_MS: u64 = 1500;
const GATEWAYS: usize = 10;

struct Serve(Child);

impl Serve {
    fn start(config: &Path, log: &Path) -> Serve {
        let log = std::fs::File::create(log).expect("serve log");
        Serve(
            Command::new(BIN)
                .arg("--config")
                .arg(config)
                .arg("serve")
                .env("RUST_LOG", "info")
                .stderr(log)
                .spawn()
                .expect("serve"),
        )
    }

    /// SIGKILL: no lease release, no flush, no goodbye.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Replica {
    base: String,
    token_file: std::path::PathBuf,
}

struct Answer {
    status: u16,
    body: Value,
}

impl Replica {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let token = std::fs::read_to_string(&self.token_file).unwrap_or_default();
        let auth = format!("Bearer {}", token.trim());
        let mut h = vec![("Authorization", auth.as_str()), ("X-Outpost-Operator", "tester")];
        h.extend_from_slice(headers);
        let url = format!("{}{path}", self.base);
        let r = outpost_ops::client::request(method, &url, &h, body, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let body = serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text()));
        Answer { status: r.status, body }
    }

    /// `/api/fleet`, or None while the replica does not answer.
    async fn fleet(&self) -> Option<Value> {
        let token = std::fs::read_to_string(&self.token_file).ok()?;
        let auth = format!("Bearer {}", token.trim());
        let url = format!("{}/api/fleet", self.base);
        let r = outpost_ops::client::request("GET", &url, &[("Authorization", &auth)], b"", Duration::from_secs(5))
            .await
            .ok()?;
        (r.status == 200).then(|| serde_json::from_slice(&r.body).ok()).flatten()
    }

    async fn rollout(&self, id: &str) -> Value {
        let a = self.call("GET", &format!("/api/rollouts/{id}"), &[], b"").await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }
}

async fn until_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every desired state the broker delivers, as (gateway, revision), seen by
/// a subscriber of its own: who published is not its business, how often
/// each revision went out is.
type Observed = Arc<Mutex<Vec<(String, u64)>>>;

async fn observe(
    broker: &Mosquitto,
    ops_key: &outpost_package::ProviderKey,
) -> (Observed, tokio::task::JoinHandle<()>) {
    let link = LinkConfig::new(&broker.url(), "observer", OPS_USER, OPS_PASSWORD);
    let (_client, mut inbound, task) = transport::spawn(&link, vec!["outpost/fleet/+/desired".into()], 1024).unwrap();
    let seen: Observed = Arc::default();
    let (sub_tx, sub_rx) = tokio::sync::oneshot::channel();
    let (key, out) = (ops_key.clone(), seen.clone());
    let collector = tokio::spawn(async move {
        let _keep = (_client, task);
        let mut sub_tx = Some(sub_tx);
        while let Some(m) = inbound.recv().await {
            match m {
                Inbound::Subscribed { granted: 1, .. } => {
                    if let Some(tx) = sub_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Inbound::Message { topic, payload } => {
                    let gw = topic.split('/').nth(2).unwrap_or_default().to_string();
                    let state = outpost_fleet::desired::verify(&payload, &gw, &key)
                        .unwrap_or_else(|e| panic!("desired state on {topic} does not verify: {e}"));
                    out.lock().unwrap().push((gw, state.revision));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), sub_rx).await.expect("observer subscribed").unwrap();
    (seen, collector)
}

fn config(d: &Path, name: &str, broker: &Mosquitto, pg: &Postgres, listen: &str) -> std::path::PathBuf {
    let path = d.join(format!("{name}.toml"));
    // One store, one artifacts folder (shared storage) and one API token;
    // each replica its own MQTT client id (its own persistent session).
    std::fs::write(
        &path,
        format!(
            "[broker]\nurl = \"{}\"\nuser = \"{OPS_USER}\"\npassword_file = \"{}\"\nclient_id = \"outpost-ops-{name}\"\n\
             gateway_password_file = \"{}\"\n\
             [ops]\nkey = \"{}\"\nstore = \"{}\"\nartifacts = \"{}\"\ntrust = \"{}\"\ntick_ms = 50\n\
             replica_id = \"ops-{name}\"\nlease_ttl_ms = {LEASE_TTL_MS}\n\
             [http]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\n",
            broker.url(),
            d.join("broker.pass").display(),
            broker.passwd_path().display(),
            d.join("keys/ops-replicas.key").display(),
            pg.url(),
            d.join("artifacts").display(),
            d.join("trust").display(),
            d.join("api.token").display(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_replicas_one_leader_failover_mid_rollout_without_double_actions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pg = Postgres::start();
    let broker = Mosquitto::start(
        &[(OPS_USER.to_string(), OPS_PASSWORD.to_string())],
        &outpost_fleet::acl::mosquitto_acl(OPS_USER),
        None,
    );
    let ops_key = outpost_package::keygen(&d.join("keys"), "ops-replicas").unwrap();
    let prov = outpost_package::keygen(&d.join("provider"), "acme").unwrap();
    std::fs::create_dir_all(d.join("trust")).unwrap();
    std::fs::copy(&prov.public_path, d.join("trust/acme.pub")).unwrap();
    let provider = ProviderSigningKey::load(&prov.private_path).unwrap();
    std::fs::write(d.join("1.4.0.opkg"), pack(&provider, "1.4.0")).unwrap();
    std::fs::write(d.join("broker.pass"), format!("{OPS_PASSWORD}\n")).unwrap();

    let (listen_a, listen_b) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let (cfg_a, cfg_b) = (config(d, "a", &broker, &pg, &listen_a), config(d, "b", &broker, &pg, &listen_b));
    let a = Replica { base: format!("http://{listen_a}"), token_file: d.join("api.token") };
    let b = Replica { base: format!("http://{listen_b}"), token_file: d.join("api.token") };

    // A first: it takes the free lease.
    let mut serve_a = Serve::start(&cfg_a, &d.join("a.log"));
    until_async("A leads", Duration::from_secs(20), || async {
        a.fleet().await.is_some_and(|f| f["replica"]["leading"] == true)
    })
    .await;
    // Writes: only the leader takes them; the standby names it.
    let mut gateways = Vec::new();
    for i in 0..GATEWAYS {
        let id = format!("gw-{i:02}");
        let body = serde_json::json!({ "id": id, "site": "mine-a", "tags": ["loader"] }).to_string();
        let r = a.call("POST", "/api/gateways", &[("Content-Type", "application/json")], body.as_bytes()).await;
        assert_eq!(r.status, 201, "{}", r.body);
        gateways.push(SimGateway {
            id,
            site: "mine-a".into(),
            password: r.body["password"].as_str().unwrap().to_string(),
            services: BTreeMap::new(),
            kpis: BTreeMap::new(),
        });
    }
    broker.reload();
    let opkg = std::fs::read(d.join("1.4.0.opkg")).unwrap();
    let pkg = a.call("POST", "/api/packages", &[("X-Package-Name", "1.4.0.opkg")], &opkg).await;
    assert_eq!(pkg.status, 201, "{}", pkg.body);
    let digest = format!("sha256:{}", pkg.body["digest"].as_str().unwrap());
    // A subscribed before the gateways send their one report.
    until_async("subscribed", Duration::from_secs(10), || async {
        a.fleet().await.is_some_and(|f| f["counters"]["subscribed"].as_u64() >= Some(3))
    })
    .await;
    let ops_pub = outpost_package::ProviderKey::load(&ops_key.public_path).unwrap();
    let sim_cfg = SimConfig {
        broker_url: broker.url(),
        tls_ca: None,
        ops_key: ops_pub.clone(),
        // Not downloaded here (A dies): B's serving of the shared artifacts
        // folder is checked below.
        artifacts_url: None,
        // One report per change, none periodic: a report the dead leader
        // took and never stored must come from the standby's copy.
        report_every: None,
        behaviour: always_ok(),
    };
    let fleet = sim::spawn_fleet(&sim_cfg, gateways, Duration::from_millis(100)).unwrap();
    until_async("every gateway seen", Duration::from_secs(20), || async {
        let g = a.call("GET", "/api/gateways", &[], b"").await;
        g.body.as_array().is_some_and(|v| v.iter().all(|g| g["last_seen_ms"].as_u64() > Some(0)))
    })
    .await;

    let (observed, _observer) = observe(&broker, &ops_pub).await;

    // One rollout in three waves (2, 5, 10) with a bake, started through A.
    let plan = serde_json::json!({
        "id": "r1", "service": SVC, "version": "1.4.0", "digest": digest,
        "selector": { "tags": ["loader"] }, "waves": [2, "50%", "100%"],
        "gates": [{ "bake_secs": 3 }, { "bake_secs": 2 }, { "bake_secs": 0 }],
    })
    .to_string();
    let started = a.call("POST", "/api/rollouts", &[("Content-Type", "application/json")], plan.as_bytes()).await;
    assert_eq!(started.status, 201, "{}", started.body);

    // B starts with the rollout under way (its engine loads it) and stands by.
    let _serve_b = Serve::start(&cfg_b, &d.join("b.log"));
    until_async("B answers", Duration::from_secs(20), || async { b.fleet().await.is_some() }).await;
    // B has tried the lease once at start; give it a renewal round too.
    tokio::time::sleep(Duration::from_millis(LEASE_TTL_MS / 2)).await;
    let fb = b.fleet().await.unwrap();
    assert_eq!(fb["replica"]["leading"], false, "{}", fb["replica"]);
    assert_eq!(fb["replica"]["leader"], "ops-a", "{}", fb["replica"]);

    // Reads answer on the standby, from the store; so do artifacts.
    let listed = b.call("GET", "/api/gateways", &[], b"").await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(GATEWAYS), "{}", listed.body);
    let hex = digest.trim_start_matches("sha256:");
    let art = outpost_ops::client::request(
        "GET",
        &format!("{}/artifacts/sha256/{hex}", b.base),
        &[],
        b"",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!((art.status, art.body.len()), (200, opkg.len()));

    // Mid-rollout: wave 2 asked (seen through the standby's reads).
    until_async("wave 2 started", Duration::from_secs(30), || async {
        b.rollout("r1").await["summary"]["current_wave"].as_u64() == Some(1)
    })
    .await;
    let (fa, fb) = (a.fleet().await.unwrap(), b.fleet().await.unwrap());
    let published_a = fa["counters"]["desired_published"].as_u64().unwrap();
    assert!(published_a >= 2, "A published wave 1 and 2's desired state: {}", fa["counters"]);
    assert_eq!(fb["counters"]["desired_published"], 0, "the standby published nothing: {}", fb["counters"]);
    // Writes: only the leader takes them; the standby names it.
    let json = [("Content-Type", "application/json")];
    let new_gw = serde_json::json!({ "id": "gw-late", "site": "mine-a", "tags": [] }).to_string();
    let plan2 = plan.replace("\"r1\"", "\"r2\"");
    for (path, body, headers) in [
        ("/api/gateways", new_gw.as_bytes(), &json[..]),
        ("/api/packages", opkg.as_slice(), &[("X-Package-Name", "1.4.0.opkg")][..]),
        ("/api/rollouts", plan2.as_bytes(), &json[..]),
        ("/api/rollouts/r1/pause", b"".as_slice(), &[][..]),
    ] {
        let refused = b.call("POST", path, headers, body).await;
        assert_eq!(refused.status, 503, "POST {path}: {}", refused.body);
        assert!(refused.body["error"].as_str().unwrap_or_default().contains("the leader is ops-a"), "{}", refused.body);
    }
    assert_eq!(a.call("GET", "/api/gateways", &[], b"").await.body.as_array().map(Vec::len), Some(GATEWAYS));
    // Wave 2's gateways report; the standby keeps them, does not act.
    until_async("the standby kept reports", Duration::from_secs(10), || async {
        b.fleet().await.is_some_and(|f| f["counters"]["standby_reports"].as_u64() > Some(0))
    })
    .await;
    let fb = b.fleet().await.unwrap();
    assert_eq!(fb["counters"]["desired_published"], 0, "the standby published nothing: {}", fb["counters"]);
    let before_kill = b.rollout("r1").await;
    assert_eq!(before_kill["summary"]["phase"], "running", "{before_kill}");
    // While both ran, each asked gateway's desired state went out once.
    let while_both: Vec<(String, u64)> = observed.lock().unwrap().clone();
    let mut per_gw: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (gw, rev) in &while_both {
        per_gw.entry(gw.clone()).or_default().push(*rev);
    }
    assert_eq!(per_gw.len(), 5, "waves 1 and 2 asked 5 gateways: {per_gw:?}");
    assert!(per_gw.values().all(|r| r == &vec![1]), "one publish per gateway and revision: {per_gw:?}");

    serve_a.kill();
    let killed = Instant::now();
    until_async("B leads", Duration::from_millis(LEASE_TTL_MS * 3), || async {
        b.fleet().await.is_some_and(|f| f["replica"]["leading"] == true)
    })
    .await;
    let failover = killed.elapsed();
    until_async("rollout succeeded", Duration::from_secs(30), || async {
        b.rollout("r1").await["summary"]["phase"] == "succeeded"
    })
    .await;
    let finished = killed.elapsed();
    eprintln!(
        "failover: B leading {} ms after SIGKILL of A (lease ttl {LEASE_TTL_MS} ms); rollout at 100 % {} ms after",
        failover.as_millis(),
        finished.as_millis()
    );
    // The lease ran out at most ttl after A's last renewal; B tries every ttl/3.
    assert!(failover <= Duration::from_millis(LEASE_TTL_MS + LEASE_TTL_MS / 3 + 500), "{failover:?}");

    // No double actions: each gateway acted on one desired revision, once,
    // and installed 1.4.0 once.
    let installed = fleet.stats.installed();
    assert!(installed.values().all(|s| s.get(SVC).map(String::as_str) == Some("1.4.0")), "{installed:?}");
    let revisions = fleet.stats.revisions_applied.lock().unwrap().clone();
    let applies = fleet.stats.applies.lock().unwrap().clone();
    assert_eq!(revisions.len(), GATEWAYS, "{revisions:?}");
    for (gw, revs) in &revisions {
        assert_eq!(revs, &vec![1], "{gw} acted on desired revisions {revs:?}");
        assert_eq!(applies[gw], BTreeMap::from([(format!("{SVC} 1.4.0"), 1)]), "{gw}");
    }
    // After the takeover B republished (the same revision 1) and asked wave 3:
    // no other revision ever went out.
    let all: Vec<(String, u64)> = observed.lock().unwrap().clone();
    let gws: std::collections::BTreeSet<&String> = all.iter().map(|(g, _)| g).collect();
    assert_eq!(gws.len(), GATEWAYS, "{all:?}");
    assert!(all.iter().all(|(_, r)| *r == 1), "{all:?}");
    let fb = b.fleet().await.unwrap();
    assert_eq!(fb["counters"]["leader_terms"], 1, "{}", fb["counters"]);
    assert!(fb["counters"]["desired_published"].as_u64() >= Some(GATEWAYS as u64), "republished: {}", fb["counters"]);

    // The audit: one start, each wave started once, one success.
    let store = PgStore::connect(&pg.params()).unwrap();
    let audit: Vec<String> = store
        .audit()
        .unwrap()
        .into_iter()
        .filter(|e| e.rollout.as_deref() == Some("r1"))
        .map(|e| format!("{} {}", e.action, e.detail))
        .collect();
    let count = |a: &str| audit.iter().filter(|e| e.starts_with(a)).count();
    assert_eq!(count("start "), 1, "{audit:#?}");
    assert_eq!(count("wave_started "), 3, "{audit:#?}");
    assert_eq!(count("succeeded "), 1, "{audit:#?}");
    let mut waves: Vec<&String> = audit.iter().filter(|e| e.starts_with("wave_started ")).collect();
    waves.dedup();
    assert_eq!(waves.len(), 3, "no wave start twice: {audit:#?}");
    // The store's lease names B.
    assert_eq!(store.try_lease(outpost_ops::center::LEASE, "probe", 1, 0).unwrap().holder, "ops-b");

    // A leader whose lease is gone stops acting at its next renewal: the
    // lease is taken from under B (a "now" an hour ahead makes B's look
    // expired), and B stands by and refuses writes naming the new holder.
    let ahead = outpost_ops::rollout::Clock::now_ms(&outpost_ops::rollout::SystemClock) + 3_600_000;
    let stolen = Instant::now();
    assert_eq!(store.try_lease(outpost_ops::center::LEASE, "thief", 60_000, ahead).unwrap().holder, "thief");
    until_async("B stands by", Duration::from_millis(LEASE_TTL_MS), || async {
        b.fleet().await.is_some_and(|f| f["replica"]["leading"] == false && f["replica"]["leader"] == "thief")
    })
    .await;
    eprintln!("step-down: B stood by {} ms after losing its lease", stolen.elapsed().as_millis());
    let refused = b.call("POST", "/api/rollouts", &[("Content-Type", "application/json")], plan2.as_bytes()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body["error"].as_str().unwrap_or_default().contains("the leader is thief"), "{}", refused.body);
    assert_eq!(b.fleet().await.unwrap()["counters"]["leader_terms"], 1);
}
