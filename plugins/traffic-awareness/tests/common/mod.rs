//! Test-side helpers, written independently of the service: a local x/y
//! (east/north, m) to lat/lon conversion, TPV payloads as positioning
//! publishes them, and readers of what the service published.
#![allow(dead_code)]

use outpost_sdk::testing::Harness;
use serde_json::{json, Value};
use traffic_awareness::TrafficAwareness;

/// Test origin (a quarry-like place; any mid-latitude point would do).
pub const LAT0: f64 = -23.36;
pub const LON0: f64 = 119.73;
/// 2026-03-01T00:00:00Z in Unix ms.
pub const DAY_MS: i64 = 1_772_323_200_000;

pub const ACL: &[&str] =
    &["svc/traffic-awareness/+/warning", "svc/traffic-awareness/+/zone", "svc/traffic-awareness/site/+/picture"];

/// x east / y north (m) from (LAT0, LON0) to (lat, lon): radii of curvature
/// of the WGS84 ellipsoid at the origin (Torge, Geodesy, eq. 6.50/6.51).
pub fn to_lat_lon(x: f64, y: f64) -> (f64, f64) {
    let a = 6_378_137.0_f64;
    let e2 = 0.006_694_379_990_14_f64;
    let phi = LAT0.to_radians();
    let w2 = 1.0 - e2 * phi.sin().powi(2);
    let meridian = a * (1.0 - e2) / w2.powf(1.5);
    let normal = a / w2.sqrt();
    (LAT0 + (y / meridian).to_degrees(), LON0 + (x / (normal * phi.cos())).to_degrees())
}

/// ISO 8601 UTC of a time on 2026-03-01, `ms` after midnight.
pub fn iso(ms: i64) -> String {
    let ms = ms - DAY_MS;
    assert!((0..86_400_000).contains(&ms), "test times stay within the day");
    let (h, m, s, f) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("2026-03-01T{h:02}:{m:02}:{s:02}.{f:03}Z")
}

/// A TPV as positioning publishes it, at local (x, y), with speed (m/s)
/// and track (degrees true).
pub fn tpv(asset: &str, t_ms: i64, x: f64, y: f64, speed: f64, track: f64) -> Vec<u8> {
    let (lat, lon) = to_lat_lon(x, y);
    json!({"class": "TPV", "device": asset, "mode": 3, "status": 1, "time": iso(t_ms),
           "lat": lat, "lon": lon, "alt": 412.0, "altMSL": 412.0, "altHAE": 430.1,
           "speed": speed, "track": track, "eph": 0.8, "nSat": 14})
    .to_string()
    .into_bytes()
}

pub fn topic(asset: &str) -> String {
    format!("svc/positioning/{asset}/fix")
}

/// The analytic tests' calibration, with the origin fixed at the test origin.
pub fn config(extra: Value) -> String {
    let mut c = json!({
        "site": "pit-3", "origin": {"lat": LAT0, "lon": LON0}, "default_radius_m": 2.5,
        "warn_gap_m": 10.0, "warn_time_s": 10.0, "critical_gap_m": 3.0, "critical_time_s": 4.0,
        "clear_margin_m": 2.0, "clear_hold_s": 2.0, "stale_after_s": 5.0, "max_extrapolation_s": 2.0,
    });
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c.to_string()
}

pub fn harness(extra: Value) -> Harness<TrafficAwareness> {
    Harness::<TrafficAwareness>::with_acl(&config(extra), ACL).expect("init")
}

/// A published message with its JSON body.
#[derive(Debug, Clone)]
pub struct Out {
    pub topic: String,
    pub body: Value,
}

pub fn take(h: &mut Harness<TrafficAwareness>) -> Vec<Out> {
    h.take_published()
        .into_iter()
        .map(|(topic, b)| Out { topic, body: serde_json::from_slice(&b).expect("published JSON") })
        .collect()
}

pub fn warnings<'a>(outs: &'a [Out], asset: &str) -> Vec<&'a Value> {
    let t = format!("svc/traffic-awareness/{asset}/warning");
    outs.iter().filter(|o| o.topic == t).map(|o| &o.body).collect()
}

pub fn states(msgs: &[&Value]) -> Vec<String> {
    msgs.iter().map(|m| m["state"].as_str().unwrap_or("?").to_owned()).collect()
}

pub fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// Asserts |a - b| <= tol with a readable message.
pub fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (tolerance {tol})");
}

/// Constant-velocity pair geometry, written out for the tests: relative
/// position p and velocity v (other minus self).
pub struct Truth {
    pub distance: f64,
    pub closing: f64,
    pub cpa_time: f64,
    pub cpa_distance: f64,
    /// Time until the separation first equals `r`, if it ever does.
    pub ttc: Option<f64>,
}

