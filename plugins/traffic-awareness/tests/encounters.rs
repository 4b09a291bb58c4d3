//! Constructed encounters with analytic answers, fed as TPV JSON at 10 Hz.
//!
//! Calibration (tests/common): radius 2.5 m per asset (collision radius
//! R = 5 m), warning when the gap reaches 10 m (separation 15 m) within
//! 10 s, critical when it reaches 3 m (separation 8 m) within 4 s, clear
//! margin 2 m (separation 17 m) held 2 s, stale after 5 s.

mod common;

use common::*;
use serde_json::json;

const R: f64 = 5.0;

fn mover(id: &'static str, x: f64, y: f64, vx: f64, vy: f64) -> Mover {
    Mover { id, x, y, vx, vy }
}

fn states_of(ev: &[(usize, serde_json::Value)]) -> Vec<&str> {
    ev.iter().map(|(_, v)| v["state"].as_str().unwrap_or("?")).collect()
}

#[test]
fn head_on_ttc_is_distance_minus_radius_over_closing_speed() {
    let mut h = harness(json!({}));
    let a = mover("haul-1", 0.0, 0.0, 10.0, 0.0);
    let b = mover("haul-2", 300.7, 0.0, -10.0, 0.0);
    let steps = run(&mut h, &[a, b], 200);
    let (ea, eb) = (events(&steps, "haul-1"), events(&steps, "haul-2"));
    assert_eq!(states_of(&ea), ["start", "escalate", "clear"]);
    assert_eq!(states_of(&eb), ["start", "escalate", "clear"]);

    // Separation d = 300.7 - 2k m at step k, closing at 20 m/s. Warning once
    // d <= R + 10 + 20 * 10 = 215: step 43, d = 214.7.
    let (k, s) = &ea[0];
    assert_eq!(*k, 43);
    close("distance", f(s, "distance_m"), 214.7, 1e-3);
    close("closing speed", f(s, "closing_speed_mps"), 20.0, 1e-3);
    close("ttc = (d - R) / v", f(s, "ttc_s"), (214.7 - R) / 20.0, 1e-3);
    close("cpa time", f(s, "cpa_time_s"), 214.7 / 20.0, 1e-3);
    close("cpa distance", f(s, "cpa_distance_m"), 0.0, 1e-3);
    close("gap", f(s, "gap_m"), 214.7 - R, 1e-3);
    close("bearing a -> b", f(s, "bearing_deg"), 90.0, 1e-3);
    close("bearing b -> a", f(&eb[0].1, "bearing_deg"), 270.0, 1e-3);
    assert_eq!(s["severity"], "warning");
    assert_eq!(s["kind"], "collision");
    assert_eq!(s["other"], "haul-2");
    assert_eq!(eb[0].1["other"], "haul-1");
    assert_eq!(s["time"], iso(T0 + 4300));
    assert_eq!(s["encounter"], format!("haul-1|haul-2|{}", T0 + 4300));
    assert_eq!(eb[0].1["encounter"], s["encounter"]);

    // Critical once d <= R + 3 + 20 * 4 = 88: step 107, d = 86.7.
    let (k, s) = &ea[1];
    assert_eq!(*k, 107);
    close("ttc at escalate", f(s, "ttc_s"), (86.7 - R) / 20.0, 1e-3);
    assert_eq!((s["severity"].as_str(), s["peak_severity"].as_str()), (Some("critical"), Some("critical")));

    // They pass through; apart by more than 17 m from step 159 (17.3 m),
    // held 2 s: clear at step 179.
    let (k, s) = &ea[2];
    assert_eq!(*k, 179);
    assert_eq!((s["reason"].as_str(), s["severity"].as_str()), (Some("separated"), Some("none")));
    assert_eq!(s["peak_severity"], "critical");
    assert_eq!(eb[2].0, 179);
}

