//! `leak-eval`: the leak-detection service scored with the BattLeDIM rules, under the
//! competition's protocol.
//!
//! Per seed N (`tools/simulate_ltown.py --seed N`, cached in `--cache`):
//! - `historical-seedN`: 2018 with its 14 leaks. Participants had this year's leak labels (the
//!   leak outflows); the service is calibrated here only, on `--cal-days` (28) days from
//!   `--cal-start` (2018-01-01 00:00), with the labelled leaks taken out of the calibration data
//!   (their outflow from the inlet flow `p227`; their pressure drop, outflow × the model's pipe
//!   signature, from each pressure sensor). `--leak-free-only`: no correction, the window ends at
//!   the last hour before the first labelled leak (2018-01-08). Nothing of 2019 is used to
//!   calibrate or to choose settings.
//! - `evaluation-seedN`: 2019, its 23 leaks (4 begun in 2018, at full size), demand and noise
//!   draws of its own (the simulator seeds them by seed and year). Replayed from its first step
//!   after the calibration; every `start` alarm, and every `update` that names a different pipe
//!   than the leak's previous alarm, is a BattLeDIM detection, scored with
//!   `outpost_eval::battledim` (the official rules).
//!
//! Seeds are of three kinds, printed as such: `--tuning` seeds (settings were chosen on them; never
//! reported as results), `--report` seeds (simulated fresh for the report and never used while
//! choosing settings) and `retired` seeds (7301-7306 and 8811-8816: report seeds of earlier rounds, whose
//! figures were already read; they choose nothing and report nothing any more, `--set retired`). The table
//! gives each seed's TP/FP/FN, F1 = 2TP/(2TP+FP+FN) and € total, then the mean and the sample
//! standard deviation over the report seeds.
//!
//! ```sh
//! cargo run --release -p outpost-eval --bin leak-eval -- [--set report|tuning|all] \
//!     [--report 9501,...,9506] [--tuning 2020,...,2027] [--cache DIR] [--data DIR] [--model FILE] \
//!     [--cal-start T] [--cal-days D] [--leak-free-only] [--config JSON] [--verbose] [--out DIR]
//! ```
//! `--out DIR` writes each seed's alarms (`alarms-seedN.jsonl`) and submission
//! (`submission-seedN.txt`, the official `pipe, YYYY-MM-DD HH:MM` format).

use leak_detection::model::NetModel;
use leak_detection::{replay, LeakDetection};
use outpost_eval::battledim::{self, Battledim, Detection, Outcome, ScoringParams};
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const TOPIC: &str = "site/eval/ltown";
const USAGE: &str =
    "leak-eval [--set report|tuning|retired|all] [--report 9501,...,9506] [--tuning 2020,...,2027] \
[--cache DIR] [--data DIR] [--model FILE] [--cal-start T] [--cal-days D] [--leak-free-only] [--config JSON] \
[--verbose] [--out DIR]\n\
Calibrates leak-detection on each seed's simulated 2018 (labelled leaks taken out; --leak-free-only: \
the days before the first), replays \
its 2019 and scores it with the BattLeDIM rules; prints per-seed TP/FP/FN/F1/€ and the mean ± sd over \
the report seeds. Runs: CACHE/historical-seedN and CACHE/evaluation-seedN (tools/simulate_ltown.py).";
/// Seeds the defaults were chosen on (never reported as results).
pub const TUNING_SEEDS: [u64; 8] = [2020, 2021, 2022, 2023, 2024, 2025, 2026, 2027];
/// Seeds never used while choosing settings: the reported figures.
pub const REPORT_SEEDS: [u64; 6] = [9501, 9502, 9503, 9504, 9505, 9506];
/// Report seeds of earlier rounds: their scores were read, so they are neither tuning nor
/// report seeds any more.
pub const RETIRED_SEEDS: [u64; 12] = [7301, 7302, 7303, 7304, 7305, 7306, 8811, 8812, 8813, 8814, 8815, 8816];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn seeds(s: &str) -> Result<Vec<u64>, String> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| x.trim().parse().map_err(|_| format!("bad seed {x}"))).collect()
}

struct SeedResult {
    seed: u64,
    kind: &'static str,
    tp: usize,
    fp: usize,
    fn_: usize,
    eur: f64,
    pre2019_tp: usize,
    pre2019_eur: f64,
    mean_delay_h: f64,
    cal: String,
    secs: f64,
}

impl SeedResult {
    fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
}

