//! Bad input: each kind is counted with its reason and raises no alarm on its own. A service
//! calibrated on leak-free January days gets four leak-free March days with faults injected;
//! the expected counts are computed here from what was injected.

mod common;
use common::*;
use leak_detection::replay::{self, Step};
use leak_detection::LeakDetection;
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use serde_json::{json, Value};

fn clean() -> Vec<Step> {
    let dir = window("leakfree-mar", "leakfree", "2019-03-01 00:00", "2019-03-04 23:55");
    replay::load_dir(&dir, None, None).unwrap()
}

fn edit(steps: &mut [Step], range: std::ops::Range<usize>, f: impl Fn(&mut Value)) {
    for s in &mut steps[range] {
        let mut v: Value = serde_json::from_str(&s.payload).unwrap();
        f(&mut v);
        s.payload = v.to_string();
    }
}

type Counters = std::collections::BTreeMap<String, u64>;

/// Counters raised by `steps` alone (the calibration's are subtracted), and the alarms.
fn run(steps: &[Step]) -> (Counters, Vec<Value>) {
    let mut h = calibrated();
    let before = h.host().counters.clone();
    feed(&mut h, steps);
    let a = alarms(&mut h);
    let mut counters = h.host().counters.clone();
    for (k, v) in before {
        *counters.entry(k).or_default() -= v;
    }
    (counters, a)
}

fn count(c: &Counters, name: &str) -> u64 {
    c.get(name).copied().unwrap_or(0)
}

fn no_start(a: &[Value]) {
    assert!(a.iter().all(|x| x["event"] != "start"), "alarm from bad input: {a:#?}");
}

#[test]
fn missing_sensors_are_counted_and_harmless() {
    let mut s = clean();
    // Day 2: inlet p227 absent for 3 h (36 steps), pressure n54 absent for 12 h (144 steps).
    edit(&mut s, 288..324, |v| {
        v["flow_m3h"].as_object_mut().unwrap().remove("p227");
    });
    edit(&mut s, 288..432, |v| {
        v["pressure_m"].as_object_mut().unwrap().remove("n54");
    });
    let (c, a) = run(&s);
    assert_eq!(count(&c, "flag_missing"), 36 + 144);
    // 3 hours without a complete inflow.
    assert_eq!(count(&c, "flag_incomplete_hour"), 3);
    no_start(&a);
}

#[test]
fn gaps_are_harmless() {
    let mut s = clean();
    // A 6-hour outage of the whole feed (72 steps) and a 200-step (16 h 40 min) outage later.
    s.drain(700..772);
    s.drain(800..1000);
    let (c, a) = run(&s);
    assert_eq!(count(&c, "flag_late") + count(&c, "flag_duplicate"), 0);
    no_start(&a);
}

#[test]
fn spikes_are_rejected() {
    let mut s = clean();
    // Single-step spikes: +30 m on n105 every 2 h, inlet p235 +250 m3/h every 3 h (spike_flow_m3h is 150).
    let mut n_p = 0;
    let mut n_f = 0;
    for i in (100..1100).step_by(24) {
        edit(&mut s, i..i + 1, |v| {
            let x = v["pressure_m"]["n105"].as_f64().unwrap();
            v["pressure_m"]["n105"] = json!(x + 30.0);
        });
        n_p += 1;
    }
    for i in (110..1100).step_by(36) {
        edit(&mut s, i..i + 1, |v| {
            let x = v["flow_m3h"]["p235"].as_f64().unwrap();
            v["flow_m3h"]["p235"] = json!(x + 250.0);
        });
        n_f += 1;
    }
    let (c, a) = run(&s);
    assert_eq!(count(&c, "flag_spike"), n_p + n_f);
    no_start(&a);
}

#[test]
fn frozen_values_are_rejected() {
    let mut s = clean();
    // n415 stuck at one value for 4 hours (48 steps): the frozen_steps (12) th equal reading
    // and every later one are rejected: 48 - 11 = 37.
    let stuck = serde_json::from_str::<Value>(&s[400].payload).unwrap()["pressure_m"]["n415"].clone();
    edit(&mut s, 400..448, |v| v["pressure_m"]["n415"] = stuck.clone());
    let (c, a) = run(&s);
    assert_eq!(count(&c, "flag_frozen"), 37);
    no_start(&a);
}

