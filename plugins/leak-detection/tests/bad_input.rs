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

/// Raw payload `text` in place of step `i`.
fn raw(steps: &mut [Step], i: usize, text: String) {
    steps[i].payload = text;
}

#[test]
fn invalid_utf8_and_huge_numbers_are_counted() {
    let mut s = clean();
    // Invalid UTF-8: a bare 0xFF byte inside the time string (the step is lost: 1).
    let mut bytes = s[240].payload.clone().into_bytes();
    bytes[10] = 0xFF;
    // Step payloads are strings in the replay; send this one as raw bytes.
    let bad_utf8 = bytes;
    // 1e400 and -1e400 parse as JSON numbers but not as f64: the whole step is refused.
    let p = s[250].payload.clone();
    raw(&mut s, 250, p.replacen("\"n1\":", "\"n1\":1e400,\"n1x\":", 1));
    let p = s[260].payload.clone();
    raw(&mut s, 260, p.replacen("\"p227\":", "\"p227\":-1e400,\"p227x\":", 1));
    let mut h = calibrated();
    let before = h.host().counters.clone();
    feed(&mut h, &s[..245]);
    h.send(&format!("{NET}/scada"), bad_utf8).expect("handle");
    feed(&mut h, &s[245..]);
    let a = alarms(&mut h);
    let c = h.host().counters.clone();
    let d = |k: &str| count(&c, k) - count(&before, k);
    assert_eq!(d("flag_not_utf8"), 1);
    assert_eq!(d("flag_number_overflow"), 2);
    assert_eq!(d("flag_bad_message"), 0);
    // The service went on: every hour of the four days closed (none late, the hours with a
    // refused step still had enough valid ones).
    assert_eq!(d("flag_late") + d("flag_incomplete_hour"), 0);
    no_start(&a);
    // A model with 1e400 is refused like any malformed one, and the old model stays in use.
    let mut m = String::from_utf8(model()).unwrap();
    m = m.replacen("\"sensitivity\": [[", "\"sensitivity\": [[1e400, ", 1).replacen(
        "\"sensitivity\":[[",
        "\"sensitivity\":[[1e400,",
        1,
    );
    h.send(&format!("{NET}/leak-model"), m.into_bytes()).expect("handle");
    assert_eq!(count(&h.host().counters, "flag_bad_model") - count(&before, "flag_bad_model"), 1);
}

#[test]
fn time_jumps_of_days_are_held_until_confirmed() {
    let s = clean();
    let shifted = |st: &Step, days: i64| {
        let m = leak_detection::time::parse_minutes(&st.time).unwrap() + days * 1440;
        let t = leak_detection::time::format_minutes(m);
        Step { time: t.clone(), payload: st.payload.replacen(&st.time, &t, 1) }
    };
    let mut out: Vec<Step> = Vec::new();
    for (i, st) in s.iter().enumerate() {
        // One step stamped 3 days ahead, one 5 days back (a bad clock, once each).
        if i == 300 {
            out.push(shifted(st, 3));
        } else if i == 500 {
            out.push(shifted(st, -5));
        } else {
            out.push(Step { time: st.time.clone(), payload: st.payload.clone() });
        }
    }
    let (c, a) = run(&out);
    assert_eq!(count(&c, "flag_time_jump"), 2);
    // Without the hold, the forward step closed every open hour and made the next 3 days of
    // steps late.
    assert_eq!(count(&c, "flag_late") + count(&c, "flag_incomplete_hour"), 0);
    no_start(&a);

    // A real outage of 2 days: the steps after it continue the new time and are accepted
    // after time_jump_confirm_steps (3): the first two are counted and dropped.
    let mut out: Vec<Step> = s.iter().map(|st| Step { time: st.time.clone(), payload: st.payload.clone() }).collect();
    out.drain(300..300 + 2 * 288);
    let n_after = out.len() - 300;
    let mut h = calibrated();
    let before = h.host().counters.clone();
    feed(&mut h, &out);
    let c = h.host().counters.clone();
    assert_eq!(count(&c, "flag_time_jump") - count(&before, "flag_time_jump"), 2);
    assert_eq!(count(&c, "flag_late") - count(&before, "flag_late"), 0);
    // The hour after the outage lost 2 of 12 steps (still complete); every later hour closed.
    assert!(n_after > 24, "steps after the outage");
    assert_eq!(count(&c, "flag_incomplete_hour") - count(&before, "flag_incomplete_hour"), 0);
}

#[test]
fn unknown_sensor_ids_are_counted_and_ignored() {
    let mut s = clean();
    edit(&mut s, 100..160, |v| {
        v["pressure_m"]["n_unknown"] = json!(50.0);
        v["flow_m3h"]["p999"] = json!(10.0);
        v["level_m"]["T9"] = json!(3.0);
        v["demand_lph"]["n_meter_x"] = json!(100.0);
    });
    let (c, a) = run(&s);
    assert_eq!(count(&c, "flag_unknown_sensor"), 60 * 4);
    no_start(&a);
}

