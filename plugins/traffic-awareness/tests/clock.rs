//! Time jumps: a receiver whose clock jumps days ahead is refused and
//! counted (`rejected_time_jump`) and cannot move the site clock, so the
//! other assets are not expired; when the whole site's time moves (a
//! replay with a gap), the site clock follows the majority; days backwards
//! are refused or ignored and counted.

mod common;

use common::*;
use outpost_sdk::{Message, ServiceError};
use serde_json::json;

const DAY: i64 = 86_400_000;

fn fix(id: &str, t_ms: i64, x: f64) -> Message {
    Message::new(topic(id), tpv_at(id, t_ms, x))
}

/// A TPV at (x, 0), parked, at any time (the common `tpv` stays within one day).
fn tpv_at(id: &str, t_ms: i64, x: f64) -> Vec<u8> {
    let (lat, lon) = to_lat_lon(x, 0.0);
    let iso = traffic_awareness::tpv::iso_ms(t_ms);
    json!({"class": "TPV", "device": id, "mode": 3, "time": iso, "lat": lat, "lon": lon, "speed": 0.0, "track": 0.0})
        .to_string()
        .into_bytes()
}

fn rejected(r: Result<(), ServiceError>) -> String {
    match r {
        Err(ServiceError::BadInput(m)) => m,
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[test]
fn one_receiver_jumping_days_ahead_cannot_expire_the_others() {
    let mut h = harness(json!({}));
    let mut out = Vec::new();
    // a-1 and a-2 parked 9 m apart (an open encounter), a-3 far away.
    for k in 0..10 {
        let t = T0 + 100 * k;
        h.send_batch(vec![fix("a-1", t, 0.0), fix("a-2", t, 9.0), fix("a-3", t, 900.0)]).expect("ok");
        out.extend(take(&mut h));
    }
    assert_eq!(states(&warnings(&out, "a-1")), ["start"]);
    // From step 10, a-3's receiver dates its fixes three days ahead, for 15 s.
    for k in 10..160 {
        let t = T0 + 100 * k;
        let m = rejected(h.send_batch(vec![fix("a-1", t, 0.0), fix("a-2", t, 9.0), fix("a-3", t + 3 * DAY, 900.0)]));
        assert!(m.contains("time_jump 1"), "{m}");
        out.extend(take(&mut h));
    }
    // The encounter never cleared: a-1 and a-2 were not expired.
    assert_eq!(states(&warnings(&out, "a-1")), ["start"]);
    let c = h.host().counters;
    assert_eq!(c.get("rejected_time_jump"), Some(&150));
    assert_eq!(c.get("clock_rebased"), None);
    // a-3 had no usable fix for 15 s: it, and only it, went stale.
    assert_eq!(c.get("assets_expired"), Some(&1));
    h.tick(1).expect("tick");
    let pic = take(&mut h).into_iter().find(|o| o.topic.ends_with("/picture")).expect("picture");
    assert_eq!(pic.body["time"], iso(T0 + 15_900), "the site clock stayed on the site's time");
    let ids: Vec<&str> = pic.body["assets"].as_array().into_iter().flatten().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["a-1", "a-2"]);

    // With only two assets there is no majority either way: still refused.
    let mut h = harness(json!({}));
    h.send_batch(vec![fix("b-1", T0, 0.0), fix("b-2", T0, 9.0)]).expect("ok");
    for k in 1..80 {
        let t = T0 + 100 * k;
        rejected(h.send_batch(vec![fix("b-1", t, 0.0), fix("b-2", t + 2 * DAY, 9.0)]));
    }
    let c = h.host().counters;
    assert_eq!((c.get("rejected_time_jump"), c.get("assets_expired")), (Some(&79), Some(&1)));
}

#[test]
fn when_the_whole_site_moves_in_time_the_clock_follows() {
    let mut h = harness(json!({}));
    let mut out = Vec::new();
    for k in 0..10 {
        let t = T0 + 100 * k;
        h.send_batch(vec![fix("s-1", t, 0.0), fix("s-2", t, 9.0), fix("s-3", t, 900.0)]).expect("ok");
        out.extend(take(&mut h));
    }
    // A replay resumes a day later (no wall clock in a replay): the first
    // batch is refused as a jump, outvotes the old clock, and from then on
    // the site lives on the new day.
    let later = T0 + DAY;
    let m = rejected(h.send_batch(vec![fix("s-1", later, 0.0), fix("s-2", later, 9.0), fix("s-3", later, 900.0)]));
    assert!(m.contains("time_jump 3"), "{m}");
    out.extend(take(&mut h));
    let w = warnings(&out, "s-1");
    assert_eq!(states(&w), ["start", "clear"]);
    assert_eq!(w[1]["reason"], "stale");
    for k in 1..10 {
        let t = later + 100 * k;
        h.send_batch(vec![fix("s-1", t, 0.0), fix("s-2", t, 9.0), fix("s-3", t, 900.0)])
            .expect("the new day is accepted");
        out.extend(take(&mut h));
    }
    assert_eq!(states(&warnings(&out, "s-1")), ["start", "clear", "start"]);
    assert_eq!(h.host().counters.get("clock_rebased"), Some(&1));

    // Live, the agent's wall clock tells a quiet site from a jump: ten
    // silent minutes of wall time allow fixes ten minutes ahead.
    let mut h = harness(json!({}));
    let at = |id: &str, t: i64, x: f64, wall: u64| {
        let mut m = fix(id, t, x);
        m.received_ms = wall;
        m
    };
    let wall0 = 5_000_000u64;
    h.send_batch(vec![at("w-1", T0, 0.0, wall0), at("w-2", T0, 9.0, wall0)]).expect("ok");
    h.send_batch(vec![at("w-1", T0 + 600_000, 0.0, wall0 + 600_000), at("w-2", T0 + 600_000, 9.0, wall0 + 600_000)])
        .expect("a quiet site resumes");
    // But not a jump while the wall clock barely moved.
    let m = rejected(h.send_batch(vec![
        at("w-1", T0 + 600_100, 0.0, wall0 + 600_100),
        at("w-2", T0 + 3 * DAY, 9.0, wall0 + 600_100),
    ]));
    assert!(m.contains("time_jump 1"), "{m}");
}

#[test]
fn days_backwards_are_refused_or_ignored_and_counted() {
    let mut h = harness(json!({}));
    h.send_batch(vec![fix("d-1", T0, 0.0), fix("d-2", T0, 9.0)]).expect("ok");
    // An asset's own fix days older than its last: refused.
    let m = rejected(h.send_batch(vec![fix("d-1", T0 - 2 * DAY, 0.0)]));
    assert!(m.contains("time_backwards 1"), "{m}");
    // A new asset days behind the site clock: too late to matter, counted.
    h.send_batch(vec![fix("d-3", T0 - 2 * DAY, 50.0)]).expect("late is not an error");
    assert_eq!(h.host().counters.get("late_fixes"), Some(&1));
    // The site goes on.
    h.send_batch(vec![fix("d-1", T0 + 100, 0.0), fix("d-2", T0 + 100, 9.0)]).expect("ok");
    assert_eq!(h.host().counters.get("fixes"), Some(&4));
}

#[test]
fn a_pair_meeting_again_at_the_same_pair_time_gets_a_new_encounter_id() {
    // Found by the property test: r-1 expires (the clock passed its fix by
    // more than 5 s) and returns with a fix no newer than r-2's, so the
    // pair time, and with it the id's start time, repeat.
    let mut h = harness(json!({}));
    let mut out = Vec::new();
    h.send_batch(vec![fix("r-1", T0, 0.0)]).expect("ok");
    h.send_batch(vec![fix("r-2", T0 + 2000, 9.0)]).expect("ok");
    out.extend(take(&mut h));
    h.send_batch(vec![fix("r-3", T0 + 5001, 900.0)]).expect("ok");
    out.extend(take(&mut h));
    h.send_batch(vec![fix("r-1", T0 + 2000, 0.0)]).expect("ok");
    out.extend(take(&mut h));
    let w = warnings(&out, "r-1");
    assert_eq!(states(&w), ["start", "clear", "start"]);
    assert_eq!(w[0]["encounter"], format!("r-1|r-2|{}", T0 + 2000));
    assert_eq!(w[2]["encounter"], format!("r-1|r-2|{}|2", T0 + 2000));
}
