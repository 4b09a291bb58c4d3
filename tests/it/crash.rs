//! Crash safety with the production setup (Mosquitto, persistent session):
//! the real `outpost` binary is killed with SIGKILL again and again, under
//! load and in the middle of installs, upgrades and rollbacks. Nothing a
//! publisher had acknowledged is lost, and after every restart the agent
//! runs exactly the version its desired state names.

use outpost::client::{self, Upload};
use outpost_proto::agent::v1 as pb;
use outpost_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

struct AgentProc {
    child: Child,
    config: PathBuf,
    dir: PathBuf,
    http: u16,
    api: u16,
}

impl AgentProc {
    fn setup(dir: &Path, broker_port: u16, trust: &Path) -> AgentProc {
        let (http, api) = (free_port(), free_port());
        std::fs::create_dir_all(dir.join("services")).expect("mkdir");
        let config = dir.join("outpost.toml");
        std::fs::write(
            &config,
            format!(
                "gateway = \"crash-gw\"\nsite = \"s1\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\ntrust_dir = \"{}\"\n\
                 [broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{http}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
                 [dispatch]\ninitial_backoff_ms = 20\nmax_backoff_ms = 200\n",
                dir.join("services").display(),
                dir.join("state").display(),
                trust.display()
            ),
        )
        .expect("config");
        let child = spawn(&config, dir);
        AgentProc { child, config, dir: dir.to_owned(), http, api }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = spawn(&self.config, &self.dir);
    }

    fn status(&self) -> Option<serde_json::Value> {
        http_get(&format!("127.0.0.1:{}", self.http), "/status").and_then(|(_, b)| serde_json::from_str(&b).ok())
    }

