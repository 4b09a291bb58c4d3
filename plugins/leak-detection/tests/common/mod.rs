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

/// A simulated window `ci-{name}`, generated once (seed 2020, 1 day of spin-up).
pub fn window(name: &str, config: &str, start: &str, end: &str) -> PathBuf {
    let dir = cache().join(format!("ci-{name}"));
    if !dir.join("levels.csv").exists() {
        let st = Command::new("python3")
            .current_dir(tools())
            .args(["simulate_ltown.py", "--config", config, "--start", start, "--end", end, "--out"])
            .arg(&dir)
            .status()
            .expect("python3 runs (pip install wntr six)");
        assert!(st.success(), "simulate_ltown.py failed for {name}");
    }
    dir
}

pub fn model() -> Vec<u8> {
    let f = cache().join("ci-leak-model.json");
    if !f.exists() {
        let st = Command::new("python3")
            .current_dir(tools())
            .args(["leak_model.py", "--out"])
            .arg(&f)
            .status()
            .expect("python3 runs (pip install wntr six)");
        assert!(st.success(), "leak_model.py failed");
    }
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