#[test]
fn crossing_at_right_angles_matches_analytic_cpa() {
    let cfg = config_value(json!({}));
    let mut h = harness(json!({}));
    let a = mover("lv-7", -100.0, 0.0, 10.0, 0.0);
    let b = mover("lv-9", 0.0, -90.0, 0.0, 8.0);
    let steps = run(&mut h, &[a, b], 160);
    let ev = events(&steps, "lv-7");
    assert_eq!(states_of(&ev), ["start", "escalate", "clear"]);

    // Relative motion of b from a: p(t) = (100 - 10t, -90 + 8t), v = (-10, 8).
    // Closest approach at t* = 1720/164 s, at |p x v|/|v| = 100/sqrt(164) m.
    let (t_star, d_star) = (1720.0 / 164.0, 100.0 / 164f64.sqrt());
    let rel = |k: usize| {
        let t = k as f64 * 0.1;
        (100.0 - 10.0 * t, -90.0 + 8.0 * t)
    };
    let first = |want: &str| (0..160).find(|&k| expected_severity(rel(k), (-10.0, 8.0), R, &cfg) == want);
    let (k, s) = &ev[0];
    assert_eq!(Some(*k), first("warning"), "start step");
    let t = *k as f64 * 0.1;
    close("cpa time", f(s, "cpa_time_s"), t_star - t, 1e-3);
    close("cpa distance", f(s, "cpa_distance_m"), d_star, 1e-3);
    let p = rel(*k);
    close("distance", f(s, "distance_m"), p.0.hypot(p.1), 1e-3);
    close("closing speed", f(s, "closing_speed_mps"), -(p.0 * -10.0 + p.1 * 8.0) / p.0.hypot(p.1), 1e-3);
    // 7.81 m > R: a near miss, not a collision.
    assert!(s["ttc_s"].is_null(), "{s}");
    assert_eq!(s["kind"], "proximity");
    let (k, s) = &ev[1];
    assert_eq!(Some(*k), first("critical"), "escalate step");
    close("cpa distance at escalate", f(s, "cpa_distance_m"), d_star, 1e-3);
}

#[test]
fn following_at_same_speed_is_silent_and_a_faster_follower_warns() {
    let mut h = harness(json!({}));
    let lead = mover("truck-1", 30.0, 0.0, 10.0, 0.0);
    let follow = mover("truck-2", 0.0, 0.0, 10.0, 0.0);
    let steps = run(&mut h, &[lead, follow], 300);
    assert!(steps.iter().flatten().all(|o| !o.topic.ends_with("/warning")), "25 m gap, no closing: no warning");

    let mut h = harness(json!({}));
    let lead = mover("truck-1", 100.3, 0.0, 10.0, 0.0);
    let follow = mover("truck-2", 0.0, 0.0, 15.0, 0.0);
    let steps = run(&mut h, &[lead, follow], 150);
    let ev = events(&steps, "truck-2");
    assert_eq!(states_of(&ev), ["start", "escalate"]);
    // d = 100.3 - 0.5k, closing 5 m/s: warning once d <= 15 + 50 (step 71,
    // d = 64.8); critical once d <= 8 + 20 (step 145, d = 27.8).
    assert_eq!(ev[0].0, 71);
    close("ttc at start", f(&ev[0].1, "ttc_s"), (64.8 - R) / 5.0, 1e-3);
    close("closing", f(&ev[0].1, "closing_speed_mps"), 5.0, 1e-3);
    assert_eq!(ev[1].0, 145);
    close("ttc at escalate", f(&ev[1].1, "ttc_s"), (27.8 - R) / 5.0, 1e-3);
}