    fn wait_ready(&mut self, limit: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                panic!("agent exited with {exit}:\n{}", self.log());
            }
            if let Some(s) = self.status().filter(|s| s["state"] == "ready") {
                return s;
            }
            assert!(start.elapsed() < limit, "agent not ready within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(config: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).expect("log");
    Command::new(binary("outpost"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start outpost")
}

use outpost_tests::TrustedProvider as Provider;

/// A QoS 1 subscriber with a persistent session, so what is published while
/// it reads nothing (never here) or between its polls is kept for it.
fn collector(port: u16, filter: &str, stop: Arc<AtomicBool>) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let filter = filter.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        client_runtime().block_on(async move {
            let mut opts = MqttOptions::new("crash-collector", "127.0.0.1", port);
            opts.set_clean_session(false);
            let (client, mut ev) = AsyncClient::new(opts, 100);
            client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(100), ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        sink.lock().expect("lock").push(String::from_utf8_lossy(&p.payload).into_owned())
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("collector got no SUBACK");
    (got, t)
}

/// The publisher: numbered messages over keys at a steady rate until
/// `stop`; returns the ones the broker acknowledged (what a producer may
/// forget) and how many it sent.
fn publisher(
    port: u16,
    keys: usize,
    per_sec: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(BTreeSet<String>, usize)> {
    std::thread::spawn(move || {
        client_runtime().block_on(async move {
            let mut opts = MqttOptions::new("crash-publisher", "127.0.0.1", port);
            opts.set_inflight(50);
            let (client, mut ev) = AsyncClient::new(opts, 100);
            let sent = Arc::new(Mutex::new(Vec::<String>::new()));
            let log = sent.clone();
            let sender = tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if i.is_multiple_of(20) {
                        tokio::time::sleep_until(started + Duration::from_micros(i as u64 * 1_000_000 / per_sec)).await;
                    }
                    let (k, n) = (i % keys, i / keys);
                    let m = format!("k{k}:{n}");
                    log.lock().expect("lock").push(m.clone());
                    client
                        .publish(format!("test/in/k{k}"), QoS::AtLeastOnce, false, m.into_bytes())
                        .await
                        .expect("publish");
                    i += 1;
                }
                client
            });
            // PUBACKs come in publish order (MQTT 3.1.1, 4.6).
            let mut acked = BTreeSet::new();
            loop {
                let total = sent.lock().expect("lock").len();
                if sender.is_finished() && acked.len() >= total {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        let m = sent.lock().expect("lock")[acked.len()].clone();
                        acked.insert(m);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let client = sender.await.expect("sender");
            let _ = client.disconnect().await;
            let total = sent.lock().expect("lock").len();
            (acked, total)
        })
    })
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    let m = Mosquitto::start();
    let provider = Provider::new();
    let dir = tempfile::tempdir().expect("tempdir");
    copy_package(&test_package("testbed"), &dir.path().join("services/testbed"));
    let mut agent = AgentProc::setup(dir.path(), m.port, provider.trust.path());
    agent.wait_ready(Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let (got, collector_thread) = collector(m.port, "test/out/#", stop.clone());
    const KEYS: usize = 4;
    const KILLS: usize = 16;
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let pubs = publisher(m.port, KEYS, 1200, stop_publishing.clone());
    let mut rng = Lcg(0x5eed);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(100 + rng.next(250)));
        agent.kill();
        std::thread::sleep(Duration::from_millis(rng.next(100)));
        agent.restart();
        agent.wait_ready(Duration::from_secs(30));
    }
    stop_publishing.store(true, Ordering::Relaxed);
    let (acked, sent) = pubs.join().expect("publisher");
    // Wait for the agent to work through what the broker kept for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = got.lock().expect("lock").iter().cloned().collect();
        if acked.is_subset(&seen) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    collector_thread.join().expect("collector");
    let received = got.lock().expect("lock").clone();
    let seen: BTreeSet<&String> = received.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|m| !seen.contains(m)).collect();
    let duplicates = received.len() - seen.len();
    eprintln!(
        "SIGKILL x{KILLS}: {sent} published, {} acknowledged to the publisher, {} lost, {duplicates} duplicates ({:.1}%)",
        acked.len(),
        lost.len(),
        100.0 * duplicates as f64 / received.len().max(1) as f64
    );
    assert!(acked.len() * 10 >= sent * 9, "the publisher got most of its messages through: {} of {sent}", acked.len());
    assert!(lost.is_empty(), "{} acknowledged messages lost, first {:?}", lost.len(), &lost[..lost.len().min(10)]);
    // Per-key order of first deliveries holds across the crashes.
    let mut per_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut first = BTreeSet::new();
    for m in &received {
        if first.insert(m) {
            let (k, n) = m.split_once(':').expect("k:n");
            per_key.entry(k).or_default().push(n.parse().expect("n"));
        }
    }
    for (k, seq) in per_key {
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "key {k} out of order after crashes");
    }
}

#[test]
fn sigkill_during_install_upgrade_and_rollback_converges_to_the_desired_state() {
    let m = Mosquitto::start();
    let provider = Provider::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = AgentProc::setup(dir.path(), m.port, provider.trust.path());
    agent.wait_ready(Duration::from_secs(60));
    let v1 = provider.testbed("1.0.0", None);
    let v2 = provider.testbed("2.0.0", None);
    let token = || client::read_token(&dir.path().join("state/api.token")).expect("token");
    let mut rng = Lcg(0xc0ffee);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    // How long one uninterrupted change takes here, once the component is
    // compiled and cached (the first install compiles it).
    let deploy_and_remove = || {
        let t0 = Instant::now();
        client_runtime().block_on(async {
            let mut c = client::connect(&api_of(&agent), &token()).await.expect("connect");
            client::upload(&mut c, Upload::Deploy, v1.clone(), "crash", |_, _| {}).await.expect("deploy");
            c.remove(pb::ServiceRef { name: "testbed".into() }).await.expect("remove");
        });
        t0.elapsed()
    };
    let first = deploy_and_remove();
    // The fastest of three: one slow sample (the machine busy elsewhere)
    // would stretch the sweep until nearly every kill lands after the change.
    let cached = (0..3).map(|_| deploy_and_remove()).min().unwrap_or_default();
    let span_ms = (cached.as_millis() as u64 * 2).max(20);
    eprintln!(
        "an uninterrupted deploy + remove takes {first:?} compiling, {cached:?} cached; kills swept over {span_ms} ms"
    );
    for round in 0..50u64 {
        let api = format!("http://127.0.0.1:{}", agent.api);
        // What the agent's desired state says now (the truth before the change).
        let before = client_runtime().block_on(async {
            let mut c = client::connect(&api, &token()).await.expect("connect");
            c.list_services(pb::ListServicesRequest {}).await.expect("list").into_inner()
        });
        let installed = before.services.iter().find(|s| !s.removed).map(|s| s.version.clone());
        let (action, bytes) = match installed.as_deref() {
            None => ("deploy", Some(v1.clone())),
            Some("1.0.0") if before.services[0].previous_version.is_none() => ("upgrade", Some(v2.clone())),
            Some("1.0.0") => (["upgrade", "rollback"][rng.next(2) as usize], Some(v2.clone())),
            _ => ("rollback", None),
        };
        let t = std::thread::spawn({
            let (api, token) = (api.clone(), token());
            move || {
                client_runtime().block_on(async move {
                    let Ok(mut c) = client::connect(&api, &token).await else { return };
                    let _ = match (action, bytes) {
                        ("deploy", Some(b)) => {
                            client::upload(&mut c, Upload::Deploy, b, "crash", |_, _| {}).await.map(|_| ())
                        }
                        ("upgrade", Some(b)) => {
                            client::upload(&mut c, Upload::Upgrade, b, "crash", |_, _| {}).await.map(|_| ())
                        }
                        _ => c
                            .rollback(pb::ServiceRef { name: "testbed".into() })
                            .await
                            .map(|_| ())
                            .map_err(client::ClientError::from),
                    };
                })
            }
        });
        // Swept over a span longer than a whole change takes (with a little
        // jitter), so kills land before, during and after it.
        std::thread::sleep(Duration::from_millis(span_ms * round / 50 + rng.next(3)));
        agent.kill();
        let _ = t.join();
        agent.restart();
        let status = agent.wait_ready(Duration::from_secs(30));
        // The store opened (the agent started) and what runs is what the
        // desired state names: either the old or the new, never a mix.
        let after = client_runtime().block_on(async {
            let mut c = client::connect(&api_of(&agent), &token()).await.expect("connect");
            c.list_services(pb::ListServicesRequest {}).await.expect("list").into_inner()
        });
        let desired = after.services.iter().find(|s| !s.removed).map(|s| s.version.clone());
        let running = status["services"]
            .as_array()
            .and_then(|a| a.first())
            .map(|s| s["version"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            running,
            desired,
            "round {round} ({action}): running {running:?} but desired {desired:?}\n{}",
            agent.log()
        );
        assert_eq!(status["rejected"], serde_json::json!([]), "round {round}: {status:#}");
        let changed = desired != installed;
        if std::env::var_os("CRASH_VERBOSE").is_some() {
            eprintln!("round {round}: {action} from {installed:?} -> desired {desired:?}");
        }
        *outcomes.entry(if changed { "applied" } else { "not applied" }).or_default() += 1;
    }
    eprintln!("50 SIGKILLs during lifecycle changes: {outcomes:?}");
    assert!(
        outcomes.get("applied").copied().unwrap_or(0) >= 5,
        "kills must not always land before the change: {outcomes:?}"
    );
    assert!(
        outcomes.get("not applied").copied().unwrap_or(0) >= 5,
        "kills must sometimes interrupt a change: {outcomes:?}"
    );
}

fn api_of(a: &AgentProc) -> String {
    format!("http://127.0.0.1:{}", a.api)
}

fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in ["service.toml", "service.wasm"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy package");
    }
}
