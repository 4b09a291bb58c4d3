//! Services changed on a running agent through the management API: signed
//! packages only, deploy / upgrade / rollback / scale / config / remove, and
//! an upgrade and rollback under load that loses no message and keeps
//! per-key order, on the embedded broker and on Mosquitto.

use outpost::client::{self, Upload};
use outpost_proto::agent::v1 as pb;
use outpost_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_tests::TrustedProvider as Provider;

fn start(dir: &AgentDir, provider: &Provider, external: Option<&str>) -> TestAgent {
    // Top-level keys go before the tables of the test config.
    let extra = "[lifecycle]\nprobation_s = 30\nprobation_max_faults = 3\n";
    TestAgent::start_with(dir, external, &provider.config_line(), extra)
}

#[test]
fn packages_must_be_signed_by_a_trusted_provider() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider, None);
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        // Unsigned.
        let dir_pkg = test_package("testbed");
        let unsigned = outpost_package::pack(
            &std::fs::read(dir_pkg.join("service.toml")).unwrap(),
            &std::fs::read(dir_pkg.join("service.wasm")).unwrap(),
            None,
        )
        .unwrap();
        let err = client::upload(&mut c, Upload::Deploy, unsigned, "t", |_, _| {}).await.unwrap_err().to_string();
        assert!(err.contains("not signed") || err.contains("unsigned"), "{err}");
        // Tampered: one byte of the component flipped after signing.
        let mut tampered = provider.testbed("0.1.0", None);
        let at = tampered.len() / 2;
        tampered[at] ^= 0x40;
        let err = client::upload(&mut c, Upload::Deploy, tampered, "t", |_, _| {}).await.unwrap_err().to_string();
        assert!(err.contains("tampered") || err.contains("malformed") || err.contains("Malformed"), "{err}");
        // Signed by a key the agent does not trust.
        let stranger = Provider::new();
        let err = client::upload(&mut c, Upload::Deploy, stranger.testbed("0.1.0", None), "t", |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the trust store"), "{err}");
        // Garbage and empty uploads.
        let err = client::upload(&mut c, Upload::Deploy, b"not a package".to_vec(), "t", |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty());
        // Nothing was installed by any of these.
        let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
        assert!(list.services.is_empty(), "{list:?}");
        // A wrong token is refused.
        let mut wrong =
            client::connect(&format!("http://127.0.0.1:{}", agent.api_port), "0123456789abcdef0123").await.unwrap();
        let err = wrong.get_status(pb::GetStatusRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // The signed one goes in.
        let ok = client::upload(&mut c, Upload::Deploy, provider.testbed("0.1.0", None), "tech", |_, _| {})
            .await
            .expect("signed package deploys");
        assert_eq!((ok.service.as_str(), ok.version.as_str()), ("testbed", "0.1.0"));
    });
    assert_eq!(agent.status().expect("status")["services"][0]["name"], "testbed");
}

#[test]
fn deploy_scale_config_rollback_and_remove_on_a_running_agent() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider, None);
    let sub = MqttCollector::start(agent.mqtt_port, "test/out/#");
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("0.1.0", None), "tech", |_, _| {})
            .await
            .expect("deploy");
        // A second deploy of the same name is a conflict, not a silent replace.
        let err = client::upload(&mut c, Upload::Deploy, provider.testbed("0.1.0", None), "tech", |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already installed"), "{err}");
        publish_all(agent.mqtt_port, &[("test/in/a", "one".to_string())]).await;
        sub.wait_for(1, Duration::from_secs(10));

        let scaled = c.scale(pb::ScaleRequest { name: "testbed".into(), instances: 3 }).await;
        let err = scaled.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "testbed has no shard_by: {err:?}");

        let applied = c
            .set_config(pb::SetConfigRequest { name: "testbed".into(), config_toml: "out = \"test/out/cfg\"".into() })
            .await
            .expect("config");
        assert_eq!(applied.into_inner().message, "config applied");
        let refused = c
            .set_config(pb::SetConfigRequest { name: "testbed".into(), config_toml: "nonsense_key = 1".into() })
            .await
            .unwrap_err();
        assert!(refused.message().contains("unknown field"), "the service's own init refuses it: {refused:?}");
        publish_all(agent.mqtt_port, &[("test/in/b", "two".to_string())]).await;
        sub.wait_for(2, Duration::from_secs(10));
        assert!(sub.topics().contains(&"test/out/cfg/b".to_string()), "{:?}", sub.topics());

        client::upload(&mut c, Upload::Upgrade, provider.testbed("0.2.0", None), "tech", |_, _| {})
            .await
            .expect("upgrade");
        let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
        assert_eq!(list.services[0].version, "0.2.0");
        assert_eq!(list.services[0].previous_version.as_deref(), Some("0.1.0"));
        let back = c.rollback(pb::ServiceRef { name: "testbed".into() }).await.expect("rollback").into_inner();
        assert_eq!(back.version, "0.1.0");
        let err = c.rollback(pb::ServiceRef { name: "nope".into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        let removed = c.remove(pb::ServiceRef { name: "testbed".into() }).await.expect("remove").into_inner();
        assert!(removed.message.starts_with("removed"), "{removed:?}");
    });
    let status = agent.status().expect("status");
    assert_eq!(status["services"], serde_json::json!([]), "{status:#}");
    // The removal holds across a restart (desired state is persisted).
    agent.stop().expect("stop");
    let again = start(&dir, &provider, None);
    assert_eq!(again.status().expect("status")["services"], serde_json::json!([]));
}