fn run() -> Result<(), String> {
    let mut cache = PathBuf::from("/var/tmp/outpost-data/battledim");
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/battledim");
    let mut model = None;
    let mut set = "report".to_string();
    let mut report = REPORT_SEEDS.to_vec();
    let mut tuning = TUNING_SEEDS.to_vec();
    let mut cal_days = 28i64;
    let mut cal_start = "2018-01-01 00:00".to_string();
    let mut correct = true;
    let mut config = "{}".to_string();
    let mut verbose = false;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--cache" => cache = PathBuf::from(val()?),
            "--data" => data = PathBuf::from(val()?),
            "--model" => model = Some(PathBuf::from(val()?)),
            "--set" => set = val()?,
            "--report" => report = seeds(&val()?)?,
            "--tuning" => tuning = seeds(&val()?)?,
            "--cal-days" => cal_days = val()?.parse().map_err(|_| "--cal-days needs whole days")?,
            "--cal-start" => cal_start = val()?,
            "--leak-free-only" => correct = false,
            "--config" => config = val()?,
            "--verbose" => verbose = true,
            "--out" => out = Some(PathBuf::from(val()?)),
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a} (see the module doc)")),
        }
    }
    let model = model.unwrap_or_else(|| cache.join("leak-model.json"));
    let runs: Vec<(u64, &'static str)> = match set.as_str() {
        "report" => report.iter().map(|s| (*s, "report")).collect(),
        "tuning" => tuning.iter().map(|s| (*s, "tuning")).collect(),
        "retired" => RETIRED_SEEDS.iter().map(|s| (*s, "retired")).collect(),
        "all" => tuning.iter().map(|s| (*s, "tuning")).chain(report.iter().map(|s| (*s, "report"))).collect(),
        _ => return Err("--set is report, tuning, retired or all".into()),
    };
    if let Some(s) = report.iter().find(|s| tuning.contains(s)) {
        return Err(format!("seed {s} is both a tuning and a report seed"));
    }
    let bd = Battledim::load(&data).map_err(|e| e.to_string())?;
    let model_bytes = std::fs::read(&model).map_err(|e| format!("{}: {e}", model.display()))?;
    let mut results = Vec::new();
    for (seed, kind) in runs {
        let cal = CalPlan { start: cal_start.clone(), days: cal_days, correct };
        let r = one_seed(&bd, &cache, &model_bytes, seed, kind, &cal, &config, verbose, out.as_deref())?;
        eprintln!(
            "seed {seed} ({kind}): TP {} FP {} FN {} F1 {:.3} {:.2} € ({:.0} s)",
            r.tp,
            r.fp,
            r.fn_,
            r.f1(),
            r.eur,
            r.secs
        );
        results.push(r);
    }
    println!("BattLeDIM protocol: calibrated on the simulated 2018 only (its leak labels taken out), scored on 2019 (official rules, 23 leaks)");
    println!("tuning seeds (settings chosen on them, not results): {tuning:?}; report seeds (simulated fresh, never used to choose settings): {report:?}; retired (read in an earlier round, no longer reported): {RETIRED_SEEDS:?}");
    println!("config: {config}");
    println!("| seed | kind | calibration | TP | FP | FN | F1 | € | of which 2018 leaks (TP, €) | mean delay h |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {}, {:.0} | {:.1} |",
            r.seed,
            r.kind,
            r.cal,
            r.tp,
            r.fp,
            r.fn_,
            r.f1(),
            r.eur,
            r.pre2019_tp,
            r.pre2019_eur,
            r.mean_delay_h
        );
    }
    for kind in ["tuning", "retired", "report"] {
        let rs: Vec<&SeedResult> = results.iter().filter(|r| r.kind == kind).collect();
        if rs.is_empty() {
            continue;
        }
        let f1: Vec<f64> = rs.iter().map(|r| r.f1()).collect();
        let eur: Vec<f64> = rs.iter().map(|r| r.eur).collect();
        let tp: Vec<f64> = rs.iter().map(|r| r.tp as f64).collect();
        let fp: Vec<f64> = rs.iter().map(|r| r.fp as f64).collect();
        let (mf, sf) = mean_sd(&f1);
        let (me, se) = mean_sd(&eur);
        let (mt, st) = mean_sd(&tp);
        let (mp, sp) = mean_sd(&fp);
        println!(
            "{kind} seeds ({}): F1 {mf:.3} ± {sf:.3}, total {me:.0} ± {se:.0} €, TP {mt:.1} ± {st:.1}, FP {mp:.1} ± {sp:.1} (mean ± sample sd)",
            rs.len()
        );
    }
    println!(
        "reference (on the organisers' data, not this simulation): a perfect submission scores 523,153.82 € \
         (the official PERFECT_TEAM report, reproduced by outpost_eval::battledim)"
    );
    Ok(())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, sd)
}

