//! Split records, cycles with hours outside their stages, per-service caps,
//! invalid UTF-8, numbers beyond f64 and clocks that jump by days. Expected
//! values are worked out by hand from the README's rules.

mod common;

use common::{harness, manifest_config};
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use weight_loading::WeightLoading;

const TOPIC: &str = "site/north/CDH90/payload";
const SHIFT: &str = "221107001";

/// A cycle of `truck` at PAB10 with every time given: assign, arrive, full,
/// dump arrive, empty. Stages: queue 120, spot 60, loading 300 (480 s
/// between arrive and full), full travel = full to dump arrive, dump queue
/// 30 + dumping 60 (90 s from dump arrive to empty), empty travel 600.
fn cycle_at(truck: &str, times: [&str; 5], payload: f64, full_travel: f64) -> Value {
    json!({
        "truck": truck, "loader": "PAB10", "shift": SHIFT,
        "payload_t": payload, "dump_payload_t": payload,
        "assign_time": times[0], "arrive_time": times[1], "full_time": times[2],
        "dump_arrive_time": times[3], "empty_time": times[4],
        "queue_s": 120.0, "spot_s": 60.0, "loading_s": 300.0, "empty_travel_s": 600.0,
        "full_travel_s": full_travel, "dump_queue_s": 30.0, "dumping_s": 60.0
    })
}

/// A consistent cycle full at 09:00:00 (assign 08:42, arrive 08:52, dump 09:25, empty 09:26:30).
fn consistent() -> Value {
    cycle_at(
        "CDH90",
        [
            "2022-11-07 08:42:00",
            "2022-11-07 08:52:00",
            "2022-11-07 09:00:00",
            "2022-11-07 09:25:00",
            "2022-11-07 09:26:30",
        ],
        300.0,
        1500.0,
    )
}

