//! A real scene: Argoverse 2 motion-forecasting scenario 0a1e6f0a (Austin,
//! 110 steps at 10 Hz, 58 actors at an intersection), replayed as GNSS
//! fixes and scored against the actors' recorded states.
//!
//! The data (CC BY-NC-SA 4.0, Wilson et al., "Argoverse 2", NeurIPS 2021)
//! must not be copied into this repository: the test reads `tracks.csv`
//! from `$OUTPOST_ARGOVERSE_DIR`, else `<workspace>/../shared/data/argoverse2-scenario`,
//! and fails when it is absent (CI has `../shared` beside the repository).
//!
//! Who is an asset: `vehicle` and `pedestrian` actors. `static`,
//! `background` and `riderless_bicycle` actors are skipped: they are
//! objects the recording car's sensors saw (parked cars, bins, a parked
//! bike), not participants carrying a GNSS receiver, and this service only
//! knows what reports its own position; obstacles would be `no_go` zones.
//!
//! Site calibration for an urban intersection (not a mine): vehicles are
//! 4.6 m x 1.9 m rectangles along their course (a mid-size car; the
//! scenario gives no sizes), pedestrians 0.3 m circles; warning when the
//! gap between footprints is predicted to fall to 1.5 m within 3 s
//! (forward-collision warnings use 2-3 s), critical at 0.5 m within 1.5 s;
//! stale after 1 s, extrapolation at most 0.5 s.
//!
//! Ground truth, computed here in the x/y frame with the test's own
//! geometry (tests/common: corners, separating axes, and a search over
//! time, not the service's Minkowski-sum formulas): for each step and each
//! pair of assets present at that step, whether the gap between their
//! footprints, moving at constant velocity, falls to 1.5 m within 3 s, and
//! the time until it falls to 0 (TTC). A vehicle's rectangle lies along its
//! course when it moves at 1 m/s or more, else along its last such course
//! (kept while the actor is live: absent at most 1 s), else it is the
//! circle covering the car (the README's rule). A warning active at step t
//! for a pair (read from the site picture published after the step) is
//! correct if the truth says so. Pairs with an asset absent at that step
//! (tracks start, end and have gaps) are not scored.
//!
//! What is asserted and why: the service computes the same rule from
//! lat/lon fixes, so it must agree with the x/y truth except for its frame
//! (origin at the first fix, not at the test's origin: relative scale
//! error ~1e-4, a fraction of a millimetre here), the course read back
//! from the TPV's degrees, and the 1 ms rounding of published TTCs. Precision and recall >= 0.98 per pair-step and per
//! encounter therefore leave room only for threshold ties, not for a wrong
//! rule, a missed pair or lost fixes. TTC: mean error <= 0.02 s, max
//! <= 0.2 s. The max is loose on purpose: for a grazing pair (closest
//! approach just inside the collision radius) the TTC is `t* - sqrt(R^2 -
//! d*^2)/|v|`, whose slope in d* is unbounded, so a 0.2 mm frame
//! difference moves it by a tenth of a second at walking speeds.
//! Service encounters are judged only where both assets are in the
//! recording at some step of the encounter (tracks end when actors leave
//! the sensor's range; the service keeps them until stale). With
//! hysteresis (0.5 m margin, 0.5 s hold) warnings last longer: its recall
//! must stay >= 0.98 and it must not send more messages; its precision is
//! printed.

mod common;

use common::{body, body_gap, first_gap_time, min_gap, Body};
use outpost_sdk::testing::Harness;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use traffic_awareness::TrafficAwareness;

/// The scene's city frame is placed at Austin, TX.
const LAT0: f64 = 30.2672;
const LON0: f64 = -97.7431;
/// 2026-03-01T08:00:00Z: step 0.
const T0_MS: i64 = 1_772_323_200_000 + 8 * 3_600_000;
const WARN_GAP: f64 = 1.5;
const HORIZON: f64 = 3.0;