/// The central promise: upgrade v1 -> v2 and roll back while numbered QoS 1
/// messages flow over several keys; an independent subscriber sees every
/// message, duplicates only as QoS 1 allows, and each key in order.
fn zero_loss_upgrade(external: Option<&Mosquitto>) {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let url = external.map(|m| m.url());
    let agent = start(&dir, &provider, url.as_deref());
    let port = external.map_or(agent.mqtt_port, |m| m.port);
    let sub = MqttCollector::start(port, "test/out/#");
    let control = client_runtime();
    control.block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "t", |_, _| {}).await.expect("deploy");
    });
    const KEYS: usize = 4;
    const PER_KEY: usize = 1500;
    let msgs: Vec<(String, String)> =
        (0..PER_KEY).flat_map(|n| (0..KEYS).map(move |k| (format!("test/in/k{k}"), format!("k{k}:{n}")))).collect();
    let total = msgs.len();
    let publisher = std::thread::spawn(move || {
        // A steady 1,500 messages/s for 4 s, so the upgrade and the
        // rollback land in the middle of the stream.
        client_runtime().block_on(async move { publish_paced(port, &msgs, 1500).await });
    });
    control.block_on(async {
        let mut c = agent.api().await;
        sub.wait_for(total / 4, Duration::from_secs(30));
        // v2 writes under test/out/v2/, so the subscriber sees which version handled what.
        let up =
            client::upload(&mut c, Upload::Upgrade, provider.testbed("2.0.0", Some("test/out/v2")), "t", |_, _| {})
                .await
                .expect("upgrade under load");
        assert_eq!(up.version, "2.0.0");
        sub.wait_for(total * 2 / 3, Duration::from_secs(30));
        let back = c.rollback(pb::ServiceRef { name: "testbed".into() }).await.expect("rollback").into_inner();
        assert_eq!(back.version, "1.0.0");
    });
    publisher.join().expect("publisher");
    let got = sub.wait_for(total, Duration::from_secs(60));
    let by_v2 = got.iter().filter(|(t, _)| t.starts_with("test/out/v2/")).count();
    assert!(by_v2 > 0 && by_v2 < got.len(), "both versions served part of the stream: {by_v2} of {}", got.len());
    let last = got.last().map(|(t, _)| t.clone()).unwrap_or_default();
    assert!(!last.starts_with("test/out/v2/"), "after the rollback v1 serves again: {last}");
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (_, p) in &got {
        let (k, n) = p.split_once(':').expect("k:n payload");
        per_key.entry(k.to_owned()).or_default().push(n.parse().expect("number"));
    }
    let mut duplicates = 0;
    for k in 0..KEYS {
        let seq = per_key.get(&format!("k{k}")).cloned().unwrap_or_default();
        let mut seen = vec![false; PER_KEY];
        let mut firsts = Vec::new();
        for n in seq {
            if seen[n] {
                duplicates += 1;
            } else {
                seen[n] = true;
                firsts.push(n);
            }
        }
        let missing: Vec<usize> = (0..PER_KEY).filter(|n| !seen[*n]).collect();
        assert!(
            missing.is_empty(),
            "key k{k} lost {} messages, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "key k{k} out of order");
    }
    eprintln!(
        "zero-loss upgrade ({}): {total} messages, 0 lost, {duplicates} duplicates, {by_v2} handled by v2",
        if external.is_some() { "mosquitto" } else { "embedded" }
    );
    // QoS 1 allows a redelivery of what was in flight on a reconnect; the
    // upgrade itself reconnects nothing, so duplicates stay rare.
    assert!(duplicates <= total / 100, "{duplicates} duplicates");
    let status = agent.status().expect("status");
    assert_eq!(status["services"][0]["version"], "1.0.0");
}

