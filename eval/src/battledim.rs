//! BattLeDIM 2020 scorer, ported from the official `Scoring_Algorithm.m` and
//! `scoring_function.m` (KIOS-Research/BattLeDIM, EUPL).
//!
//! Time is counted in 5-minute steps from 2019-01-01 00:00 (`time2steps.m`: the
//! rounded quotient; 2018 gives negative steps). A detection `(pipe, time)` at step
//! `td`:
//! - is dropped if `td < 0` (2018);
//! - detections are then taken in time order (stable: equal times keep file order);
//! - it hits leak `j` if `start_j <= td <= end_j` and the pipe distance `x`
//!   ([`crate::network`]) is at most 300 m;
//! - among the hit leaks not yet detected it goes to the nearest and scores
//!   `0.8 €/m³ × Σ flow[max(td,1)−1 ..] / 12 − 500 € × x / 300` (MATLAB's 1-based
//!   `timeSeries(td:end)`: the sum starts one step before the detection);
//! - hitting only already-detected leaks scores 0 and is not a false positive;
//! - hitting nothing is a false positive, −500 €.
//!
//! TP = leaks detected, FN = leaks − TP, total = Σ scores rounded to 0.01 €.
//! Where MATLAB stops with an error (an unknown pipe, two undetected leaks at exactly the
//! same distance) this port returns [`BattledimError::UnknownPipe`] or, for the tie,
//! picks the leak listed first.

use crate::network::{Network, NetworkError};
use flate2::read::GzDecoder;
use outpost_sdk::civil::{civil_from_days, days_from_civil, days_in_month};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

/// Steps in 2019 (365 days of 288 five-minute steps): the length of each leak's flow series.
pub const STEPS_2019: usize = 105_120;

#[derive(Debug, thiserror::Error)]
pub enum BattledimError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse { file: String, line: usize, message: String },
    #[error("{file}:{line}: unknown pipe {pipe:?} (not a link of the network)")]
    UnknownLink { file: String, line: usize, pipe: String },
    /// From [`score`], which does not know the file name.
    #[error("detection on line {line}: unknown pipe {pipe:?} (not a link of the network)")]
    UnknownPipe { line: usize, pipe: String },
    #[error("{file}: {message}")]
    Data { file: String, message: String },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Inp(#[from] crate::inp::InpError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakKind {
    Abrupt,
    Incipient,
}

/// A leak's parameters, as in `leakages_info.yalm` / `leaks_info.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakInfo {
    pub pipe: String,
    /// Steps from 2019-01-01 00:00 (negative in 2018), inclusive.
    pub start_step: i64,
    pub end_step: i64,
    pub peak_step: i64,
    pub diameter_m: f64,
    pub kind: LeakKind,
}

/// A leak with its true outflow through 2019.
#[derive(Debug, Clone, PartialEq)]
pub struct Leak {
    pub info: LeakInfo,
    /// m³/h every 5 minutes from 2019-01-01 00:00, [`STEPS_2019`] values.
    pub flow_m3h: Vec<f64>,
}

/// One line of a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub pipe: String,
    pub step: i64,
    /// 1-based line in the submission file.
    pub line: usize,
}

/// The scorer's constants (`Scoring_Algorithm.m`, `SP`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringParams {
    /// Max pipe distance for a detection to count (m).
    pub max_distance_m: f64,
    /// Cost of water (€/m³).
    pub cost_water_eur_per_m3: f64,
    /// Repair crew cost per assignment (€), the price of a false positive.
    pub cost_crew_eur: f64,
}