/// The same load joined with the previous load's dump, as the export does:
/// the dump "arrives" before the load is full and weighed 0 t.
fn other_half() -> Value {
    let mut v = consistent();
    v["dump_arrive_time"] = json!("2022-11-07 08:59:50");
    v["empty_time"] = json!("2022-11-07 09:00:05");
    v["dump_payload_t"] = json!(0.0);
    v["full_travel_s"] = json!(0.0);
    v["dump_queue_s"] = json!(0.0);
    v["dumping_s"] = json!(0.0);
    v
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn send_all(h: &mut Harness<WeightLoading>, msgs: &[(&str, Vec<u8>)]) -> Vec<(String, Value)> {
    for (topic, body) in msgs {
        h.send(topic, body.clone()).expect("handled");
    }
    h.take_published().into_iter().map(|(t, b)| (t, serde_json::from_slice(&b).expect("json"))).collect()
}

fn last_on(published: &[(String, Value)], suffix: &str) -> Value {
    published.iter().rev().find(|(t, _)| t.ends_with(suffix)).map(|(_, v)| v.clone()).expect(suffix)
}

fn rejected(h: &Harness<WeightLoading>) -> BTreeMap<String, u64> {
    h.host().counters.into_iter().filter(|(k, _)| k.starts_with("rejected_")).collect()
}

#[test]
fn a_split_record_keeps_its_consistent_half_whatever_the_order() {
    let later = cycle_at(
        "CDH90",
        [
            "2022-11-07 09:27:00",
            "2022-11-07 09:40:00",
            "2022-11-07 09:48:00",
            "2022-11-07 10:10:00",
            "2022-11-07 10:11:30",
        ],
        280.0,
        1320.0,
    );
    let mut reports = Vec::new();
    // The consistent half first, second, and second after a later cycle
    // (a correction of an accepted load is not a late cycle).
    for order in [
        vec![consistent(), other_half()],
        vec![other_half(), consistent()],
        vec![other_half(), later.clone(), consistent()],
    ] {
        let mut h = harness(&manifest_config());
        let mut msgs: Vec<(&str, Vec<u8>)> = order.iter().map(|v| (TOPIC, bytes(v))).collect();
        if order.len() == 2 {
            msgs.push((TOPIC, bytes(&later)));
        }
        let out = send_all(&mut h, &msgs);
        let report = last_on(&out, "CDH90/shift");
        assert_eq!(report["cycles"], 2, "{report}");
        assert_eq!(report["tonnes"], 580.0);
        assert_eq!(report["rejected"], json!({"duplicate": 1}));
        // Full travel means: 1500 s (the consistent half) and 1320 s.
        assert_eq!(report["means"]["full_travel_s"], 1410.0);
        assert_eq!(report["first_start"], "2022-11-07 08:42:00");
        assert_eq!(report["last_end"], "2022-11-07 10:11:30");
        let site = last_on(&out, "site/north/shift");
        assert_eq!(site["per_loader"][0]["cycles"], 2);
        assert_eq!(site["per_loader"][0]["tonnes"], 580.0);
        let summaries: Vec<&Value> = out.iter().filter(|(t, _)| t.ends_with("/cycle")).map(|(_, v)| v).collect();
        let replaced = summaries.iter().filter(|s| s["replaces_earlier"] == true).count();
        assert_eq!(replaced, usize::from(order[0] != consistent()), "a replacement says so");
        let kept = summaries.iter().rev().find(|s| s["full_time"] == "2022-11-07 09:00:00").expect("summary");
        assert_eq!(kept["dump_payload_t"], 300.0);
        assert_eq!(kept["empty_time"], "2022-11-07 09:26:30");
        assert_eq!(rejected(&h), BTreeMap::from([("rejected_duplicate".to_owned(), 1)]));
        // The loser arriving again is a redelivery, not a second rejection.
        send_all(&mut h, &[(TOPIC, bytes(&other_half()))]);
        assert_eq!(h.host().counters.get("redelivered"), Some(&1));
        assert_eq!(rejected(&h).get("rejected_duplicate"), Some(&1));
        let mut report = report.clone();
        report.as_object_mut().expect("object").remove("rejected_total");
        reports.push(report);
    }
    assert_eq!(reports[0], reports[1], "arrival order changes nothing");
    assert_eq!(reports[0], reports[2], "nor does a cycle in between");

    // Both halves agree with themselves (the later dump fits too): the
    // earlier dump is the load's own, whatever the order.
    let mut next_dump = consistent();
    next_dump["dump_arrive_time"] = json!("2022-11-07 10:05:00");
    next_dump["empty_time"] = json!("2022-11-07 10:06:30");
    for order in [[consistent(), next_dump.clone()], [next_dump.clone(), consistent()]] {
        let mut h = harness(&manifest_config());
        let msgs: Vec<(&str, Vec<u8>)> = order.iter().map(|v| (TOPIC, bytes(v))).collect();
        let out = send_all(&mut h, &msgs);
        assert_eq!(last_on(&out, "CDH90/shift")["last_end"], "2022-11-07 09:26:30");
    }

    // Two records equally consistent: the one kept does not depend on the order.
    let mut twin = consistent();
    twin["load_location"] = json!("IS5-3310-332");
    let mut kept = Vec::new();
    for order in [[consistent(), twin.clone()], [twin.clone(), consistent()]] {
        let mut h = harness(&manifest_config());
        let msgs: Vec<(&str, Vec<u8>)> = order.iter().map(|v| (TOPIC, bytes(v))).collect();
        send_all(&mut h, &msgs);
        let r = h.service().truck_shift("CDH90", SHIFT).expect("record").clone();
        assert_eq!(r.cycles, 1);
        kept.push(r.kept[0].fp);
    }
    assert_eq!(kept[0], kept[1], "the tie-break is fixed");
}

#[test]
fn hours_outside_the_stages_flag_a_cycle_out_of_the_duration_means() {
    let mut h = harness(&manifest_config());
    // Stages sum to 120+60+300+600+1500+30+60 = 2670 s.
    // 1: assigned 08:42:00, empty 09:26:30: 2670 s, nothing unaccounted.
    let normal = consistent();
    // 2: assigned 3 h before arrival (parked after assignment): 12,870 s of
    // which 10,200 s are in no stage (3 h less the 600 s empty travel).
    let mut parked = cycle_at(
        "CDH90",
        [
            "2022-11-07 07:00:00",
            "2022-11-07 10:00:00",
            "2022-11-07 10:08:00",
            "2022-11-07 10:33:00",
            "2022-11-07 10:34:30",
        ],
        310.0,
        1500.0,
    );
    parked["queue_s"] = json!(420.0);
    parked["spot_s"] = json!(0.0);
    parked["loading_s"] = json!(60.0);
    // 3: exactly max_unaccounted_s (3600 s) outside the stages: not flagged.
    let edge = cycle_at(
        "CDH90",
        [
            "2022-11-07 09:40:00",
            "2022-11-07 10:50:00",
            "2022-11-07 10:58:00",
            "2022-11-07 11:23:00",
            "2022-11-07 11:24:30",
        ],
        290.0,
        1500.0,
    );
    let out = send_all(&mut h, &[(TOPIC, bytes(&normal)), (TOPIC, bytes(&parked)), (TOPIC, bytes(&edge))]);
    let summaries: Vec<&Value> = out.iter().filter(|(t, _)| t.ends_with("/cycle")).map(|(_, v)| v).collect();
    assert_eq!(summaries.len(), 3);
    assert_eq!(summaries[0]["unaccounted_s"], 0.0);
    assert_eq!(summaries[0]["flag"], Value::Null);
    assert_eq!(summaries[1]["unaccounted_s"], 10_200.0);
    assert_eq!(summaries[1]["flag"], "unaccounted_time");
    assert_eq!(summaries[2]["unaccounted_s"], 3600.0);
    assert_eq!(summaries[2]["flag"], Value::Null);
    let report = last_on(&out, "CDH90/shift");
    // Tonnes count all three; the means only the two unflagged cycles.
    assert_eq!(report["cycles"], 3);
    assert_eq!(report["tonnes"], 900.0);
    assert_eq!(report["flagged"], json!({"unaccounted_time": 1}));
    assert_eq!(report["queue_s_mean"], 120.0);
    assert_eq!(report["queue_n"], 2);
    assert_eq!(report["means"]["cycle_s"], (2670.0 + 6270.0) / 2.0);
    // The parked cycle's hauling began with its empty travel (10:00 less
    // 600 s), not at its 07:00 assignment: the span starts with cycle 1.
    assert_eq!(report["first_start"], "2022-11-07 08:42:00");
    let site = last_on(&out, "site/north/shift");
    assert_eq!(site["flagged"], json!({"unaccounted_time": 1}));
    assert_eq!(site["per_loader"][0]["queue_s_mean"], 120.0);
    assert_eq!(h.host().counters.get("flagged_unaccounted_time"), Some(&1));
    assert_eq!(h.host().kpis.get("loader_queue_s"), Some(&120.0));
    // Alone, the parked cycle's span starts at 09:50.
    let mut alone = harness(&manifest_config());
    let only = send_all(&mut alone, &[(TOPIC, bytes(&parked))]);
    assert_eq!(last_on(&only, "CDH90/shift")["first_start"], "2022-11-07 09:50:00");
}

#[test]
fn trucks_with_only_rejected_cycles_are_named_apart_from_the_working_ones() {
    let mut h = harness(&manifest_config());
    let mut zero = consistent();
    zero["truck"] = json!("CDH69");
    zero["payload_t"] = json!(0.0);
    let fuel = json!({"truck": "CDH70", "shift": SHIFT, "start_time": "2022-11-07 10:00:00", "litres": 3000.0});
    let out = send_all(
        &mut h,
        &[
            (TOPIC, bytes(&consistent())),
            ("site/north/CDH69/payload", bytes(&zero)),
            ("site/north/CDH70/fuel", bytes(&fuel)),
        ],
    );
    let site = last_on(&out, "site/north/shift");
    assert_eq!(site["trucks"], 3, "every truck with a record");
    assert_eq!(site["trucks_working"], 1);
    assert_eq!(site["trucks_rejected_only"], json!(["CDH69"]), "a truck that only refuelled is not one");
}

#[test]
fn caps_on_trucks_and_loaders_are_counted_and_the_service_keeps_running() {
    let config = json!({"max_trucks": 2, "max_loaders": 1}).to_string();
    let mut h = harness(&config);
    let on = |truck: &str, full: [&str; 5], loader: &str| {
        let mut v = cycle_at(truck, full, 300.0, 1500.0);
        v["loader"] = json!(loader);
        v
    };
    let t1 = [
        "2022-11-07 08:42:00",
        "2022-11-07 08:52:00",
        "2022-11-07 09:00:00",
        "2022-11-07 09:25:00",
        "2022-11-07 09:26:30",
    ];
    let t2 = [
        "2022-11-07 09:42:00",
        "2022-11-07 09:52:00",
        "2022-11-07 10:00:00",
        "2022-11-07 10:25:00",
        "2022-11-07 10:26:30",
    ];
    let out = send_all(
        &mut h,
        &[
            ("site/north/CDH1/payload", bytes(&on("CDH1", t1, "PAB10"))),
            ("site/north/CDH2/payload", bytes(&on("CDH2", t1, "PAB10"))),
            // A third truck: over max_trucks, charged to the site.
            ("site/north/CDH3/payload", bytes(&on("CDH3", t1, "PAB10"))),
            (
                "site/north/CDH3/fuel",
                bytes(&json!({"shift": SHIFT, "end_time": "2022-11-07 10:00:00", "litres": 900.0})),
            ),
            // A second loader: over max_loaders, charged to the truck's shift.
            ("site/north/CDH1/payload", bytes(&on("CDH1", t2, "PAB11"))),
            ("site/north/PAB12/bucket", bytes(&json!({"truck": "CDH1", "pass": 1, "bucket_t": 90.0}))),
            // Known trucks and loader still work.
            ("site/north/CDH2/payload", bytes(&on("CDH2", t2, "PAB10"))),
        ],
    );
    assert_eq!(
        rejected(&h),
        BTreeMap::from([
            ("rejected_too_many_trucks".to_owned(), 1),
            ("rejected_fuel_too_many_trucks".to_owned(), 1),
            ("rejected_too_many_loaders".to_owned(), 1),
            ("rejected_bucket_too_many_loaders".to_owned(), 1),
        ])
    );
    assert_eq!(h.host().counters.get("cycles_accepted"), Some(&3));
    let site = last_on(&out, "site/north/shift");
    assert_eq!(site["trucks"], 2);
    assert_eq!(
        site["rejected_unattributed"],
        json!({"too_many_trucks": 1, "fuel_too_many_trucks": 1, "bucket_too_many_loaders": 1})
    );
    assert_eq!(site["rejected"], json!({"too_many_loaders": 1}));
    let svc = h.service();
    assert!(svc.truck_shift("CDH3", SHIFT).is_none(), "no memory for a truck over the cap");
    assert_eq!(svc.truck_shift("CDH2", SHIFT).map(|r| r.cycles), Some(2));
}

#[test]
fn invalid_utf8_and_numbers_beyond_f64_are_counted() {
    let mut h = harness(&manifest_config());
    let good = bytes(&consistent());
    // Invalid UTF-8 inside a string value, in a key, and bare bytes.
    let mut bad_value = good.clone();
    let at = bad_value.windows(9).position(|w| w == b"221107001").expect("shift in the record");
    bad_value[at + 2] = 0xff;
    let bad_key = b"{\"shi\xc3\x28ft\": \"221107001\", \"payload_t\": 300}".to_vec();
    let bare = vec![0xfe, 0xff, 0x00, 0x7b, 0x80];
    let huge = String::from_utf8(good.clone()).expect("utf8").replace("\"payload_t\":300.0", "\"payload_t\":1e400");
    assert!(huge.contains("1e400"), "{huge}");
    let minus = huge.replace("1e400", "-1e400");
    let litres = b"{\"shift\": \"221107001\", \"end_time\": \"2022-11-07 10:00:00\", \"litres\": 1e400}".to_vec();
    let pass = b"{\"truck\": \"CDH90\", \"pass\": 1, \"bucket_t\": 9e999}".to_vec();
    send_all(
        &mut h,
        &[
            (TOPIC, bad_value),
            (TOPIC, bad_key),
            (TOPIC, bare),
            (TOPIC, huge.into_bytes()),
            (TOPIC, minus.into_bytes()),
            ("site/north/CDH90/fuel", litres),
            ("site/north/PAB10/bucket", pass),
        ],
    );
    assert_eq!(
        rejected(&h),
        BTreeMap::from([
            ("rejected_malformed_json".to_owned(), 3),
            ("rejected_number_out_of_range".to_owned(), 2),
            ("rejected_fuel_number_out_of_range".to_owned(), 1),
            ("rejected_bucket_number_out_of_range".to_owned(), 1),
        ])
    );
    // Still running: the good record is accepted.
    send_all(&mut h, &[(TOPIC, good)]);
    assert_eq!(h.host().counters.get("cycles_accepted"), Some(&1));
}

#[test]
fn clocks_that_jump_by_days_are_counted_and_do_not_block_the_truck() {
    let mut h = harness(&manifest_config());
    // Empty three days after full: the cycle's clock jumped. Accepted, it
    // would make every later cycle of the truck "out of order".
    let mut stretched = consistent();
    stretched["empty_time"] = json!("2022-11-10 09:26:30");
    // The agent's clock says 2022-11-07 12:00 UTC.
    let now_ms = 1_667_822_400_000u64;
    let at = |body: Vec<u8>, topic: &str| {
        let mut m = Message::new(topic, body);
        m.received_ms = now_ms;
        m
    };
    // Ten days ahead of the agent: a jump. Seven hours ahead: a zone offset, fine.
    let mut future = consistent();
    for (k, t) in [
        ("assign_time", "2022-11-17 08:42:00"),
        ("arrive_time", "2022-11-17 08:52:00"),
        ("full_time", "2022-11-17 09:00:00"),
        ("dump_arrive_time", "2022-11-17 09:25:00"),
        ("empty_time", "2022-11-17 09:26:30"),
    ] {
        future[k] = json!(t);
    }
    future["shift"] = json!("221117001");
    let local = cycle_at(
        "CDH90",
        [
            "2022-11-07 18:12:00",
            "2022-11-07 18:22:00",
            "2022-11-07 18:30:00",
            "2022-11-07 18:55:00",
            "2022-11-07 18:56:30",
        ],
        295.0,
        1500.0,
    );
    let long_refuel = json!({"shift": SHIFT, "start_time": "2022-11-07 10:00:00", "end_time": "2022-11-09 10:00:00", "litres": 900.0});
    let future_refuel = json!({"shift": SHIFT, "end_time": "2022-11-20 10:00:00", "litres": 900.0});
    h.send_batch(vec![
        at(bytes(&stretched), TOPIC),
        at(bytes(&future), TOPIC),
        at(bytes(&long_refuel), "site/north/CDH90/fuel"),
        at(bytes(&future_refuel), "site/north/CDH90/fuel"),
        at(bytes(&consistent()), TOPIC),
        at(bytes(&local), TOPIC),
    ])
    .expect("handled");
    assert_eq!(
        rejected(&h),
        BTreeMap::from([("rejected_time_jump".to_owned(), 2), ("rejected_fuel_time_jump".to_owned(), 2)])
    );
    assert_eq!(h.host().counters.get("cycles_accepted"), Some(&2), "the truck goes on");
    let svc = h.service();
    let r = svc.truck_shift("CDH90", SHIFT).expect("record");
    assert_eq!(r.last_end, weight_loading::time::parse("2022-11-07 18:56:30"));
    assert_eq!(r.rejected.get("time_jump"), Some(&1));
    // The jumped shift holds no activity of its own (it goes first on eviction).
    assert_eq!(svc.truck_shift("CDH90", "221117001").and_then(|r| r.last_time), None);

    // A clock thrown back by days: the truck's cycles go on being counted
    // as late (out_of_order) and the service keeps running.
    let mut back = consistent();
    back["full_time"] = json!("2022-11-01 09:00:00");
    back["assign_time"] = json!("2022-11-01 08:42:00");
    back["arrive_time"] = json!("2022-11-01 08:52:00");
    back["dump_arrive_time"] = json!("2022-11-01 09:25:00");
    back["empty_time"] = json!("2022-11-01 09:26:30");
    h.send_batch(vec![at(bytes(&back), TOPIC)]).expect("handled");
    assert_eq!(h.host().counters.get("rejected_out_of_order"), Some(&1));
}

#[test]
fn a_split_record_is_replaced_after_a_restart_too() {
    let config = manifest_config();
    let mut h = harness(&config);
    send_all(&mut h, &[(TOPIC, bytes(&other_half()))]);
    h.restart(&config).expect("restart");
    let out = send_all(&mut h, &[(TOPIC, bytes(&consistent()))]);
    let report = last_on(&out, "CDH90/shift");
    assert_eq!(report["cycles"], 1);
    assert_eq!(report["rejected"], json!({"duplicate": 1}));
    assert_eq!(report["means"]["full_travel_s"], 1500.0);
    assert_eq!(report["last_end"], "2022-11-07 09:26:30");
    let r = h.service().truck_shift("CDH90", SHIFT).expect("record");
    assert_eq!(r.kept.len(), 1);
    assert_eq!(r.kept[0].consistency.fails, 0);
}
