//! Agreement with gpsd's expected decodes on real receiver captures
//! (tests/data/gpsd-nmea-logs, from gpsd's regression suite).
//!
//! How we match (the data's README asks to say it): gpsd emits several TPVs
//! while a reporting cycle builds up (e.g. after RMC with mode 2, then after
//! GGA with mode 3) and one per cycle once it has learned the cycle's last
//! sentence. We publish one fix per cycle. So for every epoch (distinct
//! `time`) the reference is gpsd's last TPV of that epoch, its complete view
//! of the cycle, and ours is our last fix with that time. Times are compared
//! modulo 1024 GPS weeks: gpsd 3.20 moved most of these old captures' dates
//! forward by one GPS week rollover (2014 became 2034) because of its
//! rollover heuristic; we publish the date the receiver sent. `altHAE` is
//! compared when the receiver sent a geoid separation (otherwise gpsd fills
//! it from its own geoid model, which is not a measurement).
//! Tolerances: lat/lon 1e-6 deg, alt 0.05 m, speed 0.01 m/s, track 0.1 deg,
//! mode equal.

use outpost_sdk::testing::Harness;
use positioning::Positioning;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROLLOVER_S: f64 = 1024.0 * 7.0 * 86_400.0;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/gpsd-nmea-logs")
}

/// Seconds since the epoch of gpsd's `2017-07-19T08:50:00.800Z`, modulo 1024 weeks, in ms.
fn epoch_key(t: &str) -> Option<i64> {
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let rest = rest.trim_end_matches('Z');
    let mut hms = rest.split(':');
    let (h, mi, s) = (hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?);
    let days = positioning::tpv::days_from_civil(y as i32, m as u32, day as u32) as f64;
    let secs = days * 86_400.0 + h * 3600.0 + mi * 60.0 + s;
    Some((secs.rem_euclid(ROLLOVER_S) * 1000.0).round() as i64)
}

fn close(a: Option<f64>, b: Option<f64>, tol: f64) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= tol,
        _ => false,
    }
}

/// Field-by-field comparison; returns the first field that disagrees.
fn disagreement(exp: &Value, ours: &Value) -> Option<&'static str> {
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    if exp["mode"] != ours["mode"] {
        return Some("mode");
    }
    for (k, tol) in [("lat", 1e-6), ("lon", 1e-6), ("alt", 0.05), ("speed", 0.01), ("track", 0.1)] {
        if exp.get(k).is_some() && !close(f(exp, k), f(ours, k), tol) {
            return Some(k);
        }
    }
    if exp.get("altHAE").is_some() && ours.get("geoidSep").is_some() && !close(f(exp, "altHAE"), f(ours, "altHAE"), 0.05) {
        return Some("altHAE");
    }
    None
}

struct Score {
    cycles: usize,
    cycles_ok: usize,
    tpvs: usize,
    tpvs_ok: usize,
    misses: BTreeMap<&'static str, usize>,
}

