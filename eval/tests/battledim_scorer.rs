//! The scorer port against the organisers' own reports: each sample submission in
//! `tests/data/battledim/scoring/` is scored and compared, entry by entry, with the
//! numbers parsed from its `*_report.txt` (written by the official MATLAB scorer).

use outpost_eval::battledim::{
    parse_leakages_yalm, parse_submission, score, Battledim, BattledimError, Outcome, ScoringParams,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/battledim")
}

fn battledim() -> &'static Battledim {
    static B: OnceLock<Battledim> = OnceLock::new();
    B.get_or_init(|| Battledim::load(&data()).expect("load tests/data/battledim"))
}

/// What the official report says about one detection.
#[derive(Debug)]
struct ReportEntry {
    pipe: String,
    time: String,
    /// `(leak pipe, leak start)` or `None` for "NO detection".
    leak: Option<(String, String)>,
    score: f64,
    /// Decimals printed, to compare within half a unit of the last digit.
    decimals: usize,
}

#[derive(Debug)]
struct Report {
    entries: Vec<ReportEntry>,
    total: f64,
    /// `True Positives`, `False Positives`, `False Negatives` lines (absent from
    /// PERFECT_TEAM's report, which MATLAB cut short).
    counts: Option<(usize, usize, usize)>,
    /// Lines from "Calculating score..." to the last entry's "Score:" line.
    body: Vec<String>,
}

/// Reads a report as bytes (it prints € as one non-UTF-8 byte) and parses its last run.
fn parse_report(path: &Path) -> Report {
    let bytes = std::fs::read(path).unwrap();
    // Latin-1 decoding keeps every byte; the lines we read are ASCII.
    let text: String = bytes.iter().map(|&b| b as char).collect();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().rposition(|l| *l == "Calculating score...").expect("Calculating score...");
    let total_at = lines.iter().rposition(|l| l.starts_with("Total score: ")).expect("Total score");
    let mut entries = Vec::new();
    let mut i = start;
    while i < total_at {
        if let Some(rest) = lines[i].strip_prefix("Detection entry : ") {
            let (pipe, time) = rest.split_once(", ").unwrap();
            let leak = lines[i + 1]
                .strip_prefix("Detected leakage: ")
                .map(|r| r.split_once(", ").map(|(p, t)| (p.to_string(), t.to_string())).unwrap());
            if leak.is_none() {
                assert_eq!(lines[i + 1], "NO detection");
            }
            let s = lines[i + 2].strip_prefix("Score: ").unwrap();
            let decimals = s.split_once('.').map_or(0, |(_, d)| d.len());
            entries.push(ReportEntry {
                pipe: pipe.into(),
                time: time.into(),
                leak,
                score: s.parse().unwrap(),
                decimals,
            });
            i += 3;
        } else {
            i += 1;
        }
    }
    let total = lines[total_at].rsplit(' ').next().unwrap().parse().unwrap();
    let count = |name: &str| {
        lines[total_at..].iter().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().parse::<usize>().unwrap())
    };
    let counts = match (count("True Positives: "), count("False Positives: "), count("False Negatives: ")) {
        (Some(tp), Some(fp), Some(fn_)) => Some((tp, fp, fn_)),
        _ => None,
    };
    let body = scoring_part(&lines).iter().map(|l| l.to_string()).collect();
    Report { entries, total, counts, body }
}

/// From the last "Calculating score..." to the last "Score:" line (the summary after it
/// differs: PERFECT_TEAM's report was cut short by MATLAB).
fn scoring_part<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let from = lines.iter().rposition(|l| *l == "Calculating score...").unwrap();
    let to = lines.iter().rposition(|l| l.starts_with("Score: ")).unwrap();
    lines[from..=to].to_vec()
}

fn check_submission(team: &str) -> outpost_eval::battledim::Score {
    let b = battledim();
    let dir = data().join("scoring");
    let report = parse_report(&dir.join(format!("{team}_report.txt")));
    let score = b.score_file(&dir.join(format!("{team}.txt"))).unwrap();

    // Total, to the cent.
    assert_eq!((score.total_eur * 100.0).round() as i64, (report.total * 100.0).round() as i64, "{team} total");

    // Counts: printed where the report has them; otherwise counted from its entries.
    let leaks_total = parse_leakages_yalm(&std::fs::read_to_string(data().join("leakages_info.yalm")).unwrap(), "yalm")
        .unwrap()
        .len();
    let tp = report.entries.iter().filter(|e| e.leak.is_some()).count();
    let fp = report.entries.iter().filter(|e| e.leak.is_none() && e.score < 0.0).count();
    let expected = report.counts.unwrap_or((tp, fp, leaks_total - tp));
    assert_eq!(expected, (tp, fp, leaks_total - tp), "{team}: report counts agree with its entries");
    assert_eq!((score.true_positives, score.false_positives, score.false_negatives), expected, "{team} counts");

    // Entry by entry, in the scorer's order.
    assert_eq!(score.entries.len(), report.entries.len(), "{team} entries");
    for (got, want) in score.entries.iter().zip(&report.entries) {
        assert_eq!(got.detection.pipe, want.pipe);
        assert_eq!(outpost_eval::battledim::step_to_time(got.detection.step), want.time);
        let got_leak = match got.outcome {
            Outcome::Detected { leak, .. } => {
                let l = &b.leaks[leak].info;
                Some((l.pipe.clone(), outpost_eval::battledim::step_to_time(l.start_step)))
            }
            _ => None,
        };
        assert_eq!(got_leak, want.leak, "{team} {} {}", want.pipe, want.time);
        let tolerance = 0.5 * 10f64.powi(-(want.decimals as i32)) + 1e-9;
        assert!(
            (got.score_eur - want.score).abs() <= tolerance,
            "{team} {} {}: {} vs {}",
            want.pipe,
            want.time,
            got.score_eur,
            want.score
        );
    }

    // The rendered report reproduces the official lines of the scoring part verbatim.
    let rendered = score.render_report(team, &b.leaks);
    let lines: Vec<&str> = rendered.lines().collect();
    assert_eq!(scoring_part(&lines), report.body, "{team} report body");
    score
}