pub fn truth(p: (f64, f64), v: (f64, f64), r: f64) -> Truth {
    let d = (p.0 * p.0 + p.1 * p.1).sqrt();
    let vv = v.0 * v.0 + v.1 * v.1;
    let pv = p.0 * v.0 + p.1 * v.1;
    let cpa_time = if vv > 0.0 { (-pv / vv).max(0.0) } else { 0.0 };
    // Distance of the relative track from the origin (cross product), when
    // the closest approach lies ahead.
    let cpa_distance = if cpa_time > 0.0 { (p.0 * v.1 - p.1 * v.0).abs() / vv.sqrt() } else { d };
    let ttc = if d <= r {
        Some(0.0)
    } else if vv > 0.0 && pv < 0.0 && cpa_distance <= r {
        // Quadratic |p + v t| = r, smaller root.
        Some((-pv - (pv * pv - vv * (d * d - r * r)).sqrt()) / vv)
    } else {
        None
    };
    Truth { distance: d, closing: if d > 0.0 { -pv / d } else { 0.0 }, cpa_time, cpa_distance, ttc }
}

/// Time until the separation `|p + v t|` first falls to `d` (0 if it is
/// already within), if ever: the test's own statement of the rule.
pub fn time_to(p: (f64, f64), v: (f64, f64), d: f64) -> Option<f64> {
    let dist2 = p.0 * p.0 + p.1 * p.1;
    if dist2 <= d * d {
        return Some(0.0);
    }
    let (a, b, c) = (v.0 * v.0 + v.1 * v.1, 2.0 * (p.0 * v.0 + p.1 * v.1), dist2 - d * d);
    let disc = b * b - 4.0 * a * c;
    if a == 0.0 || b >= 0.0 || disc < 0.0 {
        return None;
    }
    Some((-b - disc.sqrt()) / (2.0 * a))
}

/// The severity the README's rule gives, from the test's own geometry.
pub fn expected_severity(p: (f64, f64), v: (f64, f64), r: f64, c: &Value) -> &'static str {
    let within = |gap: &str, time: &str| time_to(p, v, r + f(c, gap)).is_some_and(|t| t <= f(c, time));
    if within("critical_gap_m", "critical_time_s") {
        "critical"
    } else if within("warn_gap_m", "warn_time_s") {
        "warning"
    } else {
        "none"
    }
}

/// A moving asset: position (m) at step 0 and constant velocity (m/s).
#[derive(Debug, Clone, Copy)]
pub struct Mover {
    pub id: &'static str,
    pub x: f64,
    pub y: f64,
    pub vx: f64,
    pub vy: f64,
}

impl Mover {
    pub fn at(&self, t_s: f64) -> (f64, f64) {
        (self.x + self.vx * t_s, self.y + self.vy * t_s)
    }
    pub fn speed(&self) -> f64 {
        self.vx.hypot(self.vy)
    }
    pub fn track(&self) -> f64 {
        self.vx.atan2(self.vy).to_degrees().rem_euclid(360.0)
    }
}

/// Start of the test runs: 08:00 UTC.
pub const T0: i64 = DAY_MS + 8 * 3_600_000;

/// Publishes every mover's fix at 10 Hz for `steps` steps (one batch per
/// step, movers in order); returns what was published at each step.
pub fn run(h: &mut Harness<TrafficAwareness>, movers: &[Mover], steps: usize) -> Vec<Vec<Out>> {
    let mut per_step = Vec::new();
    for k in 0..steps {
        let t_ms = T0 + 100 * k as i64;
        let batch = movers
            .iter()
            .map(|m| {
                let (x, y) = m.at(k as f64 * 0.1);
                outpost_sdk::Message::new(topic(m.id), tpv(m.id, t_ms, x, y, m.speed(), m.track()))
            })
            .collect();
        h.send_batch(batch).expect("valid fixes are accepted");
        per_step.push(take(h));
    }
    per_step
}

/// (step, message) of every warning published to `asset`'s topic.
pub fn events(per_step: &[Vec<Out>], asset: &str) -> Vec<(usize, Value)> {
    per_step
        .iter()
        .enumerate()
        .flat_map(|(k, outs)| warnings(outs, asset).into_iter().map(move |v| (k, v.clone())))
        .collect()
}

pub fn config_value(extra: Value) -> Value {
    serde_json::from_str(&config(extra)).expect("json")
}

/// Publishes one batch at step `k` (10 Hz from T0): (id, x, y, speed, track).
pub fn step(h: &mut Harness<TrafficAwareness>, k: usize, fixes: &[(&str, f64, f64, f64, f64)]) -> Vec<Out> {
    let t_ms = T0 + 100 * k as i64;
    let batch = fixes
        .iter()
        .map(|&(id, x, y, s, tr)| outpost_sdk::Message::new(topic(id), tpv(id, t_ms, x, y, s, tr)))
        .collect();
    h.send_batch(batch).expect("valid fixes are accepted");
    take(h)
}

/// A footprint placed on the site, for the tests' own geometry: its core
/// (the four corners of a rectangle in order, or the antenna point for a
/// circle or a rectangle of unknown heading) and a radius around the core.
#[derive(Debug, Clone)]
pub struct Body {
    pub core: Vec<(f64, f64)>,
    pub round: f64,
}

