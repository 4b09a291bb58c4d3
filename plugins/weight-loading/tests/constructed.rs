//! Constructed cases: bucket advice, config errors, every kind of bad
//! input with its reason, calibration per model, restart and shift expiry.
//! Expected values are worked out by hand from the README's rules.

mod common;

use common::{harness, manifest_config};
use outpost_sdk::{Message, Service, ServiceError};
use serde_json::{json, Value};
use weight_loading::config::Config;

/// A valid haul cycle of `truck` loaded by PAB10, full at `full`, empty 40 min later.
fn cycle(truck: &str, shift: &str, full: &str, payload: f64) -> Value {
    let t = |offset_min: i64| shift_time(full, offset_min);
    json!({
        "truck": truck, "loader": "PAB10", "shift": shift,
        "load_location": "IS5-3310-332", "dump_location": "PRIM", "dump_unit": "Chancador",
        "payload_t": payload, "dump_payload_t": payload,
        "assign_time": t(-20), "arrive_time": t(-10), "full_time": full,
        "dump_arrive_time": t(25), "empty_time": t(30),
        "queue_s": 120.0, "spot_s": 60.0, "loading_s": 300.0, "empty_travel_s": 600.0,
        "full_travel_s": 1500.0, "dump_queue_s": 30.0, "dumping_s": 60.0,
        "empty_dist_m": 4000.0, "full_dist_m": 5000.0
    })
}

/// `YYYY-MM-DD HH:MM:SS` shifted by whole minutes (same day in these tests).
fn shift_time(t: &str, minutes: i64) -> String {
    let h: i64 = t[11..13].parse().expect("hour");
    let m: i64 = t[14..16].parse().expect("minute");
    let total = h * 60 + m + minutes;
    assert!((0..24 * 60).contains(&total), "test times stay within the day");
    format!("{} {:02}:{:02}{}", &t[..10], total / 60, total % 60, &t[16..])
}

fn send(h: &mut outpost_sdk::testing::Harness<weight_loading::WeightLoading>, topic: &str, doc: &Value) {
    h.send(topic, serde_json::to_vec(doc).expect("json")).expect("handle");
}

fn published(h: &mut outpost_sdk::testing::Harness<weight_loading::WeightLoading>, kind: &str) -> Vec<Value> {
    h.take_published()
        .into_iter()
        .filter(|(t, _)| t.ends_with(kind))
        .map(|(_, b)| serde_json::from_slice(&b).expect("json"))
        .collect()
}

fn bucket(truck: &str, pass: u64, t: f64) -> Value {
    json!({"loader": "PAB10", "truck": truck, "pass": pass, "bucket_t": t, "time": format!("2022-11-07 09:0{pass}:00")})
}

const BUCKETS: &str = "site/north/PAB10/bucket";

