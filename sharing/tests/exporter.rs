//! The exporter against real policies: what comes out, what is held, what is counted.

use std::path::Path;

use outpost_sharing::{round_position, Decision, Export, Exporter, HeldReason, Policy, MAX_OPEN_WINDOWS};
use serde_json::{json, Value};

fn policy(text: &str) -> Policy {
    match Policy::parse(text, Path::new("sharing.toml")) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn exported(d: Decision) -> Export {
    match d {
        Decision::Export(e) => e,
        other => panic!("expected an export, got {other:?}"),
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

const WEIGHT: &str = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/weight-loading/+/shift"]
purpose = "loading KPIs for the monthly service review"
drop = ["operator", "truck.driver_id"]

[[export]]
provider = "acme"
topics = ["svc/leak-detection/#"]
purpose = "leak alarms"

[[kpis]]
provider = "acme"
allow = ["weight-loading.*", "positioning.fix_rate"]
"#;

#[test]
fn drops_nested_fields_and_keeps_the_rest() {
    let mut ex = Exporter::new(policy(WEIGHT));
    let payload = br#"{"operator":"Jo","truck":{"id":"T7","driver_id":"D42"},"payload_t":38.5,"cycles":12}"#;
    let e = exported(ex.offer("acme", "svc/weight-loading/north/shift", payload, 1_000));
    assert_eq!(e.topic, "svc/weight-loading/north/shift");
    assert_eq!(e.rule, 0);
    assert_eq!(e.purpose, "loading KPIs for the monthly service review");
    assert_eq!(json_of(&e.payload), json!({"truck": {"id": "T7"}, "payload_t": 38.5, "cycles": 12}));
    assert_eq!(ex.counters().exported_messages, 1);
    assert_eq!(ex.counters().exported_bytes, e.payload.len() as u64);
}

#[test]
fn a_rule_without_transformations_passes_bytes_unchanged() {
    let mut ex = Exporter::new(policy(WEIGHT));
    let raw = [0xffu8, 0x00, b'x'];
    let e = exported(ex.offer("acme", "svc/leak-detection/net1/alarm", &raw, 0));
    assert_eq!(e.payload, raw);
    assert_eq!(e.rule, 1);
}

#[test]
fn everything_else_is_held_and_counted() {
    let mut ex = Exporter::new(policy(WEIGHT));
    assert_eq!(ex.offer("acme", "svc/positioning/t1/fix", b"{}", 0), Decision::Held(HeldReason::NoRule));
    assert_eq!(ex.offer("other", "svc/leak-detection/n/alarm", b"{}", 0), Decision::Held(HeldReason::NoRule));
    assert_eq!(
        ex.offer("acme", "svc/weight-loading/north/shift", b"[1,2]", 0),
        Decision::Held(HeldReason::NotJsonObject { rule: 0 })
    );
    assert_eq!(
        ex.offer("acme", "svc/weight-loading/north/shift", b"not json", 0),
        Decision::Held(HeldReason::NotJsonObject { rule: 0 })
    );
    assert_eq!(ex.offer("acme", "svc/weight-loading/+/shift", b"{}", 0), Decision::Held(HeldReason::InvalidTopic));
    assert_eq!(ex.offer("acme", "", b"{}", 0), Decision::Held(HeldReason::InvalidTopic));

    let c = ex.counters();
    assert_eq!(c.held, 6);
    assert_eq!(c.exported_messages, 0);
    assert_eq!(c.held_by_reason.get("no_rule"), Some(&2));
    assert_eq!(c.held_by_reason.get("not_json_object"), Some(&2));
    assert_eq!(c.held_by_reason.get("invalid_topic"), Some(&2));
    assert_eq!(c.held_by_topic.get("svc/weight-loading/north/shift"), Some(&2));
    assert_eq!(c.held_by_topic.get("svc/positioning/t1/fix"), Some(&1));
    assert_eq!(c.held_by_topic.get("svc/leak-detection/n/alarm"), Some(&1));
    assert_eq!(c.held_by_topic.get(outpost_sharing::INVALID_TOPIC), Some(&2));
    assert_eq!(c.held_by_topic.len(), 4);
    assert_eq!(
        HeldReason::NotJsonObject { rule: 0 }.to_string(),
        "export[0] reads fields but the payload is not a JSON object"
    );
}

#[test]
fn held_topics_are_counted_with_bounded_memory() {
    let mut ex = Exporter::new(Policy::deny_all());
    for i in 0..outpost_sharing::MAX_COUNTED_TOPICS + 50 {
        ex.offer("acme", &format!("svc/x/{i}"), b"{}", 0);
    }
    ex.offer("acme", &"y".repeat(10_000), b"{}", 0);
    ex.offer("acme", "svc/x/0", b"{}", 0);
    let c = ex.counters();
    assert_eq!(c.held_by_topic.len(), outpost_sharing::MAX_COUNTED_TOPICS + 1);
    assert_eq!(c.held_by_topic.get(outpost_sharing::OTHER_TOPICS), Some(&51));
    assert_eq!(c.held_by_topic.get("svc/x/0"), Some(&2));
    assert_eq!(c.held, outpost_sharing::MAX_COUNTED_TOPICS as u64 + 52);
}

#[test]
fn deny_all_holds_everything() {
    let mut ex = Exporter::new(Policy::deny_all());
    assert_eq!(ex.offer("acme", "svc/a", b"{}", 0), Decision::Held(HeldReason::NoRule));
    assert!(!ex.kpi_allowed("acme", "weight-loading", "payload_t"));
}

#[test]
fn kpi_patterns() {
    let ex = Exporter::new(policy(WEIGHT));
    assert!(ex.kpi_allowed("acme", "weight-loading", "payload_t"));
    assert!(ex.kpi_allowed("acme", "positioning", "fix_rate"));
    assert!(!ex.kpi_allowed("acme", "positioning", "hdop"));
    assert!(!ex.kpi_allowed("other", "weight-loading", "payload_t"));
}

const POSITIONS: &str = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/positioning/+/fix"]
purpose = "fleet map at block level"
[export.round_position]
metres = 100
fields = [["lat", "lon"], ["home.lat", "home.lon"]]
"#;

/// Equirectangular distance in metres, good to well under 1 % at these scales.
fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let mean_lat = ((a.0 + b.0) / 2.0).to_radians();
    let dy = (a.0 - b.0) * 111_320.0;
    let dx = (a.1 - b.1) * 111_320.0 * mean_lat.cos();
    (dx * dx + dy * dy).sqrt()
}

fn point(v: &Value, lat: &str, lon: &str) -> (f64, f64) {
    (v.pointer(lat).unwrap().as_f64().unwrap(), v.pointer(lon).unwrap().as_f64().unwrap())
}

#[test]
fn positions_are_rounded_within_half_a_cell_diagonal() {
    let mut ex = Exporter::new(policy(POSITIONS));
    for (i, original) in [(47.376_89, 8.541_69), (-33.868_82, 151.209_29), (64.146_6, -21.942_6), (0.000_4, -0.000_4)]
        .into_iter()
        .enumerate()
    {
        let payload = json!({"lat": original.0, "lon": original.1, "speed": 3.5, "home": {"lat": 1.0, "lon": 2.0}});
        let e = exported(ex.offer("acme", "svc/positioning/t1/fix", payload.to_string().as_bytes(), i as u64));
        let out = json_of(&e.payload);
        let rounded = point(&out, "/lat", "/lon");
        assert_ne!(rounded, original);
        let d = distance_m(original, rounded);
        // Half the diagonal of a 100 m cell is 70.7 m; 2 % slack for the longitude grid
        // following the rounded latitude.
        assert!(d <= 100.0 * std::f64::consts::SQRT_2 / 2.0 * 1.02, "{original:?} -> {rounded:?} is {d:.1} m away");
        assert_eq!(out["speed"], json!(3.5));
        assert_eq!(point(&out, "/home/lat", "/home/lon"), round_position(1.0, 2.0, 100.0));
    }
}

#[test]
fn close_points_collapse_and_far_points_do_not() {
    let mut ex = Exporter::new(policy(POSITIONS));
    let mut send = |lat: f64, lon: f64| {
        let e = exported(ex.offer(
            "acme",
            "svc/positioning/t1/fix",
            json!({"lat": lat, "lon": lon}).to_string().as_bytes(),
            0,
        ));
        point(&json_of(&e.payload), "/lat", "/lon")
    };
    // Centre of a cell, then 20 m north-east of it: same cell.
    let centre = round_position(47.3769, 8.5417, 100.0);
    let a = send(centre.0, centre.1);
    let b = send(centre.0 + 14.0 / 111_320.0, centre.1 + 14.0 / (111_320.0 * centre.0.to_radians().cos()));
    assert_eq!(a, b);
    assert_eq!(a, centre);
    // 300 m further north: three cells up; the longitude grid of that band may shift the
    // point east or west by up to half a cell (50 m), so 300 to 304 m away.
    let c = send(centre.0 + 300.0 / 111_320.0, centre.1);
    assert_ne!(a, c);
    assert!((c.0 - a.0 - 300.0 / 111_320.0).abs() < 1e-6, "{a:?} {c:?}");
    assert!((299.9..=304.2).contains(&distance_m(a, c)), "{}", distance_m(a, c));
}

#[test]
fn half_a_position_is_held() {
    let mut ex = Exporter::new(policy(POSITIONS));
    let d = ex.offer("acme", "svc/positioning/t1/fix", br#"{"lat": 47.1}"#, 0);
    assert_eq!(d, Decision::Held(HeldReason::BadPosition { rule: 0, field: "lon".into() }));
    let d = ex.offer("acme", "svc/positioning/t1/fix", br#"{"lat": 47.1, "lon": "8.5"}"#, 0);
    assert_eq!(d, Decision::Held(HeldReason::BadPosition { rule: 0, field: "lon".into() }));
    assert_eq!(ex.counters().held_by_reason.get("bad_position"), Some(&2));
}

const SHIFTS: &str = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/weight-loading/+/shift"]
purpose = "loading KPIs"
drop = ["operator"]
[export.aggregate]
period_s = 60
fields = ["payload_t", "cycle_s"]
group_by = ["bucket"]
"#;

fn shift(ex: &mut Exporter, site: &str, body: Value, now_ms: u64) -> Decision {
    ex.offer("acme", &format!("svc/weight-loading/{site}/shift"), body.to_string().as_bytes(), now_ms)
}

#[test]
fn aggregates_per_period_topic_and_group() {
    let mut ex = Exporter::new(policy(SHIFTS));
    let t0 = 1_700_000_040_000; // a multiple of 60 s
    assert_eq!(t0 % 60_000, 0);
    for (i, (payload, cycle)) in [(10.0, 30.0), (20.0, 50.0), (30.0, 40.0)].into_iter().enumerate() {
        let d = shift(
            &mut ex,
            "north",
            json!({"payload_t": payload, "cycle_s": cycle, "bucket": "b1", "operator": "Jo"}),
            t0 + i as u64 * 1000,
        );
        assert_eq!(d, Decision::Aggregated { rule: 0 });
    }
    // Same period, other group; and one without cycle_s.
    shift(&mut ex, "north", json!({"payload_t": 5, "bucket": "b2"}), t0 + 59_999);
    // Other topic.
    shift(&mut ex, "south", json!({"payload_t": 7, "cycle_s": 1, "bucket": "b1"}), t0 + 10);
    // Next period.
    shift(&mut ex, "north", json!({"payload_t": 100, "cycle_s": 1, "bucket": "b1"}), t0 + 60_000);
    assert_eq!(ex.counters().aggregated_inputs, 6);
    assert_eq!(ex.open_windows(), 4);
    assert_eq!(ex.next_due_ms(), Some(t0 + 60_000));

    assert!(ex.flush_due("acme", t0 + 59_999).is_empty(), "a window is not due before its end");
    assert!(ex.flush_due("other", t0 + 600_000).is_empty());
    let out = ex.flush_due("acme", t0 + 60_000);
    let bodies: Vec<(String, Value)> = out.iter().map(|e| (e.topic.clone(), json_of(&e.payload))).collect();
    assert_eq!(bodies.len(), 3, "{bodies:#?}");
    assert_eq!(bodies[0].0, "svc/weight-loading/north/shift");
    assert_eq!(
        bodies[0].1,
        json!({
            "period_start_ms": t0, "period_end_ms": t0 + 60_000, "count": 3,
            "fields": {
                "payload_t": {"count": 3, "mean": 20.0, "min": 10.0, "max": 30.0, "sum": 60.0},
                "cycle_s": {"count": 3, "mean": 40.0, "min": 30.0, "max": 50.0, "sum": 120.0}
            },
            "group": {"bucket": "b1"}
        })
    );
    assert_eq!(bodies[1].0, "svc/weight-loading/north/shift");
    assert_eq!(bodies[1].1["group"], json!({"bucket": "b2"}));
    assert_eq!(
        bodies[1].1["fields"]["cycle_s"],
        json!({"count": 0, "mean": null, "min": null, "max": null, "sum": 0.0})
    );
    assert_eq!(bodies[1].1["fields"]["payload_t"]["mean"], json!(5.0));
    assert_eq!(bodies[2].0, "svc/weight-loading/south/shift");
    assert_eq!(bodies[2].1["count"], json!(1));
    assert!(out.iter().all(|e| e.rule == 0 && e.purpose == "loading KPIs"));
    assert!(!String::from_utf8_lossy(&out[0].payload).contains("Jo"));

    assert_eq!(ex.open_windows(), 1);
    let next = ex.flush_due("acme", t0 + 120_000);
    assert_eq!(next.len(), 1);
    assert_eq!(json_of(&next[0].payload)["period_start_ms"], json!(t0 + 60_000));
    assert_eq!(ex.counters().aggregates_flushed, 4);
    assert_eq!(ex.counters().exported_messages, 4);
    assert!(ex.flush_due("acme", u64::MAX).is_empty());
}

#[test]
fn a_non_number_to_summarise_is_held_and_leaves_no_trace() {
    let mut ex = Exporter::new(policy(SHIFTS));
    let d = shift(&mut ex, "north", json!({"payload_t": "heavy", "bucket": "b1"}), 0);
    assert_eq!(d, Decision::Held(HeldReason::NotANumber { rule: 0, field: "payload_t".into() }));
    let d = shift(&mut ex, "north", json!({"payload_t": 1, "bucket": ["x"]}), 0);
    assert_eq!(d, Decision::Held(HeldReason::BadGroupValue { rule: 0, field: "bucket".into() }));
    assert_eq!(ex.open_windows(), 0);
    assert_eq!(ex.counters().aggregated_inputs, 0);
}

#[test]
fn open_windows_are_bounded() {
    let mut ex = Exporter::new(policy(SHIFTS));
    for i in 0..MAX_OPEN_WINDOWS {
        assert_eq!(shift(&mut ex, &format!("s{i}"), json!({"payload_t": 1}), 0), Decision::Aggregated { rule: 0 });
    }
    assert_eq!(
        shift(&mut ex, "one-more", json!({"payload_t": 1}), 0),
        Decision::Held(HeldReason::TooManyWindows { rule: 0 })
    );
    // An already open window still takes messages.
    assert_eq!(shift(&mut ex, "s0", json!({"payload_t": 1}), 0), Decision::Aggregated { rule: 0 });
    assert_eq!(ex.flush_due("acme", 60_000).len(), MAX_OPEN_WINDOWS);
    assert_eq!(shift(&mut ex, "one-more", json!({"payload_t": 1}), 60_000), Decision::Aggregated { rule: 0 });
}

#[test]
fn live_policy_change() {
    let mut ex = Exporter::new(policy(SHIFTS));
    shift(&mut ex, "north", json!({"payload_t": 1, "bucket": "b"}), 1_000);
    shift(&mut ex, "north", json!({"payload_t": 2, "bucket": "b"}), 2_000);

    // The same aggregate rule, now second in the file behind a new raw rule: the window survives.
    let moved = format!(
        "{}\n[[export]]\nprovider = \"acme\"\ntopics = [\"svc/leak-detection/#\"]\npurpose = \"alarms\"\n",
        SHIFTS.replace(
            "version = 1\n",
            "version = 1\n[[export]]\nprovider = \"acme\"\ntopics = [\"svc/positioning/+/fix\"]\npurpose = \"map\"\n"
        )
    );
    ex.set_policy(policy(&moved));
    assert_eq!(ex.open_windows(), 1);
    let e = exported(ex.offer("acme", "svc/positioning/t/fix", b"{}", 3_000));
    assert_eq!(e.rule, 0);
    assert_eq!(
        shift(&mut ex, "north", json!({"payload_t": 3, "bucket": "b"}), 4_000),
        Decision::Aggregated { rule: 1 }
    );
    let out = ex.flush_due("acme", 60_000);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].rule, 1);
    assert_eq!(json_of(&out[0].payload)["count"], json!(3));

    // Now the aggregation period changes: the open window is discarded, not exported.
    shift(&mut ex, "north", json!({"payload_t": 1, "bucket": "b"}), 61_000);
    shift(&mut ex, "north", json!({"payload_t": 1, "bucket": "b"}), 62_000);
    ex.set_policy(policy(&SHIFTS.replace("period_s = 60", "period_s = 120")));
    assert_eq!(ex.open_windows(), 0);
    assert!(ex.flush_due("acme", u64::MAX).is_empty());
    assert_eq!(ex.counters().aggregates_discarded, 1);
    assert_eq!(ex.counters().aggregated_inputs_discarded, 2);
    // And the raw positions rule is gone with it.
    assert_eq!(ex.offer("acme", "svc/positioning/t/fix", b"{}", 63_000), Decision::Held(HeldReason::NoRule));

    // Back to deny-all: nothing leaves.
    ex.set_policy(Policy::deny_all());
    assert_eq!(shift(&mut ex, "north", json!({"payload_t": 1}), 64_000), Decision::Held(HeldReason::NoRule));
}

#[test]
fn overlapping_rules_with_the_same_treatment_use_the_first() {
    let mut ex = Exporter::new(policy(
        r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/#"]
purpose = "everything, without operators"
drop = ["operator"]
[[export]]
provider = "acme"
topics = ["svc/weight-loading/+/shift"]
purpose = "shifts"
drop = ["operator"]
"#,
    ));
    let e = exported(ex.offer("acme", "svc/weight-loading/a/shift", br#"{"operator":"x","t":1}"#, 0));
    assert_eq!((e.rule, e.purpose.as_str()), (0, "everything, without operators"));
    assert_eq!(json_of(&e.payload), json!({"t": 1}));
}

#[test]
fn the_readme_example_is_a_valid_policy() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a toml block") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let p = policy(&readme[start..end]);
    assert_eq!(p.rules().len(), 2);
    let mut ex = Exporter::new(p);
    let d = ex.offer("acme-equipment", "svc/weight-loading/north/shift", br#"{"payload_t": 3, "site": "n"}"#, 0);
    assert_eq!(d, Decision::Aggregated { rule: 0 });
    assert!(ex.kpi_allowed("acme-equipment", "positioning", "fix_rate"));
}