impl Default for ScoringParams {
    fn default() -> Self {
        ScoringParams { max_distance_m: 300.0, cost_water_eur_per_m3: 0.8, cost_crew_eur: 500.0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// First detection of leak `leak` (index into the leak list).
    Detected {
        leak: usize,
        distance_m: f64,
        water_saved_m3: f64,
    },
    /// Hit only leaks already detected: 0 €, not a false positive.
    Repeated,
    FalsePositive,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoredDetection {
    pub detection: Detection,
    pub outcome: Outcome,
    pub score_eur: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub params: ScoringParams,
    /// Scored detections in the order the scorer takes them (time, then file order).
    pub entries: Vec<ScoredDetection>,
    /// Detections dropped because they fall in 2018.
    pub ignored_before_2019: Vec<Detection>,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    /// Σ scores rounded to 0.01 € (MATLAB `round(TS, 2)`).
    pub total_eur: f64,
}

impl Score {
    /// `(leak index, detection delay in steps)` per detected leak, in detection order
    /// (the official `DL` and `DD`).
    pub fn detected(&self, leaks: &[Leak]) -> Vec<(usize, i64)> {
        self.entries
            .iter()
            .filter_map(|e| match e.outcome {
                Outcome::Detected { leak, .. } => Some((leak, e.detection.step - leaks[leak].info.start_step)),
                _ => None,
            })
            .collect()
    }

    /// The official report's scoring part (from "Calculating score..." on), with the
    /// same wording and number formatting (MATLAB `num2str`); € is written in UTF-8.
    pub fn render_report(&self, team: &str, leaks: &[Leak]) -> String {
        let rule = "-------------------------------------";
        let mut out = String::new();
        let _ = writeln!(out, "{rule}\nTEAM NAME: {team}\n{rule}\nScoring Parameters");
        let _ = writeln!(out, "Max detection distance: {}  (meters)", num2str(self.params.max_distance_m));
        let _ = writeln!(out, "Cost of water per m^3: {} (Euro)", num2str(self.params.cost_water_eur_per_m3));
        let _ = writeln!(out, "Max repair crew cost per assignment: {} (Euro)", num2str(self.params.cost_crew_eur));
        let _ = writeln!(out, "{rule}\nCalculating score...");
        for e in &self.entries {
            let _ = writeln!(out, "{rule}\nDetection entry : {}, {}", e.detection.pipe, step_to_time(e.detection.step));
            match e.outcome {
                Outcome::Detected { leak, .. } => {
                    let l = &leaks[leak].info;
                    let _ = writeln!(out, "Detected leakage: {}, {}", l.pipe, step_to_time(l.start_step));
                }
                _ => out.push_str("NO detection\n"),
            }
            let _ = writeln!(out, "Score: {}", num2str(e.score_eur));
        }
        let _ = writeln!(out, "{rule}\nTEAM NAME: {team}\nTotal score: \u{20ac} {}", num2str(self.total_eur));
        let _ = writeln!(out, "True Positives: {}", self.true_positives);
        let _ = writeln!(out, "False Positives: {}", self.false_positives);
        let _ = writeln!(out, "False Negatives: {}\n{rule}", self.false_negatives);
        out
    }
}

/// Scores detections against leaks exactly as `Scoring_Algorithm.m` does.
pub fn score(
    network: &Network,
    leaks: &[Leak],
    detections: &[Detection],
    params: &ScoringParams,
) -> Result<Score, BattledimError> {
    // Unknown pipes stop the official scorer too (getLinkIndex returns 0).
    for d in detections {
        if network.link(&d.pipe).is_none() {
            return Err(BattledimError::UnknownPipe { line: d.line, pipe: d.pipe.clone() });
        }
    }
    let from_leak = leaks.iter().map(|l| network.from_link(&l.info.pipe)).collect::<Result<Vec<_>, _>>()?;

    let (ignored, mut kept): (Vec<Detection>, Vec<Detection>) = detections.iter().cloned().partition(|d| d.step < 0);
    kept.sort_by_key(|d| d.step); // stable, like MATLAB's sort

    let mut detected = vec![false; leaks.len()];
    let mut entries = Vec::with_capacity(kept.len());
    let mut false_positives = 0;
    for d in kept {
        let td = d.step;
        // Leaks this detection hits: (index, distance).
        let mut hits = Vec::new();
        for (j, leak) in leaks.iter().enumerate() {
            let x = from_leak[j].to(&d.pipe)?;
            if td >= leak.info.start_step && td <= leak.info.end_step && x.abs() <= params.max_distance_m {
                hits.push((j, x));
            }
        }
        let nearest_new =
            hits.iter().filter(|(j, _)| !detected[*j]).fold(None, |best: Option<(usize, f64)>, &(j, x)| match best {
                Some((_, bx)) if bx <= x => best,
                _ => Some((j, x)),
            });
        let (outcome, score_eur) = match nearest_new {
            Some((j, x)) => {
                let from = (td.max(1) - 1) as usize;
                let water_saved_m3 = leaks[j].flow_m3h.get(from..).map_or(0.0, |s| s.iter().sum::<f64>()) / 12.0;
                let score =
                    water_saved_m3 * params.cost_water_eur_per_m3 - (x / params.max_distance_m) * params.cost_crew_eur;
                detected[j] = true;
                (Outcome::Detected { leak: j, distance_m: x, water_saved_m3 }, score)
            }
            None if !hits.is_empty() => (Outcome::Repeated, 0.0),
            None => {
                false_positives += 1;
                (Outcome::FalsePositive, -params.cost_crew_eur)
            }
        };
        entries.push(ScoredDetection { detection: d, outcome, score_eur });
    }
    let true_positives = detected.iter().filter(|&&x| x).count();
    let total: f64 = entries.iter().map(|e| e.score_eur).sum();
    Ok(Score {
        params: *params,
        entries,
        ignored_before_2019: ignored,
        true_positives,
        false_positives,
        false_negatives: leaks.len() - true_positives,
        total_eur: (total * 100.0).round() / 100.0,
    })
}

/// The network and the 2019 leaks, loaded once to score many submissions.
#[derive(Debug, Clone)]
pub struct Battledim {
    pub network: Network,
    pub leaks: Vec<Leak>,
}

impl Battledim {
    /// Loads `L-TOWN.inp`, `leak-flows/leaks_info.csv` and
    /// `leak-flows/leak_flows_2019_m3h.csv.gz` from `dir` (the layout of
    /// `tests/data/battledim`).
    pub fn load(dir: &Path) -> Result<Battledim, BattledimError> {
        let inp = crate::inp::read_inp(&dir.join("L-TOWN.inp"))?;
        let network = Network::from_inp(&inp)?;
        let leaks =
            load_leaks(&dir.join("leak-flows/leaks_info.csv"), &dir.join("leak-flows/leak_flows_2019_m3h.csv.gz"))?;
        Ok(Battledim { network, leaks })
    }

    /// Scores a submission file with the official parameters.
    pub fn score_file(&self, submission: &Path) -> Result<Score, BattledimError> {
        let detections = read_submission(submission)?;
        score(&self.network, &self.leaks, &detections, &ScoringParams::default()).map_err(|e| match e {
            BattledimError::UnknownPipe { line, pipe } => {
                BattledimError::UnknownLink { file: submission.display().to_string(), line, pipe }
            }
            other => other,
        })
    }
}

fn read_text(path: &Path) -> Result<String, BattledimError> {
    let bytes =
        std::fs::read(path).map_err(|source| BattledimError::Io { file: path.display().to_string(), source })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads a submission: `pipe, YYYY-MM-DD HH:MM` per line; empty lines and lines starting
/// with `#` are skipped (`readResultsFile.m`).
pub fn read_submission(path: &Path) -> Result<Vec<Detection>, BattledimError> {
    parse_submission(&read_text(path)?, &path.display().to_string())
}

/// Parses the text of a submission; `file` is only used in error messages.
pub fn parse_submission(text: &str, file: &str) -> Result<Vec<Detection>, BattledimError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let parse_err = |message: String| BattledimError::Parse { file: file.to_string(), line, message };
        let Some((pipe, time)) = content.split_once(',') else {
            return Err(parse_err(format!("expected `pipe, YYYY-MM-DD HH:MM`, got {content:?}")));
        };
        let pipe = pipe.trim();
        if pipe.is_empty() {
            return Err(parse_err("empty pipe id".into()));
        }
        let step = time_to_step(time.trim()).ok_or_else(|| parse_err(format!("bad time {:?}", time.trim())))?;
        out.push(Detection { pipe: pipe.to_string(), step, line });
    }
    Ok(out)
}

/// Parses `leakages_info.yalm` (the organisers' ground-truth file, in their order):
/// `pipe, start, end, diameter, abrupt|incipient, peak` per line, `#` comments.
pub fn parse_leakages_yalm(text: &str, file: &str) -> Result<Vec<LeakInfo>, BattledimError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let info = leak_info(&fields, [0, 1, 2, 3, 4, 5]).map_err(|message| BattledimError::Parse {
            file: file.to_string(),
            line: idx + 1,
            message,
        })?;
        out.push(info);
    }
    Ok(out)
}