#[test]
fn bucket_advice_counts_down_and_warns_before_overload() {
    let mut h = harness(&manifest_config());
    // KOM 930E: target 290 t, band 275.5..304.5 t, overload above 319 t.
    let mut seen = Vec::new();
    for (pass, t) in [(1, 95.0), (2, 95.0), (3, 95.0)] {
        send(&mut h, BUCKETS, &bucket("CDH90", pass, t));
        let a = published(&mut h, "/advice");
        assert_eq!(a.len(), 1);
        seen.push(a[0].clone());
    }
    let to_add: Vec<f64> = seen.iter().map(|a| a["to_add_t"].as_f64().expect("to_add_t")).collect();
    assert_eq!(to_add, [195.0, 100.0, 5.0], "tonnes still to add fall bucket by bucket");
    assert_eq!(seen[0]["status"], "add");
    assert_eq!(seen[1]["status"], "add");
    assert_eq!(seen[1]["warning"], Value::Null);
    // 285 t is in the band; another 95 t bucket would make 380 t > 319 t.
    assert_eq!(seen[2]["status"], "done");
    assert_eq!(seen[2]["loaded_t"], 285.0);
    assert_eq!(seen[2]["next_bucket_t"], 95.0);
    assert_eq!(seen[2]["warning"], "next_bucket_overload");
    assert_eq!(seen[2]["overload_limit_t"], 319.0);

    // A redelivered bucket changes nothing.
    send(&mut h, BUCKETS, &bucket("CDH90", 3, 95.0));
    assert!(published(&mut h, "/advice").is_empty());
    assert_eq!(h.host().counters.get("redelivered"), Some(&1));

    // The operator adds 40 t anyway: 325 t is an overload.
    send(&mut h, BUCKETS, &bucket("CDH90", 4, 40.0));
    let a = &published(&mut h, "/advice")[0];
    assert_eq!(
        (a["status"].as_str(), a["warning"].as_str(), a["loaded_t"].as_f64()),
        (Some("overloaded"), Some("overloaded"), Some(325.0))
    );
    assert!(a["message"].as_str().is_some_and(|m| m.contains("OVERLOADED")), "{a}");

    // The scale record closes the session and compares with the buckets.
    send(&mut h, "site/north/CDH90/payload", &cycle("CDH90", "221107001", "2022-11-07 09:10:00", 326.0));
    let advice = published(&mut h, "/advice");
    let load = advice.iter().find(|a| a["kind"] == "load").expect("load advice");
    assert_eq!(load["bucket_total_t"], 325.0);
    assert_eq!(load["class"], "overload");
    assert_eq!(load["deviation_t"], 36.0);
    assert_eq!(load["recent"]["loads"], 1);
    assert_eq!(load["advice"], "load_less");

    // Big buckets: below the band but a full bucket would overload -> partial.
    for (pass, t) in [(1, 120.0), (2, 120.0)] {
        send(&mut h, BUCKETS, &bucket("CDH91", pass, t));
    }
    let a = published(&mut h, "/advice");
    assert_eq!(a[1]["loaded_t"], 240.0);
    assert_eq!(a[1]["status"], "partial", "{}", a[1]);
    assert_eq!(a[1]["to_add_t"], 50.0);
    assert_eq!(a[1]["warning"], "next_bucket_overload");

    // A lost pass is flagged; a pass going backwards is rejected.
    send(&mut h, BUCKETS, &bucket("CDH91", 4, 30.0));
    let a = &published(&mut h, "/advice")[0];
    assert_eq!(a["missing_passes"], 1);
    assert_eq!(a["pass"], 4);
    send(&mut h, BUCKETS, &bucket("CDH91", 3, 31.0));
    assert!(published(&mut h, "/advice").is_empty());
    send(&mut h, BUCKETS, &json!({"loader": "PAB10", "truck": "CDH91", "pass": 5, "bucket_t": 500.0}));
    send(&mut h, BUCKETS, &json!({"loader": "PAB11", "truck": "CDH91", "pass": 5, "bucket_t": 50.0}));
    send(&mut h, BUCKETS, &json!({"loader": "PAB10", "truck": "CDH91", "pass": "5", "bucket_t": 50.0}));
    let c = h.host().counters;
    assert_eq!(c.get("rejected_bucket_pass_order"), Some(&1));
    assert_eq!(c.get("rejected_bucket_implausible_weight"), Some(&1));
    assert_eq!(c.get("rejected_bucket_asset_mismatch"), Some(&1));
    assert_eq!(c.get("rejected_bucket_wrong_type"), Some(&1));
    assert!(published(&mut h, "/advice").is_empty());

    // An idle session expires on tick (agent time of the bucket + timeout).
    let mut m = Message::new(BUCKETS, serde_json::to_vec(&bucket("CDH92", 1, 90.0)).expect("json"));
    m.received_ms = 1_000;
    h.send_batch(vec![m]).expect("handle");
    h.tick(1_000 + 1_800_000).expect("tick");
    assert_eq!(h.host().counters.get("bucket_sessions_expired"), None, "not yet");
    h.tick(1_000 + 1_800_001).expect("tick");
    assert_eq!(h.host().counters.get("bucket_sessions_expired"), Some(&1));
    assert!(h.host().denied.is_empty());
}

