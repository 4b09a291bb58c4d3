//! Long machines as rectangles along their heading, with analytic answers.
//!
//! Calibration: a haul road, where machines pass each other a few metres
//! apart: warning when the gap between footprints is predicted to fall to
//! 2 m within 10 s, critical at 1 m within 4 s. Haul trucks are 12 m x 6 m,
//! loaders 10 m x 4 m, both centred on the antenna.

mod common;

use common::*;
use serde_json::{json, Value};

fn rectangles() -> Value {
    json!({
        "warn_gap_m": 2.0, "critical_gap_m": 1.0, "clear_margin_m": 1.0,
        "classes": [{"name": "haul", "prefix": "haul-", "length_m": 12.0, "width_m": 6.0},
                    {"name": "loader", "prefix": "ldr-", "length_m": 10.0, "width_m": 4.0}],
    })
}

/// The same machines as circles covering them (the old model).
fn circles() -> Value {
    let (truck, loader) = (0.5 * 12f64.hypot(6.0), 0.5 * 10f64.hypot(4.0));
    json!({
        "warn_gap_m": 2.0, "critical_gap_m": 1.0, "clear_margin_m": 1.0,
        "classes": [{"name": "haul", "prefix": "haul-", "radius_m": truck},
                    {"name": "loader", "prefix": "ldr-", "radius_m": loader}],
    })
}

/// A loader drives in eastwards, parks at the origin facing east (its
/// receiver then reports track 0 at speed 0), and a haul truck passes it
/// northbound with its antenna 11 m east of the loader's: 3 m between the
/// loader's nose (x = 5) and the truck's flank (x = 8).
fn pass_the_parked_loader(extra: Value) -> (Vec<Out>, Value) {
    let mut h = harness(extra);
    let mut all = Vec::new();
    for k in 0..5 {
        let x = -1.0 + 0.2 * k as f64;
        all.extend(step(&mut h, k, &[("ldr-1", x, 0.0, 2.0, 90.0)]));
    }
    for k in 5..330 {
        let y = -150.0 + (k - 5) as f64;
        all.extend(step(&mut h, k, &[("ldr-1", 0.0, 0.0, 0.0, 0.0), ("haul-7", 11.0, y, 10.0, 0.0)]));
    }
    h.tick(1).expect("tick");
    let pic = take(&mut h).into_iter().find(|o| o.topic.ends_with("/picture")).expect("picture");
    (all, pic.body)
}

#[test]
fn a_haul_truck_passing_a_parked_loader_side_by_side_is_not_a_collision_course() {
    let (out, pic) = pass_the_parked_loader(rectangles());
    assert!(warnings(&out, "haul-7").is_empty(), "3 m flank gap > 2 m warning gap: {:?}", warnings(&out, "haul-7"));
    // The loader kept the heading it parked with, not the 0 its receiver reports at rest.
    let loader = pic["assets"].as_array().and_then(|a| a.iter().find(|a| a["id"] == "ldr-1")).expect("loader");
    close("parked heading", f(loader, "heading_deg"), 90.0, 1e-9);

    // The covering circles (12.09 m together, antennas 11 m apart abeam) say collision.
    let (out, _) = pass_the_parked_loader(circles());
    let w = warnings(&out, "haul-7");
    assert!(!w.is_empty() && w[0]["kind"] == "collision", "circles must see a collision course: {w:?}");
}

#[test]
fn head_on_trucks_ttc_comes_from_the_gap_between_their_noses() {
    let mut h = harness(rectangles());
    let a = Mover { id: "haul-1", x: 0.0, y: 0.0, vx: 0.0, vy: 10.0 };
    let b = Mover { id: "haul-2", x: 0.0, y: 200.3, vx: 0.0, vy: -10.0 };
    let steps = run(&mut h, &[a, b], 90);
    let ev = events(&steps, "haul-1");
    let st: Vec<&str> = ev.iter().map(|(_, v)| v["state"].as_str().unwrap_or("?")).collect();
    assert_eq!(st, ["start", "escalate"]);
    // Noses touch when the antennas are 6 + 6 = 12 m apart; closing 20 m/s.
    // Warning at once: the gap 188.3 m falls to 2 m in 9.32 s <= 10 s.
    let (k, s) = &ev[0];
    assert_eq!(*k, 0);
    close("ttc = (d - 12) / 20", f(s, "ttc_s"), (200.3 - 12.0) / 20.0, 1e-3);
    close("gap", f(s, "gap_m"), 188.3, 1e-3);
    close("collision radius", f(s, "collision_radius_m"), 12.0, 1e-3);
    // They would overlap: the closest approach is contact, at the TTC.
    close("cpa gap", f(s, "cpa_gap_m"), 0.0, 1e-3);
    close("cpa gap time", f(s, "cpa_gap_time_s"), (200.3 - 12.0) / 20.0, 1e-3);
    assert_eq!(s["kind"], "collision");
    // Critical once the gap falls to 1 m within 4 s: d - 13 <= 80, step 54 (d = 92.3).
    let (k, s) = &ev[1];
    assert_eq!(*k, 54);
    close("ttc at escalate", f(s, "ttc_s"), (92.3 - 12.0) / 20.0, 1e-3);
}

#[test]
fn crossing_trucks_touch_when_both_overlap_intervals_meet() {
    // a eastbound along y = 0 from x = -100 at 10 m/s; b northbound along
    // x = 0 from y = -80 at 8 m/s. The 12 x 6 rectangles overlap when
    // |x_a| <= 6 + 3 and |y_b| <= 3 + 6: t in [9.1, 10.9] and [8.875, 11.125],
    // so they touch at t = 9.1 s (a's front corner meets b's flank).
    let mut h = harness(rectangles());
    let a = Mover { id: "haul-a", x: -100.0, y: 0.0, vx: 10.0, vy: 0.0 };
    let b = Mover { id: "haul-b", x: 0.0, y: -80.0, vx: 0.0, vy: 8.0 };
    let steps = run(&mut h, &[a, b], 20);
    let ev = events(&steps, "haul-a");
    let (k, s) = &ev[0];
    assert_eq!((*k, s["state"].as_str()), (0, Some("start")));
    close("ttc", f(s, "ttc_s"), 9.1, 1e-3);
    // Gap now: a's nose corner (-94, -3) to b's corner (-3, -74): 91 m in
    // x, 71 m in y.
    close("gap", f(s, "gap_m"), 91f64.hypot(71.0), 1e-3);
    close("cpa gap time", f(s, "cpa_gap_time_s"), 9.1, 1e-3);
}
