//! `leakdb-eval`: the leak-detection service on LeakDB Hanoi scenarios, scored with LeakDB's
//! official detection metrics (`outpost_eval::leakdb`).
//!
//! Protocol: settings are chosen on the tuning scenarios (1-20); the reported figures are the
//! pooled scores of the report scenarios (101-200, never used to choose settings). Per scenario:
//! simulate it if it is not cached (`plugins/leak-detection/tools/simulate_leakdb.py`, one at a
//! time, into `/var/tmp/outpost-data/leakdb/hanoi/Scenario-N`; a scenario counts as cached once
//! its `meta.json` exists, so an interrupted run resumes), calibrate the service natively (SDK
//! `Harness`) on the scenario's own first 4 weeks (2017-01-01 00:00 .. 2017-01-28 23:30, the same
//! for every scenario, whatever its labels: a leak inside them is learnt as consumption), replay
//! the year, turn alarms into per-step 0/1 predictions (1 from a `start` event's `time` to its
//! `end` event's `time`, or to the year's end) and score all 17,520 steps of every scenario
//! together (the calibration weeks are predicted 0 and scored like any other step).
//!
//! ```sh
//! cargo run --release -p outpost-eval --bin leakdb-eval -- [--set report|tuning|all] [--config JSON] [--verbose] [N ...]
//! ```
//! Scenario numbers given explicitly replace the set (and are printed as such).

use leak_detection::LeakDetection;
use outpost_eval::leakdb;
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const TOPIC: &str = "site/eval/hanoi";
const STEPS: usize = 17_520;
/// Scenarios the settings were chosen on (never reported as results).
const TUNING: std::ops::RangeInclusive<u32> = 1..=20;
/// Scenarios never used while choosing settings: the reported figures.
const REPORT: std::ops::RangeInclusive<u32> = 101..=200;
/// Hanoi service config: 30-min steps, one inlet (pipe 1 from the reservoir), no AMR, no tank.
const HANOI: &str = r#"{"step_minutes":30,"min_steps_per_hour":2,"inlet_flows":["1"],"pump_flow":"","tank_level":"",
 "calibration":{"start":"2017-01-01 00:00","end":"2017-01-28 23:30"},
 "flow_range_m3h":[-50000,50000],"pressure_range_m":[-100,300],"spike_flow_m3h":1e6,"spike_pressure_m":1e6,
 "cusum_drift_m3h":150,"cusum_threshold_m3h":2000,"min_leak_m3h":100,"min_growth_m3h":150,"locate_min_m3h":1e9,
 "relearn_h":24,"profile_adapt_h":72,"locate_after_h":6}"#;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn merge(base: &mut Value, over: &Value) {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
}