#[test]
fn config_problems_are_listed_together() {
    let bad = json!({
        "bogus": 1,
        "target_band_pct": "five",
        "overload_pct": 90,
        "models": {"CAT 793F": {"target_t": 220}, "KOM 930E": {"rated_t": -3, "colour": "yellow"}},
        "default_model": "LIEBHERR T 284",
        "advice_window": 0,
        "known_trucks": [1],
        "unknown_trucks": "maybe",
        "truck_models": {"CDH90": "BELAZ 75710"}
    });
    let err = match <weight_loading::WeightLoading as Service>::init(&bad.to_string()) {
        Err(ServiceError::BadConfig(m)) => m,
        other => panic!("expected BadConfig, got {:?}", other.err()),
    };
    for needle in [
        "unknown key 'bogus'",
        "target_band_pct",
        "overload_pct is 90",
        "models.CAT 793F.rated_t is missing",
        "models.KOM 930E.rated_t is -3",
        "unknown key 'models.KOM 930E.colour'",
        "default_model 'LIEBHERR T 284' is not in models",
        "advice_window is 0",
        "known_trucks[0]",
        "unknown_trucks",
        "truck_models.CDH90 is 'BELAZ 75710'",
        "models is empty",
    ] {
        assert!(err.contains(needle), "'{needle}' missing from: {err}");
    }
    assert!(err.contains("12 problem(s)"), "{err}");
    // The band must end below the overload limit.
    let tight = json!({"target_band_pct": 12, "overload_pct": 110});
    assert!(matches!(
        <weight_loading::WeightLoading as Service>::init(&tight.to_string()),
        Err(ServiceError::BadConfig(m)) if m.contains("below the overload limit")
    ));
}

#[test]
fn manifest_defaults_are_the_built_in_defaults() {
    assert_eq!(Config::parse(&manifest_config()), Ok(Config::default()));
}

#[test]
fn every_kind_of_bad_input_is_counted_with_its_reason() {
    let mut h = harness(&manifest_config());
    let shift = "221107001";
    let topic = "site/north/CDH90/payload";
    let good = cycle("CDH90", shift, "2022-11-07 09:00:00", 300.0);
    send(&mut h, topic, &good);
    let mut negative_travel = cycle("CDH90", shift, "2022-11-07 10:00:00", 310.0);
    negative_travel["empty_travel_s"] = json!(-9.0);
    send(&mut h, topic, &negative_travel);
    let summaries = published(&mut h, "/cycle");
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[1]["durations"]["empty_travel_s"], Value::Null);
    assert_eq!(summaries[1]["dropped"], json!(["empty_travel_s"]));
    assert_eq!(summaries[1]["durations"]["queue_s"], 120.0);

    let variant = |field: &str, v: Value| {
        let mut d = cycle("CDH90", shift, "2022-11-07 11:00:00", 305.0);
        d[field] = v;
        d
    };
    let mut less_consistent = cycle("CDH90", shift, "2022-11-07 09:00:00", 301.0);
    less_consistent["dump_payload_t"] = json!(290.0);
    let mut no_full_time = cycle("CDH90", shift, "2022-11-07 11:00:00", 305.0);
    no_full_time.as_object_mut().expect("object").remove("full_time");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (topic, b"{\"truck\": \"CDH90\", \"payload_t\": 3".to_vec(), "malformed_json"),
        (topic, b"[1, 2]".to_vec(), "malformed_json"),
        (topic, serde_json::to_vec(&no_full_time).expect("json"), "missing_field"),
        (topic, serde_json::to_vec(&variant("payload_t", Value::Null)).expect("json"), "missing_field"),
        (topic, serde_json::to_vec(&variant("payload_t", json!("305"))).expect("json"), "wrong_type"),
        (topic, serde_json::to_vec(&variant("payload_t", json!("NaN"))).expect("json"), "wrong_type"),
        (topic, serde_json::to_vec(&variant("queue_s", json!("2 min"))).expect("json"), "wrong_type"),
        (topic, serde_json::to_vec(&variant("shift", json!(221107001))).expect("json"), "wrong_type"),
        (topic, serde_json::to_vec(&variant("empty_time", json!("11/7/2022 11:30"))).expect("json"), "bad_timestamp"),
        (topic, serde_json::to_vec(&variant("payload_t", json!(0.0))).expect("json"), "zero_payload"),
        (topic, serde_json::to_vec(&variant("payload_t", json!(65519.0))).expect("json"), "sentinel_payload"),
        (topic, serde_json::to_vec(&variant("payload_t", json!(65527.0))).expect("json"), "sentinel_payload"),
        (topic, serde_json::to_vec(&variant("payload_t", json!(2890.0))).expect("json"), "implausible_payload"),
        (topic, serde_json::to_vec(&variant("payload_t", json!(-5.0))).expect("json"), "implausible_payload"),
        (topic, serde_json::to_vec(&variant("truck", json!("CDH91"))).expect("json"), "asset_mismatch"),
        // Same truck and full_time as the first cycle, other content, and
        // less consistent (the dump weighed 290 t of a 301 t load).
        (topic, serde_json::to_vec(&less_consistent).expect("json"), "duplicate"),
        // Completed before the truck's last accepted cycle.
        (
            topic,
            serde_json::to_vec(&cycle("CDH90", shift, "2022-11-07 08:00:00", 290.0)).expect("json"),
            "out_of_order",
        ),
        ("site/north/payload", serde_json::to_vec(&good).expect("json"), "bad_topic"),
        ("site/north/CDH90/weight", serde_json::to_vec(&good).expect("json"), "bad_topic"),
    ];
    for (topic, body, _) in &cases {
        h.send(topic, body.clone()).expect("handled even when bad");
    }
    // A redelivery of the first cycle is neither counted again nor rejected.
    send(&mut h, topic, &good);
    assert!(published(&mut h, "/cycle").is_empty(), "no junk is accepted");

    let host = h.host();
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, _, reason) in &cases {
        *expected.entry(format!("rejected_{reason}")).or_default() += 1;
    }
    let rejected: std::collections::BTreeMap<String, u64> =
        host.counters.iter().filter(|(k, _)| k.starts_with("rejected_")).map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(rejected, expected);
    assert_eq!(host.counters.get("redelivered"), Some(&1));
    assert_eq!(host.counters.get("cycles_accepted"), Some(&2));
    assert_eq!(host.counters.get("dropped_empty_travel_s"), Some(&1));
    for (_, _, reason) in &cases {
        assert!(host.logs.iter().any(|(_, l)| l.contains(reason)), "log names {reason}");
    }

    // The truck's shift report holds only the two good cycles; junk with a
    // truck and a shift is charged to it, the rest to the site.
    let svc = h.service();
    let r = svc.truck_shift("CDH90", shift).expect("record");
    assert_eq!((r.cycles, r.tonnes), (2, 610.0));
    assert_eq!(r.dur[0].n, 2);
    assert_eq!(r.dur[3].n, 1, "the negative travel time is left out of the mean");
    let charged: u64 = r.rejected.values().sum();
    let site: u64 = svc.unattributed().values().sum();
    assert_eq!(charged + site, cases.len() as u64);
    assert_eq!(svc.unattributed().get("malformed_json"), Some(&2));
    assert_eq!(svc.unattributed().get("bad_topic"), Some(&2));
    assert_eq!(svc.unattributed().get("wrong_type"), Some(&1), "the shift itself was unreadable");
    assert_eq!(r.rejected.get("zero_payload"), Some(&1));
    assert_eq!(r.rejected.get("duplicate"), Some(&1));
}