/// Fields at `[pipe, start, end, diameter, kind, peak]` positions into a [`LeakInfo`].
fn leak_info(fields: &[&str], at: [usize; 6]) -> Result<LeakInfo, String> {
    let get = |i: usize| fields.get(at[i]).copied().ok_or_else(|| format!("expected at least {} fields", at[i] + 1));
    let step = |i: usize| get(i).and_then(|t| time_to_step(t).ok_or_else(|| format!("bad time {t:?}")));
    let diameter = get(3)?;
    let kind = match get(4)? {
        "abrupt" => LeakKind::Abrupt,
        "incipient" => LeakKind::Incipient,
        other => return Err(format!("leak type must be abrupt or incipient, got {other:?}")),
    };
    Ok(LeakInfo {
        pipe: get(0)?.to_string(),
        start_step: step(1)?,
        end_step: step(2)?,
        peak_step: step(5)?,
        diameter_m: diameter.parse().map_err(|_| format!("bad diameter {diameter:?}"))?,
        kind,
    })
}

/// Loads leaks from `leaks_info.csv` (`pipe,leak_area_m2,leak_diameter_m,type,start,end,peak`)
/// and their flows from `leak_flows_2019_m3h.csv.gz` (`timestamp` then one column per pipe,
/// m³/h, one row per 5-minute step of 2019). Leaks keep the order of `leaks_info.csv`.
pub fn load_leaks(info_csv: &Path, flows_csv_gz: &Path) -> Result<Vec<Leak>, BattledimError> {
    let info_file = info_csv.display().to_string();
    let text = read_text(info_csv)?;
    let mut infos = Vec::new();
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| h.trim()).unwrap_or("");
    if header != "pipe,leak_area_m2,leak_diameter_m,type,start,end,peak" {
        return Err(BattledimError::Parse {
            file: info_file,
            line: 1,
            message: format!("unexpected header {header:?}"),
        });
    }
    for (idx, raw) in lines {
        if raw.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
        let info = leak_info(&fields, [0, 4, 5, 2, 3, 6]).map_err(|message| BattledimError::Parse {
            file: info_file.clone(),
            line: idx + 1,
            message,
        })?;
        infos.push(info);
    }

    let flows_file = flows_csv_gz.display().to_string();
    let gz = std::fs::read(flows_csv_gz).map_err(|source| BattledimError::Io { file: flows_file.clone(), source })?;
    let mut csv = String::new();
    GzDecoder::new(gz.as_slice())
        .read_to_string(&mut csv)
        .map_err(|source| BattledimError::Io { file: flows_file.clone(), source })?;
    let mut rows = csv.lines().enumerate();
    let header: Vec<&str> = rows.next().map(|(_, h)| h.split(',').collect()).unwrap_or_default();
    if header.first() != Some(&"timestamp") {
        return Err(BattledimError::Parse {
            file: flows_file,
            line: 1,
            message: "first column must be timestamp".into(),
        });
    }
    let mut columns = Vec::with_capacity(infos.len());
    for info in &infos {
        let col = header.iter().position(|h| *h == info.pipe).ok_or_else(|| BattledimError::Data {
            file: flows_file.clone(),
            message: format!("no flow column for leak {}", info.pipe),
        })?;
        columns.push(col);
    }
    let mut flows = vec![Vec::with_capacity(STEPS_2019); infos.len()];
    for (idx, row) in rows {
        let line = idx + 1;
        let cells: Vec<&str> = row.split(',').collect();
        let err = |message: String| BattledimError::Parse { file: flows_file.clone(), line, message };
        if cells.len() != header.len() {
            return Err(err(format!("{} cells, header has {}", cells.len(), header.len())));
        }
        let expected_step = (line - 2) as i64;
        if time_to_step(cells[0]) != Some(expected_step) {
            return Err(err(format!("timestamp {:?} is not step {expected_step} of 2019", cells[0])));
        }
        for (k, &col) in columns.iter().enumerate() {
            let v: f64 = cells[col].parse().map_err(|_| err(format!("bad flow {:?}", cells[col])))?;
            flows[k].push(v);
        }
    }
    if flows.first().map_or(0, Vec::len) != STEPS_2019 {
        return Err(BattledimError::Data {
            file: flows_file,
            message: format!("{} rows, expected {STEPS_2019}", flows.first().map_or(0, Vec::len)),
        });
    }
    Ok(infos.into_iter().zip(flows).map(|(info, flow_m3h)| Leak { info, flow_m3h }).collect())
}