fn run() -> Result<(), String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cache = PathBuf::from("/var/tmp/outpost-data/leakdb/hanoi");
    let mut config: Value = serde_json::from_str(HANOI).map_err(|e| e.to_string())?;
    let mut scenarios = Vec::new();
    let mut verbose = false;
    let mut set = "report".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--verbose" => verbose = true,
            "--set" => set = args.next().ok_or("--set needs report, tuning or all")?,
            "--help" | "-h" => {
                println!("leakdb-eval [--set report|tuning|all] [--config JSON] [--verbose] [N ...]: tuning scenarios {TUNING:?}, report scenarios {REPORT:?}");
                return Ok(());
            }
            "--config" => {
                let v = args.next().ok_or("--config needs a JSON object")?;
                merge(&mut config, &serde_json::from_str(&v).map_err(|e| format!("--config: {e}"))?);
            }
            n => scenarios.push(n.parse::<u32>().map_err(|_| format!("scenario number expected, got {n}"))?),
        }
    }
    let label = if scenarios.is_empty() {
        let (t, r) = (TUNING.collect::<Vec<u32>>(), REPORT.collect::<Vec<u32>>());
        scenarios = match set.as_str() {
            "report" => r,
            "tuning" => t,
            "all" => t.into_iter().chain(r).collect(),
            _ => return Err("--set is report, tuning or all".into()),
        };
        set.clone()
    } else {
        "given on the command line".to_string()
    };
    let py =
        std::fs::read_to_string(repo.join("tests/data/leakdb/epyt-flow/leakdb_data.py")).map_err(|e| e.to_string())?;
    let table = leakdb::parse_table(leakdb::table_json(&py, "HANOI_LEAKAGES").ok_or("HANOI_LEAKAGES not found")?)
        .map_err(|e| e.to_string())?;
    let cfg = config.to_string();
    let mut truth = Vec::new();
    let mut pred = Vec::new();
    let mut rows = Vec::new();
    let t0 = Instant::now();
    for &n in &scenarios {
        let leaks = table.get(&n).cloned().unwrap_or_default();
        let windows: Vec<(u64, u64)> = leaks.iter().map(|l| (l.leak_start_time, l.leak_end_time)).collect();
        let y = leakdb::labels_from_windows(STEPS, &windows);
        let dir = ensure(&repo, &cache, n)?;
        let t = Instant::now();
        let steps = load(&dir)?;
        let mut h =
            Harness::<LeakDetection>::with_acl(&cfg, &["svc/leak-detection/+/alarm"]).map_err(|e| format!("{e:?}"))?;
        feed(&mut h, &steps)?;
        let alarms: Vec<Value> =
            h.take_published().iter().filter_map(|(_, p)| serde_json::from_slice(p).ok()).collect();
        if verbose {
            for a in &alarms {
                eprintln!(
                    "  {n} {} {} {} onset {} {} m3/h: {}",
                    a["leak_id"], a["event"], a["time"], a["onset"], a["flow_m3h"], a["reason"]
                );
            }
        }
        let p = predictions(&alarms);
        let sc = leakdb::score(&[&y], &[&p]).map_err(|e| e.to_string())?;
        let delays = delays_h(&y, &p);
        rows.push((n, leaks.len(), alarms.iter().filter(|a| a["event"] == "start").count(), sc, delays));
        eprintln!("scenario {n}: {:.1} s", t.elapsed().as_secs_f64());
        truth.push(y);
        pred.push(p);
    }
    println!("config: {cfg}");
    println!(
        "scenarios: {label} ({} of them); tuning set (settings chosen on it, not results) {TUNING:?}, report set {REPORT:?}; \
         calibration: each scenario's own weeks 1-4, chosen without labels, scored like every other step",
        scenarios.len()
    );
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
    let mut all_delays = Vec::new();
    if verbose {
        println!("| scenario | leaks | starts | TP | FP | FN | TN | F1 % | TPR % | TNR % | delay h |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for (n, nl, starts, sc, d) in &rows {
        let c = sc.confusion;
        let dd: Vec<String> = d.iter().map(|x| x.map_or("missed".into(), |v| format!("{v:.1}"))).collect();
        all_delays.extend(d.iter().flatten().copied());
        if verbose {
            println!(
                "| {n} | {nl} | {starts} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.tp,
                c.fp,
                c.fn_,
                c.tn,
                fmt(sc.f1),
                fmt(sc.tpr),
                fmt(sc.tnr),
                if dd.is_empty() { "-".into() } else { dd.join(", ") }
            );
        }
    }
    let s = leakdb::score(&truth, &pred).map_err(|e| e.to_string())?;
    let n_leaks: usize = rows.iter().map(|r| r.4.len()).sum();
    let with_leak = rows.iter().filter(|r| r.1 > 0).count();
    println!("| | scenarios | F1 % | TPR % | TNR % | MCC | SED % | leaks detected | mean delay h |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| outpost leak-detection ({label}) | {} ({with_leak} with leaks) | {} | {} | {} | {} | {} | {}/{n_leaks} | {} |",
        rows.len(),
        fmt(s.f1),
        fmt(s.tpr),
        fmt(s.tnr),
        s.mcc.map_or("-".into(), |v| format!("{v:.3}")),
        fmt(s.sed),
        all_delays.len(),
        fmt((!all_delays.is_empty()).then(|| all_delays.iter().sum::<f64>() / all_delays.len() as f64)),
    );
    println!(
        "| minimum night flow, λ 20 % (best F1 of the paper's baselines) | 500 (original data) | 56.49 | 39.90 | 99.58 | - | 32.35 | - | - |"
    );
    println!(
        "baseline source: Vrachimis, Kyriakou, Eliades, Polycarpou, LeakDB, CCWI/WDSA 2018, Table 1 \
         (KIOS-Research/LeakDB, CCWI-WDSA2018/Paper/Vrachimis_CCWI-WDSA2018.pdf): on 500 published Hanoi scenarios, not this re-simulation"
    );
    let sim_s: Vec<f64> = rows.iter().filter_map(|r| sim_time(&cache.join(format!("Scenario-{}", r.0)))).collect();
    println!(
        "time: replay and scoring {:.0} s for {} scenarios; simulation {:.1} s per scenario (mean of the cached runs' meta.json, one core)",
        t0.elapsed().as_secs_f64(),
        rows.len(),
        sim_s.iter().sum::<f64>() / sim_s.len().max(1) as f64
    );
    Ok(())
}