#[test]
fn zero_loss_upgrade_and_rollback_on_the_embedded_broker() {
    zero_loss_upgrade(None);
}

#[test]
fn zero_loss_upgrade_and_rollback_on_mosquitto() {
    let m = Mosquitto::start();
    zero_loss_upgrade(Some(&m));
}

#[test]
fn a_crash_looping_upgrade_rolls_back_by_itself() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider, None);
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "t", |_, _| {}).await.expect("deploy");
        client::upload(&mut c, Upload::Upgrade, provider.testbed("2.0.0", None), "t", |_, _| {})
            .await
            .expect("upgrade");
        // Three traps inside probation.
        for _ in 0..3 {
            publish_all(agent.mqtt_port, &[("test/in/x", "trap".to_string())]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let start = Instant::now();
    while agent.status().is_some_and(|s| s["services"][0]["version"] != "1.0.0")
        && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.status().expect("status")["services"][0]["version"], "1.0.0", "rolled back on the gateway");
    // Recorded in the desired state: a restart starts 1.0.0, not the failed 2.0.0.
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
        assert_eq!(list.services[0].version, "1.0.0");
        assert_eq!(list.services[0].previous_version.as_deref(), Some("2.0.0"));
    });
}

/// The testbed declares `rate` a health KPI (20 % margin): 2.0.0 reports
/// half of what 1.0.0 did, and when its probation window ends the agent
/// rolls it back by itself and says why on its event stream.
#[test]
fn an_upgrade_with_a_worse_health_kpi_rolls_back_when_probation_ends() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let extra = "[lifecycle]\nprobation_s = 2\n";
    let agent = TestAgent::start_with(&dir, None, &provider.config_line(), extra);
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "t", |_, _| {}).await.expect("deploy");
        publish_all(agent.mqtt_port, &[("test/in/x", "kpi:10".to_string())]).await;
        let mut events =
            c.stream_events(pb::StreamEventsRequest { service: String::new() }).await.expect("events").into_inner();
        client::upload(&mut c, Upload::Upgrade, provider.testbed("2.0.0", None), "t", |_, _| {})
            .await
            .expect("upgrade");
        publish_all(agent.mqtt_port, &[("test/in/x", "kpi:5".to_string())]).await;
        let rolled_back = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = events.message().await.expect("event stream") {
                let v: serde_json::Value = serde_json::from_str(&e.json).expect("event JSON");
                if v["event"] == "rolled_back" {
                    return v;
                }
            }
            panic!("event stream ended");
        })
        .await
        .expect("a rolled_back event within 10 s");
        let reason = rolled_back["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("health KPI rate is 5 against 10 for 1.0.0"), "{rolled_back}");
        assert_eq!((rolled_back["from"].as_str(), rolled_back["to"].as_str()), (Some("2.0.0"), Some("1.0.0")));
        // The control plane records the rollback in the desired state when
        // the dispatcher's notice reaches it, just after the event is out.
        let recorded = Instant::now();
        let version = loop {
            let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
            let version = list.services[0].version.clone();
            if version == "1.0.0" || recorded.elapsed() > Duration::from_secs(2) {
                break version;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(version, "1.0.0", "rolled back, and so recorded in the desired state within 2 s");
    });
}

/// Publishes every (topic, payload) with QoS 1 and waits for all PUBACKs.
async fn publish_all(port: u16, msgs: &[(impl AsRef<str>, String)]) {
    publish_paced(port, msgs, 0).await
}