#[test]
fn parallel_passing_cpa_is_the_lateral_offset() {
    // Opposite directions, 20 m/s relative, offsets 4, 12 and 20 m, far apart.
    let mut h = harness(json!({}));
    let movers = [
        mover("a4", 0.0, 0.0, 10.0, 0.0),
        mover("b4", 200.5, 4.0, -10.0, 0.0),
        mover("a12", 0.0, 3000.0, 10.0, 0.0),
        mover("b12", 200.5, 3012.0, -10.0, 0.0),
        mover("a20", 0.0, 6000.0, 10.0, 0.0),
        mover("b20", 200.5, 6020.0, -10.0, 0.0),
    ];
    let steps = run(&mut h, &movers, 140);

    // 4 m: inside R, contact where the along-track distance is sqrt(25 - 16) = 3 m.
    let ev = events(&steps, "a4");
    assert_eq!(states_of(&ev)[..2], ["start", "escalate"]);
    let (k, s) = &ev[0];
    assert_eq!(*k, 0);
    close("cpa = offset", f(s, "cpa_distance_m"), 4.0, 1e-3);
    close("ttc", f(s, "ttc_s"), (200.5 - 3.0) / 20.0, 1e-3);

    // 12 m: within the 15 m warning separation, never within 8 m: warning
    // only, no collision. Abeam at step 100; apart by more than 17 m once
    // the along-track distance exceeds sqrt(17^2 - 12^2) = 12.04 m (step
    // 107), held 2 s: clear at step 127.
    let ev = events(&steps, "a12");
    assert_eq!(states_of(&ev), ["start", "clear"]);
    close("cpa = offset", f(&ev[0].1, "cpa_distance_m"), 12.0, 1e-3);
    assert!(ev[0].1["ttc_s"].is_null());
    assert_eq!(ev[1].0, 127);

    // 20 m: outside the threshold, nothing.
    assert!(events(&steps, "a20").is_empty());
    assert!(events(&steps, "b20").is_empty());
}

#[test]
fn stationary_obstacle_and_parked_pairs() {
    let mut h = harness(json!({}));
    let parked = mover("dozer-1", 0.0, 0.0, 0.0, 0.0);
    let coming = mover("lv-3", 60.3, 0.0, -5.0, 0.0);
    let steps = run(&mut h, &[parked, coming], 100);
    let ev = events(&steps, "dozer-1");
    assert_eq!(states_of(&ev), ["start", "escalate"]);
    // d = 60.3 - 0.5k: within 15 + 5 * 10 at once; critical at d <= 28 (step 65, 27.8 m).
    close("ttc at start", f(&ev[0].1, "ttc_s"), (60.3 - R) / 5.0, 1e-3);
    assert_eq!(ev[1].0, 65);
    close("ttc at escalate", f(&ev[1].1, "ttc_s"), (27.8 - R) / 5.0, 1e-3);

    // Both stopped: proximity only (no closing speed, no TTC).
    let mut h = harness(json!({}));
    let pairs = [("p10a", "p10b", 10.0, 0.0), ("p7a", "p7b", 7.0, 3000.0), ("p30a", "p30b", 30.0, 6000.0)];
    let fixes: Vec<(&str, f64, f64, f64, f64)> =
        pairs.iter().flat_map(|&(a, b, d, y)| [(a, 0.0, y, 0.0, 0.0), (b, d, y, 0.0, 0.0)]).collect();
    let mut all = Vec::new();
    for k in 0..30 {
        all.extend(step(&mut h, k, &fixes));
    }
    let w10 = warnings(&all, "p10a");
    assert_eq!(states(&w10), ["start"]);
    assert_eq!((w10[0]["severity"].as_str(), w10[0]["kind"].as_str()), (Some("warning"), Some("proximity")));
    assert!(w10[0]["ttc_s"].is_null());
    close("closing", f(w10[0], "closing_speed_mps"), 0.0, 1e-9);
    close("gap", f(w10[0], "gap_m"), 5.0, 1e-3);
    let w7 = warnings(&all, "p7a");
    assert_eq!(states(&w7), ["start"]);
    assert_eq!(w7[0]["severity"], "critical", "gap 2 m <= 3 m");
    assert!(warnings(&all, "p30a").is_empty());
}