#[test]
fn bad_refuels_and_unknown_trucks() {
    let strict = {
        let mut c: Value = serde_json::from_str(&manifest_config()).expect("json");
        c["known_trucks"] = json!(["CDH90"]);
        c["unknown_trucks"] = json!("reject");
        c.to_string()
    };
    let mut h = harness(&strict);
    let fuel = |truck: &str, start: &str, end: &str, litres: Value| json!({"truck": truck, "model": "KOM 930E", "shift": "221107001", "start_time": start, "end_time": end, "litres": litres, "queue_min": 0.0});
    let t = "site/north/CDH90/fuel";
    send(&mut h, t, &fuel("CDH90", "2022-11-07 08:26:00", "2022-11-07 08:47:00", json!(3434.0)));
    send(&mut h, t, &fuel("CDH90", "2022-11-07 08:26:00", "2022-11-07 08:47:00", json!(3434.0)));
    send(&mut h, t, &fuel("CDH90", "2022-11-07 08:26:00", "2022-11-07 08:50:00", json!(3500.0)));
    send(&mut h, t, &fuel("CDH90", "2022-11-07 10:00:00", "2022-11-07 09:00:00", json!(1000.0)));
    send(&mut h, t, &fuel("CDH90", "2022-11-07 11:00:00", "2022-11-07 11:20:00", json!(0.0)));
    send(&mut h, t, &fuel("CDH90", "2022-11-07 12:00:00", "2022-11-07 12:20:00", json!(25000.0)));
    send(&mut h, t, &fuel("CDH90", "2022-11-07 13:00:00", "2022-11-07 13:20:00", json!("3000")));
    send(&mut h, t, &json!({"truck": "CDH90", "start_time": "2022-11-07 14:00:00", "litres": 1000.0}));
    send(&mut h, "site/north/CDH99/fuel", &fuel("CDH99", "2022-11-07 08:00:00", "2022-11-07 08:20:00", json!(2000.0)));
    send(&mut h, "site/north/CDH99/payload", &cycle("CDH99", "221107001", "2022-11-07 09:00:00", 300.0));
    let c = h.host().counters;
    for (name, n) in [
        ("rejected_fuel_duplicate", 1),
        ("rejected_fuel_time_order", 1),
        ("rejected_fuel_implausible_litres", 2),
        ("rejected_fuel_wrong_type", 1),
        ("rejected_fuel_missing_field", 1),
        ("rejected_fuel_unknown_truck", 1),
        ("rejected_unknown_truck", 1),
        ("refuels_accepted", 1),
        ("redelivered", 1),
    ] {
        assert_eq!(c.get(name), Some(&n), "{name}");
    }
    let r = h.service().truck_shift("CDH90", "221107001").expect("record").clone();
    assert_eq!((r.refuels, r.litres), (1, 3434.0));
    assert!(h.service().truck_shift("CDH99", "221107001").is_none(), "no record for a truck outside the fleet");
    assert_eq!(h.service().unattributed().get("unknown_truck"), Some(&1));
    assert_eq!(h.service().unattributed().get("fuel_unknown_truck"), Some(&1));

    // Accepting unknown trucks: processed, flagged and counted.
    let lenient = strict.replace("\"reject\"", "\"accept\"");
    let mut h = harness(&lenient);
    send(&mut h, "site/north/CDH99/payload", &cycle("CDH99", "221107001", "2022-11-07 09:00:00", 300.0));
    let reports = published(&mut h, "CDH99/shift");
    assert_eq!(reports[0]["known"], false);
    assert_eq!(reports[0]["cycles"], 1);
    assert_eq!(h.host().counters.get("unknown_truck_records"), Some(&1));
}