const CAR: (f64, f64) = (4.6, 1.9);
const PED_RADIUS: f64 = 0.3;
/// Course is trusted from this speed (the service's default).
const HEADING_MIN_SPEED: f64 = 1.0;
/// An asset absent this many steps or fewer is still live (stale after 1 s).
const LIVE_GAP_STEPS: usize = 11;
/// TTCs compared up to 10 minutes (the service gives any, however far).
const TTC_HORIZON: f64 = 600.0;

fn calibration(margin: f64, hold: f64) -> String {
    json!({
        "site": "austin-0a1e6f0a",
        "default_radius_m": PED_RADIUS,
        "classes": [{"name": "vehicle", "prefix": "veh-", "length_m": CAR.0, "width_m": CAR.1},
                    {"name": "pedestrian", "prefix": "ped-", "radius_m": PED_RADIUS}],
        "warn_gap_m": WARN_GAP, "warn_time_s": HORIZON, "critical_gap_m": 0.5, "critical_time_s": 1.5,
        "clear_margin_m": margin, "clear_hold_s": hold, "stale_after_s": 1.0, "max_extrapolation_s": 0.5,
        "picture_interval_s": 0.1, "max_speed_mps": 30.0, "design_closing_speed_mps": 20.0,
    })
    .to_string()
}

fn data_dir() -> PathBuf {
    match std::env::var_os("OUTPOST_ARGOVERSE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/argoverse2-scenario")),
    }
}

#[derive(Debug, Clone)]
struct State {
    id: String,
    kind: String,
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
}

/// Per timestep, the assets present (vehicles and pedestrians).
fn load(path: &PathBuf) -> Vec<Vec<State>> {
    let text = std::fs::read_to_string(path).expect("read tracks.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    let (c_id, c_type, c_step) = (col("track_id"), col("object_type"), col("timestep"));
    let (c_x, c_y, c_vx, c_vy) = (col("position_x"), col("position_y"), col("velocity_x"), col("velocity_y"));
    let mut steps: Vec<Vec<State>> = vec![Vec::new(); 110];
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let kind = f[c_type];
        if kind != "vehicle" && kind != "pedestrian" {
            continue;
        }
        let num = |c: usize| f[c].parse::<f64>().unwrap_or_else(|_| panic!("bad number in {line}"));
        let step: usize = f[c_step].parse().expect("timestep");
        let prefix = if kind == "vehicle" { "veh" } else { "ped" };
        steps[step].push(State {
            id: format!("{prefix}-{}", f[c_id]),
            kind: kind.to_owned(),
            x: num(c_x),
            y: num(c_y),
            vx: num(c_vx),
            vy: num(c_vy),
        });
    }
    steps
}

/// x east / y north (m) around (LAT0, LON0) to degrees, with the WGS84
/// ellipsoid's radii of curvature at the origin.
fn lat_lon(x: f64, y: f64) -> (f64, f64) {
    let (a, e2) = (6_378_137.0_f64, 0.006_694_379_990_14_f64);
    let s = LAT0.to_radians().sin();
    let w = (1.0 - e2 * s * s).sqrt();
    let (m, n) = (a * (1.0 - e2) / (w * w * w), a / w);
    (LAT0 + (y / m).to_degrees(), LON0 + (x / (n * LAT0.to_radians().cos())).to_degrees())
}

