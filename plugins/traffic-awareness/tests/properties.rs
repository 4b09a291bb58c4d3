//! Property tests: the fix parser never panics and reads back what
//! positioning writes; the footprint geometry agrees with the tests' own
//! (corners, separating axes, a search over time); the service survives
//! any sequence of fixes, times included, and its lifecycles stay whole.
//!
//! 512 cases per property in CI; `PROPTEST_CASES=100000 cargo test -p
//! traffic-awareness --test properties --release` for a long run.

mod common;

use common::{body, first_gap_time, ACL, T0};
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use traffic_awareness::footprint::{Footprint, PairShape};
use traffic_awareness::tpv::{iso_ms, parse, parse_iso_ms, Parsed};
use traffic_awareness::TrafficAwareness;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
        "[ -~]{0,12}".prop_map(Value::String),
        Just(json!("2026-03-01T08:00:00.000Z")),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,5}", inner, 0..4).prop_map(|m| json!(m)),
        ]
    })
}

fn footprint() -> impl Strategy<Value = Footprint> {
    prop_oneof![
        (0.0f64..3.0).prop_map(Footprint::circle),
        (1.0f64..20.0, 0.5f64..8.0, 0.0f64..1.0).prop_map(|(length, width, radius)| Footprint {
            length,
            width,
            radius
        }),
        (1.0f64..20.0).prop_map(|length| Footprint { length, width: 0.0, radius: 0.5 }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_fix_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&bytes, 50.0);
    }

    #[test]
    fn the_fix_parser_never_panics_on_any_json_fields(
        fields in proptest::collection::btree_map(
            prop_oneof![Just("class"), Just("mode"), Just("time"), Just("lat"), Just("lon"), Just("speed"), Just("track"), Just("x")],
            any_json(), 0..8),
    ) {
        let v: BTreeMap<&str, Value> = fields;
        let _ = parse(json!(v).to_string().as_bytes(), 50.0);
    }

    #[test]
    fn iso_times_never_panic_and_round_trip(s in "[0-9TZ:.\\-]{0,30}", ms in 0i64..253_402_300_799_999) {
        let _ = parse_iso_ms(&s);
        prop_assert_eq!(parse_iso_ms(&iso_ms(ms)), Some(ms));
    }

    #[test]
    fn a_fix_as_positioning_writes_it_reads_back_exactly(
        lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, speed in proptest::option::of(0.0f64..=50.0),
        track in proptest::option::of(0.0f64..360.0), ms in proptest::option::of(0i64..4_102_444_800_000), mode in 2i64..=3,
    ) {
        let mut v = json!({"class": "TPV", "device": "/dev/ttyACM0", "mode": mode, "lat": lat, "lon": lon,
                           "alt": 412.5, "eph": 1.2, "nSat": 9, "speed": speed, "track": track});
        if let Some(t) = ms {
            v["time"] = json!(iso_ms(t));
        }
        let got = parse(v.to_string().as_bytes(), 50.0);
        let Ok(Parsed::Fix(f)) = got else { return Err(TestCaseError::fail(format!("{got:?} for {v}"))) };
        // serde_json (without its float_roundtrip feature) may read a
        // shortest-form decimal one ulp off: 1e-14 degrees, a nanometre.
        let near = |a: f64, b: f64| (a - b).abs() <= 2.0 * f64::EPSILON * a.abs().max(b.abs());
        let near_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => near(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        prop_assert_eq!(f.time_ms, ms);
        prop_assert!(near(f.lat, lat) && near(f.lon, lon), "{:?} vs {} {}", f, lat, lon);
        prop_assert!(near_opt(f.speed, speed) && near_opt(f.track, track), "{:?} vs {:?} {:?}", f, speed, track);
    }

    #[test]
    fn footprint_gaps_and_times_agree_with_the_tests_own_geometry(
        fa in footprint(), fb in footprint(),
        ha in proptest::option::of(0.0f64..360.0), hb in proptest::option::of(0.0f64..360.0),
        p in (-60.0f64..60.0, -60.0f64..60.0), va in (-15.0f64..15.0, -15.0f64..15.0), vb in (-15.0f64..15.0, -15.0f64..15.0),
        g in 0.0f64..10.0,
    ) {
        let shape = PairShape::new(fa, ha, fb, hb);
        let a = body(0.0, 0.0, fa.length, fa.width, fa.radius, ha);
        let b = body(p.0, p.1, fb.length, fb.width, fb.radius, hb);
        let gap = shape.gap(p);
        let want = common::body_gap(&a, &b);
        // The tests' bodies report overlap as 0 between cores; so does the service.
        prop_assert!((gap - want).abs() < 1e-9, "gap {} vs {}", gap, want);
        let dv = (vb.0 - va.0, vb.1 - va.1);
        // Closest approach: the smallest gap ahead, and a time that gives it.
        let (ct, cg) = shape.closest_approach(p, dv);
        let (_, want_cg) = common::min_gap(&a, va, &b, vb, 2000.0);
        let at_ct = common::body_gap(&a.moved(va.0 * ct, va.1 * ct), &b.moved(vb.0 * ct, vb.1 * ct));
        prop_assert!((cg - want_cg).abs() < 1e-6 && (at_ct - cg).abs() < 1e-6, "cpa gap {} at {} (there {}) vs {}", cg, ct, at_ct, want_cg);
        let got = shape.time_to_gap(p, dv, g).filter(|t| *t <= 30.0);
        let truth = first_gap_time(&a, va, &b, vb, g, 30.0);
        match (got, truth) {
            (Some(x), Some(y)) => prop_assert!((x - y).abs() < 1e-6, "time {} vs {}", x, y),
            (None, None) => {}
            // A tangent pass (the minimum gap equal to g within rounding) may go either way.
            (x, y) => {
                let t = x.or(y).unwrap_or(0.0);
                let min_gap = (0..=3000).map(|k| {
                    let s = k as f64 * 0.01;
                    common::body_gap(&a.moved(va.0 * s, va.1 * s), &b.moved(vb.0 * s, vb.1 * s))
                }).fold(f64::INFINITY, f64::min);
                prop_assert!((min_gap - g).abs() < 1e-3, "service {:?} vs truth {:?} (t {}, min gap {} vs {})", x, y, t, min_gap, g);
            }
        }
    }

    #[test]
    fn the_service_survives_any_sequence_of_fixes(
        steps in proptest::collection::vec(
            proptest::collection::vec((0usize..6, -80.0f64..80.0, -80.0f64..80.0, -5.0f64..60.0, -10.0f64..400.0,
                                       prop_oneof![8 => Just(0i64), 1 => Just(3 * 86_400_000i64), 1 => Just(-2 * 86_400_000i64), 1 => -9000i64..9000]),
                                      1..8),
            1..25),
        max_encounters in 1usize..6,
        junk in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let cfg = common::config(json!({
            "max_encounters": max_encounters, "max_assets": 4,
            "classes": [{"name": "haul", "prefix": "h", "length_m": 12.0, "width_m": 6.0},
                        {"name": "person", "prefix": "p", "radius_m": 0.5}],
            "zones": [{"name": "pit", "kind": "speed_limit", "max_speed_mps": 5.0,
                       "polygon": [[-23.3601, 119.7299], [-23.3601, 119.7301], [-23.3599, 119.7301], [-23.3599, 119.7299]]}],
        }));
        let mut h = Harness::<TrafficAwareness>::with_acl(&cfg, ACL).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let ids = ["h1", "h2", "p1", "p2", "x1", "x2"];
        // encounter id -> open?
        let mut open: BTreeMap<String, bool> = BTreeMap::new();
        for (k, fixes) in steps.iter().enumerate() {
            let mut batch: Vec<Message> = fixes.iter().map(|&(i, x, y, speed, track, jump)| {
                let t = T0 + 100 * k as i64 + jump;
                let (lat, lon) = common::to_lat_lon(x, y);
                let body = json!({"class": "TPV", "mode": 3, "time": iso_ms(t), "lat": lat, "lon": lon, "speed": speed, "track": track});
                Message::new(common::topic(ids[i]), body.to_string().into_bytes())
            }).collect();
            batch.push(Message::new(common::topic("j"), junk.clone()));
            let _ = h.send_batch(batch);
            let _ = h.tick(1_000_000 + 100 * k as u64);
            for (topic, body) in h.take_published() {
                let v: Value = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if topic.ends_with("/picture") {
                    let n = v["counts"]["encounters"].as_u64().unwrap_or(u64::MAX);
                    prop_assert!(n <= max_encounters as u64, "{} encounters, max {}", n, max_encounters);
                    prop_assert!(v["counts"]["assets"].as_u64().unwrap_or(u64::MAX) <= 4);
                }
                if topic.ends_with("/warning") {
                    let id = v["encounter"].as_str().unwrap_or("").to_owned();
                    let was = open.get(&id).copied();
                    match v["state"].as_str() {
                        // Each side gets a start: two starts, then escalations and one clear per side.
                        Some("start") => { prop_assert!(was != Some(false), "restart of a cleared encounter {}", id); open.insert(id, true); }
                        Some("escalate") => prop_assert_eq!(was, Some(true), "escalate of {} not open", id),
                        Some("clear") => { prop_assert!(was.is_some(), "clear of {} never started", id); open.insert(id, false); }
                        s => return Err(TestCaseError::fail(format!("state {s:?}"))),
                    }
                }
            }
        }
    }
}
