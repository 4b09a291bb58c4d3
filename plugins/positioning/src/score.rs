//! Scoring the service's fixes against gpsd's expected decodes (`.chk`
//! files of gpsd's regression suite). One scorer for the native test, the
//! end-to-end test through `outpostctl run`, and `cargo xtask eval
//! positioning DIR`.
//!
//! How fixes are matched: an expected TPV counts when it has `lat`/`lon` and
//! a `time`. gpsd may report one epoch several times while it builds up
//! (mode 2 after RMC, mode 3 after GGA...); its last TPV of an epoch is its
//! complete view of that epoch, and is what the service's fix for the same
//! `time` (the last one, if it sent several) is held to: that is the
//! per-epoch figure, the one the quality bar is set on. The per-TPV figure
//! compares every expected TPV, intermediate ones included, with the same
//! fix, so it cannot reach 100% where gpsd changed its mind within an epoch.
//! Times are compared as instants to the millisecond. Consecutive reports
//! with the same time are one epoch; a capture that loops back to times it
//! already had starts new epochs, matched by occurrence (the second run of
//! 12:00:01 in gpsd's output against the service's second run of it). Fields compared:
//! `mode` (equal), `lat`/`lon` (1e-6 deg), `alt` and `altHAE` (0.05 m),
//! `speed` (0.01 m/s), `track` (0.1 deg); a field absent from the expected
//! TPV is not compared, a field present there and absent from ours is a miss.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The quality asked for: share of epochs matched overall and in every file.
pub const BAR_OVERALL: f64 = 0.99;
pub const BAR_PER_FILE: f64 = 0.95;

/// `2017-07-19T08:50:00.800Z` to Unix milliseconds.
pub fn epoch_ms(t: &str) -> Option<i64> {
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut hms = rest.trim_end_matches('Z').split(':');
    let (h, mi, s) =
        (hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?, hms.next()?.parse::<f64>().ok()?);
    let days = crate::tpv::days_from_civil(y as i32, m as u32, day as u32) as f64;
    Some(((days * 86_400.0 + h * 3600.0 + mi * 60.0 + s) * 1000.0).round() as i64)
}

/// Field-by-field comparison; the first field that disagrees.
pub fn disagreement(exp: &Value, ours: &Value) -> Option<&'static str> {
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

