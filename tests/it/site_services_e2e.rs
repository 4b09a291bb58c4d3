//! The site's services end to end, through the real agent and a real
//! Mosquitto: `outpost-sim` replays the mine's haul cycles and refuels, and
//! a scene of moving vehicles as GNSS receivers would report it;
//! `mosquitto_sub` is the independent client reading what the services say.
//!
//! - weight loading: what comes out of the agent equals what the same
//!   service code says natively on the same records in the same order
//!   (its KPIs against an independent computation are tested in the
//!   plugin's own tests);
//! - traffic awareness composes with positioning over the bus: NMEA in,
//!   warnings out, with the analytic head-on answer.

use outpost_sdk::testing::Harness;
use outpost_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;
use weight_loading::WeightLoading;

const HAUL: &str = "mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv";
const FUEL: &str = "mine-haul-dispatch/SfdShiftFueltrucksAllUpdatedFin.csv";

/// Every published (topic, payload) of a sequence of bus messages, in
/// order, and the KPIs, run natively.
fn weight_loading_natively(messages: &[outpost_devtools::sim::Scheduled]) -> (Vec<(String, String)>, BTreeMap<String, f64>) {
    let config = default_config("weight-loading");
    let mut h = Harness::<WeightLoading>::new(&config).expect("init");
    for m in messages {
        h.send(&m.topic, m.payload.clone()).expect("handle");
    }
    let published = h.take_published().into_iter().map(|(t, p)| (t, String::from_utf8(p).expect("utf-8"))).collect();
    (published, h.host().kpis)
}

/// The manifest's `[config]` as JSON, exactly as the agent passes it.
fn default_config(name: &str) -> String {
    let manifest = outpost::manifest::Manifest::load(&package(name).join("service.toml")).expect("manifest");
    outpost::package::effective_config(&manifest.config, None)
}

#[test]
fn haul_cycles_and_refuels_through_the_agent_equal_the_native_run() {
    // The simulator's own schedule is the reference order: both sides get the same stream.
    let cycles = outpost_devtools::sim::haul::load_cycles("s1", &data(HAUL)).expect("haul csv");
    let fuel = outpost_devtools::sim::haul::load_fuel("s1", &data(FUEL)).expect("fuel csv");
    let mut tracks = vec![cycles, fuel];
    outpost_devtools::sim::align(&mut tracks);
    let mut stream: Vec<outpost_devtools::sim::Scheduled> = tracks.iter().flat_map(|t| t.messages.clone()).collect();
    stream.sort_by(|a, b| a.at.total_cmp(&b.at));
    assert!(stream.len() > 8_000, "{} records", stream.len());

    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&package("weight-loading"), "weight-loading");
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    let sub = Subscriber::start(mosquitto.port, &["svc/weight-loading/#"]);

    // Cycles and refuels are two tracks replayed side by side.
    let status = std::process::Command::new(binary("outpost-sim"))
        .args(["--broker", &mosquitto.url(), "--site", "s1", "--fast"])
        .arg("--haul")
        .arg(data(HAUL))
        .arg("--fuel")
        .arg(data(FUEL))
        .status()
        .expect("outpost-sim");
    assert!(status.success());

    // Within a track the broker keeps the sim's order; between the two
    // tracks it does not, so compare per truck, where order is defined.
    let (want, kpis) = weight_loading_natively(&stream);
    let cycles_wanted = want.iter().filter(|(t, _)| t.ends_with("/cycle")).count();
    let got = sub.wait_until(Duration::from_secs(120), |g| {
        g.iter().filter(|(t, _)| t.ends_with("/cycle")).count() >= cycles_wanted
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = if sub.received().len() > got.len() { sub.received() } else { got };

    let cycle_summaries = |v: &[(String, String)]| -> BTreeMap<String, Vec<String>> {
        let mut by_truck: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (t, p) in v.iter().filter(|(t, _)| t.ends_with("/cycle")) {
            by_truck.entry(t.clone()).or_default().push(p.clone());
        }
        by_truck
    };
    let (want_cycles, got_cycles) = (cycle_summaries(&want), cycle_summaries(&got));
    assert!(want_cycles.len() >= 50, "{} trucks", want_cycles.len());
    for (truck, want) in &want_cycles {
        let have = got_cycles.get(truck).cloned().unwrap_or_default();
        assert_eq!(have.len(), want.len(), "{truck}: cycle summaries through the agent vs native");
        assert_eq!(&have, want, "{truck}: the same summaries in the same order");
    }
    // The last per-truck shift report of each truck and shift agrees too (refuels included).
    let last_reports = |v: &[(String, String)]| -> BTreeMap<(String, String), serde_json::Value> {
        let mut last = BTreeMap::new();
        for (t, p) in v.iter().filter(|(t, _)| t.ends_with("/shift") && !t.contains("/site/")) {
            let report: serde_json::Value = serde_json::from_str(p).expect("report is JSON");
            let shift = report["shift"].as_str().unwrap_or_default().to_owned();
            last.insert((t.clone(), shift), report);
        }
        last
    };
    let (want_reports, got_reports) = (last_reports(&want), last_reports(&got));
    assert!(!want_reports.is_empty());
    assert_eq!(got_reports.keys().collect::<Vec<_>>(), want_reports.keys().collect::<Vec<_>>());
    for (key, want) in &want_reports {
        for field in ["cycles", "accepted_t", "refuels"] {
            if want.get(field).is_some() {
                assert_eq!(got_reports[key][field], want[field], "{key:?} {field}");
            }
        }
    }
    // KPIs reach Prometheus, site-wide and per subject, with the native values.
    assert!(kpis.len() > 100, "{} KPI series", kpis.len());
    let metrics = agent.metrics();
    for (key, want) in &kpis {
        let (name, subject) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let (name, subject) = (format!("name=\"{name}\""), format!("subject=\"{subject}\""));
        let got = metric_value(&metrics, "outpost_service_kpi", &["weight-loading", &name, &subject]);
        assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "KPI {key}: agent {got}, native {want}");
    }
    assert_eq!(agent.metric("outpost_traps_total", &["weight-loading"]), 0.0);
    agent.stop().expect("stop");
}

