//! Leak detection as a WebAssembly component in the real host (`outpostctl run`, the same
//! path the agent uses: manifest, publish ACL, state store, limits), on a short simulated
//! window of L-Town: the network model in, then ten leak-free January days to calibrate on
//! (the window comes from the site config, as a deployment would set it) and the six days
//! around the abrupt p523 leak (28 m³/h from 2019-01-15 23:00). Asserted against the
//! simulation's ground truth: one `start` alarm for a leak beginning after p523's start
//! minus a few hours, within 14 h, whose position is within 300 m of p523 and whose size is
//! within 25 % of p523's true outflow; the model and calibration survive in the state folder
//! between the two runs.
//!
//! The windows are simulated with `plugins/leak-detection/tools` (python3 + wntr, about
//! 2 minutes the first time) and cached in `/var/tmp/outpost-data/battledim/ci-*`, the same
//! files the plugin's own tests use.

use outpost_tests::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const NET: &str = "site/ci/ltown";
const CAL: (&str, &str) = ("2019-01-02 00:00", "2019-01-11 23:55");
const LEAK_START: &str = "2019-01-15 23:00";

fn tools() -> PathBuf {
    workspace().join("plugins/leak-detection/tools")
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("OUTPOST_DATA").unwrap_or_else(|_| "/var/tmp/outpost-data".into())).join("battledim")
}

/// `script args --out scratch`, renamed into place (a parallel writer never leaves a half file).
fn generate(target: &Path, script: &str, args: &[&str]) {
    if target.exists() {
        return;
    }
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let scratch = target.with_extension(format!("partial-{}", std::process::id()));
    let st = Command::new("python3")
        .current_dir(tools())
        .arg(script)
        .args(args)
        .arg("--out")
        .arg(&scratch)
        .status()
        .expect("python3 runs (cargo xtask setup installs wntr)");
    assert!(st.success(), "{script} failed for {}", target.display());
    if std::fs::rename(&scratch, target).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_file(&scratch);
    }
}

fn window(name: &str, config: &str, start: &str, end: &str) -> PathBuf {
    let dir = cache().join(format!("ci-{name}"));
    generate(&dir, "simulate_ltown.py", &["--config", config, "--start", start, "--end", end]);
    dir
}

/// One SCADA message per 5-min step, as `outpost-sim --scada` publishes them.
fn scada_lines(dir: &Path, out: &mut impl Write) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let groups = [
        ("pressure_m", read("pressures.csv")),
        ("flow_m3h", read("flows.csv")),
        ("demand_lph", read("demands.csv")),
        ("level_m", read("levels.csv")),
    ];
    let tables: Vec<Table> = groups
        .iter()
        .map(|(k, text)| {
            let mut lines = text.lines();
            let header = lines.next().unwrap().split(',').collect();
            (*k, header, lines.filter(|l| !l.is_empty()).map(|l| l.split(',').collect()).collect())
        })
        .collect();
    for i in 0..tables[0].2.len() {
        let mut msg = serde_json::Map::new();
        msg.insert("time".into(), Value::from(tables[0].2[i][0]));
        for (key, header, rows) in &tables {
            assert_eq!(rows[i][0], tables[0].2[i][0], "{key} rows aligned");
            let group: serde_json::Map<String, Value> = header[1..]
                .iter()
                .zip(&rows[i][1..])
                .map(|(id, v)| (id.to_string(), Value::from(v.parse::<f64>().unwrap())))
                .collect();
            msg.insert(key.to_string(), Value::Object(group));
        }
        writeln!(out, "{}", Value::Object(msg)).unwrap();
    }
}

/// A group of SCADA sensors: its kind, its sensor names, and one row of readings per step.
type Table<'a> = (&'a str, Vec<&'a str>, Vec<Vec<&'a str>>);