/// A deterministic jitter in [-0.4, 0.4] m.
fn jitter(k: usize) -> f64 {
    ((k as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0 * 0.8 - 0.4
}

fn noisy_threshold(extra: serde_json::Value) -> Vec<Out> {
    let mut h = harness(extra);
    let mut all = Vec::new();
    // 60 s parked 15 m +- 0.4 m apart (right at the warning separation), then 30 m apart.
    for k in 0..600 {
        all.extend(step(&mut h, k, &[("ldr-1", 0.0, 0.0, 0.0, 0.0), ("lv-2", 15.0 + jitter(k), 0.0, 0.0, 0.0)]));
    }
    for k in 600..700 {
        all.extend(step(&mut h, k, &[("ldr-1", 0.0, 0.0, 0.0, 0.0), ("lv-2", 30.0, 0.0, 0.0, 0.0)]));
    }
    all
}

#[test]
fn noise_at_the_threshold_does_not_flap_and_clear_waits_for_the_hold() {
    let all = noisy_threshold(json!({}));
    let w = warnings(&all, "ldr-1");
    assert_eq!(states(&w), ["start", "clear"]);
    // Apart from step 600; held 2 s: the clear is stamped at step 620.
    assert_eq!(w[1]["time"], iso(T0 + 62_000));
    // The same input without hysteresis flaps: the margin and hold are what prevent it.
    let raw = noisy_threshold(json!({"clear_margin_m": 0.0, "clear_hold_s": 0.0}));
    let starts = warnings(&raw, "ldr-1").iter().filter(|v| v["state"] == "start").count();
    assert!(starts > 50, "without hysteresis the jitter restarts the encounter ({starts} starts)");
}

#[test]
fn a_long_encounter_at_10_hz_gives_a_constant_number_of_messages() {
    let mut h = harness(json!({}));
    // A follower creeping at 0.1 m/s relative for 5 minutes: 6000 fixes.
    let lead = mover("truck-5", 30.005, 0.0, 3.0, 0.0);
    let follow = mover("truck-6", 0.0, 0.0, 3.1, 0.0);
    let steps = run(&mut h, &[lead, follow], 3000);
    let warnings: Vec<&Out> = steps.iter().flatten().filter(|o| o.topic.ends_with("/warning")).collect();
    let ev = events(&steps, "truck-6");
    assert_eq!(states_of(&ev), ["start", "escalate"]);
    assert_eq!(warnings.len(), 4, "one start and one escalate per side in 3000 steps");
    assert_eq!(h.host().counters.get("fixes"), Some(&6000));
}

#[test]
fn severity_escalates_once_however_often_it_rises() {
    let mut h = harness(json!({}));
    let mut all = Vec::new();
    // Parked pair: 12 m (warning), 7 m (critical), 12, 7, then 40 m.
    for (k, d) in (0..110).map(|k| (k, [12.0, 7.0, 12.0, 7.0, 40.0, 40.0][k / 20])) {
        all.extend(step(&mut h, k, &[("sh-1", 0.0, 0.0, 0.0, 0.0), ("sh-2", d, 0.0, 0.0, 0.0)]));
    }
    let w = warnings(&all, "sh-1");
    assert_eq!(states(&w), ["start", "escalate", "clear"]);
    assert_eq!(w[1]["time"], iso(T0 + 2000));
    assert_eq!(w[2]["time"], iso(T0 + 10_000), "apart from step 80, held 2 s");
}

#[test]
fn a_silent_asset_goes_stale_and_its_encounters_clear() {
    let mut h = harness(json!({}));
    let mut all = Vec::new();
    for k in 0..10 {
        all.extend(step(&mut h, k, &[("st-1", 0.0, 0.0, 0.0, 0.0), ("st-2", 10.0, 0.0, 0.0, 0.0)]));
    }
    // st-2 falls silent after step 9; the site clock (st-1) moves on.
    for k in 10..70 {
        all.extend(step(&mut h, k, &[("st-1", 0.0, 0.0, 0.0, 0.0)]));
    }
    let (w1, w2) = (warnings(&all, "st-1"), warnings(&all, "st-2"));
    assert_eq!(states(&w1), ["start", "clear"]);
    assert_eq!(states(&w2), ["start", "clear"]);
    assert_eq!(w1[1]["reason"], "stale");
    // Last st-2 fix at step 9; stale once more than 5 s older than the clock: step 60.
    assert_eq!(w1[1]["time"], iso(T0 + 6000));
    h.tick(1).expect("tick");
    let pic = take(&mut h).into_iter().find(|o| o.topic.ends_with("/picture")).expect("picture");
    let ids: Vec<&str> = pic.body["assets"].as_array().into_iter().flatten().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["st-1"]);
    // Back again: a new encounter, with a new id.
    let again = step(&mut h, 70, &[("st-1", 0.0, 0.0, 0.0, 0.0), ("st-2", 10.0, 0.0, 0.0, 0.0)]);
    let w = warnings(&again, "st-1");
    assert_eq!(states(&w), ["start"]);
    assert_ne!(w[0]["encounter"], w1[0]["encounter"]);
}

#[test]
fn wall_clock_expiry_when_every_fix_stops() {
    let mut h = harness(json!({}));
    let batch = |k: i64, recv: u64| {
        ["wc-1", "wc-2"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut m = outpost_sdk::Message::new(topic(id), tpv(id, T0 + 100 * k, 9.0 * i as f64, 0.0, 0.0, 0.0));
                m.received_ms = recv;
                m
            })
            .collect::<Vec<_>>()
    };
    let wall0 = 1_000_000u64;
    for k in 0..5 {
        h.send_batch(batch(k, wall0 + 100 * k as u64)).expect("ok");
    }
    assert_eq!(states(&warnings(&take(&mut h), "wc-1")), ["start"]);
    h.tick(wall0 + 5000).expect("tick");
    assert!(warnings(&take(&mut h), "wc-1").is_empty(), "4.6 s since the last fix: still live");
    h.tick(wall0 + 5500).expect("tick");
    let out = take(&mut h);
    let w = warnings(&out, "wc-1");
    assert_eq!((states(&w), w[0]["reason"].as_str()), (vec!["clear".to_owned()], Some("stale")));
}

