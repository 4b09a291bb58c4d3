//! LeakDB (CCWI-WDSA 2018) detection scores, ported from the official
//! `scoring_algorithm.m` (KIOS-Research/LeakDB, EUPL).
//!
//! Inputs are per-step 0/1 labels, one row per scenario, all rows of one length:
//! the benchmark (truth) and the algorithm's alarms. Counts are pooled over all
//! scenarios:
//! - F1 = 2TP / (2TP + FP + FN) × 100; TPR = TP / (TP + FN) × 100; TNR = TN / (TN + FP) × 100;
//! - MCC = (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)). The MATLAB line mixes a
//!   per-scenario TN vector with pooled TP/FP/FN; here every count is pooled.
//! - Early-detection score SED: for each leak (a run of 1s in the truth; start = first 1,
//!   end = last 1) the window runs from the start to `end + tw_ex` (inclusive), with
//!   `tw = end − start + tw_ex`; `Dt` is the 0-based position of the first alarm in the
//!   window; the leak scores `2 / (1 + exp(5·Dt/tw))` if the share of alarms from `Dt`
//!   to the window's end exceeds 0.75, else 0. SED = Σ scores / number of leaks × 100.
//!   `tw_ex` starts at 10 steps and, as in the MATLAB code, is lowered for good when a
//!   window would pass the last step (`tw_ex = last step − end`), which also shortens
//!   every later window, in scenario order.
//!
//! Where MATLAB fails or returns NaN this port says so with `None` (a ratio with a zero
//! denominator) or extends the rule: a run of 1s that starts at step 0 starts there (MATLAB
//! only sees rising edges) and one that reaches the last step ends there (MATLAB stops
//! with an index error); a one-step window (`tw = 0`) with an alarm at once scores 1.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeakDbError {
    #[error("{truth} truth rows but {predicted} predicted rows")]
    RowCount { truth: usize, predicted: usize },
    #[error("scenario row {row}: truth has {truth} steps, prediction {predicted}, first row {first}")]
    RowLength { row: usize, truth: usize, predicted: usize, first: usize },
    #[error("no scenario to score")]
    Empty,
    #[error("leak table: {0}")]
    Table(String),
}

/// Pooled confusion counts over every scenario and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    pub fn_: u64,
}

/// The official scores; `None` where the formula divides by zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub confusion: Confusion,
    /// %.
    pub f1: Option<f64>,
    /// Matthews correlation coefficient, in [-1, 1].
    pub mcc: Option<f64>,
    /// True-positive rate, %.
    pub tpr: Option<f64>,
    /// True-negative rate, %.
    pub tnr: Option<f64>,
    /// Early-detection score, %.
    pub sed: Option<f64>,
    /// Leaks (runs of 1s in the truth) seen by SED.
    pub leaks: usize,
}

/// Scores alarms against truth, one row per scenario (see the module doc).
pub fn score<T: AsRef<[bool]>, P: AsRef<[bool]>>(truth: &[T], predicted: &[P]) -> Result<Scores, LeakDbError> {
    if truth.len() != predicted.len() {
        return Err(LeakDbError::RowCount { truth: truth.len(), predicted: predicted.len() });
    }
    let first = truth.first().ok_or(LeakDbError::Empty)?.as_ref().len();
    for (row, (t, p)) in truth.iter().zip(predicted).enumerate() {
        let (t, p) = (t.as_ref(), p.as_ref());
        if t.len() != first || p.len() != first {
            return Err(LeakDbError::RowLength { row, truth: t.len(), predicted: p.len(), first });
        }
    }

    let mut c = Confusion::default();
    for (t, p) in truth.iter().zip(predicted) {
        for (&t, &p) in t.as_ref().iter().zip(p.as_ref()) {
            match (t, p) {
                (true, true) => c.tp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
            }
        }
    }
    let (tp, tn, fp, fn_) = (c.tp as f64, c.tn as f64, c.fp as f64, c.fn_ as f64);
    let ratio = |num: f64, den: f64| if den > 0.0 { Some(num / den) } else { None };
    let mcc_den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();

    let (sed_sum, leaks) = early_detection(truth, predicted, first);
    Ok(Scores {
        confusion: c,
        f1: ratio(2.0 * tp, 2.0 * tp + fp + fn_).map(|x| x * 100.0),
        mcc: ratio(tp * tn - fp * fn_, mcc_den),
        tpr: ratio(tp, tp + fn_).map(|x| x * 100.0),
        tnr: ratio(tn, tn + fp).map(|x| x * 100.0),
        sed: ratio(sed_sum, leaks as f64).map(|x| x * 100.0),
        leaks,
    })
}