#[test]
fn each_model_has_its_own_rating() {
    let config = {
        let mut c: Value = serde_json::from_str(&manifest_config()).expect("json");
        c["models"]["CAT 793F"] = json!({"rated_t": 227.0, "target_t": 220.0});
        c["truck_models"] = json!({"CAT01": "CAT 793F"});
        c.to_string()
    };
    let mut h = harness(&config);
    // 250 t: above 227 x 1.10 = 249.7 t for the 793F, "ok" for a 930E.
    send(&mut h, "site/north/CAT01/payload", &cycle("CAT01", "221107001", "2022-11-07 09:00:00", 250.0));
    send(&mut h, "site/north/CDH90/payload", &cycle("CDH90", "221107001", "2022-11-07 09:00:00", 250.0));
    let mut unrated = cycle("CDH91", "221107001", "2022-11-07 09:00:00", 290.0);
    unrated["model"] = json!("KOM 830E");
    send(&mut h, "site/north/CDH91/payload", &unrated);
    let s = published(&mut h, "/cycle");
    assert_eq!(
        (s[0]["model"].as_str(), s[0]["rated_t"].as_f64(), s[0]["class"].as_str()),
        (Some("CAT 793F"), Some(227.0), Some("overload"))
    );
    assert_eq!(s[0]["target_t"], 220.0);
    assert_eq!(s[0]["deviation_t"], 30.0);
    assert_eq!((s[1]["model"].as_str(), s[1]["class"].as_str()), (Some("KOM 930E"), Some("under")));
    assert_eq!(s[1]["overload_limit_t"], 319.0);
    // An unrated model falls back to the default and is counted.
    assert_eq!((s[2]["model"].as_str(), s[2]["class"].as_str()), (Some("KOM 930E"), Some("ok")));
    assert_eq!(h.host().counters.get("unknown_model"), Some(&1));
}