/// Like `publish_all`, at about `per_sec` messages a second (0: flat out).
async fn publish_paced(port: u16, msgs: &[(impl AsRef<str>, String)], per_sec: u64) {
    let mut opts = MqttOptions::new(format!("pub-{}-{}", std::process::id(), rand_suffix()), "127.0.0.1", port);
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let n = msgs.len();
    let owned: Vec<(String, String)> = msgs.iter().map(|(t, p)| (t.as_ref().to_owned(), p.clone())).collect();
    let sender = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        for (i, (t, p)) in owned.into_iter().enumerate() {
            if per_sec > 0 && i % 50 == 0 {
                tokio::time::sleep_until(started + Duration::from_micros(i as u64 * 1_000_000 / per_sec)).await;
            }
            client.publish(t, QoS::AtLeastOnce, false, p.into_bytes()).await.expect("publish");
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < n {
        assert!(Instant::now() < deadline, "publisher: {acked}/{n} acknowledged");
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher connection: {e}"),
            Err(_) => panic!("publisher stalled at {acked}/{n}"),
        }
    }
    let client = sender.await.expect("sender");
    let _ = client.disconnect().await;
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A QoS 1 subscriber (rumqttc) collecting (topic, payload) in the background.
struct MqttCollector {
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl MqttCollector {
    fn start(port: u16, filter: &str) -> MqttCollector {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        let filter = filter.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            client_runtime().block_on(async move {
                let mut opts = MqttOptions::new(format!("sub-{}", rand_suffix()), "127.0.0.1", port);
                opts.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut eventloop) = AsyncClient::new(opts, 100);
                client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => sink
                            .lock()
                            .expect("lock")
                            .push((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned())),
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscriber got no SUBACK");
        MqttCollector { got, _thread: thread }
    }

    fn wait_for(&self, n: usize, limit: Duration) -> Vec<(String, String)> {
        let start = Instant::now();
        loop {
            let got = self.got.lock().expect("lock").clone();
            if got.len() >= n || start.elapsed() > limit {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn topics(&self) -> Vec<String> {
        self.got.lock().expect("lock").iter().map(|(t, _)| t.clone()).collect()
    }
}

#[test]
fn events_logs_and_kpis_are_served_live() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider, None);
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        let mut events =
            c.stream_events(pb::StreamEventsRequest { service: String::new() }).await.expect("events").into_inner();
        let mut logs =
            c.stream_logs(pb::StreamLogsRequest { service: "testbed".into() }).await.expect("logs").into_inner();
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "alice", |_, _| {})
            .await
            .expect("deploy");
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event")
            .expect("stream")
            .expect("item");
        assert!(
            e.json.contains("\"lifecycle\"") && e.json.contains("\"install\"") && e.json.contains("alice"),
            "{e:?}"
        );
        // A trap: the fault event and a warning line about the service. The
        // subscription of a service deployed a moment ago may still be on its
        // way to the broker, so the trap is sent until one arrives.
        let mut fault = None;
        for _ in 0..20 {
            publish_all(agent.mqtt_port, &[("test/in/x", "trap".to_string())]).await;
            if let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), events.message()).await {
                if e.json.contains("instance_fault") {
                    fault = Some(e);
                    break;
                }
            }
        }
        let e = fault.expect("an instance_fault event");
        assert!(e.json.contains("instance_fault") && e.json.contains("testbed"), "{e:?}");
        let l = tokio::time::timeout(Duration::from_secs(10), logs.message())
            .await
            .expect("a log line")
            .expect("stream")
            .expect("item");
        assert_eq!(l.service, "testbed", "{l:?}");
        let kpis = c.get_kpis(pb::GetKpisRequest { service: "testbed".into() }).await.expect("kpis").into_inner();
        assert!(kpis.kpis.iter().all(|k| k.service == "testbed"), "{kpis:?}");
    });
}