#[test]
fn test_team_matches_official_report() {
    let s = check_submission("test_team");
    assert_eq!(s.entries.len(), 24);
}

#[test]
fn perfect_team_matches_official_report() {
    let s = check_submission("PERFECT_TEAM");
    assert_eq!(s.false_positives, 0);
}

#[test]
fn test_team_multiple_matches_official_report() {
    let s = check_submission("test_team_multiple");
    // Repeated hits of the detected leak score 0 and are not false positives.
    let repeated = s.entries.iter().filter(|e| e.outcome == Outcome::Repeated).count();
    assert_eq!(repeated, 3);
}

/// The two ground-truth files agree: `leaks_info.csv` (read by the port) and the
/// organisers' `leakages_info.yalm`.
#[test]
fn leak_tables_agree() {
    let b = battledim();
    let yalm =
        parse_leakages_yalm(&std::fs::read_to_string(data().join("leakages_info.yalm")).unwrap(), "yalm").unwrap();
    assert_eq!(yalm.len(), b.leaks.len());
    for info in &yalm {
        let leak = b.leaks.iter().find(|l| l.info.pipe == info.pipe).expect(&info.pipe);
        assert_eq!(&leak.info, info);
        assert_eq!(leak.flow_m3h.len(), 105_120);
    }
}

/// 2018 detections are dropped, not counted as false positives; detection order in the
/// file does not matter (the scorer sorts by time).
#[test]
fn detections_before_2019_are_ignored_and_order_is_by_time() {
    let b = battledim();
    let text = std::fs::read_to_string(data().join("scoring/test_team_multiple.txt")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let shuffled = format!("p632, 2018-06-01 10:00\n{}\np1, 2018-12-31 23:55\n", lines.join("\n"));
    let detections = parse_submission(&shuffled, "shuffled.txt").unwrap();
    let reference = b.score_file(&data().join("scoring/test_team_multiple.txt")).unwrap();
    let s = score(&b.network, &b.leaks, &detections, &ScoringParams::default()).unwrap();
    assert_eq!(s.ignored_before_2019.len(), 2);
    assert_eq!(s.total_eur, reference.total_eur);
    assert_eq!(s.false_positives, reference.false_positives);
    let times = |s: &outpost_eval::battledim::Score| s.entries.iter().map(|e| e.detection.step).collect::<Vec<_>>();
    assert_eq!(times(&s), times(&reference));
}

/// A detection on a neighbouring pipe scores the water saved minus the distance penalty;
/// beyond the radius it is a false positive. Expected values computed here from the flow
/// series (MATLAB's `timeSeries(td:end)`, i.e. from 0-based step td − 1) and the networkx
/// distance p523–p504 (286.9623 m). p523 is abrupt, so every step's flow counts.
#[test]
fn distance_penalty_and_radius() {
    let b = battledim();
    let p523 = b.leaks.iter().position(|l| l.info.pipe == "p523").unwrap();
    let td = b.leaks[p523].info.start_step + 10;
    let water: f64 = b.leaks[p523].flow_m3h[(td - 1) as usize..].iter().sum::<f64>() / 12.0;
    let detection = |pipe: &str| {
        parse_submission(&format!("{pipe}, {}\n", outpost_eval::battledim::step_to_time(td)), "s").unwrap()
    };
    let at = |pipe: &str| score(&b.network, &b.leaks, &detection(pipe), &ScoringParams::default()).unwrap();
    let near = at("p504");
    let want = water * 0.8 - 286.9623 / 300.0 * 500.0;
    assert!((near.entries[0].score_eur - want).abs() < 1e-6, "{} vs {want}", near.entries[0].score_eur);
    let exact = at("p523");
    assert!((exact.entries[0].score_eur - water * 0.8).abs() < 1e-6);
    // A 250 m radius: 287 m is now too far.
    let strict = ScoringParams { max_distance_m: 250.0, ..ScoringParams::default() };
    let s = score(&b.network, &b.leaks, &detection("p504"), &strict).unwrap();
    assert_eq!((s.false_positives, s.total_eur), (1, -500.0));
}

#[test]
fn malformed_submissions_name_file_and_line() {
    let b = battledim();
    let dir = std::env::temp_dir().join(format!("outpost-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "unknown.txt",
            "# c\np1, 2019-01-01 00:05\np99999, 2019-01-01 00:05\n",
            "unknown.txt:3: unknown pipe \"p99999\"",
        ),
        ("badtime.txt", "p1, 2019-02-30 00:05\n", "badtime.txt:1: bad time \"2019-02-30 00:05\""),
        ("nocomma.txt", "\n\np1 2019-01-01 00:05\n", "nocomma.txt:3: expected `pipe, YYYY-MM-DD HH:MM`"),
    ];
    for (name, text, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let err = b.score_file(&path).unwrap_err();
        assert!(matches!(err, BattledimError::UnknownLink { .. } | BattledimError::Parse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    }
    let missing = b.score_file(&dir.join("missing.txt")).unwrap_err().to_string();
    assert!(missing.contains("missing.txt: cannot read"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