#[test]
fn restart_keeps_aggregates_windows_and_sessions() {
    let config = manifest_config();
    let mut h = harness(&config);
    let shift = "221107001";
    for (i, p) in [300.0, 330.0, 260.0].into_iter().enumerate() {
        send(&mut h, "site/north/CDH90/payload", &cycle("CDH90", shift, &format!("2022-11-07 {:02}:00:00", 8 + i), p));
    }
    send(&mut h, BUCKETS, &bucket("CDH91", 1, 100.0));
    let before = published(&mut h, "CDH90/shift").pop().expect("report");
    let kpi_before = h.host().kpis;

    h.restart(&config).expect("restart");
    assert_eq!(h.service().truck_shift("CDH90", shift).map(|r| r.cycles), Some(3));
    // The redelivered last cycle is recognised after the restart.
    send(&mut h, "site/north/CDH90/payload", &cycle("CDH90", shift, "2022-11-07 10:00:00", 260.0));
    assert_eq!(h.host().counters.get("redelivered"), Some(&1));
    // The bucket session survived: pass 2 continues it.
    send(&mut h, BUCKETS, &bucket("CDH91", 2, 100.0));
    let a = published(&mut h, "/advice");
    assert_eq!(a[0]["loaded_t"], 200.0);
    assert_eq!(a[0]["missing_passes"], 0);
    // A new cycle adds to the kept totals; the loader's window holds all four loads.
    send(&mut h, "site/north/CDH90/payload", &cycle("CDH90", shift, "2022-11-07 11:00:00", 290.0));
    let after = published(&mut h, "CDH90/shift").pop().expect("report");
    assert_eq!(before["cycles"], 3);
    assert_eq!(after["cycles"], 4);
    assert_eq!(after["tonnes"], 300.0 + 330.0 + 260.0 + 290.0);
    assert_eq!(after["overload"], 1);
    assert_eq!(after["under"], 1);
    assert_eq!(after["queue_s_total"], 480.0);
    let host = h.host();
    assert_eq!(host.kpis["payload_ratio/CDH90"], (300.0 + 330.0 + 260.0 + 290.0) / 4.0 / 290.0);
    assert_eq!(kpi_before["payload_ratio/CDH90"], (300.0 + 330.0 + 260.0) / 3.0 / 290.0);
}

#[test]
fn old_shifts_leave_the_window_and_their_state() {
    let mut config: Value = serde_json::from_str(&manifest_config()).expect("json");
    config["keep_shifts"] = json!(2);
    let config = config.to_string();
    let mut h = harness(&config);
    for (shift, day) in [("221107001", "07"), ("221108001", "08"), ("221109001", "09")] {
        send(&mut h, "site/north/CDH90/payload", &cycle("CDH90", shift, &format!("2022-11-{day} 09:00:00"), 300.0));
    }
    let state = h.host().state;
    assert!(!state.contains_key("t/CDH90/221107001"), "the oldest shift's record is deleted");
    assert!(state.contains_key("t/CDH90/221108001") && state.contains_key("t/CDH90/221109001"));
    assert!(!state.contains_key("l/PAB10/221107001"));
    assert_eq!(h.host().counters.get("shifts_expired"), Some(&1));
    // A late record of the dropped shift is rejected, not re-opened.
    h.take_published();
    send(&mut h, "site/north/CDH91/payload", &cycle("CDH91", "221107001", "2022-11-07 10:00:00", 300.0));
    assert!(published(&mut h, "/cycle").is_empty());
    assert_eq!(h.host().counters.get("rejected_expired_shift"), Some(&1));
    h.restart(&config).expect("restart");
    send(&mut h, "site/north/CDH92/payload", &cycle("CDH92", "221107001", "2022-11-07 10:00:00", 300.0));
    assert_eq!(h.host().counters.get("rejected_expired_shift"), Some(&2), "the expired list survives restarts");
}

#[test]
fn a_cycle_without_loader_or_empty_time_still_counts_for_the_truck() {
    let mut h = harness(&manifest_config());
    let mut no_loader = cycle("CDH90", "221107001", "2022-11-07 09:00:00", 300.0);
    no_loader.as_object_mut().expect("object").remove("loader");
    let mut no_empty = cycle("CDH90", "221107001", "2022-11-07 10:00:00", 280.0);
    no_empty.as_object_mut().expect("object").remove("empty_time");
    send(&mut h, "site/north/CDH90/payload", &no_loader);
    send(&mut h, "site/north/CDH90/payload", &no_empty);
    let out = h.take_published();
    let summaries: Vec<Value> = out
        .iter()
        .filter(|(t, _)| t.ends_with("/cycle"))
        .map(|(_, b)| serde_json::from_slice(b).expect("json"))
        .collect();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0]["loader"], Value::Null);
    assert_eq!(summaries[1]["empty_time"], Value::Null);
    assert_eq!(summaries[1]["durations"]["cycle_s"], Value::Null);
    // Only the second cycle names a loader, so only it gets load advice.
    assert_eq!(out.iter().filter(|(t, _)| t == "svc/weight-loading/PAB10/advice").count(), 1);
    let c = h.host().counters;
    assert_eq!(c.get("cycles_accepted"), Some(&2));
    assert_eq!(c.get("cycles_without_loader"), Some(&1));
    let r = h.service().truck_shift("CDH90", "221107001").expect("record");
    assert_eq!((r.cycles, r.tonnes, r.dur[7].n), (2, 580.0, 1));
}