/// How the service is calibrated on 2018.
struct CalPlan {
    start: String,
    days: i64,
    /// Remove the labelled leaks' effect from the calibration data (else: stop before the first).
    correct: bool,
}

/// The 2018 leak labels: per step time, each leaking pipe's outflow (m³/h), as BattLeDIM gave
/// participants the 2018 leakages (`leaks.csv` of the historical run).
type Labels = BTreeMap<String, Vec<(String, f64)>>;

fn labels(historical: &Path) -> Result<Labels, String> {
    let path = historical.join("leaks.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty leaks.csv")?.split(',').skip(1).collect();
    let mut out = Labels::new();
    for line in lines {
        let mut it = line.split(',');
        let t = it.next().unwrap_or("").to_string();
        let q: Vec<(String, f64)> = header
            .iter()
            .zip(it)
            .filter_map(|(p, v)| v.trim().parse::<f64>().ok().filter(|x| *x > 0.0).map(|x| (p.to_string(), x)))
            .collect();
        out.insert(t, q);
    }
    Ok(out)
}

/// The calibration window: `days` from `start`; without label correction it ends at the last
/// full hour before the first labelled leak.
fn calibration_window(labels: &Labels, plan: &CalPlan) -> Result<(String, String), String> {
    let start_min = leak_detection::time::parse_minutes(&plan.start).ok_or("bad --cal-start")?;
    let mut end_min = start_min + plan.days * 1440 - 5;
    if !plan.correct {
        if let Some((t, _)) = labels.iter().find(|(t, q)| t.as_str() >= plan.start.as_str() && !q.is_empty()) {
            let m = leak_detection::time::parse_minutes(t).ok_or("bad time in leaks.csv")?;
            end_min = end_min.min(m.div_euclid(60) * 60 - 5);
        }
    }
    if end_min - start_min < 7 * 1440 - 5 {
        return Err("less than 7 usable days of calibration".into());
    }
    Ok((plan.start.clone(), leak_detection::time::format_minutes(end_min)))
}

/// A calibration step with the labelled leaks taken out: their outflow from the first inlet's
/// flow, their pressure drop (the model's signature of the pipe × outflow) from each sensor.
fn corrected(payload: &str, leaks: &[(String, f64)], model: &NetModel, inlet: &str) -> Result<String, String> {
    if leaks.is_empty() {
        return Ok(payload.to_owned());
    }
    let mut v: serde_json::Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let total: f64 = leaks.iter().map(|l| l.1).sum();
    if let Some(f) = v["flow_m3h"].get_mut(inlet) {
        if let Some(x) = f.as_f64() {
            *f = serde_json::json!(x - total);
        }
    }
    for (pipe, q) in leaks {
        let k =
            model.pipe_ids.iter().position(|p| p == pipe).ok_or(format!("labelled pipe {pipe} not in the model"))?;
        if let Some(ps) = v["pressure_m"].as_object_mut() {
            for (id, p) in ps.iter_mut() {
                if let (Some(&si), Some(x)) = (model.sensor_index.get(id), p.as_f64()) {
                    *p = serde_json::json!(x - q * model.pipe_sig[k][si]);
                }
            }
        }
    }
    Ok(v.to_string())
}

