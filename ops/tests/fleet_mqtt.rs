//! The operations center against a real Mosquitto this test starts:
//! broker ACL, rollouts over MQTT with simulated gateways (success, failure
//! and rollback, a restart mid-rollout), TLS, resumable artifact downloads.

// rumqttc::ConnectionError is large; it is what the event loop returns.
#![allow(clippy::result_large_err)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_fleet::topic;
use outpost_ops::model::{Gates, GatewayStatus, Phase, WaveSize};
use outpost_ops::sim::{always_ok, Outcome};
use outpost_ops::transport::{self, Inbound, LinkConfig};
use outpost_ops::{FleetStore, Rollout};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use support::fixture::{password, World, OPS_PASSWORD, OPS_USER, SVC};
use support::mosquitto::Mosquitto;

const V1: &str = "1.4.0";
const V2: &str = "1.5.0";
const V3: &str = "1.6.0";

fn waves_1_25_100() -> Vec<WaveSize> {
    vec![WaveSize::Count(1), WaveSize::Percent(25.0), WaveSize::Percent(100.0)]
}

fn opts(port: u16, user: &str, pass: &str) -> MqttOptions {
    let mut o = MqttOptions::new(format!("{user}-probe"), "127.0.0.1", port);
    o.set_credentials(user, pass).set_keep_alive(Duration::from_secs(10));
    o
}