/// Σ per-leak SED scores and the number of leaks.
fn early_detection<T: AsRef<[bool]>, P: AsRef<[bool]>>(truth: &[T], predicted: &[P], n: usize) -> (f64, usize) {
    const SED_THRESHOLD: f64 = 0.75;
    // Persistent across leaks and scenarios, as in the MATLAB loop.
    let mut tw_ex: usize = 10;
    let (mut sum, mut leaks) = (0.0, 0);
    for (t, p) in truth.iter().zip(predicted) {
        let (t, p) = (t.as_ref(), p.as_ref());
        for (start, end) in runs(t) {
            leaks += 1;
            if end + tw_ex > n - 1 {
                tw_ex = n - 1 - end;
            }
            let tw = end - start + tw_ex;
            let window = &p[start..=start + tw];
            let Some(dt) = window.iter().position(|&a| a) else { continue };
            let rest = &window[dt..];
            let share = rest.iter().filter(|&&a| a).count() as f64 / rest.len() as f64;
            if share > SED_THRESHOLD {
                sum += if tw == 0 { 1.0 } else { 2.0 / (1.0 + (5.0 / tw as f64 * dt as f64).exp()) };
            }
        }
    }
    (sum, leaks)
}

/// Runs of `true` as inclusive `(first, last)` 0-based indices.
fn runs(labels: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &x) in labels.iter().enumerate() {
        match (x, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, labels.len() - 1));
    }
    out
}

/// Truth labels of one scenario: 1 for steps `start <= t < end` of each leak window, as
/// EPyT-Flow builds them from the leak table (times in steps; ends past `n_steps` are cut).
pub fn labels_from_windows(n_steps: usize, windows: &[(u64, u64)]) -> Vec<bool> {
    let mut y = vec![false; n_steps];
    for &(start, end) in windows {
        let (s, e) = ((start as usize).min(n_steps), (end as usize).min(n_steps));
        for v in &mut y[s..e.max(s)] {
            *v = true;
        }
    }
    y
}

/// One leak of LeakDB's scenario table (EPyT-Flow's `leakdb_data.py`); times are
/// 30-minute steps from the start of the simulated year.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableLeak {
    pub node_id: String,
    /// m.
    pub leak_diameter: f64,
    /// `abrupt` or `incipient`.
    pub leak_type: String,
    pub leak_start_time: u64,
    pub leak_end_time: u64,
    pub leak_peak_time: u64,
}

/// Parses a LeakDB leak table (the JSON object of `HANOI_LEAKAGES` or `NET1_LEAKAGES`):
/// scenario number → leaks. Scenarios absent from the table have no leak.
pub fn parse_table(json: &str) -> Result<BTreeMap<u32, Vec<TableLeak>>, LeakDbError> {
    let raw: BTreeMap<String, Vec<TableLeak>> =
        serde_json::from_str(json).map_err(|e| LeakDbError::Table(e.to_string()))?;
    raw.into_iter()
        .map(|(k, v)| k.parse::<u32>().map(|k| (k, v)).map_err(|_| LeakDbError::Table(format!("scenario id {k:?}"))))
        .collect()
}