/// Hostile API input: random bytes as packages, truncated and oversized
/// uploads, odd names, two upgrades at once. Each gets a clear status, the
/// agent keeps running, and what was installed stays as it was.
#[test]
fn bad_api_input_is_refused_and_changes_nothing() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider, None);
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "t", |_, _| {}).await.expect("deploy");
        let good = provider.testbed("2.0.0", None);
        // Random bytes, and random truncations and bit flips of a good package.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below.max(1) as u64) as usize
        };
        for case in 0..40 {
            let bytes = match case % 3 {
                0 => (0..1 + next(4096)).map(|_| next(256) as u8).collect::<Vec<u8>>(),
                1 => good[..1 + next(good.len() - 1)].to_vec(),
                _ => {
                    let mut b = good.clone();
                    let at = next(b.len());
                    b[at] ^= 1 << next(8);
                    b
                }
            };
            let err = client::upload(&mut c, Upload::Upgrade, bytes, "fuzz", |_, _| {}).await;
            assert!(err.is_err(), "case {case}: a damaged package was accepted");
        }
        // An upload that announces more than the limit is refused before it is read.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::PackageChunk {
            data: vec![0; 16],
            total_size: 1 << 40,
            canary_percent: 0,
            approved_by: String::new(),
        })
        .await
        .unwrap();
        drop(tx);
        let err = c.deploy(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("limit"), "{err:?}");
        // Odd names.
        for name in ["", "nope", "../../etc/passwd", "x\u{0}y", &"a".repeat(10_000)] {
            let err = c.rollback(pb::ServiceRef { name: name.to_owned() }).await.unwrap_err();
            assert!(matches!(err.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument), "{name:?}: {err:?}");
            let err = c.scale(pb::ScaleRequest { name: name.to_owned(), instances: 2 }).await.unwrap_err();
            assert!(matches!(err.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument), "{name:?}: {err:?}");
        }
        let err = c
            .set_config(pb::SetConfigRequest { name: "testbed".into(), config_toml: "= broken".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("not a TOML table"), "{err:?}");
        // A canary share out of range.
        let err =
            client::upload(&mut c, Upload::Canary(0), good.clone(), "t", |_, _| {}).await.unwrap_err().to_string();
        assert!(err.contains("1 to 99"), "{err}");
        // Two upgrades at once: one applies, the other is told to retry, never both half-way.
        let mut c2 = agent.api().await;
        let v3 = provider.testbed("3.0.0", None);
        let (a, b) = tokio::join!(
            client::upload(&mut c, Upload::Upgrade, good.clone(), "t", |_, _| {}),
            client::upload(&mut c2, Upload::Upgrade, v3, "t", |_, _| {})
        );
        let oks = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
        assert!(oks >= 1, "{a:?} {b:?}");
        for r in [&a, &b] {
            if let Err(e) = r {
                assert!(e.to_string().contains("in progress"), "{e}");
            }
        }
        let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
        let version = list.services[0].version.clone();
        assert!(version == "2.0.0" || version == "3.0.0", "{list:?}");
        let status = agent.status().expect("status");
        assert_eq!(status["services"][0]["version"], version.as_str(), "running = desired: {status:#}");
    });
    assert_eq!(agent.status().expect("status")["state"], "ready");
}

/// Canary and shadow through the API: a canary takes a share of the keys
/// and is promoted; a shadow sees a copy of the traffic and its differing
/// outputs are reported per topic without ever reaching the bus.
#[test]
fn canary_and_shadow_through_the_api() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider, None);
    let sub = MqttCollector::start(agent.mqtt_port, "test/out/#");
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        client::upload(&mut c, Upload::Deploy, provider.testbed("1.0.0", None), "t", |_, _| {}).await.expect("deploy");
        // Shadow 2.0.0 writes elsewhere: every paired output differs, none is published.
        client::upload(&mut c, Upload::Shadow, provider.testbed("2.0.0", Some("test/out/shadow")), "t", |_, _| {})
            .await
            .expect("shadow");
        let msgs: Vec<(String, String)> = (0..40).map(|i| (format!("test/in/k{i}"), format!("m{i}"))).collect();
        publish_all(agent.mqtt_port, &msgs).await;
        sub.wait_for(40, Duration::from_secs(10));
        let report = c
            .get_shadow_report(pb::ShadowReportRequest { name: "testbed".into(), stop: true })
            .await
            .expect("report")
            .into_inner();
        assert_eq!((report.live_version.as_str(), report.shadow_version.as_str()), ("1.0.0", "2.0.0"));
        let live: u64 = report.topics.iter().map(|t| t.live).sum();
        let shadow: u64 = report.topics.iter().map(|t| t.shadow).sum();
        assert_eq!((live, shadow), (40, 40), "{report:?}");
        assert!(sub.topics().iter().all(|t| !t.starts_with("test/out/shadow")), "shadow outputs stay aside");
        // Canary 3.0.0 on 30% of the keys, then promoted.
        client::upload(&mut c, Upload::Canary(30), provider.testbed("3.0.0", Some("test/out/canary")), "t", |_, _| {})
            .await
            .expect("canary");
        let msgs: Vec<(String, String)> = (0..200).map(|i| (format!("test/in/key{i}"), format!("c{i}"))).collect();
        publish_all(agent.mqtt_port, &msgs).await;
        let got = sub.wait_for(240, Duration::from_secs(10));
        let on_canary = got.iter().filter(|(t, _)| t.starts_with("test/out/canary/")).count();
        assert!((30..=90).contains(&on_canary), "about 30% of 200 keys on the canary: {on_canary}");
        let promoted = c.promote_canary(pb::ServiceRef { name: "testbed".into() }).await.expect("promote").into_inner();
        assert_eq!(promoted.version, "3.0.0");
        let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
        assert_eq!(list.services[0].version, "3.0.0");
        assert_eq!(list.services[0].previous_version.as_deref(), Some("1.0.0"));
    });
}