#[allow(clippy::too_many_arguments)]
fn one_seed(
    bd: &Battledim,
    cache: &Path,
    model_bytes: &[u8],
    seed: u64,
    kind: &'static str,
    plan: &CalPlan,
    config: &str,
    verbose: bool,
    out: Option<&Path>,
) -> Result<SeedResult, String> {
    let t0 = Instant::now();
    let historical = cache.join(format!("historical-seed{seed}"));
    let evaluation = cache.join(format!("evaluation-seed{seed}"));
    let labels = labels(&historical)?;
    let (cal_start, cal_end) = calibration_window(&labels, plan)?;
    let mut cal = replay::load_dir(&historical, Some(&cal_start), Some(&cal_end))?;
    if plan.correct {
        let m = NetModel::parse(model_bytes).map_err(|e| e.to_string())?;
        for s in &mut cal {
            let q = labels.get(&s.time).map(Vec::as_slice).unwrap_or(&[]);
            s.payload = corrected(&s.payload, q, &m, "p227")?;
        }
    }
    let ev = replay::load_dir(&evaluation, None, None)?;
    if ev.first().map(|s| s.time.as_str()) != Some("2019-01-01 00:00") {
        return Err(format!("{}: the evaluation run must start 2019-01-01 00:00", evaluation.display()));
    }
    let mut h =
        Harness::<LeakDetection>::with_acl(config, &["svc/leak-detection/+/alarm"]).map_err(|e| format!("{e:?}"))?;
    h.send(&format!("{TOPIC}/leak-model"), model_bytes.to_vec()).map_err(|e| format!("{e:?}"))?;
    let cmd = format!("{{\"start\":\"{cal_start}\",\"end\":\"{cal_end}\"}}");
    h.send(&format!("{TOPIC}/calibrate"), cmd.into_bytes()).map_err(|e| format!("{e:?}"))?;
    feed(&mut h, &cal)?;
    feed(&mut h, &ev)?;
    let alarms: Vec<serde_json::Value> =
        h.take_published().iter().filter_map(|(_, p)| serde_json::from_slice(p).ok()).collect();
    let detections = detections(&alarms)?;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let text: String = alarms.iter().map(|a| format!("{a}\n")).collect();
        std::fs::write(dir.join(format!("alarms-seed{seed}.jsonl")), text).map_err(|e| e.to_string())?;
        let text: String =
            detections.iter().map(|d| format!("{}, {}\n", d.pipe, battledim::step_to_time(d.step))).collect();
        std::fs::write(dir.join(format!("submission-seed{seed}.txt")), text).map_err(|e| e.to_string())?;
    }
    let score =
        battledim::score(&bd.network, &bd.leaks, &detections, &ScoringParams::default()).map_err(|e| e.to_string())?;
    if verbose {
        println!("{}", score.render_report(&format!("outpost leak-detection, seed {seed} ({kind})"), &bd.leaks));
        println!("per leak (TP): pipe, type, start, detected, delay h, distance m, €");
    }
    let mut delays = Vec::new();
    let (mut pre_tp, mut pre_eur) = (0, 0.0);
    for e in &score.entries {
        if let Outcome::Detected { leak, distance_m, .. } = e.outcome {
            let l = &bd.leaks[leak].info;
            let delay = (e.detection.step - l.start_step.max(0)) as f64 / 12.0;
            delays.push(delay);
            if l.start_step < 0 {
                pre_tp += 1;
                pre_eur += e.score_eur;
            }
            if verbose {
                println!(
                    "  {:5} {:9} {} {} {:8.1} {:6.0} {:10.2}",
                    l.pipe,
                    format!("{:?}", l.kind),
                    battledim::step_to_time(l.start_step),
                    battledim::step_to_time(e.detection.step),
                    delay,
                    distance_m,
                    e.score_eur
                );
            }
        }
    }
    if verbose {
        let fake = h.host();
        let flags: Vec<String> = fake.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("counters: {}", flags.join(" "));
    }
    let mean_delay_h = if delays.is_empty() { f64::NAN } else { delays.iter().sum::<f64>() / delays.len() as f64 };
    Ok(SeedResult {
        seed,
        kind,
        tp: score.true_positives,
        fp: score.false_positives,
        fn_: score.false_negatives,
        eur: score.total_eur,
        pre2019_tp: pre_tp,
        pre2019_eur: pre_eur,
        mean_delay_h,
        cal: format!("{cal_start} .. {cal_end}{}", if plan.correct { ", labelled leaks removed" } else { "" }),
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// Detections: each start, and each update that moves the leak to another pipe.
fn detections(alarms: &[serde_json::Value]) -> Result<Vec<Detection>, String> {
    let mut last_pipe: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for a in alarms {
        let kind = a["event"].as_str().unwrap_or("");
        let id = a["leak_id"].as_str().unwrap_or("").to_owned();
        let Some(pipe) = a["pipe"].as_str().map(str::to_owned) else { continue };
        let fresh = match kind {
            "start" => true,
            "update" => last_pipe.get(&id) != Some(&pipe),
            _ => false,
        };
        if fresh {
            let time = a["time"].as_str().unwrap_or("");
            let step = battledim::time_to_step(time).ok_or(format!("bad alarm time {time}"))?;
            out.push(Detection { pipe: pipe.clone(), step, line: out.len() + 1 });
        }
        last_pipe.insert(id, pipe);
    }
    Ok(out)
}

fn feed(h: &mut Harness<LeakDetection>, steps: &[replay::Step]) -> Result<(), String> {
    for chunk in steps.chunks(12) {
        let batch =
            chunk.iter().map(|s| Message::new(format!("{TOPIC}/scada"), s.payload.clone().into_bytes())).collect();
        h.send_batch(batch).map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}
