//! Agreement with gpsd's expected decodes on real receiver captures
//! (tests/data/gpsd-nmea-logs, from gpsd 3.20's regression suite).
//!
//! How we match (the data's README asks to say it): every expected TPV with
//! `lat`/`lon` and a `time` is scored. gpsd may emit several TPVs for one
//! epoch while a cycle builds up (e.g. mode 2 after RMC, then mode 3 after
//! GGA); we publish one fix per cycle, so each expected TPV is compared with
//! our fix carrying the same `time` (the last one if we emitted several).
//! Times are compared exactly (as instants, to the millisecond): our service
//! applies gpsd's week-rollover correction itself. Compared: `mode` (equal),
//! `lat`/`lon` (1e-6 deg), `alt` and `altHAE` (0.05 m), `speed` (0.01 m/s),
//! `track` (0.1 deg); fields absent from the expected TPV are not compared.
//! The table also shows "epochs": gpsd's last TPV per time, its complete
//! view of the cycle.

use outpost_sdk::testing::Harness;
use positioning::Positioning;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/gpsd-nmea-logs")).to_path_buf()
}

/// `2017-07-19T08:50:00.800Z` to Unix milliseconds.
fn epoch_ms(t: &str) -> Option<i64> {
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut hms = rest.trim_end_matches('Z').split(':');
    let (h, mi, s) =
        (hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?);
    let days = positioning::tpv::days_from_civil(y as i32, m as u32, day as u32) as f64;
    Some(((days * 86_400.0 + h * 3600.0 + mi * 60.0 + s) * 1000.0).round() as i64)
}

/// Field-by-field comparison; returns the first field that disagrees.
fn disagreement(exp: &Value, ours: &Value) -> Option<&'static str> {
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    if exp["mode"] != ours["mode"] {
        return Some("mode");
    }
    for (k, tol) in [("lat", 1e-6), ("lon", 1e-6), ("alt", 0.05), ("altHAE", 0.05), ("speed", 0.01), ("track", 0.1)] {
        if exp.get(k).is_some() {
            match (f(exp, k), f(ours, k)) {
                (Some(a), Some(b)) if (a - b).abs() <= tol => {}
                _ => return Some(k),
            }
        }
    }
    None
}

#[derive(Default)]
struct Score {
    tpvs: usize,
    tpvs_ok: usize,
    epochs: usize,
    epochs_ok: usize,
    /// Expected TPVs equal (within tolerance) to gpsd's own last TPV of
    /// their epoch: the most one fix per epoch can match.
    ceiling: usize,
    misses: BTreeMap<&'static str, usize>,
}

