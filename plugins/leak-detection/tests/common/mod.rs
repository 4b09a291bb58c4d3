//! Shared by the L-Town tests: simulated windows cached under /var/tmp (regenerated with
//! `tools/simulate_ltown.py` when missing), the leak model, a calibrated service.
#![allow(dead_code)]

use leak_detection::{replay, LeakDetection};
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NET: &str = "site/ci/ltown";
pub const ALARMS: &str = "svc/leak-detection/+/alarm";
/// Calibration: ten leak-free days of January (240 hours for the 84-coefficient flow model).
pub const CAL: (&str, &str) = ("2019-01-02 00:00", "2019-01-11 23:55");

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools")
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("OUTPOST_DATA").unwrap_or_else(|_| "/var/tmp/outpost-data".into())).join("battledim")
}

/// Tests of one binary run in parallel: one generates, the others wait.
static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `script` writing to a scratch path, then renames it into place, so a
/// reader (or another test binary generating the same thing) never sees a
/// half-written result.
fn generate(target: &Path, script: &str, args: &[&str]) {
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|e| e.into_inner());
    if target.exists() {
        return;
    }
    let scratch = target.with_extension(format!("partial-{}", std::process::id()));
    let st = Command::new("python3")
        .current_dir(tools())
        .arg(script)
        .args(args)
        .arg("--out")
        .arg(&scratch)
        .status()
        .expect("python3 runs (pip install wntr six)");
    assert!(st.success(), "{script} failed for {}", target.display());
    if std::fs::rename(&scratch, target).is_err() {
        // Another process finished first: keep its result.
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_file(&scratch);
    }
}

/// A simulated window `ci-{name}`, generated once (seed 2020, 1 day of spin-up).
pub fn window(name: &str, config: &str, start: &str, end: &str) -> PathBuf {
    let dir = cache().join(format!("ci-{name}"));
    generate(&dir, "simulate_ltown.py", &["--config", config, "--start", start, "--end", end]);
    dir
}

pub fn model() -> Vec<u8> {
    let f = cache().join("ci-leak-model.json");
    generate(&f, "leak_model.py", &[]);
    std::fs::read(f).expect("leak model")
}

pub fn feed(h: &mut Harness<LeakDetection>, steps: &[replay::Step]) {
    for chunk in steps.chunks(12) {
        let batch =
            chunk.iter().map(|s| Message::new(format!("{NET}/scada"), s.payload.clone().into_bytes())).collect();
        h.send_batch(batch).expect("handle");
    }
}

/// A service with the model and calibrated on the leak-free window.
pub fn calibrated() -> Harness<LeakDetection> {
    let cal = window("leakfree-cal", "leakfree", CAL.0, CAL.1);
    let mut h = Harness::<LeakDetection>::with_acl("{}", &[ALARMS]).expect("init");
    h.send(&format!("{NET}/leak-model"), model()).expect("model");
    let cmd = format!("{{\"start\":\"{}\",\"end\":\"{}\"}}", CAL.0, CAL.1);
    h.send(&format!("{NET}/calibrate"), cmd.into_bytes()).expect("calibrate");
    feed(&mut h, &replay::load_dir(&cal, None, None).expect("calibration csv"));
    assert!(h.host().state.keys().any(|k| k.starts_with("calib/ci/ltown")), "calibration stored in state");
    h
}

pub fn alarms(h: &mut Harness<LeakDetection>) -> Vec<serde_json::Value> {
    h.take_published().iter().map(|(_, p)| serde_json::from_slice(p).expect("alarm JSON")).collect()
}

/// Minutes between two `YYYY-MM-DD HH:MM` (written apart from the service's own parser).
pub fn minutes_between(a: &str, b: &str) -> i64 {
    fn abs(s: &str) -> i64 {
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
        let (y, mo, d, h, mi) = (n(0..4), n(5..7), n(8..10), n(11..13), n(14..16));
        let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        assert_eq!(y, 2019, "tests use 2019 only");
        ((cum[(mo - 1) as usize] + d - 1) * 24 + h) * 60 + mi
    }
    abs(b) - abs(a)
}

/// The true outflow of `pipe` at `time` from the window's `leaks.csv`.
pub fn true_flow(dir: &Path, pipe: &str, time: &str) -> f64 {
    let text = std::fs::read_to_string(dir.join("leaks.csv")).unwrap();
    let mut lines = text.lines();
    let col = lines.next().unwrap().split(',').position(|c| c == pipe).expect("pipe column");
    let row = lines.find(|l| l.starts_with(time)).expect("time row");
    row.split(',').nth(col).unwrap().parse().unwrap()
}