/// A `length` x `width` rectangle centred at (x, y) along `heading_deg`
/// (true), grown by `radius`; without a heading, the circle covering it.
pub fn body(x: f64, y: f64, length: f64, width: f64, radius: f64, heading_deg: Option<f64>) -> Body {
    match heading_deg {
        Some(h) if length > 0.0 || width > 0.0 => {
            let (s, c) = h.to_radians().sin_cos();
            let (fx, fy) = (s * length / 2.0, c * length / 2.0); // forward half-length
            let (rx, ry) = (c * width / 2.0, -s * width / 2.0); // right half-width
            let core = vec![
                (x + fx + rx, y + fy + ry),
                (x + fx - rx, y + fy - ry),
                (x - fx - rx, y - fy - ry),
                (x - fx + rx, y - fy + ry),
            ];
            Body { core, round: radius }
        }
        _ => Body { core: vec![(x, y)], round: radius + 0.5 * length.hypot(width) },
    }
}

impl Body {
    pub fn moved(&self, dx: f64, dy: f64) -> Body {
        Body { core: self.core.iter().map(|p| (p.0 + dx, p.1 + dy)).collect(), round: self.round }
    }
}

fn seg_dist(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (ex, ey) = (b.0 - a.0, b.1 - a.1);
    let l2 = ex * ex + ey * ey;
    let t = if l2 > 0.0 { (((p.0 - a.0) * ex + (p.1 - a.1) * ey) / l2).clamp(0.0, 1.0) } else { 0.0 };
    (p.0 - a.0 - t * ex).hypot(p.1 - a.1 - t * ey)
}

/// Projections of a polygon on an axis: (min, max).
fn project(poly: &[(f64, f64)], ax: (f64, f64)) -> (f64, f64) {
    poly.iter()
        .map(|p| p.0 * ax.0 + p.1 * ax.1)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |m, v| (m.0.min(v), m.1.max(v)))
}

/// Whether two convex polygons (or a point and a polygon) overlap, by the
/// separating axis theorem over both polygons' edge normals.
fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    let mut axes = Vec::new();
    for poly in [a, b] {
        if poly.len() >= 3 {
            for i in 0..poly.len() {
                let (p, q) = (poly[i], poly[(i + 1) % poly.len()]);
                axes.push((q.1 - p.1, p.0 - q.0));
            }
        }
    }
    if axes.is_empty() {
        return false;
    }
    axes.iter().all(|&ax| {
        let (pa, pb) = (project(a, ax), project(b, ax));
        pa.0 <= pb.1 && pb.0 <= pa.1
    })
}

/// Distance between two footprints (at most 0 when they overlap), m.
pub fn body_gap(a: &Body, b: &Body) -> f64 {
    let core = if overlap(&a.core, &b.core) {
        0.0
    } else {
        let mut d = f64::INFINITY;
        for (p, q) in [(a, b), (b, a)] {
            let n = q.core.len();
            for &v in &p.core {
                if n == 1 {
                    d = d.min((v.0 - q.core[0].0).hypot(v.1 - q.core[0].1));
                } else {
                    for i in 0..n {
                        d = d.min(seg_dist(v, q.core[i], q.core[(i + 1) % n]));
                    }
                }
            }
        }
        d
    };
    core - a.round - b.round
}

/// Smallest gap between `a` and `b` over [0, horizon] (ternary search on
/// the convex gap): (time, gap).
pub fn min_gap(a: &Body, va: (f64, f64), b: &Body, vb: (f64, f64), horizon: f64) -> (f64, f64) {
    let gap = |t: f64| body_gap(&a.moved(va.0 * t, va.1 * t), &b.moved(vb.0 * t, vb.1 * t));
    let (mut lo, mut hi) = (0.0, horizon);
    for _ in 0..100 {
        let (m1, m2) = (lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0);
        if gap(m1) <= gap(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    let t = (lo + hi) / 2.0;
    (t, gap(t))
}

/// First time in [0, horizon] at which the gap between `a` and `b`, moving
/// at constant velocities `va`, `vb`, falls to `g`. The gap between two
/// convex bodies moving in straight lines is convex in time, so a ternary
/// search finds its minimum and a bisection the crossing before it.
pub fn first_gap_time(a: &Body, va: (f64, f64), b: &Body, vb: (f64, f64), g: f64, horizon: f64) -> Option<f64> {
    let gap = |t: f64| body_gap(&a.moved(va.0 * t, va.1 * t), &b.moved(vb.0 * t, vb.1 * t));
    if gap(0.0) <= g {
        return Some(0.0);
    }
    let (mut lo, mut hi) = (0.0, horizon);
    for _ in 0..80 {
        let (m1, m2) = (lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0);
        if gap(m1) <= gap(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    let t_min = (lo + hi) / 2.0;
    if gap(t_min) > g {
        return None;
    }
    let (mut lo, mut hi) = (0.0, t_min);
    for _ in 0..80 {
        let m = (lo + hi) / 2.0;
        if gap(m) <= g {
            hi = m;
        } else {
            lo = m;
        }
    }
    Some(hi)
}