fn score(expected_chk: &Path, ours: &[Value]) -> Score {
    let text = std::fs::read_to_string(expected_chk).expect("chk");
    let expected: Vec<(i64, Value)> = text
        .lines()
        .filter(|l| l.starts_with("{\"class\":\"TPV\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("lat").is_some())
        .filter_map(|v| Some((v["time"].as_str().and_then(epoch_ms)?, v)))
        .collect();
    // Ours: the last fix emitted for each time.
    let by_time: BTreeMap<i64, &Value> =
        ours.iter().filter_map(|v| Some((v["time"].as_str().and_then(epoch_ms)?, v))).collect();
    let last_expected: BTreeMap<i64, &Value> = expected.iter().map(|(k, v)| (*k, v)).collect();
    let mut s = Score { tpvs: expected.len(), epochs: last_expected.len(), ..Score::default() };
    for (k, exp) in &expected {
        match by_time.get(k).map(|o| disagreement(exp, o)) {
            None => *s.misses.entry("no fix").or_default() += 1,
            Some(Some(field)) => *s.misses.entry(field).or_default() += 1,
            Some(None) => s.tpvs_ok += 1,
        }
    }
    s.ceiling =
        expected.iter().filter(|(k, e)| last_expected.get(k).is_some_and(|l| disagreement(e, l).is_none())).count();
    s.epochs_ok =
        last_expected.iter().filter(|(k, e)| by_time.get(k).is_some_and(|o| disagreement(e, o).is_none())).count();
    s
}

/// Feeds a capture line by line (`chunk` None) or in fixed-size chunks.
fn run(path: &Path, topic: &str, chunk: Option<usize>) -> Vec<Value> {
    let mut h = Harness::<Positioning>::with_acl("{}", &["svc/positioning/+/fix"]).expect("init");
    let data = std::fs::read(path).expect("capture");
    let pieces: Vec<&[u8]> = match chunk {
        Some(n) => data.chunks(n).collect(),
        None => data.split(|&b| b == b'\n').collect(),
    };
    for p in pieces {
        h.send(topic, p.to_vec()).expect("handle");
    }
    h.service().flush_all().expect("flush");
    h.take_published().into_iter().map(|(_, p)| serde_json::from_slice(&p).expect("fix is JSON")).collect()
}

/// Scores every capture; prints a table; returns (TPVs matched, TPVs, epochs matched, epochs, per-file %).
fn report(
    kind: &str,
    files: &[PathBuf],
    topic: &str,
    chunk: Option<usize>,
) -> (usize, usize, usize, usize, Vec<(String, f64)>) {
    let (mut t, mut t_ok, mut e, mut e_ok, mut ceil) = (0, 0, 0, 0, 0);
    let mut per_file = Vec::new();
    println!("\n{kind}: {:<34} {:>16} {:>15}  misses by first differing field", "capture", "TPVs matched", "epochs");
    for f in files {
        let s = score(&PathBuf::from(format!("{}.chk", f.display())), &run(f, topic, chunk));
        if s.tpvs == 0 {
            continue;
        }
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
        let pct = 100.0 * s.tpvs_ok as f64 / s.tpvs as f64;
        println!(
            "{kind}: {name:<34} {:>5}/{:<5} {pct:5.1}% {:>6}/{:<6}  {:?}",
            s.tpvs_ok, s.tpvs, s.epochs_ok, s.epochs, s.misses
        );
        per_file.push((name, pct));
        (t, t_ok, e, e_ok, ceil) = (t + s.tpvs, t_ok + s.tpvs_ok, e + s.epochs, e_ok + s.epochs_ok, ceil + s.ceiling);
    }
    println!(
        "{kind}: TOTAL TPVs {t_ok}/{t} ({:.1}%; one fix per epoch can match at most {ceil}), epochs {e_ok}/{e} ({:.1}%)",
        100.0 * t_ok as f64 / t.max(1) as f64,
        100.0 * e_ok as f64 / e.max(1) as f64
    );
    (t_ok, t, e_ok, e, per_file)
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

/// Measured: 828/999 expected TPVs (82.9%), 764/807 epochs (94.7%). One fix
/// per epoch can match at most 872 of the 999: the other 127 are gpsd's
/// intermediate TPVs that differ from its own final view of the epoch (a
/// speed derived from the position change after GGA, replaced by RMC's
/// measured speed; mode 2 after RMC, 3 after GGA). The remaining ~44 misses
/// are gpsd mode heuristics on old receivers (humminbird, iTrek, garmin48:
/// GSA 3D without altitude, stale modes). Thresholds sit just under the
/// measurement, so any regression fails.
const THRESHOLD_TPVS: f64 = 0.82;
const THRESHOLD_EPOCHS: f64 = 0.94;
/// The weakest capture, humminbird-M37 (gpsd mode quirks), is at 45.8%.
const FLOOR_PER_FILE: f64 = 45.0;

#[test]
fn nmea_captures_agree_with_gpsd() {
    let files = captures(&data_dir());
    assert!(files.len() >= 55, "only {} captures found", files.len());
    let (ok, n, e_ok, e, per_file) = report("NMEA", &files, "site/test/rx/gnss/nmea", None);
    let overall = ok as f64 / n as f64;
    assert!(overall >= THRESHOLD_TPVS, "TPV agreement {:.1}% below {:.0}%", overall * 100.0, THRESHOLD_TPVS * 100.0);
    let epochs = e_ok as f64 / e as f64;
    assert!(
        epochs >= THRESHOLD_EPOCHS,
        "epoch agreement {:.1}% below {:.0}%",
        epochs * 100.0,
        THRESHOLD_EPOCHS * 100.0
    );
    let weak: Vec<_> = per_file.iter().filter(|(_, pct)| *pct < FLOOR_PER_FILE).collect();
    assert!(weak.is_empty(), "captures below {FLOOR_PER_FILE}%: {weak:?}");
}

/// UBX, fed in 64-byte chunks. NAV-PVT receivers (neo-m8n, zed-f9t with
/// RTCM3 interleaved) must agree fully. NAV-SOL receivers (8-time, neo-m8t,
/// 4t) are decoded (ECEF to geodetic as gpsd does: the first fix of 8-time
/// agrees to 1e-9 deg) but gpsd 3.20 keeps re-reporting the first converted
/// position for later epochs while the ECEF input moves by centimetres, so
/// those captures are reported, not held to gpsd; they must still match
/// some epochs (time, mode, first position).
#[test]
fn ubx_captures_agree_with_gpsd() {
    let files = captures(&data_dir().join("ubx-binary"));
    assert_eq!(files.len(), 6);
    let (ok, n, _, _, per_file) = report("UBX", &files, "site/test/rx/gnss/ubx", Some(64));
    for (name, pct) in &per_file {
        if name.contains("neo-m8n") || name.contains("zed-f9t") {
            assert!(*pct >= 100.0, "{name}: {pct:.1}%");
        }
    }
    assert!(ok as f64 / n as f64 >= 0.35, "UBX agreement {ok}/{n}");
}

/// Random bytes, bit flips and cuts of real captures through the whole
/// service, on both topics: never a panic, never an error for bad input.
#[test]
fn mangled_input_never_panics_the_service() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut inputs: Vec<Vec<u8>> = [
        "neo-m8n.log",
        "hp58534a.log",
        "ait250.log",
        "ubx-binary/ublox-zed-f9t-rtcm3.log",
        "ubx-binary/ublox-neo-m8t.log",
    ]
    .iter()
    .map(|n| std::fs::read(data_dir().join(n)).expect("capture"))
    .collect();
    inputs.push((0..20_000).map(|_| next() as u8).collect());
    let mut h = Harness::<Positioning>::new("{}").expect("init");
    for (round, data) in inputs.iter().enumerate() {
        for _ in 0..4 {
            let mut d = data.clone();
            for _ in 0..(d.len() / 200).max(1) {
                let i = (next() as usize) % d.len();
                d[i] ^= 1 << (next() % 8);
            }
            d.truncate((next() as usize) % (d.len() + 1));
            let topic = if next() % 2 == 0 { "site/s/fz/gnss/nmea" } else { "site/s/fz/gnss/ubx" };
            let mut at = 0;
            while at < d.len() {
                let n = 1 + (next() as usize) % 300;
                let end = (at + n).min(d.len());
                h.send(topic, d[at..end].to_vec()).unwrap_or_else(|e| panic!("round {round}: {e}"));
                at = end;
            }
        }
        h.tick(u64::MAX).expect("tick");
    }
    for (_, body) in h.take_published() {
        let v: Value = serde_json::from_slice(&body).expect("fix is JSON");
        assert!(v["mode"].as_u64().is_some_and(|m| (1..=3).contains(&m)));
    }
    assert!(h.host().counters.get("checksum_errors").copied().unwrap_or(0) > 0);
}