/// `YYYY-MM-DD HH:MM` (optionally `:SS`) → 5-minute steps from 2019-01-01 00:00, rounded
/// half away from zero like `time2steps.m`. `None` if malformed or out of range.
pub fn time_to_step(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-');
    let (y, mo, da) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let mut t = time.trim().split(':');
    let (h, mi) = (num(t.next()?, 2)?, num(t.next()?, 2)?);
    let sec = match t.next() {
        Some(x) => num(x, 2)?,
        None => 0,
    };
    if d.next().is_some() || t.next().is_some() || !(1..=12).contains(&mo) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    if da < 1 || da > days_in_month(y, mo) {
        return None;
    }
    let seconds = (days_from_civil(y, mo, da) - days_from_civil(2019, 1, 1)) * 86_400 + h * 3600 + mi * 60 + sec;
    Some((seconds as f64 / 300.0).round() as i64)
}

/// 5-minute step from 2019-01-01 00:00 → `YYYY-MM-DD HH:MM` (`steps2time.m`).
pub fn step_to_time(step: i64) -> String {
    let minutes = days_from_civil(2019, 1, 1) * 1440 + step * 5;
    let (days, min_of_day) = (minutes.div_euclid(1440), minutes.rem_euclid(1440));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", min_of_day / 60, min_of_day % 60)
}

