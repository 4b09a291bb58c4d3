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

/// The real component through `outpostctl run` (the gateway's host, no
/// broker) on every capture in the repository, scored per epoch against
/// gpsd exactly as the native test scores the same service code: the quality
/// bar holds end to end, and each capture's last epoch comes out when its
/// input ends (outpostctl ends the input as a live feed going quiet).
#[test]
fn outpostctl_run_meets_the_gpsd_bar_on_every_capture() {
    use positioning::score::{self, Table};
    let dir = data("gpsd-nmea-logs");
    let files = score::captures(&dir).expect("captures");
    assert!(files.len() >= 67, "only {} captures with .chk in {}", files.len(), dir.display());
    let (ctl, pkg) = (binary("outpostctl"), package("positioning"));
    let mut table = Table::default();
    let mut last_epoch_out = 0;
    for f in &files {
        let binary = score::is_binary(&std::fs::read(f).expect("capture"));
        let mut cmd = std::process::Command::new(&ctl);
        cmd.arg("run").arg(&pkg).arg("--replay").arg(f);
        if binary {
            cmd.args(["--topic", "site/e2e/rx/gnss/ubx", "--chunk", "64"]);
        } else {
            cmd.args(["--topic", "site/e2e/rx/gnss/nmea"]);
        }
        let out = cmd.output().expect("outpostctl run");
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        let fixes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["topic"].as_str().is_some_and(|t| t.starts_with("svc/positioning/")))
            .map(|v| v["payload"].clone())
            .collect();
        let chk = std::fs::read_to_string(score::chk_of(f)).expect("chk");
        // gpsd's last positioned epoch of the capture must be among ours.
        let last_time = chk
            .lines()
            .rev()
            .filter(|l| l.starts_with("{\"class\":\"TPV\"") && l.contains("\"lat\""))
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["time"].as_str().map(str::to_owned));
        if let Some(t) = last_time {
            let t = score::epoch_ms(&t);
            assert!(
                fixes.iter().any(|v| v["time"].as_str().and_then(score::epoch_ms) == t),
                "{}: the capture's last epoch did not come out",
                f.display()
            );
            last_epoch_out += 1;
        }
        let name = f.strip_prefix(&dir).unwrap_or(f).display().to_string();
        table.add(if binary { "UBX" } else { "NMEA" }, &name, score::score(&chk, &fixes));
    }
    println!("{}", table.render());
    assert!(last_epoch_out >= 60, "last epochs checked: {last_epoch_out}");
    let below = table.below_bar();
    assert!(below.is_empty(), "below the bar through outpostctl run:\n{}", below.join("\n"));
}
