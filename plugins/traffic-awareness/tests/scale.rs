//! 500 moving assets on one site: every fix is processed, and the spatial
//! grid misses no pair: the encounters the service reports step by step
//! equal a brute-force check of all 124,750 pairs, done here with the
//! test's own geometry. A fifth of the assets are 12 m x 6 m haul trucks
//! and a fifth 10 m x 4 m loaders, as rectangles along their course (the
//! covering circle below 1 m/s, where the course is not trusted); the rest
//! are 2.5 m circles. (Time per call is measured by the benchmarks, not
//! here; the figure printed is only for orientation.)

mod common;

use common::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

const N: usize = 500;
const STEPS: usize = 20;

/// xorshift64*: a fixed, dependency-free pseudo-random sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

type M = (String, f64, f64, f64, f64);

/// (length, width, radius) by id, as the calibration above says.
fn shape(id: &str) -> (f64, f64, f64) {
    if id.starts_with("m0") || id.starts_with("m1") {
        (12.0, 6.0, 0.0)
    } else if id.starts_with("m2") {
        (10.0, 4.0, 0.0)
    } else {
        (0.0, 0.0, 2.5)
    }
}

fn placed(m: &M, t_s: f64) -> Body {
    let (l, w, r) = shape(&m.0);
    let heading = (m.3.hypot(m.4) >= 1.0).then(|| m.3.atan2(m.4).to_degrees().rem_euclid(360.0));
    body(m.1 + m.3 * t_s, m.2 + m.4 * t_s, l, w, r, heading)
}

/// The README's severity rule between footprints, from the test's geometry.
fn severity(a: &M, b: &M, t_s: f64, p: (f64, f64), cfg: &serde_json::Value) -> &'static str {
    let cover = |m: &M| {
        let (l, w, r) = shape(&m.0);
        0.5 * l.hypot(w) + r
    };
    let v = (b.3 - a.3, b.4 - a.4);
    // Footprints lie inside their covering circles: far pairs need no more.
    if !time_to(p, v, cover(a) + cover(b) + f(cfg, "warn_gap_m")).is_some_and(|t| t <= f(cfg, "warn_time_s")) {
        return "none";
    }
    let (ba, bb) = (placed(a, t_s), placed(b, t_s));
    let within =
        |gap: &str, time: &str| first_gap_time(&ba, (a.3, a.4), &bb, (b.3, b.4), f(cfg, gap), f(cfg, time)).is_some();
    if within("critical_gap_m", "critical_time_s") {
        "critical"
    } else if within("warn_gap_m", "warn_time_s") {
        "warning"
    } else {
        "none"
    }
}