fn score(expected_chk: &Path, ours: &[Value]) -> Score {
    let text = std::fs::read_to_string(expected_chk).expect("chk");
    let expected: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with("{\"class\":\"TPV\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("lat").is_some() && v.get("time").is_some())
        .collect();
    let mut our_by_time: BTreeMap<i64, &Value> = BTreeMap::new();
    for v in ours {
        if let Some(k) = v["time"].as_str().and_then(epoch_key) {
            our_by_time.insert(k, v);
        }
    }
    let mut last_expected: BTreeMap<i64, &Value> = BTreeMap::new();
    for v in &expected {
        if let Some(k) = v["time"].as_str().and_then(epoch_key) {
            last_expected.insert(k, v);
        }
    }
    let mut s = Score { cycles: last_expected.len(), cycles_ok: 0, tpvs: expected.len(), tpvs_ok: 0, misses: BTreeMap::new() };
    for (k, exp) in &last_expected {
        match our_by_time.get(k) {
            None => *s.misses.entry("no fix for that time").or_default() += 1,
            Some(ours) => match disagreement(exp, ours) {
                None => s.cycles_ok += 1,
                Some(field) => *s.misses.entry(field).or_default() += 1,
            },
        }
    }
    for exp in &expected {
        let k = exp["time"].as_str().and_then(epoch_key);
        if k.and_then(|k| our_by_time.get(&k)).is_some_and(|ours| disagreement(exp, ours).is_none()) {
            s.tpvs_ok += 1;
        }
    }
    s
}

fn run(path: &Path, topic: &str, chunk: Option<usize>) -> Vec<Value> {
    let mut h = Harness::<Positioning>::with_acl("{}", &["svc/positioning/+/fix"]).expect("init");
    let data = std::fs::read(path).expect("capture");
    match chunk {
        Some(n) => {
            for c in data.chunks(n) {
                h.send(topic, c.to_vec()).expect("handle");
            }
        }
        None => {
            for line in data.split(|&b| b == b'\n') {
                h.send(topic, line.to_vec()).expect("handle");
            }
        }
    }
    h.service().flush_all().expect("flush");
    h.take_published().into_iter().map(|(_, p)| serde_json::from_slice(&p).expect("fix is JSON")).collect()
}

fn report(kind: &str, files: Vec<PathBuf>, topic: &str, chunk: Option<usize>) -> (usize, usize, usize, usize, Vec<(String, f64)>) {
    let (mut c, mut c_ok, mut t, mut t_ok) = (0, 0, 0, 0);
    let mut per_file = Vec::new();
    println!("\n{kind}: {:<36} {:>15} {:>15}  misses", "capture", "cycles ok", "TPVs ok");
    for f in files {
        let ours = run(&f, topic, chunk);
        let chk = PathBuf::from(format!("{}.chk", f.display()));
        let s = score(&chk, &ours);
        if s.cycles == 0 {
            continue;
        }
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
        let pct = 100.0 * s.cycles_ok as f64 / s.cycles as f64;
        println!(
            "{kind}: {name:<36} {:>6}/{:<6}{pct:5.1}% {:>6}/{:<6}  {:?}",
            s.cycles_ok, s.cycles, s.tpvs_ok, s.tpvs, s.misses
        );
        per_file.push((name, pct));
        c += s.cycles;
        c_ok += s.cycles_ok;
        t += s.tpvs;
        t_ok += s.tpvs_ok;
    }
    println!(
        "{kind}: TOTAL cycles {c_ok}/{c} ({:.1}%), TPVs {t_ok}/{t} ({:.1}%)",
        100.0 * c_ok as f64 / c as f64,
        100.0 * t_ok as f64 / t as f64
    );
    (c, c_ok, t, t_ok, per_file)
}

fn captures(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log") && PathBuf::from(format!("{}.chk", p.display())).exists())
        .collect();
    v.sort();
    v
}

/// Measured 94.8% of 807 cycles (83% of gpsd's 999 individual TPVs). The
/// misses: gpsd's mode heuristics on four receivers (iTrek, humminbird,
/// garmin48, sl869: e.g. GSA 3D with no position sentence), and speeds gpsd
/// derives differently on a 10 Hz GGA-only receiver (rst39). 93% leaves room
/// for nothing else to break.
const THRESHOLD_NMEA: f64 = 0.93;
/// No capture may fall below this (the weakest, garmin48, is at 54%).
const FLOOR_PER_FILE: f64 = 50.0;

#[test]
fn nmea_captures_agree_with_gpsd() {
    let (c, c_ok, _, _, per_file) = report("NMEA", captures(&data_dir()), "site/test/rx/gnss/nmea", None);
    let overall = c_ok as f64 / c as f64;
    assert!(overall >= THRESHOLD_NMEA, "overall cycle agreement {:.1}% below {:.0}%", overall * 100.0, THRESHOLD_NMEA * 100.0);
    let weak: Vec<_> = per_file.iter().filter(|(_, pct)| *pct < FLOOR_PER_FILE).collect();
    assert!(weak.is_empty(), "captures below {FLOOR_PER_FILE}%: {weak:?}");
    assert!(per_file.len() >= 55, "only {} captures scored", per_file.len());
}

/// UBX: fixes come from NAV-PVT (u-blox 8 and later). The captures whose
/// receivers send only NAV-SOL/NAV-POSECEF (ublox-8-time, neo-m8t, aek-4t,
/// lea-4t) give no fixes yet and are reported, not scored; every NAV-PVT
/// capture must agree fully.
#[test]
fn ubx_captures_agree_with_gpsd() {
    let dir = data_dir().join("ubx-binary");
    for name in ["ublox-neo-m8n.log", "ublox-zed-f9t-rtcm3.log"] {
        let (c, c_ok, _, _, _) = report("UBX", vec![dir.join(name)], "site/test/rx/gnss/ubx", Some(64));
        assert!(c > 20 && c_ok == c, "{name}: {c_ok}/{c} cycles");
    }
    report("UBX (NAV-SOL only, not scored)", captures(&dir), "site/test/rx/gnss/ubx", Some(64));
}