fn outpostctl_run(pkg: &Path, input: &Path, topic: &str, extra: &[&str], state: &Path) -> Vec<Value> {
    let out = Command::new(binary("outpostctl"))
        .arg("run")
        .arg(pkg)
        .arg("--replay")
        .arg(input)
        .args(["--topic", topic])
        .arg("--state")
        .arg(state)
        .args(extra)
        .output()
        .expect("outpostctl run");
    assert!(out.status.success(), "outpostctl run failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

/// Minutes since 2019-01-01 00:00 of a January 2019 `YYYY-MM-DD HH:MM`.
fn jan_minutes(s: &str) -> i64 {
    assert!(s.starts_with("2019-01-"), "{s}");
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    ((n(8..10) - 1) * 24 + n(11..13)) * 60 + n(14..16)
}

#[test]
fn the_component_finds_the_p523_leak_against_ground_truth() {
    let pkg = package("leak-detection");
    let model = cache().join("ci-leak-model.json");
    generate(&model, "leak_model.py", &[]);
    let cal = window("leakfree-cal", "leakfree", CAL.0, CAL.1);
    let leak = window("eval-p523", "evaluation", "2019-01-13 00:00", "2019-01-18 23:55");

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // 1. The network model: one message of the whole file (269 KB, under max_payload_bytes).
    let len = std::fs::metadata(&model).unwrap().len().to_string();
    let out = outpostctl_run(&pkg, &model, &format!("{NET}/leak-model"), &["--chunk", &len], &state);
    assert!(out.is_empty(), "nothing published for a model: {out:?}");

    // 2. The SCADA: calibration days, then the leak window; the window is site config.
    // One SCADA message per line on --topic: not a `.jsonl` name, which
    // `outpostctl run` reads as a recording (each line with its own topic).
    let scada = tmp.path().join("scada.lines");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&scada).unwrap());
    scada_lines(&cal, &mut f);
    scada_lines(&leak, &mut f);
    drop(f);
    let config = tmp.path().join("site.toml");
    std::fs::write(&config, format!("calibration = {{ start = \"{}\", end = \"{}\" }}\n", CAL.0, CAL.1)).unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let out = outpostctl_run(&pkg, &scada, &format!("{NET}/scada"), &["--config", &config_arg], &state);
    let alarms: Vec<&Value> =
        out.iter().filter(|o| o["topic"] == "svc/leak-detection/ci/alarm").map(|o| &o["payload"]).collect();
    assert_eq!(alarms.len(), out.len(), "only alarms on the alarm topic: {out:?}");

    // The leak that began around p523's start (the 2018 leaks show first, as a start-up shift).
    let start = alarms
        .iter()
        .find(|a| {
            a["event"] == "start" && jan_minutes(a["onset"].as_str().unwrap()) >= jan_minutes(LEAK_START) - 12 * 60
        })
        .unwrap_or_else(|| panic!("no start alarm for p523: {alarms:#?}"));
    let delay = jan_minutes(start["time"].as_str().unwrap()) - jan_minutes(LEAK_START);
    // locate_after_h is 12 h: ~11 h natively (tests in plugins/leak-detection), same code here.
    assert!((0..=14 * 60).contains(&delay), "alarmed {delay} min after the leak started: {start}");

    // Position: against p523's midpoint from the model's own coordinates.
    let m: Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    let k = m["pipes"]["ids"].as_array().unwrap().iter().position(|p| p == "p523").expect("p523 in the model");
    let (a, b) = (m["pipes"]["n1"][k].as_u64().unwrap() as usize, m["pipes"]["n2"][k].as_u64().unwrap() as usize);
    let xy = |i: usize, c: &str| m["nodes"][c][i].as_f64().unwrap();
    let (px, py) = ((xy(a, "x") + xy(b, "x")) / 2.0, (xy(a, "y") + xy(b, "y")) / 2.0);
    let id = start["leak_id"].clone();
    let last = alarms.iter().rev().find(|a| a["leak_id"] == id && a["pipe"].is_string()).expect("a pipe named");
    let (x, y) = (last["position"]["x"].as_f64().unwrap(), last["position"]["y"].as_f64().unwrap());
    let d = ((x - px).powi(2) + (y - py).powi(2)).sqrt();
    // Straight-line distance (never more than the scorer's pipe distance); 300 m is the scorer's limit.
    assert!(d <= 300.0, "located at {} ({x:.0}, {y:.0}), {d:.0} m from p523", last["pipe"]);

    // Size against the simulation's true outflow on the last day.
    let text = std::fs::read_to_string(leak.join("leaks.csv")).unwrap();
    let mut lines = text.lines();
    let col = lines.next().unwrap().split(',').position(|c| c == "p523").unwrap();
    let row = lines.find(|l| l.starts_with("2019-01-18 00:00")).unwrap();
    let truth: f64 = row.split(',').nth(col).unwrap().parse().unwrap();
    let est = last["flow_m3h"].as_f64().unwrap();
    assert!((est - truth).abs() <= 0.25 * truth, "size {est} vs true {truth} m3/h");
    assert!(!alarms.iter().any(|a| a["leak_id"] == id && a["event"] == "end"), "p523 runs past the window");
}