/// The JSON text of table `name` (`HANOI_LEAKAGES` or `NET1_LEAKAGES`) inside
/// `leakdb_data.py`: the string between the triple quotes after `name = `.
pub fn table_json<'a>(py_source: &'a str, name: &str) -> Option<&'a str> {
    let start = py_source.find(&format!("{name} = \"\"\""))? + name.len() + 6;
    let len = py_source[start..].find("\"\"\"")?;
    Some(&py_source[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones(n: usize, idx: impl IntoIterator<Item = usize>) -> Vec<bool> {
        let mut v = vec![false; n];
        for i in idx {
            v[i] = true;
        }
        v
    }

    /// One scenario of 20 steps: leak at 5..=9, alarms at 7..=17.
    /// By hand: TP {7,8,9} = 3, FP {10..=17} = 8, FN {5,6} = 2, TN = 20 − 13 = 7;
    /// F1 = 6/16 = 37.5 %, TPR = 3/5 = 60 %, TNR = 7/15 = 46.67 %,
    /// MCC = (21 − 16)/√(11·5·15·9) = 5/√7425.
    /// SED: tw = 9 − 5 + 10 = 14 (end + 10 = 19 is the last step, no cut), window 5..=19,
    /// first alarm at position 2, alarms from there 11 of 13 = 0.846 > 0.75:
    /// 2/(1 + e^(5·2/14)) = 0.657305...
    #[test]
    fn single_scenario_by_hand() {
        let truth = [ones(20, 5..=9)];
        let pred = [ones(20, 7..=17)];
        let s = score(&truth, &pred).unwrap();
        assert_eq!(s.confusion, Confusion { tp: 3, tn: 7, fp: 8, fn_: 2 });
        assert_eq!(s.f1, Some(37.5));
        assert_eq!(s.tpr, Some(60.0));
        assert!((s.tnr.unwrap() - 46.666_666_666_666_664).abs() < 1e-12);
        assert!((s.mcc.unwrap() - 0.058_025_885_318_565_944).abs() < 1e-12, "{:?}", s.mcc);
        assert_eq!(s.leaks, 1);
        assert!((s.sed.unwrap() - 65.730_509_303_454_01).abs() < 1e-9, "{:?}", s.sed);
    }

    /// Same scenario with one alarm fewer at the end (7..=16 and 17 off): from the first
    /// alarm 10 of 13 = 0.769 still counts; with alarms only at 7..=14 (8 of 13 = 0.615)
    /// the leak scores 0.
    #[test]
    fn sed_share_threshold() {
        let truth = [ones(20, 5..=9)];
        let s = score(&truth, &[ones(20, 7..=16)]).unwrap();
        assert!((s.sed.unwrap() - 65.730_509_303_454_01).abs() < 1e-9);
        let s = score(&truth, &[ones(20, 7..=14)]).unwrap();
        assert_eq!(s.sed, Some(0.0));
        // Alarm at the very first leak step: Dt = 0 → 2/(1+1) = 1.
        let s = score(&truth, &[ones(20, 5..=19)]).unwrap();
        assert_eq!(s.sed, Some(100.0));
        // No alarm in the window at all.
        let s = score(&truth, &[ones(20, [0, 1])]).unwrap();
        assert_eq!(s.sed, Some(0.0));
    }

    /// MATLAB lowers `tw_ex` for good. Scenario A (leak 3..=14 of 20 steps) cuts it to
    /// 19 − 14 = 5 and scores 1 (alarms 3..=19, Dt = 0). Scenario B (leak 1..=2, alarms
    /// 2..=7) then has tw = 1 + 5 = 6, window 1..=7, Dt = 1, share 6/6:
    /// 2/(1 + e^(5/6)) = 0.605881...; SED = (1 + 0.605881)/2 = 80.29 %.
    /// In the other order B is scored first with tw_ex = 10: tw = 11, window 1..=12,
    /// share 6/11 < 0.75 → 0, and SED = (0 + 1)/2 = 50 %.
    #[test]
    fn sed_window_extension_shrinks_for_later_scenarios() {
        let (ta, pa) = (ones(20, 3..=14), ones(20, 3..=19));
        let (tb, pb) = (ones(20, 1..=2), ones(20, 2..=7));
        let s = score(&[ta.clone(), tb.clone()], &[pa.clone(), pb.clone()]).unwrap();
        assert_eq!(s.leaks, 2);
        let b = 2.0 / (1.0 + (5.0f64 / 6.0).exp());
        assert!((b - 0.605_881_432).abs() < 1e-9);
        assert!((s.sed.unwrap() - (1.0 + b) / 2.0 * 100.0).abs() < 1e-9);
        let s = score(&[tb, ta], &[pb, pa]).unwrap();
        assert_eq!(s.sed, Some(50.0));
    }

    #[test]
    fn no_leak_and_no_alarm() {
        let s = score(&[vec![false; 5]], &[vec![false; 5]]).unwrap();
        assert_eq!(s.confusion, Confusion { tp: 0, tn: 5, fp: 0, fn_: 0 });
        assert_eq!((s.f1, s.tpr, s.sed, s.mcc), (None, None, None, None));
        assert_eq!(s.tnr, Some(100.0));
    }

    /// Runs touching either end of the series (MATLAB fails or mis-pairs these).
    #[test]
    fn runs_at_the_edges() {
        assert_eq!(runs(&ones(6, [0, 1, 3, 5])), vec![(0, 1), (3, 3), (5, 5)]);
        // A leak to the very last step: tw_ex becomes 0, tw = 0, alarm at once → 1.
        let s = score(&[ones(6, [5])], &[ones(6, [5])]).unwrap();
        assert_eq!(s.sed, Some(100.0));
    }

    #[test]
    fn shape_errors() {
        assert_eq!(
            score(&[vec![true]], &[vec![true], vec![false]]),
            Err(LeakDbError::RowCount { truth: 1, predicted: 2 })
        );
        assert_eq!(
            score(&[vec![true, false], vec![true]], &[vec![true, false], vec![true, true]]),
            Err(LeakDbError::RowLength { row: 1, truth: 1, predicted: 2, first: 2 })
        );
        assert_eq!(score::<Vec<bool>, Vec<bool>>(&[], &[]), Err(LeakDbError::Empty));
    }

    #[test]
    fn labels_and_table() {
        assert_eq!(labels_from_windows(8, &[(1, 3), (6, 20)]), ones(8, [1, 2, 6, 7]));
        let py = "X = 1\nHANOI_LEAKAGES = \"\"\"{\n \"7\": [{\"node_id\": \"12\", \"leak_diameter\": 0.05, \
                  \"leak_type\": \"abrupt\", \"leak_start_time\": 10, \"leak_end_time\": 20, \"leak_peak_time\": 10}]\n}\"\"\"\n";
        let table = parse_table(table_json(py, "HANOI_LEAKAGES").unwrap()).unwrap();
        assert_eq!(table.len(), 1);
        let leak = &table[&7][0];
        assert_eq!((leak.node_id.as_str(), leak.leak_start_time, leak.leak_end_time), ("12", 10, 20));
        assert!(table_json(py, "NET1_LEAKAGES").is_none());
        assert!(parse_table("{\"x\": []}").is_err());
    }
}