/// Polls until a CONNACK or a connection error.
async fn connect(o: MqttOptions) -> (AsyncClient, rumqttc::EventLoop, Result<(), rumqttc::ConnectionError>) {
    let (c, mut el) = AsyncClient::new(o, 64);
    let r = loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await.expect("broker answers") {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break Ok(()),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    (c, el, r)
}

/// Collects publishes until one arrives on `until` (or 10 s pass).
async fn publishes_until(el: &mut rumqttc::EventLoop, until: &str) -> (Vec<String>, Vec<rumqttc::SubscribeReasonCode>) {
    let mut topics = Vec::new();
    let mut subacks = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), el.poll())
            .await
            .unwrap_or_else(|_| panic!("nothing arrived on {until} within 10 s; got {topics:?}"))
            .expect("connection stays up");
        match e {
            Event::Incoming(Packet::Publish(p)) => {
                let done = p.topic == until;
                topics.push(p.topic);
                if done {
                    return (topics, subacks);
                }
            }
            Event::Incoming(Packet::SubAck(a)) => subacks.extend(a.return_codes),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_acl_keeps_each_gateway_to_its_own_topics() {
    let users: Vec<(String, String)> = [OPS_USER, "gw-a", "gw-b"]
        .iter()
        .map(|u| (u.to_string(), if *u == OPS_USER { OPS_PASSWORD.to_string() } else { password(u) }))
        .collect();
    let broker = Mosquitto::start(&users, &outpost_fleet::acl::mosquitto_acl(OPS_USER), None);

    // The operations center retains desired state for both gateways.
    let (ops, mut ops_el, r) = connect(opts(broker.port, OPS_USER, OPS_PASSWORD)).await;
    r.expect("ops connects");
    ops.subscribe("outpost/fleet/+/reported", QoS::AtLeastOnce).await.unwrap();
    for gw in ["gw-b", "gw-a"] {
        ops.publish(topic::desired(gw), QoS::AtLeastOnce, true, format!("for {gw}")).await.unwrap();
    }
    // Drive ops until both PUBACKs are in (and the SUBACK).
    let mut acks = 0;
    while acks < 2 {
        if let Event::Incoming(Packet::PubAck(_)) = ops_el.poll().await.expect("ops link") {
            acks += 1;
        }
    }
    let ops_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ops_el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let done = p.topic == topic::reported("gw-a");
                    seen.push((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
                    if done {
                        return seen;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("ops link: {e}"),
                Err(_) => panic!("ops saw nothing from gw-a within 10 s: {seen:?}"),
            }
        }
    });

    // gw-a asks for gw-b's desired state first, then its own: retained
    // messages come back in that order, so when its own arrives, gw-b's
    // would already have.
    let (a, mut a_el, r) = connect(opts(broker.port, "gw-a", &password("gw-a"))).await;
    r.expect("gw-a connects");
    a.subscribe(topic::desired("gw-b"), QoS::AtLeastOnce).await.unwrap();
    a.subscribe(topic::desired("gw-a"), QoS::AtLeastOnce).await.unwrap();
    let (got, subacks) = publishes_until(&mut a_el, &topic::desired("gw-a")).await;
    assert_eq!(got, vec![topic::desired("gw-a")], "gw-a must not receive gw-b's desired state");
    // Mosquitto 2 refuses the subscription outright, or delivers nothing.
    assert!(subacks.len() <= 2, "{subacks:?}");

    // gw-a forges a report on gw-b's topic. Mosquitto denies it (2.0.11
    // also drops a 3.1.1 client after a denied QoS 1 publish); either way
    // the connection answers or ends.
    a.publish(topic::reported("gw-b"), QoS::AtLeastOnce, false, "{\"gateway\":\"gw-b\",\"forged\":true}")
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), a_el.poll()).await.expect("broker answers the forgery") {
            Ok(Event::Incoming(Packet::PubAck(_))) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(a_el);
    // Then gw-a reports on its own topic (a fresh connection): when that
    // reaches ops, the forged one would have reached it first.
    let (a2, mut a2_el, r) = connect(opts(broker.port, "gw-a", &password("gw-a"))).await;
    r.expect("gw-a reconnects");
    a2.publish(topic::reported("gw-a"), QoS::AtLeastOnce, false, "from gw-a").await.unwrap();
    let a_driver = tokio::spawn(async move { while a2_el.poll().await.is_ok() {} });
    let seen = tokio::time::timeout(Duration::from_secs(20), ops_task)
        .await
        .expect("gw-a's own report reaches ops within 20 s")
        .expect("ops task");
    assert_eq!(seen, vec![(topic::reported("gw-a"), "from gw-a".to_string())], "the forged report reached ops");
    a_driver.abort();

    // A wrong password is refused at CONNECT.
    let (_, _, r) = connect(opts(broker.port, "gw-a", "not-the-password")).await;
    match r {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert!(
                matches!(
                    code,
                    rumqttc::ConnectReturnCode::BadUserNamePassword | rumqttc::ConnectReturnCode::NotAuthorized
                ),
                "{code:?}"
            );
        }
        other => panic!("a wrong password must be refused at CONNECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_mqtt_reaches_every_gateway_then_a_failing_one_rolls_back_in_wave_2() {
    let mut w = World::new(20, &[V1, V2, V3], false);
    w.start_center();
    let http = w.start_http().await;
    // Which gateways fail is decided after the plan assigns waves.
    let failing: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let f = failing.clone();
    let behaviour = Arc::new(move |gw: &str, _svc: &str, version: &str| {
        if version == V3 && f.lock().unwrap().contains(gw) {
            Outcome::ApplyError("signature check failed (injected)".into())
        } else {
            Outcome::Ok
        }
    });
    w.wait_subscribed().await;
    let fleet = w.sim(behaviour, true, Duration::from_millis(200));
    w.wait_all_seen(Duration::from_secs(20)).await;

    // 1. To V2 in waves [1, 25%, 100%].
    let plan = w.plan("to-v2", V2, waves_1_25_100(), Gates::default());
    w.center().start(plan, "tester").await.expect("plan accepted");
    let done = w.wait_rollout("to-v2", Duration::from_secs(60), |p| !p.is_active()).await;
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.phase);
    assert_eq!(done.waves.iter().map(|w| w.targets.len()).collect::<Vec<_>>(), vec![1, 4, 15]);
    let installed = fleet.stats.installed();
    assert_eq!(installed.len(), 20);
    assert!(installed.values().all(|s| s[SVC] == V2), "{installed:?}");
    // Every gateway downloaded the artifact (two ranged halves, sha256 checked).
    assert_eq!(fleet.stats.get(&fleet.stats.downloads), 20);
    assert_eq!(fleet.stats.get(&fleet.stats.desired_refused), 0);
    let desired = w.store().desired_states().unwrap();
    assert_eq!(desired.len(), 20);
    assert!(desired.iter().all(|d| d.revision == 1 && d.services[SVC].as_ref().unwrap().version == V2));
    assert!(w.store().gateways().unwrap().iter().all(|g| g.services[SVC] == V2));
    let c = w.center().counters.snapshot();
    assert_eq!((c.bad_reports, c.refused_reports), (0, 0), "{c:?}");

    // 2. To V3, with one gateway of wave 2 failing to apply.
    let plan = w.plan("to-v3", V3, waves_1_25_100(), Gates::default());
    let assigned = Rollout::start(plan.clone(), &w.store().gateways().unwrap(), 0).unwrap();
    let wave2 = assigned.state.waves[1].targets.clone();
    let wave3: BTreeSet<String> = assigned.state.waves[2].targets.iter().cloned().collect();
    failing.lock().unwrap().insert(wave2[2].clone());
    w.center().start(plan, "tester").await.expect("plan accepted");
    let done = w.wait_rollout("to-v3", Duration::from_secs(60), |p| matches!(p, Phase::RolledBack(_))).await;
    let Phase::RolledBack(why) = &done.phase else { unreachable!() };
    assert!(why.contains("wave 2 failed") && why.contains(&wave2[2]) && why.contains("injected"), "{why}");
    assert!(done.waves[2].started_ms.is_none(), "wave 3 never started");
    for (id, g) in &done.gateways {
        if wave3.contains(id) {
            assert_eq!(g.status, GatewayStatus::Pending, "{id}");
        } else {
            assert_eq!(g.status, GatewayStatus::RolledBack, "{id}");
        }
    }
    assert_eq!(done.gateways[&wave2[2]].failure.as_deref(), Some("apply failed: signature check failed (injected)"));
    // Every gateway runs V2 again, as the gateways themselves say.
    let installed = fleet.stats.installed();
    assert!(installed.values().all(|s| s[SVC] == V2), "{installed:?}");
    // Wave 3 was never asked anything new: its desired revision is still 1.
    for d in w.store().desired_states().unwrap() {
        let want = if wave3.contains(&d.gateway) { 1 } else { 3 };
        assert_eq!(d.revision, want, "{}", d.gateway);
        assert_eq!(d.services[SVC].as_ref().unwrap().version, V2, "{}", d.gateway);
    }
    let _ = http;
    w.stop_center().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_operations_center_mid_rollout_carries_on() {
    let mut w = World::new(20, &[V1, V2], false);
    w.start_center();
    w.wait_subscribed().await;
    let fleet = w.sim(always_ok(), false, Duration::from_millis(200));
    w.wait_all_seen(Duration::from_secs(20)).await;
    // One second of bake per wave leaves room to stop between waves.
    let gates = Gates { bake_secs: 1, ..Gates::default() };
    w.center().start(w.plan("restart", V2, waves_1_25_100(), gates), "tester").await.unwrap();
    // Stop once wave 2 has been asked (its desired state is out).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = w.store().rollout("restart").unwrap().unwrap();
        if r.waves[1].started_ms.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "wave 2 never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.stop_center().await;
    // While it is down, wave 2's gateways apply and report; the broker keeps
    // the reports in the operations center's persistent session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.start_center();
    let done = w.wait_rollout("restart", Duration::from_secs(60), |p| !p.is_active()).await;
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.phase);
    assert!(fleet.stats.installed().values().all(|s| s[SVC] == V2));
    // Nobody was asked twice: one revision per gateway, one apply each.
    assert!(w.store().desired_states().unwrap().iter().all(|d| d.revision == 1));
    assert_eq!(fleet.stats.get(&fleet.stats.applied), 20);
    let audit: Vec<String> = w.store().audit().unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(audit.iter().filter(|a| *a == "wave_started").count(), 3, "{audit:?}");
    w.stop_center().await;
}