/// One capture's score.
#[derive(Debug, Default, Clone)]
pub struct Score {
    pub tpvs: usize,
    pub tpvs_ok: usize,
    pub epochs: usize,
    pub epochs_ok: usize,
    /// Epochs missed, by the first field that differs ("no fix": none sent).
    pub misses: BTreeMap<&'static str, usize>,
    /// Epochs where gpsd's own position is stale (see [`gpsd_stale`]): shown,
    /// and left out of the share the bar is set on.
    pub stale: usize,
    /// The missed epochs: (time, field, expected, ours).
    pub missed: Vec<(String, &'static str, Value, Option<Value>)>,
}

impl Score {
    /// Share of epochs matched, gpsd-stale epochs left out.
    pub fn epoch_share(&self) -> f64 {
        let n = self.epochs - self.stale;
        if n == 0 {
            1.0
        } else {
            self.epochs_ok as f64 / n as f64
        }
    }
}

/// The TPVs of a `.chk` text (every one with a `time`), in order.
fn chk_tpvs(chk: &str) -> Vec<Value> {
    chk.lines()
        .filter(|l| l.starts_with("{\"class\":\"TPV\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Epochs of a report sequence: consecutive reports with the same time are
/// one epoch; a time seen again later (a capture that loops, a receiver
/// repeating itself) is a new epoch, told apart by its occurrence number.
/// Each epoch: ((time ms, occurrence), every report of it in order).
fn epochs(reports: &[Value]) -> Vec<((i64, usize), Vec<&Value>)> {
    let mut out: Vec<((i64, usize), Vec<&Value>)> = Vec::new();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for v in reports {
        let Some(t) = v["time"].as_str().and_then(epoch_ms) else { continue };
        match out.last_mut() {
            Some(((lt, _), list)) if *lt == t => list.push(v),
            _ => {
                let n = seen.entry(t).or_default();
                out.push(((t, *n), vec![v]));
                *n += 1;
            }
        }
    }
    out
}

/// The expected TPVs of a `.chk` file that are scored (with lat/lon and time).
pub fn expected_tpvs(chk: &str) -> Vec<(i64, Value)> {
    chk_tpvs(chk)
        .into_iter()
        .filter(|v| v.get("lat").is_some())
        .filter_map(|v| Some((v["time"].as_str().and_then(epoch_ms)?, v)))
        .collect()
}

/// Scores the service's fixes (TPV JSON objects, in output order) against a `.chk` text.
pub fn score(chk: &str, ours: &[Value]) -> Score {
    let expected = chk_tpvs(chk);
    let ours_by_epoch: BTreeMap<(i64, usize), &Value> =
        epochs(ours).into_iter().filter_map(|(k, list)| Some((k, *list.last()?))).collect();
    let mut s = Score::default();
    let (mut prev_exp, mut prev_ours): (Option<&Value>, Option<&Value>) = (None, None);
    for (key, list) in epochs(&expected) {
        let positioned: Vec<&Value> = list.into_iter().filter(|v| v.get("lat").is_some()).collect();
        let Some(last) = positioned.last() else { continue };
        let ours = ours_by_epoch.get(&key);
        s.tpvs += positioned.len();
        s.tpvs_ok += positioned.iter().filter(|e| ours.is_some_and(|o| disagreement(e, o).is_none())).count();
        s.epochs += 1;
        let verdict = ours.map(|o| disagreement(last, o));
        let stale = matches!((verdict, ours), (Some(Some(f)), Some(o)) if gpsd_stale(last, prev_exp, o, prev_ours, f));
        prev_exp = Some(last);
        prev_ours = ours.copied();
        match verdict {
            Some(None) => s.epochs_ok += 1,
            _ if stale => s.stale += 1,
            other => {
                let field = other.flatten().unwrap_or("no fix");
                *s.misses.entry(field).or_default() += 1;
                let time = last["time"].as_str().unwrap_or("?").to_owned();
                s.missed.push((time, field, (*last).clone(), ours.map(|o| (*o).clone())));
            }
        }
    }
    s
}

const MOTION: [&str; 6] = ["lat", "lon", "alt", "altHAE", "speed", "track"];

/// gpsd 3.20 (and 3.22, checked with its `gpsdecode`) derives latitude,
/// longitude, altitude, speed and track from a u-blox NAV-SOL's ECEF
/// solution only while its merged fix has no latitude, and its UBX driver
/// never clears that fix: from the second epoch on, every TPV of a
/// NAV-SOL receiver repeats the first epoch's position, whatever the
/// receiver says. The service reports each epoch's own solution instead.
/// Such an epoch is recognised from the data alone: gpsd's motion fields
/// are bit-identical to its previous epoch's, the service's position moved
/// (the receiver's solution changed), and everything else agrees.
fn gpsd_stale(exp: &Value, prev_exp: Option<&Value>, ours: &Value, prev_ours: Option<&Value>, field: &str) -> bool {
    let (Some(pe), Some(po)) = (prev_exp, prev_ours) else { return false };
    let frozen = MOTION.iter().all(|k| exp.get(*k) == pe.get(*k)) && exp.get("lat").is_some();
    let moved = ["lat", "lon"].iter().any(|k| ours.get(*k) != po.get(*k));
    let mut rest = exp.clone();
    if let Some(o) = rest.as_object_mut() {
        for k in MOTION {
            o.remove(k);
        }
    }
    MOTION.contains(&field) && frozen && moved && disagreement(&rest, ours).is_none()
}

/// Whether a capture is a binary u-blox stream (fed on the `ubx` topic in
/// chunks) rather than NMEA text (fed line by line).
pub fn is_binary(data: &[u8]) -> bool {
    data.windows(2).any(|w| w == [0xB5, 0x62])
}

/// Every capture with a `.chk` beside it in `dir` and its sub-folders, sorted.
pub fn captures(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") && chk_of(&p).is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn chk_of(capture: &Path) -> PathBuf {
    PathBuf::from(format!("{}.chk", capture.display()))
}

/// Totals over captures, and the table printed by the tests and `xtask eval`.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: Vec<(String, String, Score)>,
}

impl Table {
    pub fn add(&mut self, kind: &str, name: &str, s: Score) {
        self.rows.push((kind.to_owned(), name.to_owned(), s));
    }

    /// (epochs matched, epochs scored (gpsd-stale ones left out), TPVs
    /// matched, TPVs) over the rows of `kind` (all when None).
    pub fn totals(&self, kind: Option<&str>) -> (usize, usize, usize, usize) {
        self.rows.iter().filter(|r| kind.is_none_or(|k| r.0 == k)).fold((0, 0, 0, 0), |a, (_, _, s)| {
            (a.0 + s.epochs_ok, a.1 + s.epochs - s.stale, a.2 + s.tpvs_ok, a.3 + s.tpvs)
        })
    }

    pub fn render(&self) -> String {
        let pct = |a: usize, b: usize| if b == 0 { 100.0 } else { 100.0 * a as f64 / b as f64 };
        let mut t = format!(
            "{:<5} {:<36} {:>15} {:>7} {:>13} {:>7} {:>6}  epochs missed by first differing field\n",
            "kind", "capture", "epochs", "", "TPVs", "", "stale"
        );
        for (kind, name, s) in &self.rows {
            t += &format!(
                "{kind:<5} {name:<36} {:>7}/{:<7} {:>6.1}% {:>6}/{:<6} {:>6.1}% {:>6}  {:?}\n",
                s.epochs_ok,
                s.epochs - s.stale,
                pct(s.epochs_ok, s.epochs - s.stale),
                s.tpvs_ok,
                s.tpvs,
                pct(s.tpvs_ok, s.tpvs),
                s.stale,
                s.misses
            );
        }
        for kind in ["NMEA", "UBX"] {
            let (eo, e, to, tt) = self.totals(Some(kind));
            if e > 0 {
                t += &format!(
                    "{kind:<5} {:<36} {eo:>7}/{e:<7} {:>6.1}% {to:>6}/{tt:<6} {:>6.1}%\n",
                    "TOTAL",
                    pct(eo, e),
                    pct(to, tt)
                );
            }
        }
        let (eo, e, to, tt) = self.totals(None);
        let stale: usize = self.rows.iter().map(|r| r.2.stale).sum();
        t += &format!("epochs: matched / scored; stale: epochs where gpsd repeats a NAV-SOL receiver's first position ({stale}), not scored\n");
        t += &format!(
            "{:<5} {:<36} {eo:>7}/{e:<7} {:>6.1}% {to:>6}/{tt:<6} {:>6.1}%\n",
            "ALL",
            "TOTAL",
            pct(eo, e),
            pct(to, tt)
        );
        t
    }

    /// What misses the bar: empty when at least `BAR_OVERALL` of all epochs
    /// and `BAR_PER_FILE` of every capture's epochs match.
    pub fn below_bar(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (eo, e, _, _) = self.totals(None);
        if e == 0 {
            out.push("no epoch scored".to_owned());
        } else if (eo as f64) < BAR_OVERALL * e as f64 {
            out.push(format!("overall {eo}/{e} epochs, below {:.0}%", BAR_OVERALL * 100.0));
        }
        for (kind, name, s) in &self.rows {
            if s.epoch_share() < BAR_PER_FILE {
                let first = s.missed.iter().take(3).map(|m| format!("{} {}", m.0, m.1)).collect::<Vec<_>>();
                out.push(format!(
                    "{kind} {name}: {}/{} epochs, below {:.0}% (first misses: {})",
                    s.epochs_ok,
                    s.epochs - s.stale,
                    BAR_PER_FILE * 100.0,
                    first.join(", ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_field_or_a_missing_fix_is_a_miss() {
        let chk = concat!(
            "$GPGGA,...\n",
            "{\"class\":\"TPV\",\"mode\":2,\"time\":\"2020-01-01T00:00:01.000Z\",\"lat\":1.0,\"lon\":2.0}\n",
            "{\"class\":\"TPV\",\"mode\":3,\"time\":\"2020-01-01T00:00:01.000Z\",\"lat\":1.0,\"lon\":2.0,\"altHAE\":5.0}\n",
            "{\"class\":\"TPV\",\"mode\":3,\"time\":\"2020-01-01T00:00:02.000Z\",\"lat\":1.0,\"lon\":2.0}\n",
            "{\"class\":\"TPV\",\"mode\":3,\"time\":\"2020-01-01T00:00:03.000Z\",\"lat\":1.0,\"lon\":2.0}\n",
            "{\"class\":\"TPV\",\"mode\":1,\"time\":\"2020-01-01T00:00:04.000Z\"}\n",
        );
        let ours: Vec<Value> = [
            r#"{"mode":3,"time":"2020-01-01T00:00:01.000Z","lat":1.0000001,"lon":2.0,"altHAE":5.04}"#,
            r#"{"mode":3,"time":"2020-01-01T00:00:02.000Z","lat":1.00001,"lon":2.0}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        let s = score(chk, &ours);
        assert_eq!((s.epochs_ok, s.epochs, s.tpvs_ok, s.tpvs), (1, 3, 1, 4));
        assert_eq!(s.misses.get("lat"), Some(&1));
        assert_eq!(s.misses.get("no fix"), Some(&1));
        let mut t = Table::default();
        t.add("NMEA", "x.log", s);
        assert_eq!(t.below_bar().len(), 2);
    }
}