fn iso(step: usize) -> String {
    let ms = 8 * 3_600_000 + 100 * step as i64;
    format!("2026-03-01T{:02}:{:02}:{:02}.{:03}Z", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

fn tpv(s: &State, step: usize) -> Vec<u8> {
    let (lat, lon) = lat_lon(s.x, s.y);
    let speed = s.vx.hypot(s.vy);
    let track = s.vx.atan2(s.vy).to_degrees().rem_euclid(360.0);
    json!({"class": "TPV", "device": s.id, "mode": 3, "time": iso(step), "lat": lat, "lon": lon,
           "speed": speed, "track": track})
    .to_string()
    .into_bytes()
}

/// An actor's footprint now, with the heading the rule gives it.
fn footprint(s: &State, heading: Option<f64>) -> Body {
    if s.kind == "vehicle" {
        body(s.x, s.y, CAR.0, CAR.1, 0.0, heading)
    } else {
        body(s.x, s.y, 0.0, 0.0, PED_RADIUS, None)
    }
}

/// Truth for one pair at one step: (warn, ttc).
fn truth(a: &State, ha: Option<f64>, b: &State, hb: Option<f64>) -> (bool, Option<f64>) {
    let (fa, fb) = (footprint(a, ha), footprint(b, hb));
    let (va, vb) = ((a.vx, a.vy), (b.vx, b.vy));
    let warn = first_gap_time(&fa, va, &fb, vb, WARN_GAP, HORIZON).is_some();
    let ttc = first_gap_time(&fa, va, &fb, vb, 0.0, TTC_HORIZON);
    (warn, ttc)
}

/// An active pair in the picture: (ttc_s, gap_m, cpa_gap_time_s, cpa_gap_m).
type Seen = (Option<f64>, f64, f64, f64);

/// A service encounter: its pair, start step, clear step.
type ServiceEncounter = ((String, String), usize, Option<usize>);

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

#[derive(Default, Debug)]
struct Score {
    tp: usize,
    fp: usize,
    fn_: usize,
    unscored: usize,
    enc_truth: usize,
    enc_truth_found: usize,
    enc_service: usize,
    enc_service_right: usize,
    enc_unscored: usize,
    ttc_errors: Vec<f64>,
    /// |truth - service| of the current and the closest-approach gaps, m.
    gap_errors: Vec<f64>,
    ttc_only_one_side: usize,
    messages: usize,
    fixes: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
    fn enc_precision(&self) -> f64 {
        self.enc_service_right as f64 / self.enc_service.max(1) as f64
    }
    fn enc_recall(&self) -> f64 {
        self.enc_truth_found as f64 / self.enc_truth.max(1) as f64
    }
    fn ttc_mean(&self) -> f64 {
        self.ttc_errors.iter().sum::<f64>() / self.ttc_errors.len().max(1) as f64
    }
    fn ttc_max(&self) -> f64 {
        self.ttc_errors.iter().copied().fold(0.0, f64::max)
    }
    fn ttc_p95(&self) -> f64 {
        let mut e = self.ttc_errors.clone();
        e.sort_by(f64::total_cmp);
        e.get((e.len() * 95 / 100).min(e.len().saturating_sub(1))).copied().unwrap_or(0.0)
    }
}

fn replay(steps: &[Vec<State>], config: &str) -> Score {
    let acl =
        ["svc/traffic-awareness/+/warning", "svc/traffic-awareness/+/zone", "svc/traffic-awareness/site/+/picture"];
    let mut h = Harness::<TrafficAwareness>::with_acl(config, &acl).expect("init");
    let mut score = Score::default();
    // Per pair: steps where the truth warns / the service has the pair active.
    let mut truth_steps: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
    let mut present_steps: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
    // Service encounters from the lifecycle messages: id -> (pair, first step, last step).
    let mut service_enc: BTreeMap<String, ServiceEncounter> = BTreeMap::new();
    // Per actor: last course at speed (degrees true) and the step last seen.
    let mut headings: BTreeMap<String, (Option<f64>, usize)> = BTreeMap::new();
    for (k, present) in steps.iter().enumerate() {
        for s in present {
            let kept = headings.get(&s.id).filter(|(_, seen)| k - seen <= LIVE_GAP_STEPS).and_then(|h| h.0);
            let h = if s.vx.hypot(s.vy) >= HEADING_MIN_SPEED {
                Some(s.vx.atan2(s.vy).to_degrees().rem_euclid(360.0))
            } else {
                kept
            };
            headings.insert(s.id.clone(), (h, k));
        }
        let heading = |s: &State| headings.get(&s.id).and_then(|h| h.0);
        let batch = present
            .iter()
            .map(|s| outpost_sdk::Message::new(format!("svc/positioning/{}/fix", s.id), tpv(s, k)))
            .collect();
        h.send_batch(batch).expect("every fix of the scene is valid");
        score.fixes += present.len();
        h.tick(T0_MS as u64 + 100 * k as u64).expect("tick");
        let mut active: BTreeMap<(String, String), Seen> = BTreeMap::new();
        for (topic, body) in h.take_published() {
            let v: Value = serde_json::from_slice(&body).expect("json");
            if topic.ends_with("/picture") {
                for e in v["encounters"].as_array().into_iter().flatten() {
                    let key = pair(e["a"].as_str().unwrap_or(""), e["b"].as_str().unwrap_or(""));
                    let num = |k: &str| e[k].as_f64().unwrap_or(f64::NAN);
                    active.insert(key, (e["ttc_s"].as_f64(), num("gap_m"), num("cpa_gap_time_s"), num("cpa_gap_m")));
                }
                assert!(
                    v["counts"]["encounters"].as_u64() == Some(active.len() as u64),
                    "picture lists every encounter"
                );
            } else if topic.ends_with("/warning") {
                score.messages += 1;
                let id = v["encounter"].as_str().unwrap_or("").to_owned();
                let key = pair(v["asset"].as_str().unwrap_or(""), v["other"].as_str().unwrap_or(""));
                match v["state"].as_str() {
                    Some("start") => {
                        service_enc.entry(id).or_insert((key, k, None));
                    }
                    Some("clear") => {
                        if let Some(e) = service_enc.get_mut(&id) {
                            e.2 = Some(k);
                        }
                    }
                    _ => {}
                }
            }
        }
        let by_id: BTreeMap<&str, &State> = present.iter().map(|s| (s.id.as_str(), s)).collect();
        for (i, a) in present.iter().enumerate() {
            for b in &present[i + 1..] {
                let key = pair(&a.id, &b.id);
                let (warn, ttc) = truth(a, heading(a), b, heading(b));
                present_steps.entry(key.clone()).or_default().insert(k);
                if warn {
                    truth_steps.entry(key.clone()).or_default().insert(k);
                }
                match (warn, active.get(&key)) {
                    (true, Some((svc_ttc, gap, cpa_t, cpa_gap))) => {
                        score.tp += 1;
                        // Distances between the footprints, now and at the
                        // closest approach (within the horizon the truth searches).
                        let (fa, fb) = (footprint(a, heading(a)), footprint(b, heading(b)));
                        score.gap_errors.push((body_gap(&fa, &fb) - gap).abs());
                        if *cpa_t <= TTC_HORIZON {
                            let (_, want) = min_gap(&fa, (a.vx, a.vy), &fb, (b.vx, b.vy), TTC_HORIZON);
                            score.gap_errors.push((want - cpa_gap).abs());
                        }
                        match (ttc, svc_ttc) {
                            (Some(t), Some(s)) => score.ttc_errors.push((t - s).abs()),
                            (None, None) => {}
                            // Parked cars jittering by centimetres have TTCs of
                            // days; the truth looks TTC_HORIZON ahead.
                            (None, Some(s)) if *s > TTC_HORIZON => {}
                            _ => score.ttc_only_one_side += 1,
                        }
                    }
                    (true, None) => score.fn_ += 1,
                    (false, Some(_)) => score.fp += 1,
                    (false, None) => {}
                }
            }
        }
        score.unscored +=
            active.keys().filter(|(a, b)| !by_id.contains_key(a.as_str()) || !by_id.contains_key(b.as_str())).count();
    }
    // Encounters: truth runs are maximal runs of consecutive warning steps.
    let mut truth_runs: Vec<((String, String), usize, usize)> = Vec::new();
    for (key, ks) in &truth_steps {
        let mut run: Option<(usize, usize)> = None;
        for &k in ks {
            run = match run {
                Some((s, e)) if k == e + 1 => Some((s, k)),
                Some((s, e)) => {
                    truth_runs.push((key.clone(), s, e));
                    Some((k, k))
                }
                None => Some((k, k)),
            };
        }
        if let Some((s, e)) = run {
            truth_runs.push((key.clone(), s, e));
        }
    }
    let overlaps = |key: &(String, String), s: usize, e: usize, s2: usize, e2: usize, k2: &(String, String)| {
        key == k2 && s <= e2 && s2 <= e
    };
    score.enc_truth = truth_runs.len();
    for (key, s, e) in &truth_runs {
        if service_enc.values().any(|(k2, s2, c)| overlaps(key, *s, *e, *s2, c.map_or(usize::MAX, |c| c - 1), k2)) {
            score.enc_truth_found += 1;
        }
    }
    for (k2, s2, c) in service_enc.values() {
        let e2 = c.map_or(usize::MAX, |c| c.saturating_sub(1));
        // Only encounters active at some step where both assets are in the
        // recording can be judged; the others involve an asset whose track
        // ended (kept, extrapolated, until stale_after_s).
        let judged = present_steps.get(k2).is_some_and(|ks| ks.range(*s2..=e2).next().is_some());
        if !judged {
            score.enc_unscored += 1;
            continue;
        }
        score.enc_service += 1;
        if truth_runs.iter().any(|(key, s, e)| overlaps(key, *s, *e, *s2, e2, k2)) {
            score.enc_service_right += 1;
        }
    }
    score
}

fn report(name: &str, s: &Score) {
    println!(
        "{name}: {} fixes, {} warning messages; pair-steps: TP {} FP {} FN {} (unscored, an asset absent: {}) \
         precision {:.4} recall {:.4}; encounters: truth {} (found {}), service {} (right {}; {} more with an asset gone) precision {:.4} recall {:.4}; \
         TTC error over {} pair-steps: mean {:.4} s, p95 {:.4} s, max {:.4} s ({} with a TTC on one side only)",
        s.fixes,
        s.messages,
        s.tp,
        s.fp,
        s.fn_,
        s.unscored,
        s.precision(),
        s.recall(),
        s.enc_truth,
        s.enc_truth_found,
        s.enc_service,
        s.enc_service_right,
        s.enc_unscored,
        s.enc_precision(),
        s.enc_recall(),
        s.ttc_errors.len(),
        s.ttc_mean(),
        s.ttc_p95(),
        s.ttc_max(),
        s.ttc_only_one_side,
    );
}

#[test]
fn argoverse_intersection_warnings_match_the_recorded_motion() {
    let dir = data_dir();
    let csv = dir.join("tracks.csv");
    assert!(
        csv.is_file(),
        "Argoverse 2 scene not found at {}: put ../shared/data beside the repository or set OUTPOST_ARGOVERSE_DIR",
        csv.display()
    );
    let steps = load(&csv);
    assert_eq!(steps.len(), 110);
    let s = replay(&steps, &calibration(0.0, 0.0));
    report("no hysteresis (detector)", &s);
    assert!(s.tp >= 100, "the scene must hold warnings to score ({} true positives)", s.tp);
    assert!(s.precision() >= 0.98 && s.recall() >= 0.98, "pair-step precision/recall");
    assert!(s.enc_precision() >= 0.98 && s.enc_recall() >= 0.98, "encounter precision/recall");
    assert!(s.ttc_errors.len() >= 50, "TTCs compared: {}", s.ttc_errors.len());
    assert!(s.ttc_mean() <= 0.02 && s.ttc_max() <= 0.2, "TTC error mean {} s, max {} s", s.ttc_mean(), s.ttc_max());
    assert_eq!(s.ttc_only_one_side, 0, "a TTC on one side only");
    // Gaps: the frame (about 1e-4 relative over tens of metres) and the 1 mm
    // rounding of published values; a centimetre is a wrong footprint.
    let gap_max = s.gap_errors.iter().copied().fold(0.0, f64::max);
    println!("gap errors over {} comparisons: max {gap_max:.4} m", s.gap_errors.len());
    assert!(s.gap_errors.len() >= 2 * s.tp - 50 && gap_max <= 0.01, "gap error max {gap_max} m");

    let hy = replay(&steps, &calibration(0.5, 0.5));
    report("hysteresis 0.5 m / 0.5 s", &hy);
    assert!(hy.recall() >= 0.98, "hysteresis only lengthens warnings");
    assert!(hy.messages <= s.messages, "hysteresis must not add messages ({} vs {})", hy.messages, s.messages);
}