#[test]
fn too_many_sensors_while_calibrating_are_refused() {
    // 40 new pressure ids per step while collecting: only max_sensors distinct ones are kept.
    let cfg = r#"{"max_sensors": 10, "calibration": {"start": "2019-01-01 00:00", "end": "2019-01-10 00:00"}}"#;
    let mut h = Harness::<LeakDetection>::with_acl(cfg, &[ALARMS]).unwrap();
    let mut batch = Vec::new();
    for k in 0..12 {
        let ps: serde_json::Map<String, Value> = (0..40).map(|i| (format!("s{k}_{i}"), json!(40.0))).collect();
        let body = json!({"time": format!("2019-01-01 00:{:02}", k * 5), "pressure_m": ps, "flow_m3h": {"p227": 50.0, "p235": 20.0}});
        batch.push(Message::new(format!("{NET}/scada"), body.to_string().into_bytes()));
    }
    h.send_batch(batch).unwrap();
    let c = h.host().counters;
    // The first 10 pressure ids fill the cap; the other 470 readings are refused, the
    // configured inlet flows never are.
    assert_eq!(count(&c, "flag_too_many_sensors"), 480 - 10);
}

#[test]
fn max_networks_is_a_counted_cap() {
    let mut h = Harness::<LeakDetection>::with_acl(r#"{"max_networks": 2}"#, &[ALARMS]).unwrap();
    let cmd = br#"{"start":"2019-01-01 00:00","end":"2019-01-08 00:00"}"#.to_vec();
    let step = json!({"time": "2019-01-01 00:00", "flow_m3h": {"p227": 50.0, "p235": 20.0}}).to_string().into_bytes();
    let mut batch = Vec::new();
    for net in ["a", "b", "c", "d"] {
        batch.push(Message::new(format!("site/s/{net}/calibrate"), cmd.clone()));
        batch.push(Message::new(format!("site/s/{net}/leak-model"), model()));
        batch.push(Message::new(format!("site/s/{net}/scada"), step.clone()));
    }
    h.send_batch(batch).unwrap();
    let host = h.host();
    // Networks c and d: 3 messages each refused, and nothing of theirs stored.
    assert_eq!(count(&host.counters, "flag_too_many_networks"), 6);
    for net in ["a", "b"] {
        assert!(host.state.contains_key(&format!("window/s/{net}")), "{net} kept");
        assert!(host.state.contains_key(&format!("model/s/{net}")), "{net} kept");
    }
    assert!(!host.state.keys().any(|k| k.contains("/s/c") || k.contains("/s/d")), "{:?}", host.state.keys());
    // The service keeps serving the admitted networks.
    h.send(
        "site/s/a/scada",
        json!({"time": "2019-01-01 00:05", "flow_m3h": {"p227": 50.0, "p235": 20.0}}).to_string().into_bytes(),
    )
    .unwrap();
    assert_eq!(count(&h.host().counters, "flag_too_many_networks"), 6);
}

#[test]
fn wrong_dimension_and_oversized_models_are_refused() {
    let good: Value = serde_json::from_slice(&model()).unwrap();
    let mut variants: Vec<(&str, Value)> = Vec::new();
    let mut v = good.clone();
    v["sensitivity"][3].as_array_mut().unwrap().pop();
    variants.push(("flag_bad_model", v)); // a row one sensor short
    let mut v = good.clone();
    v["nodes"]["x"].as_array_mut().unwrap().pop();
    variants.push(("flag_bad_model", v)); // one coordinate missing
    let mut v = good.clone();
    v["pipes"]["n2"][0] = json!(1_000_000);
    variants.push(("flag_bad_model", v)); // a pipe to a node that does not exist
    let mut v = good.clone();
    v["pipes"]["ids"] = json!([]);
    v["pipes"]["n1"] = json!([]);
    v["pipes"]["n2"] = json!([]);
    variants.push(("flag_bad_model", v)); // no pipes
    let mut v = good.clone();
    let n = v["nodes"]["ids"].as_array().unwrap().len();
    v["sensors"] = json!((0..600).map(|i| format!("x{i}")).collect::<Vec<_>>());
    v["sensitivity"] = json!(vec![vec![0.0; 600]; n]);
    variants.push(("flag_model_too_large", v)); // 600 sensors > max_model_sensors 512
    let mut v = good.clone();
    v["sensors"] = json!(v["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}_other", s.as_str().unwrap()))
        .collect::<Vec<_>>());
    variants.push(("flag_bad_model", v)); // no sensor the calibration knows
    let mut h = calibrated();
    for (counter, v) in &variants {
        let before = count(&h.host().counters, counter);
        h.send(&format!("{NET}/leak-model"), v.to_string().into_bytes()).unwrap();
        assert_eq!(count(&h.host().counters, counter), before + 1, "{counter}");
    }
    // Byte and pipe limits from the config (the L-Town model: 905 pipes).
    let mut small = Harness::<LeakDetection>::with_acl(r#"{"max_model_pipes": 100}"#, &[ALARMS]).unwrap();
    small.send(&format!("{NET}/leak-model"), model()).unwrap();
    let mut tiny = Harness::<LeakDetection>::with_acl(r#"{"max_model_bytes": 1000}"#, &[ALARMS]).unwrap();
    tiny.send(&format!("{NET}/leak-model"), model()).unwrap();
    for x in [&mut small, &mut tiny] {
        assert_eq!(count(&x.host().counters, "flag_model_too_large"), 1);
        assert!(!x.host().state.keys().any(|k| k.starts_with("model/")), "refused model not stored");
    }
    // The calibrated service still runs on its previous model.
    let (c, a) = run(&clean()[..300]);
    assert_eq!(count(&c, "flag_bad_model"), 0);
    no_start(&a);
}