#[test]
fn five_hundred_assets_every_pair_found() {
    // Instant lifecycle (no margin, no hold) so the active set is a pure
    // function of the current geometry and can be compared exactly.
    let extra = json!({"clear_margin_m": 0.0, "clear_hold_s": 0.0, "max_encounters": 20000, "max_assets": 1000,
                       "classes": [{"name": "haul", "prefix": "m0", "length_m": 12.0, "width_m": 6.0},
                                   {"name": "haul", "prefix": "m1", "length_m": 12.0, "width_m": 6.0},
                                   {"name": "loader", "prefix": "m2", "length_m": 10.0, "width_m": 4.0}]});
    let cfg = config_value(extra.clone());
    let mut h = harness(extra);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // 2.4 km x 2.4 km, 0 to 12 m/s in any direction.
    let movers: Vec<M> = (0..N)
        .map(|i| {
            let (x, y) = (rng.next() * 2400.0 - 1200.0, rng.next() * 2400.0 - 1200.0);
            let (s, dir) = (rng.next() * 12.0, rng.next() * std::f64::consts::TAU);
            (format!("m{i:03}"), x, y, s * dir.sin(), s * dir.cos())
        })
        .collect();
    let mut active: BTreeSet<(String, String)> = BTreeSet::new();
    let mut truth_prev: BTreeMap<(usize, usize), &str> = BTreeMap::new();
    let (mut expected_starts, mut expected_escalates, mut expected_clears) = (0, 0, 0);
    let (mut starts, mut escalates, mut clears) = (0, 0, 0);
    let mut peak: BTreeMap<(usize, usize), &str> = BTreeMap::new();
    let mut service_time = std::time::Duration::ZERO;
    for k in 0..STEPS {
        // 1 s steps.
        let t_s = k as f64;
        let t_ms = T0 + 1000 * k as i64;
        let batch: Vec<outpost_sdk::Message> = movers
            .iter()
            .map(|(id, x, y, vx, vy)| {
                let (s, tr) = (vx.hypot(*vy), vx.atan2(*vy).to_degrees().rem_euclid(360.0));
                outpost_sdk::Message::new(topic(id), tpv(id, t_ms, x + vx * t_s, y + vy * t_s, s, tr))
            })
            .collect();
        let started = std::time::Instant::now();
        h.send_batch(batch).expect("all fixes valid");
        service_time += started.elapsed();
        for o in take(&mut h) {
            if !o.topic.ends_with("/warning") {
                continue;
            }
            let (a, b) =
                (o.body["asset"].as_str().unwrap_or("").to_owned(), o.body["other"].as_str().unwrap_or("").to_owned());
            if a > b {
                continue; // count each pair once (the mirror message is the other side's)
            }
            match o.body["state"].as_str() {
                Some("start") => {
                    starts += 1;
                    active.insert((a, b));
                }
                Some("escalate") => escalates += 1,
                Some("clear") => {
                    clears += 1;
                    active.remove(&(a, b));
                }
                s => panic!("unexpected state {s:?}"),
            }
        }
        // Brute force over every pair, at this step's common time.
        let mut truth: BTreeSet<(String, String)> = BTreeSet::new();
        for i in 0..N {
            for j in i + 1..N {
                let (a, b) = (&movers[i], &movers[j]);
                let p = (b.1 - a.1 + (b.3 - a.3) * t_s, b.2 - a.2 + (b.4 - a.4) * t_s);
                let sev = severity(a, b, t_s, p, &cfg);
                let was = truth_prev.get(&(i, j)).copied().unwrap_or("none");
                match (was, sev) {
                    ("none", "none") => {}
                    ("none", s) => {
                        expected_starts += 1;
                        peak.insert((i, j), s);
                    }
                    (_, "none") => {
                        expected_clears += 1;
                        peak.remove(&(i, j));
                    }
                    (_, "critical") if peak.get(&(i, j)) == Some(&"warning") => {
                        expected_escalates += 1;
                        peak.insert((i, j), "critical");
                    }
                    _ => {}
                }
                if sev != "none" {
                    truth.insert((a.0.clone(), b.0.clone()));
                    truth_prev.insert((i, j), sev);
                } else {
                    truth_prev.remove(&(i, j));
                }
            }
        }
        let missed: Vec<_> = truth.difference(&active).take(5).collect();
        let extra: Vec<_> = active.difference(&truth).take(5).collect();
        assert!(missed.is_empty() && extra.is_empty(), "step {k}: missed {missed:?}, extra {extra:?}");
    }
    h.tick(1).expect("tick");
    let pic = take(&mut h).into_iter().find(|o| o.topic.ends_with("/picture")).expect("picture");
    assert_eq!(pic.body["counts"]["assets"], N);
    assert_eq!(pic.body["counts"]["encounters"], active.len());
    let counters = h.host().counters;
    assert_eq!(counters.get("fixes"), Some(&((N * STEPS) as u64)));
    assert_eq!((starts, escalates, clears), (expected_starts, expected_escalates, expected_clears));
    assert!(starts > 100, "the scene must hold encounters to be a test ({starts})");
    let checks = counters.get("pair_checks").copied().unwrap_or(0);
    println!(
        "{N} assets x {STEPS} steps: {} fixes, {starts} starts, {escalates} escalations, {clears} clears, {} active at the end; \
         {checks} pair checks ({:.1} per fix, brute force would be {}); {:.1} us per fix (this build, JSON included)",
        N * STEPS,
        active.len(),
        checks as f64 / (N * STEPS) as f64,
        N - 1,
        service_time.as_secs_f64() * 1e6 / (N * STEPS) as f64
    );
}