/// A cached scenario's simulation time (s), from its `meta.json`.
fn sim_time(dir: &Path) -> Option<f64> {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).ok()?).ok()?;
    m["run_time_s"].as_f64()
}

/// The scenario's directory, simulated first when missing.
fn ensure(repo: &Path, cache: &Path, n: u32) -> Result<PathBuf, String> {
    let dir = cache.join(format!("Scenario-{n}"));
    if !dir.join("meta.json").exists() {
        eprintln!("simulating scenario {n} into {}", cache.display());
        let st = Command::new("python3")
            .arg(repo.join("plugins/leak-detection/tools/simulate_leakdb.py"))
            .args(["--scenarios", &n.to_string(), "--out"])
            .arg(cache)
            .status()
            .map_err(|e| format!("python3: {e}"))?;
        if !st.success() {
            return Err(format!("simulate_leakdb.py failed for scenario {n}"));
        }
    }
    Ok(dir)
}

/// One SCADA payload per step: every junction pressure and the inlet flow (pipe 1).
fn load(dir: &Path) -> Result<Vec<String>, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()));
    let (p, f) = (read("pressures.csv")?, read("flows.csv")?);
    let mut pl = p.lines();
    let mut fl = f.lines();
    let ph: Vec<&str> = pl.next().ok_or("empty pressures.csv")?.split(',').skip(1).collect();
    let inlet = f.lines().next().ok_or("empty flows.csv")?.split(',').position(|c| c == "1").ok_or("no pipe 1")?;
    fl.next();
    let mut out = Vec::with_capacity(STEPS);
    for (pr, fr) in pl.zip(fl) {
        let pv: Vec<&str> = pr.split(',').collect();
        let fv: Vec<&str> = fr.split(',').collect();
        let q = fv.get(inlet).ok_or("short flows row")?;
        let mut s = format!("{{\"time\":\"{}\",\"flow_m3h\":{{\"1\":{q}}},\"pressure_m\":{{", pv[0]);
        for (k, (id, v)) in ph.iter().zip(&pv[1..]).enumerate() {
            if k > 0 {
                s.push(',');
            }
            s.push_str(&format!("\"{id}\":{v}"));
        }
        s.push_str("}}");
        out.push(s);
    }
    if out.len() != STEPS {
        return Err(format!("{}: {} steps, expected {STEPS}", dir.display(), out.len()));
    }
    Ok(out)
}

fn feed(h: &mut Harness<LeakDetection>, steps: &[String]) -> Result<(), String> {
    for chunk in steps.chunks(48) {
        let batch = chunk.iter().map(|s| Message::new(format!("{TOPIC}/scada"), s.clone().into_bytes())).collect();
        h.send_batch(batch).map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// Step index (30 min from 2017-01-01 00:00) of a `2017-MM-DD HH:MM` time.
fn step_of(t: &str) -> Option<usize> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<usize>().ok();
    if n(0..4)? != 2017 {
        return None;
    }
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day = cum.get(n(5..7)?.checked_sub(1)?)? + n(8..10)? - 1;
    Some(day * 48 + n(11..13)? * 2 + n(14..16)? / 30)
}

/// 1 from each leak's `start` alarm time to its `end` alarm time (exclusive) or the year's end.
fn predictions(alarms: &[Value]) -> Vec<bool> {
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut p = vec![false; STEPS];
    let mut mark = |a: usize, b: usize| p[a.min(STEPS)..b.min(STEPS)].iter_mut().for_each(|x| *x = true);
    for a in alarms {
        let (Some(id), Some(t)) = (a["leak_id"].as_str(), a["time"].as_str().and_then(step_of)) else { continue };
        match a["event"].as_str() {
            Some("start") => {
                open.insert(id.to_owned(), t);
            }
            Some("end") => {
                if let Some(s) = open.remove(id) {
                    mark(s, t);
                }
            }
            _ => {}
        }
    }
    for s in open.values() {
        mark(*s, STEPS);
    }
    p
}

/// Per true leak (run of 1s), hours from its first step to the first predicted step inside it.
fn delays_h(y: &[bool], p: &[bool]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < y.len() {
        if y[i] {
            let s = i;
            while i < y.len() && y[i] {
                i += 1;
            }
            out.push((s..i).find(|&k| p[k]).map(|k| (k - s) as f64 / 2.0));
        } else {
            i += 1;
        }
    }
    out
}