async fn first_link_event(cfg: &LinkConfig) -> Inbound {
    let (_c, mut rx, task) = transport::spawn(cfg, vec![topic::OPS_SUBSCRIPTIONS[0].to_string()], 16).expect("link");
    let e = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("link answers").expect("event");
    task.abort();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_ca_and_fails_without_it() {
    let w = World::new(1, &[V1], true);
    let mut cfg = LinkConfig::new(&w.broker.tls_url(), "ops-tls", OPS_USER, OPS_PASSWORD);
    cfg.tls_ca = w.tls.as_ref().map(|t| t.ca.clone());
    assert_eq!(first_link_event(&cfg).await, Inbound::Connected { session_present: false });
    // Another CA (same names, different key) does not vouch for the broker.
    let other = support::mosquitto::make_tls(&w.dir.path().join("other"), "other");
    cfg.tls_ca = Some(other.ca);
    cfg.client_id = "ops-tls-2".into();
    match first_link_event(&cfg).await {
        Inbound::Down(why) => assert!(why.to_lowercase().contains("tls") || why.contains("certificate"), "{why}"),
        other => panic!("connected through TLS without the broker's CA: {other:?}"),
    }
    // No CA configured at all for mqtts:// is refused before connecting.
    cfg.tls_ca = None;
    assert!(matches!(transport::spawn(&cfg, vec![], 1), Err(transport::TransportError::NoCa(_))));
    // Plain MQTT to the TLS port does not get a CONNACK either.
    let mut plain = LinkConfig::new(
        &format!("mqtt://127.0.0.1:{}", w.broker.tls_port.unwrap()),
        "ops-plain",
        OPS_USER,
        OPS_PASSWORD,
    );
    plain.keep_alive = Duration::from_secs(5);
    assert!(matches!(first_link_event(&plain).await, Inbound::Down(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_resume_with_range_and_match_their_digest() {
    let mut w = World::new(1, &[V1], false);
    w.start_center();
    let base = w.start_http().await;
    let pkg = w.packages[V1].clone();
    let url = format!("{base}{}", pkg.artifact_path());
    let t = Duration::from_secs(10);
    let get = |range: Option<String>| {
        let url = url.clone();
        async move {
            let h: Vec<(&str, &str)> = match &range {
                Some(r) => vec![("Range", r.as_str())],
                None => vec![],
            };
            outpost_ops::client::request("GET", &url, &h, b"", t).await.expect("GET")
        }
    };
    let full = get(None).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.headers["accept-ranges"], "bytes");
    assert_eq!(full.body.len() as u64, pkg.size);
    // A download cut after 1000 bytes, resumed from there.
    let first = get(Some("bytes=0-999".into())).await;
    assert_eq!(first.status, 206);
    assert_eq!(first.headers["content-range"], format!("bytes 0-999/{}", pkg.size));
    let rest = get(Some("bytes=1000-".into())).await;
    assert_eq!(rest.status, 206);
    let mut joined = first.body.clone();
    joined.extend_from_slice(&rest.body);
    assert_eq!(outpost_package::format::sha256_hex(&joined), pkg.digest);
    assert_eq!(joined, full.body);
    let past = get(Some(format!("bytes={}-", pkg.size))).await;
    assert_eq!(past.status, 416);
    let missing =
        outpost_ops::client::request("GET", &format!("{base}/artifacts/sha256/{}", "0".repeat(64)), &[], b"", t)
            .await
            .unwrap();
    assert_eq!(missing.status, 404);
    let traversal =
        outpost_ops::client::request("GET", &format!("{base}/artifacts/sha256/..%2Ffleet.redb"), &[], b"", t)
            .await
            .unwrap();
    assert_eq!(traversal.status, 404);
    // The simulated agent's downloader (two ranged halves) agrees.
    let bytes = outpost_ops::sim::download(&base, &pkg.artifact_path(), &pkg.digest, pkg.size).await.unwrap();
    assert_eq!(bytes, full.body);
    let wrong = outpost_ops::sim::download(&base, &pkg.artifact_path(), &"f".repeat(64), pkg.size).await;
    assert!(wrong.unwrap_err().contains("sha256"));
    w.stop_center().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_lost_in_a_crash_are_made_good_from_the_rollout_state() {
    let mut w = World::new(8, &[V1, V2], false);
    // An engine asks wave 1 and "crashes" before any desired state is
    // written or published: the actions exist only in the stored rollout.
    {
        let mut engine = outpost_ops::Engine::resume(w.store().clone(), outpost_ops::rollout::SystemClock).unwrap();
        let plan = w.plan("lost", V2, vec![WaveSize::Count(2), WaveSize::Percent(100.0)], Gates::default());
        engine.start(plan, "tester").unwrap();
        let lost = engine.tick().unwrap();
        assert_eq!(lost.iter().filter(|a| matches!(a, outpost_ops::Action::Apply { .. })).count(), 2);
    }
    assert!(w.store().desired_states().unwrap().is_empty());
    // The core rebuilds wave 1's desired state from the rollout and
    // publishes it; the rollout then runs to the end.
    w.start_center();
    w.wait_subscribed().await;
    let fleet = w.sim(always_ok(), false, Duration::from_millis(100));
    let done = w.wait_rollout("lost", Duration::from_secs(30), |p| !p.is_active()).await;
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.phase);
    assert!(fleet.stats.installed().values().all(|s| s[SVC] == V2));
    assert!(w.store().desired_states().unwrap().iter().all(|d| d.revision == 1));
    w.stop_center().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_impersonating_reports_are_counted_and_change_nothing() {
    let mut w = World::new(2, &[V1], false);
    w.start_center();
    let gw = w.gateways[0].id.clone();
    let other = w.gateways[1].id.clone();
    let mut o = opts(w.broker.port, &gw, &password(&gw));
    o.set_max_packet_size(2 << 20, 2 << 20);
    let (c, mut el, r) = connect(o).await;
    r.expect("gateway connects");
    let claim_other = serde_json::json!({
        "gateway": other, "site": "site-1", "seq": 1, "at_ms": 1,
        "services": [{ "service": SVC, "version": "6.6.6", "health": "healthy" }]
    });
    let unknown_version = serde_json::json!({
        "gateway": gw, "site": "site-0", "seq": 2, "at_ms": 2,
        "services": [{ "service": SVC, "version": V1, "health": "healthy", "kpis": { "latency_ms": 9.0 } }]
    });
    let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let counters = w.center().counters.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // A valid report until one arrives: the operations center is subscribed.
    while counters.snapshot().reports == 0 {
        c.publish(topic::reported(&gw), QoS::AtLeastOnce, false, unknown_version.to_string()).await.unwrap();
        assert!(std::time::Instant::now() < deadline, "the operations center never got a report");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = counters.snapshot();
    for payload in [b"{".to_vec(), vec![b'x'; 600 * 1024], claim_other.to_string().into_bytes()] {
        c.publish(topic::reported(&gw), QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    c.publish(topic::events(&gw), QoS::AtLeastOnce, false, "not json").await.unwrap();
    // Then a good one: once it is counted, everything before it was.
    c.publish(topic::reported(&gw), QoS::AtLeastOnce, false, unknown_version.to_string()).await.unwrap();
    loop {
        let s = counters.snapshot();
        if s.reports > before.reports {
            assert_eq!(s.reports, before.reports + 1, "{s:?}");
            assert_eq!(s.bad_reports - before.bad_reports, 3, "garbage, too large, impersonation: {s:?}");
            assert_eq!(s.bad_events - before.bad_events, 1, "{s:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counters never moved: {s:?}\n{}", w.broker.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The impersonation changed nothing for the other gateway.
    let o = w.store().gateway(&other).unwrap().unwrap();
    assert_eq!((o.services[SVC].as_str(), o.last_seen_ms), (V1, 0));
    driver.abort();
    w.stop_center().await;
}
