//! L-Town windows simulated with `tools/simulate_ltown.py` (cached): calibrate on ten
//! leak-free January days, then (a) four leak-free days raise nothing, (b) the abrupt p523
//! leak and (c) the incipient p653 leak are alarmed in time, near the pipe, with their size.
//! Distances are the BattLeDIM pipe distances of `outpost-eval`; sizes come from `leaks.csv`.

mod common;
use common::*;
use leak_detection::replay;
use outpost_eval::inp::read_inp;
use outpost_eval::network::Network;
use std::path::Path;

fn network() -> Network {
    let inp = read_inp(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/battledim/L-TOWN.inp")).unwrap();
    Network::from_inp(&inp).unwrap()
}

#[test]
fn leak_free_days_raise_no_alarm() {
    let mut h = calibrated();
    let dir = window("leakfree-mar", "leakfree", "2019-03-01 00:00", "2019-03-04 23:55");
    feed(&mut h, &replay::load_dir(&dir, None, None).unwrap());
    let a = alarms(&mut h);
    assert!(a.is_empty(), "alarms on leak-free data: {a:?}");
    // The KPI is the flow-balance leakage estimate: near 0 on leak-free data.
    let level = h.host().kpis["leakage_m3h/ltown"];
    assert!(level.abs() < 1.5, "leak-free leakage estimate {level} m3/h");
}

/// Events of the leak first started after `after`.
fn leak_after(a: &[serde_json::Value], after: &str) -> Vec<serde_json::Value> {
    let first = a
        .iter()
        .find(|x| x["event"] == "start" && minutes_between(after, x["onset"].as_str().unwrap()) >= 0)
        .unwrap_or_else(|| panic!("no start with onset after {after}: {a:#?}"));
    let id = first["leak_id"].clone();
    a.iter().filter(|x| x["leak_id"] == id).cloned().collect()
}

#[test]
fn abrupt_leak_p523_detected_located_sized() {
    let mut h = calibrated();
    // p523 (abrupt, 28 m3/h) starts 2019-01-15 23:00; the window starts two days earlier, with
    // the four leaks of 2018 already running (a start-up baseline shift, alarmed first).
    let dir = window("eval-p523", "evaluation", "2019-01-13 00:00", "2019-01-18 23:55");
    feed(&mut h, &replay::load_dir(&dir, None, None).unwrap());
    let a = alarms(&mut h);
    let ev = leak_after(&a, "2019-01-15 12:00");
    let start = &ev[0];
    let delay = minutes_between("2019-01-15 23:00", start["time"].as_str().unwrap());
    // Measured: 5.2 h with locate_after_h 6 (the CUSUM crosses within 1-2 h, then 6 h of data from
    // the estimated onset). The default is now 12 h (chosen on the tuning seeds: the 6-hour locate named a pipe
    // > 300 m away for 2 of the 7 abrupt leaks): ~11 h; 14 h leaves room for noise draws.
    assert!((0..=14 * 60).contains(&delay), "detected {delay} min after the start");
    let net = network();
    let last_pipe = ev.iter().rev().find_map(|x| x["pipe"].as_str()).expect("a pipe named");
    let d = net.link_distance(last_pipe, "p523").unwrap();
    // Measured: 108 m at the start (p497), ~0-100 m after refinement. The scorer's limit is 300 m.
    assert!(d <= 300.0, "located at {last_pipe}, {d:.0} m from p523");
    let truth = true_flow(&dir, "p523", "2019-01-18 00:00");
    let est = ev.iter().rev().find_map(|x| x["flow_m3h"].as_f64()).unwrap();
    // Flow balance noise over the sizing hours ~0.7 m3/h (calibration residuals); 15 % of 28.
    assert!((est - truth).abs() <= 0.15 * truth, "size {est} vs true {truth} m3/h");
}

#[test]
fn incipient_leak_p653_detected_in_its_growth() {
    let mut h = calibrated();
    // p653 (incipient) starts 2019-03-03 13:10 and grows to 2.8 m3/h by 03-23 (leaks.csv).
    let dir = window("eval-p653", "evaluation", "2019-03-01 00:00", "2019-03-23 23:55");
    feed(&mut h, &replay::load_dir(&dir, None, None).unwrap());
    let a = alarms(&mut h);
    // After the start-up alarms, the growth must be reported: a start of a new leak, or an
    // update raising an open leak's size (when its pressure pattern is too faint to separate).
    let later: Vec<_> = a
        .iter()
        .filter(|x| minutes_between("2019-03-05 00:00", x["time"].as_str().unwrap()) > 0 && x["event"] != "end")
        .collect();
    assert!(!later.is_empty(), "p653's growth never reported: {a:#?}");
    let t = later[0]["time"].as_str().unwrap();
    let true_then = true_flow(&dir, "p653", &t[..15]);
    // A slow rise is reported once the last day's mean flow balance is `min_growth_m3h` = 1.5
    // m3/h above the last reported level (daily-mean error ~0.3 m3/h on the leak-free year),
    // so not much below ~1 m3/h of leak and, with the noise, well before 3 m3/h.
    assert!((0.5..=3.0).contains(&true_then), "first report at {t}, leak then {true_then} m3/h");
}
