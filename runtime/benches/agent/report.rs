//! Figures: each the median of several runs with its spread, printed as a
//! markdown table, written as JSON and compared with an earlier JSON.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Runs behind every figure (the brief of issue 12: at least five).
pub const RUNS: usize = 5;

/// One measured figure and, when it has one, its baseline from the same run.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable identifier, compared across commits (`section.what.param`).
    pub id: String,
    pub what: String,
    pub unit: String,
    pub runs: Vec<f64>,
    pub baseline: Option<Baseline>,
    pub target: String,
    /// Extra words for the table (what the runs did, counts).
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct Baseline {
    pub what: String,
    pub runs: Vec<f64>,
}

impl Figure {
    pub fn new(id: &str, what: &str, unit: &str, runs: Vec<f64>) -> Figure {
        Figure {
            id: id.into(),
            what: what.into(),
            unit: unit.into(),
            runs,
            baseline: None,
            target: "-".into(),
            note: String::new(),
        }
    }

    pub fn baseline(mut self, what: &str, runs: Vec<f64>) -> Figure {
        self.baseline = Some(Baseline { what: what.into(), runs });
        self
    }

    pub fn target(mut self, target: &str) -> Figure {
        self.target = target.into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }

    pub fn value(&self) -> f64 {
        median(&self.runs)
    }

    pub fn ratio(&self) -> Option<f64> {
        let b = median(&self.baseline.as_ref()?.runs);
        (b != 0.0 && b.is_finite()).then(|| self.value() / b)
    }
}

/// Median of the finite values (NaN when there are none).
pub fn median(v: &[f64]) -> f64 {
    percentile(&mut v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>(), 0.5)
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let f = v.iter().copied().filter(|x| x.is_finite());
    (f.clone().fold(f64::INFINITY, f64::min), f.fold(f64::NEG_INFINITY, f64::max))
}

/// A number with as many decimals as its size needs to show ~3 digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    let prec = if a >= 100.0 || a == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    format!("{x:.prec$}")
}

/// `median (min-max) unit`, or just the value for a single run.
pub fn with_spread(runs: &[f64], unit: &str) -> String {
    let (lo, hi) = min_max(runs);
    let sp = if runs.len() > 1 { format!(" ({}-{})", num(lo), num(hi)) } else { String::new() };
    format!("{}{sp} {unit}", num(median(runs))).trim_end().to_owned()
}

/// Collects figures and prints each as it comes.
#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn push(&mut self, f: Figure) {
        let base = f
            .baseline
            .as_ref()
            .map_or(String::new(), |b| format!("  |  baseline {} ({})", with_spread(&b.runs, &f.unit), b.what));
        let ratio = f.ratio().map_or(String::new(), |r| format!("  |  {r:.2}x"));
        let note = if f.note.is_empty() { String::new() } else { format!("  [{}]", f.note) };
        println!("  {}: {}{base}{ratio}  (target {}){note}", f.what, with_spread(&f.runs, &f.unit), f.target);
        self.figures.push(f);
    }

    pub fn get(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "| figure | Outpost, median (min-max) of {RUNS}+ runs | baseline (same run) | ratio | target |\n|---|---|---|---|---|\n"
        );
        for f in &self.figures {
            let what = if f.note.is_empty() { f.what.clone() } else { format!("{} ({})", f.what, f.note) };
            let base =
                f.baseline.as_ref().map_or("-".into(), |b| format!("{} ({})", with_spread(&b.runs, &f.unit), b.what));
            let ratio = f.ratio().map_or("-".into(), |r| format!("{r:.2}x"));
            s.push_str(&format!("| {what} | {} | {base} | {ratio} | {} |\n", with_spread(&f.runs, &f.unit), f.target));
        }
        s
    }

    pub fn to_json(&self, cores: usize, sections: &[String]) -> Value {
        let rows: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let (lo, hi) = min_max(&f.runs);
                let baseline = f.baseline.as_ref().map(|b| {
                    let (blo, bhi) = min_max(&b.runs);
                    json!({"what": b.what, "value": finite(median(&b.runs)), "min": finite(blo), "max": finite(bhi), "runs": finite_all(&b.runs)})
                });
                json!({
                    "id": f.id,
                    "what": f.what,
                    "value": finite(f.value()),
                    "unit": f.unit,
                    "min": finite(lo),
                    "max": finite(hi),
                    "runs": finite_all(&f.runs),
                    "baseline": baseline,
                    "ratio": f.ratio().and_then(finite),
                    "target": f.target,
                    "note": f.note,
                })
            })
            .collect();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        json!({"unix_time": unix, "cores": cores, "sections": sections, "figures": rows})
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn finite_all(v: &[f64]) -> Vec<Option<f64>> {
    v.iter().map(|x| finite(*x)).collect()
}

/// Where results go: `OUTPOST_BENCH_OUT`, else `target/outpost/bench` of the
/// workspace's target directory.
pub fn out_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OUTPOST_BENCH_OUT") {
        return PathBuf::from(d);
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::workspace().join("target"));
    target.join("outpost/bench")
}

/// Writes `bench-<unix time>.json` and `latest.json`; returns the first.
pub fn write_json(dir: &Path, v: &Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    let path = dir.join(format!("bench-{}.json", v["unix_time"].as_u64().unwrap_or(0)));
    std::fs::write(&path, &text)?;
    std::fs::write(dir.join("latest.json"), &text)?;
    Ok(path)
}

/// Each figure of this run beside the same id in `old` (a JSON this bench
/// wrote), with the change in %; figures only one side has are listed too.
pub fn compare(report: &Report, old: &Value) -> String {
    let old_rows: Vec<&Value> = old["figures"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let find = |id: &str| old_rows.iter().find(|r| r["id"] == id).copied();
    let mut s = String::from("| figure | before | after | change |\n|---|---|---|---|\n");
    for f in &report.figures {
        let Some(o) = find(&f.id) else {
            s.push_str(&format!("| {} | - | {} | new |\n", f.what, with_spread(&f.runs, &f.unit)));
            continue;
        };
        let before = o["value"].as_f64().unwrap_or(f64::NAN);
        let (blo, bhi) = (o["min"].as_f64().unwrap_or(f64::NAN), o["max"].as_f64().unwrap_or(f64::NAN));
        let change = (f.value() - before) / before * 100.0;
        let ratio = match (o["ratio"].as_f64(), f.ratio()) {
            (Some(a), Some(b)) => format!("; ratio {a:.2}x -> {b:.2}x"),
            _ => String::new(),
        };
        s.push_str(&format!(
            "| {} | {} ({}-{}) {} | {} | {}{ratio} |\n",
            f.what,
            num(before),
            num(blo),
            num(bhi),
            f.unit,
            with_spread(&f.runs, &f.unit),
            if change.is_finite() { format!("{change:+.1} %") } else { "n/a".into() },
        ));
    }
    for o in old_rows {
        let id = o["id"].as_str().unwrap_or("");
        if report.get(id).is_none() {
            s.push_str(&format!(
                "| {} | {} {} | - | not measured now |\n",
                o["what"].as_str().unwrap_or(id),
                num(o["value"].as_f64().unwrap_or(f64::NAN)),
                o["unit"].as_str().unwrap_or("")
            ));
        }
    }
    s
}
