//! Zone violations: speeding in a speed-limit zone and entering a no-go
//! area, with their start/clear lifecycle and hysteresis (clear margin 2 m
//! outside the polygon or 0.5 m/s under the limit, held 2 s).

mod common;

use common::*;
use serde_json::{json, Value};

/// A square in local metres, as `[[lat, lon], ...]`.
fn square(x0: f64, y0: f64, side: f64) -> Value {
    let pts: Vec<Value> = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
        .iter()
        .map(|&(x, y)| {
            let (lat, lon) = to_lat_lon(x, y);
            json!([lat, lon])
        })
        .collect();
    Value::Array(pts)
}

fn zones() -> Value {
    json!({"zones": [
        {"name": "crusher-road", "kind": "speed_limit", "max_speed_mps": 5.0, "polygon": square(0.0, 0.0, 100.0)},
        {"name": "blast-area", "kind": "no_go", "polygon": square(500.0, 0.0, 100.0)},
    ]})
}

fn zone_msgs<'a>(outs: &'a [Out], asset: &str) -> Vec<&'a Value> {
    let t = format!("svc/traffic-awareness/{asset}/zone");
    outs.iter().filter(|o| o.topic == t).map(|o| &o.body).collect()
}

#[test]
fn speeding_through_a_speed_zone_starts_and_clears_after_leaving() {
    let mut h = harness(zones());
    // East along y = 50 at 8 m/s from x = -50.3: inside from step 63
    // (x = 0.1); 2 m past the far edge from step 191 (x = 102.5); held 2 s.
    let car = Mover { id: "lv-1", x: -50.3, y: 50.0, vx: 8.0, vy: 0.0 };
    let steps = run(&mut h, &[car], 230);
    let ev: Vec<(usize, Value)> = steps
        .iter()
        .enumerate()
        .flat_map(|(k, o)| zone_msgs(o, "lv-1").into_iter().map(move |v| (k, v.clone())))
        .collect();
    assert_eq!(ev.len(), 2, "{ev:?}");
    let (k, s) = &ev[0];
    assert_eq!((*k, s["state"].as_str(), s["zone"].as_str()), (63, Some("start"), Some("crusher-road")));
    assert_eq!(s["zone_kind"], "speed_limit");
    assert_eq!(s["violation"], format!("lv-1|crusher-road|{}", T0 + 6300));
    close("speed", f(s, "speed_mps"), 8.0, 1e-3);
    close("limit", f(s, "max_speed_mps"), 5.0, 0.0);
    let (k, c) = &ev[1];
    assert_eq!((*k, c["state"].as_str(), c["reason"].as_str()), (211, Some("clear"), Some("left_zone")));
    assert_eq!(c["violation"], s["violation"]);
    close("peak speed", f(c, "peak_speed_mps"), 8.0, 1e-3);
}

#[test]
fn slowing_down_inside_clears_and_hovering_under_the_limit_does_not() {
    let mut h = harness(zones());
    let mut all = Vec::new();
    // Inside at 8 m/s (steps 0-9), 4.8 m/s (10-39: under the limit but not
    // by the 0.5 m/s margin), 3 m/s (40-69).
    for k in 0..70 {
        let v = if k < 10 {
            8.0
        } else if k < 40 {
            4.8
        } else {
            3.0
        };
        all.push((k, step(&mut h, k, &[("lv-2", 50.0, 50.0, v, 0.0)])));
    }
    let ev: Vec<(usize, &Value)> =
        all.iter().flat_map(|(k, o)| zone_msgs(o, "lv-2").into_iter().map(|v| (*k, v))).collect();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!((ev[0].0, ev[0].1["state"].as_str()), (0, Some("start")));
    assert_eq!((ev[1].0, ev[1].1["reason"].as_str()), (60, Some("below_limit")));
    // Below the limit inside: never a violation.
    let mut h = harness(zones());
    let quiet: Vec<Out> = (0..30).flat_map(|k| step(&mut h, k, &[("lv-3", 50.0, 50.0, 4.9, 0.0)])).collect();
    assert!(zone_msgs(&quiet, "lv-3").is_empty());
}

#[test]
fn entering_a_no_go_area_and_leaving_it_by_the_margin() {
    let mut h = harness(zones());
    let mut all = Vec::new();
    // Outside (x = 495), inside (505), just outside within the 2 m margin
    // (499, edge jitter), then well out (490).
    for k in 0..100 {
        let x = match k {
            0..=9 => 495.0,
            10..=19 => 505.0,
            20..=49 => 499.0 + 0.5 * ((k % 2) as f64),
            _ => 490.0,
        };
        all.push((k, step(&mut h, k, &[("dozer-4", x, 50.0, 0.0, 0.0)])));
    }
    let ev: Vec<(usize, &Value)> =
        all.iter().flat_map(|(k, o)| zone_msgs(o, "dozer-4").into_iter().map(|v| (*k, v))).collect();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!((ev[0].0, ev[0].1["state"].as_str(), ev[0].1["zone"].as_str()), (10, Some("start"), Some("blast-area")));
    assert_eq!(ev[0].1["zone_kind"], "no_go");
    assert!(ev[0].1["max_speed_mps"].is_null());
    assert_eq!((ev[1].0, ev[1].1["reason"].as_str()), (70, Some("left_zone")));
    // The picture and the per-zone KPI while inside.
    let mut h = harness(zones());
    step(&mut h, 0, &[("dozer-4", 505.0, 50.0, 0.0, 0.0)]);
    h.tick(1000).expect("tick");
    let pic =
        take(&mut h).into_iter().find(|o| o.topic == "svc/traffic-awareness/site/pit-3/picture").expect("picture");
    assert_eq!(pic.body["counts"]["zone_violations"], 1);
    assert_eq!(pic.body["zone_violations"][0]["zone"], "blast-area");
    let kpis = h.host().kpis;
    assert_eq!(kpis.get("zone_violations_active/blast-area"), Some(&1.0));
    assert_eq!(kpis.get("zone_violations_active/crusher-road"), Some(&0.0));
    assert_eq!(kpis.get("zone_violations_active"), Some(&1.0));
}