fn num(s: &str, width: usize) -> Option<i64> {
    if s.len() != width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// MATLAB's `num2str` for a real scalar: integers as such, otherwise
/// `max(floor(log10|x|) + 5, 5)` significant digits with trailing zeros dropped (`%g`).
pub fn num2str(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        return format!("{}", x as i64);
    }
    let dgt = x.abs().log10().floor() as i64;
    let sig = (dgt + 5).max(5);
    let decimals = (sig - 1 - dgt).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_steps_round_trip_and_round_like_matlab() {
        assert_eq!(time_to_step("2019-01-01 00:00"), Some(0));
        assert_eq!(time_to_step("2019-01-01 00:05"), Some(1));
        assert_eq!(time_to_step("2019-12-31 23:55"), Some(105_119));
        // 2018-01-08 13:30 is 357 days 10 h 30 min before 2019.
        assert_eq!(time_to_step("2018-01-08 13:30"), Some(-(357 * 288 + 10 * 12 + 6)));
        // Off-grid minutes round to the nearest step; ties do not occur at minute resolution.
        assert_eq!(time_to_step("2019-01-01 00:07"), Some(1));
        assert_eq!(time_to_step("2019-01-01 00:08"), Some(2));
        assert_eq!(time_to_step("2018-12-31 23:57"), Some(-1));
        assert_eq!(time_to_step("2019-03-01 00:00:00"), Some((31 + 28) * 288));
        assert_eq!(time_to_step("2020-02-29 00:00"), Some(365 * 288 + 59 * 288));
        for bad in
            ["2019-02-29 00:00", "2019-1-01 00:00", "2019-01-01", "2019-01-01 24:00", "x", "2019-01-01 00:00:00:00"]
        {
            assert_eq!(time_to_step(bad), None, "{bad}");
        }
        for step in [-103_230, -1, 0, 1, 287, 288, 16_847, 105_119] {
            assert_eq!(time_to_step(&step_to_time(step)), Some(step));
        }
        assert_eq!(step_to_time(-1), "2018-12-31 23:55");
    }

    #[test]
    fn num2str_matches_matlab_defaults() {
        assert_eq!(num2str(300.0), "300");
        assert_eq!(num2str(-500.0), "-500");
        assert_eq!(num2str(0.8), "0.8");
        assert_eq!(num2str(47739.01800001), "47739.018");
        assert_eq!(num2str(10047.80761), "10047.8076");
        assert_eq!(num2str(523153.82), "523153.82");
        assert_eq!(num2str(0.123456), "0.12346");
    }

    #[test]
    fn submission_lines_and_errors() {
        let text = "# linkID, startTime\n\np1, 2019-01-01 00:05\r\n  p2 ,2019-01-02 00:00  \n";
        let d = parse_submission(text, "s.txt").unwrap();
        assert_eq!(
            d,
            vec![
                Detection { pipe: "p1".into(), step: 1, line: 3 },
                Detection { pipe: "p2".into(), step: 288, line: 4 }
            ]
        );
        let err = parse_submission("# c\np1 2019-01-01 00:05\n", "s.txt").unwrap_err().to_string();
        assert!(err.starts_with("s.txt:2: expected `pipe, YYYY-MM-DD HH:MM`"), "{err}");
        let err = parse_submission("p1, 2019-13-01 00:05\n", "s.txt").unwrap_err().to_string();
        assert!(err.starts_with("s.txt:1: bad time"), "{err}");
        let err = parse_submission("\n, 2019-01-01 00:05\n", "s.txt").unwrap_err().to_string();
        assert!(err.starts_with("s.txt:2: empty pipe id"), "{err}");
    }

    #[test]
    fn yalm_rows_and_errors() {
        let text = "# linkID, ...\np1, 2018-12-31 23:55, 2019-01-01 00:10, 0.01, incipient, 2019-01-01 00:05\n";
        let l = parse_leakages_yalm(text, "l.yalm").unwrap();
        assert_eq!(
            l,
            vec![LeakInfo {
                pipe: "p1".into(),
                start_step: -1,
                end_step: 2,
                peak_step: 1,
                diameter_m: 0.01,
                kind: LeakKind::Incipient
            }]
        );
        let err = parse_leakages_yalm("#\n\np1, 2019-01-01 00:00, 2019-01-01 00:10, 0.01, sudden, x\n", "l.yalm")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "l.yalm:3: leak type must be abrupt or incipient, got \"sudden\"");
    }
}