/// A scene in local metres: two haul trucks head-on at 8 m/s each from 201 m
/// apart (collision radius 2.5 + 2.5 m), and two light vehicles driving in
/// parallel 1 km away. 20 s at 10 Hz.
fn head_on_scene() -> String {
    let mut csv = String::from("track_id,object_type,timestep,position_x,position_y,velocity_x,velocity_y\n");
    for step in 0..=200 {
        let t = step as f64 * 0.1;
        csv += &format!("haul-1,vehicle,{step},{:.4},0,8,0\n", -100.5 + 8.0 * t);
        csv += &format!("haul-2,vehicle,{step},{:.4},0,-8,0\n", 100.5 - 8.0 * t);
        csv += &format!("lv-1,vehicle,{step},1000,{:.4},0,10\n", 10.0 * t);
        csv += &format!("lv-2,vehicle,{step},1030,{:.4},0,10\n", 10.0 * t);
        csv += &format!("tower,static,{step},0,0,0,0\n");
    }
    csv
}

#[test]
fn traffic_awareness_warns_of_a_head_on_course_from_positioning_fixes() {
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&package("positioning"), "positioning");
    dir.install(&package("traffic-awareness"), "traffic-awareness");
    let agent = TestAgent::start(
        &dir,
        Some(&mosquitto.url()),
        "[services.traffic-awareness.config]\nsite = \"s1\"\norigin = { lat = -23.44, lon = -70.25 }\n",
    );
    let sub = Subscriber::start(mosquitto.port, &["svc/traffic-awareness/#"]);
    let scene = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(scene.path(), head_on_scene()).expect("write scene");

    let status = std::process::Command::new(binary("outpost-sim"))
        .args(["--broker", &mosquitto.url(), "--site", "s1", "--speed", "10", "--origin=-23.44,-70.25"])
        .arg("--tracks")
        .arg(scene.path())
        .status()
        .expect("outpost-sim");
    assert!(status.success());

    let warnings = |g: &[(String, String)]| -> Vec<(String, serde_json::Value)> {
        g.iter()
            .filter(|(t, _)| t.ends_with("/warning"))
            .map(|(t, p)| (t.clone(), serde_json::from_str(p).expect("warning is JSON")))
            .collect()
    };
    let got = sub.wait_until(Duration::from_secs(30), |g| {
        warnings(g).iter().filter(|(_, w)| w["state"] == "clear").count() >= 2
            && g.iter().any(|(t, _)| t.ends_with("/picture"))
    });
    let warnings = warnings(&got);
    // One encounter, told to both sides: start, escalate to critical, clear.
    for (asset, other) in [("haul-1", "haul-2"), ("haul-2", "haul-1")] {
        let mine: Vec<&serde_json::Value> = warnings
            .iter()
            .filter(|(t, _)| *t == format!("svc/traffic-awareness/{asset}/warning"))
            .map(|(_, w)| w)
            .collect();
        let states: Vec<&str> = mine.iter().map(|w| w["state"].as_str().unwrap_or("?")).collect();
        assert_eq!(states, ["start", "escalate", "clear"], "{asset}: {mine:?}");
        assert!(mine.iter().all(|w| w["other"] == other));
        // Analytic answers: the warning starts at the first fix with the gap
        // predicted to reach 10 m within 10 s (separation <= 175 m: 173.8 m at
        // t = 1.7 s); critical at separation <= 72 m (71.4 m at t = 8.1 s);
        // head-on TTC = (d - 5 m) / 16 m/s.
        let (start, escalate) = (mine[0], mine[1]);
        let close = |w: &serde_json::Value, d: f64| {
            let distance = w["distance_m"].as_f64().expect("distance");
            let ttc = w["ttc_s"].as_f64().expect("ttc");
            assert!((distance - d).abs() < 0.05, "{asset}: distance {distance} vs {d}");
            assert!((ttc - (d - 5.0) / 16.0).abs() < 0.02, "{asset}: ttc {ttc} vs {}", (d - 5.0) / 16.0);
            assert!((w["closing_speed_mps"].as_f64().expect("closing") - 16.0).abs() < 0.02);
        };
        close(start, 173.8);
        assert_eq!(escalate["severity"], "critical");
        close(escalate, 71.4);
    }
    assert!(warnings.iter().all(|(t, _)| t.contains("/haul-")), "the distant light vehicles are not warned");
    let picture = got.iter().rev().find(|(t, _)| t == "svc/traffic-awareness/site/s1/picture").expect("a picture");
    let picture: serde_json::Value = serde_json::from_str(&picture.1).expect("picture JSON");
    assert_eq!(picture["counts"]["assets"], 4, "static objects carry no receiver: {picture}");
    assert_eq!(agent.metric("outpost_traps_total", &["traffic-awareness"]), 0.0);
    agent.stop().expect("stop");
}