#[test]
fn garbage_values_are_rejected() {
    let mut s = clean();
    edit(&mut s, 200..210, |v| v["pressure_m"]["n1"] = Value::Null);
    edit(&mut s, 210..215, |v| v["flow_m3h"]["p227"] = json!("12.3"));
    edit(&mut s, 215..218, |v| v["level_m"]["T1"] = json!(-40.0));
    edit(&mut s, 218..220, |v| v["demand_lph"]["n2"] = json!(-5.0));
    s[230].payload = "{not json".into();
    s[231].payload = json!({"time": "2019-13-01 00:00"}).to_string();
    let (c, a) = run(&s);
    assert_eq!(count(&c, "flag_null"), 10);
    assert_eq!(count(&c, "flag_not_a_number"), 5);
    assert_eq!(count(&c, "flag_out_of_range"), 3 + 2);
    assert_eq!(count(&c, "flag_bad_message"), 1);
    assert_eq!(count(&c, "flag_bad_time"), 1);
    no_start(&a);
}

#[test]
fn reordered_duplicated_and_late_messages() {
    let mut s = clean();
    // Within every hour of day 2, steps arrive reversed; each step of day 3 is delivered twice;
    // 5 steps of day 1 are re-sent 3 hours later (after their hour closed): late.
    for hour in 24..48 {
        s[hour * 12..hour * 12 + 12].reverse();
    }
    let mut out: Vec<Step> = Vec::new();
    for (i, st) in s.iter().enumerate() {
        out.push(Step { time: st.time.clone(), payload: st.payload.clone() });
        if (576..864).contains(&i) {
            out.push(Step { time: st.time.clone(), payload: st.payload.clone() });
        }
        if i == 150 {
            for old in &s[100..105] {
                out.push(Step { time: old.time.clone(), payload: old.payload.clone() });
            }
        }
    }
    let (c, a) = run(&out);
    assert_eq!(count(&c, "flag_duplicate"), 288);
    assert_eq!(count(&c, "flag_late"), 5);
    no_start(&a);
}

#[test]
fn bad_topics_config_and_commands_are_rejected() {
    assert!(Harness::<LeakDetection>::with_acl(r#"{"cusum_threshold_m3h": -1}"#, &[ALARMS]).is_err());
    assert!(Harness::<LeakDetection>::with_acl(r#"{"unknown_key": 1}"#, &[ALARMS]).is_err());
    assert!(Harness::<LeakDetection>::with_acl(
        r#"{"calibration": {"start": "2019-01-05 00:00", "end": "2019-01-01 00:00"}}"#,
        &[ALARMS]
    )
    .is_err());
    let mut h = Harness::<LeakDetection>::with_acl("{}", &[ALARMS]).unwrap();
    h.send_batch(vec![
        Message::new("site/x/y/z/scada", b"{}".to_vec()),
        Message::new(format!("{NET}/leak-model"), b"{\"version\":1}".to_vec()),
        Message::new(format!("{NET}/calibrate"), b"{\"start\":\"x\",\"end\":\"y\"}".to_vec()),
        Message::new(format!("{NET}/scada"), json!({"time": "2019-01-01 00:00"}).to_string().into_bytes()),
    ])
    .unwrap();
    let c = h.host().counters;
    assert_eq!(count(&c, "flag_bad_topic"), 1);
    assert_eq!(count(&c, "flag_bad_model"), 1);
    assert_eq!(count(&c, "flag_bad_command"), 1);
    assert_eq!(count(&c, "flag_not_calibrated"), 1);
    assert!(h.take_published().is_empty());
}

#[test]
fn restart_keeps_calibration_and_model() {
    let mut h = calibrated();
    h.restart("{}").unwrap();
    feed(&mut h, &clean()[..600]);
    assert_eq!(count(&h.host().counters, "flag_not_calibrated"), 0, "calibration lost on restart");
    assert!(h.host().state.keys().any(|k| k.starts_with("detector/ci/ltown")), "detector state saved hourly");
}
