//! Positioning end to end: `outpost-sim` replays real captures onto a
//! Mosquitto server, the agent's positioning component decodes them, and
//! `mosquitto_sub` reads the fixes. They must equal what the same service
//! code produces natively on the same files: nothing lost, reordered or
//! altered by the agent.

use outpost_sdk::testing::Harness;
use outpost_tests::*;
use positioning::Positioning;
use std::collections::BTreeMap;
use std::time::Duration;

fn native(topic: &str, file: &str, chunk: Option<usize>) -> Vec<serde_json::Value> {
    let mut h = Harness::<Positioning>::new("{}").expect("init");
    let data = std::fs::read(data(file)).expect("capture");
    match chunk {
        Some(n) => data.chunks(n).for_each(|c| h.send(topic, c.to_vec()).expect("handle")),
        None => data
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .for_each(|l| h.send(topic, l.to_vec()).expect("handle")),
    }
    h.service().flush_all().expect("flush");
    h.take_published().into_iter().map(|(_, p)| serde_json::from_slice(&p).expect("json")).collect()
}

#[test]
fn simulated_site_through_agent_equals_native_decode() {
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&package("positioning"), "positioning");
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    let sub = Subscriber::start(mosquitto.port, &["svc/positioning/+/fix"]);

    let nmea = "gpsd-nmea-logs/bu353s4.log";
    let ubx = "gpsd-nmea-logs/ubx-binary/ublox-neo-m8n.log";
    let mut expected: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    expected.insert("truck-1".into(), native("site/s1/truck-1/gnss/nmea", nmea, None));
    expected.insert("loader-2".into(), native("site/s1/loader-2/gnss/ubx", ubx, Some(256)));
    let total: usize = expected.values().map(Vec::len).sum();
    assert!(total > 40, "native decode found {total} fixes");

    let status = std::process::Command::new(binary("outpost-sim"))
        .args(["--broker", &mosquitto.url(), "--site", "s1", "--fast", "--chunk", "256"])
        .arg("--nmea")
        .arg(format!("truck-1={}", data(nmea).display()))
        .arg("--ubx")
        .arg(format!("loader-2={}", data(ubx).display()))
        .status()
        .expect("outpost-sim");
    assert!(status.success());

    // The last open cycle of each asset is published by tick after 1.5 s idle.
    let got = sub.wait_until(Duration::from_secs(30), |g| g.len() >= total);
    std::thread::sleep(Duration::from_millis(500));
    let got = if sub.received().len() > got.len() { sub.received() } else { got };
    let mut by_asset: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (topic, payload) in got {
        let asset = topic.split('/').nth(2).expect("asset").to_owned();
        by_asset.entry(asset).or_default().push(serde_json::from_str(&payload).expect("fix is JSON"));
    }
    for (asset, want) in &expected {
        let have = by_asset.get(asset).cloned().unwrap_or_default();
        assert_eq!(have.len(), want.len(), "{asset}: fixes through the agent vs native");
        assert_eq!(&have, want, "{asset}: same fixes, same order");
    }
    assert_eq!(agent.metric("outpost_traps_total", &["positioning"]), 0.0);
    assert!(agent.metric("outpost_service_events_total", &["positioning", "name=\"fixes\""]) >= total as f64);
    agent.stop().expect("stop");
}