#[test]
fn a_restart_keeps_open_encounters_without_a_second_start() {
    let mut h = harness(json!({}));
    let pair = |d: f64| [("rs-1", 0.0, 0.0, 0.0, 0.0), ("rs-2", d, 0.0, 0.0, 0.0)];
    let first = step(&mut h, 0, &pair(10.0));
    let id = warnings(&first, "rs-1")[0]["encounter"].clone();
    step(&mut h, 1, &pair(10.0));
    h.restart(&config(json!({}))).expect("restart");
    let mut all = Vec::new();
    for k in 2..10 {
        all.extend(step(&mut h, k, &pair(10.0)));
    }
    assert!(warnings(&all, "rs-1").is_empty(), "carried over, not started again: {all:?}");
    for k in 10..40 {
        all.extend(step(&mut h, k, &pair(50.0)));
    }
    let w = warnings(&all, "rs-1");
    assert_eq!(states(&w), ["clear"]);
    assert_eq!(w[0]["encounter"], id);

    // Carried over, but the assets never return: cleared as stale once the
    // clock passes the saved one by stale_after_s.
    let mut h = harness(json!({}));
    step(&mut h, 0, &pair(10.0));
    h.restart(&config(json!({}))).expect("restart");
    let mut all = Vec::new();
    for k in 1..70 {
        all.extend(step(&mut h, k, &[("other", 900.0, 0.0, 0.0, 0.0)]));
    }
    let w = warnings(&all, "rs-2");
    assert_eq!(states(&w), ["clear"]);
    assert_eq!(w[0]["reason"], "stale");
}

#[test]
fn bearings_point_from_asset_to_other_whichever_reported_first() {
    // "zz" reports first, so the lesser id is the later-seen asset.
    let mut h = harness(json!({}));
    let out = step(&mut h, 0, &[("zz-1", 0.0, 10.0, 0.0, 0.0), ("aa-1", 0.0, 0.0, 0.0, 0.0)]);
    let (a, z) = (warnings(&out, "aa-1"), warnings(&out, "zz-1"));
    close("aa -> zz (north)", f(a[0], "bearing_deg"), 0.0, 1e-3);
    close("zz -> aa (south)", f(z[0], "bearing_deg"), 180.0, 1e-3);
    assert_eq!(a[0]["encounter"], format!("aa-1|zz-1|{T0}"));
    close("aa's own position", f(a[0], "lat"), to_lat_lon(0.0, 0.0).0, 1e-8);
    close("other's position", f(a[0], "other_lat"), to_lat_lon(0.0, 10.0).0, 1e-8);
}
