//! A network without AMR meters or tank, 30-min steps (LeakDB-like), through config only:
//! synthetic inlet flow with a daily and weekly pattern, a slow seasonal rise and noise; an
//! abrupt leak injected at a known time must be alarmed soon after with about its size, and
//! the same data without the leak must raise nothing.

use leak_detection::LeakDetection;
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use serde_json::Value;

const NET: &str = "site/t/hanoi";
const CONFIG: &str = r#"{"step_minutes":30,"min_steps_per_hour":2,"inlet_flows":["1"],"pump_flow":"","tank_level":"",
 "calibration":{"start":"2017-01-02 00:00","end":"2017-01-15 23:30"},
 "flow_range_m3h":[-50000,50000],"spike_flow_m3h":1e6,
 "cusum_drift_m3h":150,"cusum_threshold_m3h":2000,"min_leak_m3h":100,"min_growth_m3h":150,"locate_min_m3h":1e9}"#;

/// `2017-MM-DD HH:MM` of 30-min step `k` from 2017-01-02 00:00 (a Monday).
fn time(k: usize) -> String {
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut day = 1 + k / 48;
    let mut month = 0;
    while day >= month_days[month] {
        day -= month_days[month];
        month += 1;
    }
    format!("2017-{:02}-{:02} {:02}:{:02}", month + 1, day + 1, (k % 48) / 2, (k % 2) * 30)
}

/// Inlet flow (m³/h) at step `k`: daily cycle, weekend +10 %, +10 % over the 80 days, noise ±40.
fn flow(k: usize, seed: &mut u64) -> f64 {
    let hour = (k % 48) as f64 / 2.0;
    let weekend = if (k / 48) % 7 >= 5 { 1.1 } else { 1.0 };
    let season = 1.0 + 0.1 * k as f64 / (80.0 * 48.0);
    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let noise = ((*seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 80.0;
    5000.0 * (1.0 + 0.3 * (2.0 * std::f64::consts::PI * hour / 24.0).sin()) * weekend * season + noise
}

fn run(leak: Option<(usize, f64)>) -> Vec<Value> {
    let mut h = Harness::<LeakDetection>::with_acl(CONFIG, &["svc/leak-detection/+/alarm"]).expect("init");
    let mut seed = 7;
    let steps: Vec<Message> = (0..80 * 48)
        .map(|k| {
            let extra = leak.filter(|(s, _)| k >= *s).map_or(0.0, |l| l.1);
            let q = flow(k, &mut seed) + extra;
            let body =
                format!("{{\"time\":\"{}\",\"flow_m3h\":{{\"1\":{q:.3}}},\"pressure_m\":{{\"2\":50.0}}}}", time(k));
            Message::new(format!("{NET}/scada"), body.into_bytes())
        })
        .collect();
    for chunk in steps.chunks(48) {
        h.send_batch(chunk.to_vec()).expect("handle");
    }
    assert!(h.host().state.contains_key("calib/t/hanoi"), "calibrated from the inlet flow alone");
    h.take_published().iter().map(|(_, p)| serde_json::from_slice(p).expect("alarm JSON")).collect()
}

#[test]
fn leak_free_profile_raises_nothing() {
    let a = run(None);
    assert!(a.is_empty(), "alarms without a leak: {a:#?}");
}

#[test]
fn abrupt_leak_is_alarmed_with_its_size() {
    // Day 40 at 12:00 (2017-02-11 12:00), +600 m³/h until the end.
    let start = 40 * 48 + 24;
    assert_eq!(time(start), "2017-02-11 12:00");
    let a = run(Some((start, 600.0)));
    let starts: Vec<&Value> = a.iter().filter(|x| x["event"] == "start").collect();
    assert_eq!(starts.len(), 1, "{a:#?}");
    let s = starts[0];
    let t = s["time"].as_str().unwrap();
    assert!(("2017-02-11 12:00"..="2017-02-12 12:00").contains(&t), "alarmed at {t}");
    let q = s["flow_m3h"].as_f64().unwrap();
    assert!((q - 600.0).abs() < 0.3 * 600.0, "size {q} m3/h vs 600 injected");
    assert!(s["pipe"].is_null(), "no model: no location");
    assert!(a.iter().all(|x| x["event"] != "end"), "the leak is not repaired: {a:#?}");
}

#[test]
fn step_minutes_must_divide_the_hour() {
    assert!(Harness::<LeakDetection>::with_acl(r#"{"step_minutes":7}"#, &[]).is_err());
    assert!(Harness::<LeakDetection>::with_acl(r#"{"step_minutes":30,"min_steps_per_hour":3}"#, &[]).is_err());
    assert!(Harness::<LeakDetection>::with_acl(r#"{"step_minutes":30,"min_steps_per_hour":2}"#, &[]).is_ok());
}
