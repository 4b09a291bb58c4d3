//! Bad input is counted by reason and logged; the rest of the batch is
//! handled; the service keeps running. Also: the manifest's defaults,
//! tolerant parsing of what positioning emits, the asset cap, and KPIs.

mod common;

use common::*;
use outpost_sdk::host::Level;
use outpost_sdk::{Message, ServiceError};
use serde_json::json;

#[test]
fn every_bad_message_is_counted_by_reason_and_the_rest_is_handled() {
    let mut h = harness(json!({}));
    let t = T0 + 1000;
    let good = |id: &str, t: i64, x: f64| Message::new(topic(id), tpv(id, t, x, 0.0, 0.0, 0.0));
    let raw = |id: &str, body: &str| Message::new(topic(id), body.as_bytes().to_vec());
    let (lat, lon) = to_lat_lon(0.0, 0.0);
    let fix = |speed: &str, track: &str, time: &str| {
        format!(r#"{{"class":"TPV","mode":3,"time":"{time}","lat":{lat},"lon":{lon},"speed":{speed},"track":{track}}}"#)
    };
    let now = iso(t);
    let batch = vec![
        good("ok-1", t, 0.0),
        raw("m", "{not json"),
        raw("m", r#"{"class":"SKY","mode":3}"#),
        raw("m", r#"{"class":"TPV","mode":7,"lat":1.0,"lon":1.0}"#),
        raw("m", r#"{"class":"TPV","lat":1.0,"lon":1.0}"#),
        raw("m", r#"{"class":"TPV","mode":3,"time":"2026-03-01T08:00:00.000Z"}"#),
        raw("m", r#"{"class":"TPV","mode":3,"lat":95.0,"lon":1.0}"#),
        raw("m", &fix("1e400", "10.0", &now)),
        raw("m", &fix("140.0", "10.0", &now)),
        raw("m", &fix("1.0", "-3.0", &now)),
        raw("m", &fix("1.0", "10.0", "yesterday")),
        good("ok-1", t - 500, 0.0),
        Message::new("svc/positioning//fix", tpv("x", t, 0.0, 0.0, 0.0, 0.0)),
        Message::new("svc/positioning/fix", tpv("x", t, 0.0, 0.0, 0.0, 0.0)),
        good("far-away", t, 100_000.0),
        raw("nofix", r#"{"class":"TPV","device":"/dev/ttyS0","mode":1,"time":"2026-03-01T08:00:01.000Z"}"#),
        good("ok-2", t, 9.0),
    ];
    let n = batch.len();
    let r = h.send_batch(batch);
    match r {
        Err(ServiceError::BadInput(m)) => assert!(m.starts_with(&format!("14 of {n} messages rejected")), "{m}"),
        other => panic!("expected bad input, got {other:?}"),
    }
    let host = h.host();
    for (name, count) in [
        ("rejected_malformed_json", 2), // `{not json` and the out-of-range number 1e400
        ("rejected_not_tpv", 1),
        ("rejected_bad_mode", 2),
        ("rejected_no_position", 1),
        ("rejected_bad_lat_lon", 1),
        ("rejected_bad_speed", 1),
        ("rejected_bad_track", 1),
        ("rejected_bad_time", 1),
        ("rejected_time_backwards", 1),
        ("rejected_bad_topic", 2),
        ("rejected_outside_site", 1),
        ("no_fix", 1),
        ("fixes", 2),
    ] {
        assert_eq!(host.counters.get(name).copied(), Some(count), "{name}: {:?}", host.counters);
    }
    let warns: Vec<&String> = host.logs.iter().filter(|(l, _)| *l == Level::Warn).map(|(_, m)| m).collect();
    assert!(warns.iter().any(|m| m.contains("malformed_json")), "{warns:?}");
    assert!(warns.iter().any(|m| m.contains("14 of 17 messages rejected")), "{warns:?}");
    // The good fixes before and after the bad ones formed their encounter.
    let out = take(&mut h);
    assert_eq!(states(&warnings(&out, "ok-1")), ["start"]);
    // And the service goes on.
    h.send_batch(vec![good("ok-1", t + 100, 0.0), good("ok-2", t + 100, 9.0)]).expect("clean batch");
}

#[test]
fn positioning_reports_without_speed_track_or_time_are_used() {
    let mut h = harness(json!({}));
    // No time before any timed fix: nothing to stamp it with; dropped, not an error.
    let (lat, lon) = to_lat_lon(0.0, 0.0);
    h.send(&topic("early"), format!(r#"{{"class":"TPV","mode":3,"lat":{lat},"lon":{lon}}}"#)).expect("not an error");
    assert_eq!(h.host().counters.get("untimed_dropped"), Some(&1));
    // Speed and track missing: velocity from successive positions (1 m per
    // 0.1 s = 10 m/s east towards a parked asset 100 m away).
    let bare = |x: f64, k: i64| {
        let (lat, lon) = to_lat_lon(x, 0.0);
        format!(r#"{{"class":"TPV","device":"gps0","mode":2,"time":"{}","lat":{lat},"lon":{lon}}}"#, iso(T0 + 100 * k))
    };
    let mut out = Vec::new();
    for k in 0..10 {
        h.send_batch(vec![
            Message::new(topic("bare-1"), bare(k as f64, k)),
            Message::new(topic("park-1"), tpv("park-1", T0 + 100 * k, 100.0, 0.0, 0.0, 0.0)),
        ])
        .expect("ok");
        out.extend(take(&mut h));
    }
    let w = warnings(&out, "bare-1");
    assert_eq!(states(&w), ["start"]);
    close("closing speed from positions", f(w[0], "closing_speed_mps"), 10.0, 1e-3);
    // Start at step 1 (the first with a velocity): d = 99 m, TTC = (99 - 5)/10.
    close("ttc", f(w[0], "ttc_s"), 9.4, 1e-3);
    assert_eq!(h.host().counters.get("velocity_from_positions"), Some(&9));
    // No time at all: stamped with the site clock.
    let (lat, lon) = to_lat_lon(50.0, 0.0);
    h.send(&topic("untimed"), format!(r#"{{"class":"TPV","mode":2,"lat":{lat},"lon":{lon}}}"#)).expect("ok");
    assert_eq!(h.host().counters.get("untimed_fixes"), Some(&1));
    // A redelivered fix is ignored, not an error.
    h.send(&topic("park-1"), tpv("park-1", T0 + 900, 100.0, 0.0, 0.0, 0.0)).expect("duplicate is fine");
    assert_eq!(h.host().counters.get("duplicate_fixes"), Some(&1));
}

#[test]
fn the_asset_cap_refuses_new_assets_only() {
    let mut h = harness(json!({"max_assets": 2}));
    let fixes = |k: i64| {
        ["cap-1", "cap-2", "cap-3"]
            .map(|id| Message::new(topic(id), tpv(id, T0 + 100 * k, 0.0, 0.0, 0.0, 0.0)))
            .to_vec()
    };
    assert!(matches!(h.send_batch(fixes(0)), Err(ServiceError::BadInput(_))));
    assert!(matches!(h.send_batch(fixes(1)), Err(ServiceError::BadInput(_))));
    assert_eq!(h.host().counters.get("rejected_asset_limit"), Some(&2));
    assert_eq!(h.host().counters.get("fixes"), Some(&4));
}

#[test]
fn manifest_defaults_equal_the_code_defaults_and_config_errors_are_named() {
    let manifest: toml::Table = toml::from_str(include_str!("../service.toml")).expect("service.toml parses");
    let defaults = manifest.get("config").cloned().expect("[config]");
    let json = serde_json::to_string(&defaults).expect("json");
    let from_manifest = traffic_awareness::config::Config::parse(&json).expect("manifest defaults are valid");
    let from_code = traffic_awareness::config::Config::parse("{}").expect("code defaults");
    assert_eq!(from_manifest, from_code);
    // Every key of the config is in the manifest (the README documents each).
    let keys: Vec<&String> = defaults.as_table().expect("table").keys().collect();
    assert_eq!(keys.len(), 21, "{keys:?}");
    // The manifest's publish list is the ACL the tests run under.
    let publish: Vec<&str> =
        manifest["bus"]["publish"].as_array().expect("list").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(publish, ACL);
    // KPIs reported are declared.
    let declared = manifest["kpis"].as_table().expect("kpis");
    let mut h = harness(json!({}));
    h.tick(1).expect("tick");
    for k in h.host().kpis.keys() {
        let name = k.split('/').next().unwrap_or_default();
        assert!(declared.contains_key(name), "KPI {name} is not declared in service.toml");
    }
    let e = traffic_awareness::config::Config::parse(r#"{"warn_gap_m": -1, "zones": [{"name": "z", "kind": "lake"}]}"#);
    assert!(e.expect_err("bad").to_string().contains("lake"));
    // A number out of range is refused at start, not read as infinity.
    let e = traffic_awareness::config::Config::parse(r#"{"warn_gap_m": 1e400}"#).expect_err("1e400").to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn kpis_and_the_picture_describe_the_site() {
    let mut h = harness(json!({}));
    let mut out = Vec::new();
    for k in 0..5 {
        out.extend(step(
            &mut h,
            k,
            &[
                ("k-1", 0.0, 0.0, 0.0, 0.0),
                ("k-2", 7.0, 0.0, 0.0, 0.0),
                ("k-3", 60.3 - 0.5 * k as f64, 0.0, 5.0, 270.0),
            ],
        ));
    }
    h.tick(50_000).expect("tick");
    let out = take(&mut h);
    let pic = out.iter().find(|o| o.topic == "svc/traffic-awareness/site/pit-3/picture").expect("picture");
    let p = &pic.body;
    assert_eq!(p["site"], "pit-3");
    assert_eq!(p["time"], iso(T0 + 400));
    assert_eq!(p["counts"]["assets"], 3);
    // k-1/k-2 parked 7 m apart (critical), k-3 approaching both.
    assert_eq!(p["counts"]["encounters"], 3);
    assert_eq!(p["encounters"][0]["severity"], "critical");
    let k3 = p["assets"].as_array().and_then(|a| a.iter().find(|a| a["id"] == "k-3")).expect("k-3");
    close("speed", f(k3, "speed_mps"), 5.0, 1e-3);
    close("track", f(k3, "track_deg"), 270.0, 1e-3);
    close("x", f(k3, "x_m"), 58.3, 1e-3);
    let kpis = h.host().kpis;
    assert_eq!(kpis.get("assets_tracked"), Some(&3.0));
    assert_eq!(kpis.get("encounters_active"), Some(&3.0));
    assert_eq!(kpis.get("encounters_active/k-3"), Some(&2.0));
    assert_eq!(kpis.get("warnings_per_hour"), Some(&3.0));
    // k-3 to k-2: d = 58.3 - 7 at 5 m/s, R = 5: TTC 9.26 s.
    close("min ttc", kpis.get("min_ttc_s").copied().unwrap_or(f64::NAN), (58.3 - 7.0 - 5.0) / 5.0, 1e-6);
    // No second picture before the interval.
    h.tick(50_500).expect("tick");
    assert!(take(&mut h).is_empty());
}

#[test]
fn the_readme_example_calibration_is_valid() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n[services.traffic-awareness.config]").expect("example in README") + 8;
    let end = start + readme[start..].find("```").expect("end of block");
    let site: toml::Table = toml::from_str(&readme[start..end]).expect("README example is TOML");
    let cfg = &site["services"]["traffic-awareness"]["config"];
    let c = traffic_awareness::config::Config::parse(&serde_json::to_string(cfg).expect("json")).expect("valid");
    assert_eq!((c.classes.len(), c.zones.len()), (3, 2));
    // It runs: a parked haul truck (12 x 6.5 m, never seen moving: its
    // covering circle, radius 6.82 m) and a person (0.5 m) 8.9 m apart,
    // gap 1.6 m, is critical.
    let mut h = outpost_sdk::testing::Harness::<traffic_awareness::TrafficAwareness>::with_acl(
        &serde_json::to_string(cfg).expect("json"),
        ACL,
    )
    .expect("init");
    let (lat, lon) = (-23.3620, 119.7320);
    let body = |id: &str, dlat: f64| {
        format!(
            r#"{{"class":"TPV","device":"{id}","mode":3,"time":"{}","lat":{},"lon":{lon},"speed":0,"track":0}}"#,
            iso(T0),
            lat + dlat
        )
    };
    h.send_batch(vec![
        Message::new(topic("haul-1"), body("haul-1", 0.0)),
        Message::new(topic("p-7"), body("p-7", 8e-5)),
    ])
    .expect("ok");
    let out = take(&mut h);
    let w = warnings(&out, "p-7");
    assert_eq!((w.len(), w[0]["severity"].as_str()), (1, Some("critical")));
    close("collision radius", f(w[0], "collision_radius_m"), 0.5 * 12f64.hypot(6.5) + 0.5, 1e-3);
}

#[test]
fn invalid_utf8_huge_numbers_and_unusable_ids_are_counted() {
    let mut h = harness(json!({}));
    let (lat, lon) = to_lat_lon(0.0, 0.0);
    let t = iso(T0);
    let mut bad_utf8 =
        format!(r#"{{"class":"TPV","mode":3,"time":"{t}","lat":{lat},"lon":{lon},"device":""#).into_bytes();
    bad_utf8.extend_from_slice(b"\xff\xfe\"}");
    let raw = |id: &str, body: Vec<u8>| Message::new(topic(id), body);
    let batch = vec![
        raw("u-1", bad_utf8),
        raw("u-2", vec![0xc3, 0x28, 0xa0, 0xa1]),
        raw("u-3", format!(r#"{{"class":"TPV","mode":3,"time":"{t}","lat":1e400,"lon":{lon}}}"#).into_bytes()),
        raw("u-4", format!(r#"{{"class":"TPV","mode":1e400,"time":"{t}","lat":{lat},"lon":{lon}}}"#).into_bytes()),
        raw("u-5", format!(r#"{{"class":"TPV","mode":3,"time":"{t}","lat":{lat},"lon":-1e400}}"#).into_bytes()),
        Message::new("svc/positioning/a+b/fix", tpv("x", T0, 0.0, 0.0, 0.0, 0.0)),
        Message::new("svc/positioning/a#/fix", tpv("x", T0, 0.0, 0.0, 0.0, 0.0)),
        Message::new("svc/positioning/a\u{1}/fix", tpv("x", T0, 0.0, 0.0, 0.0, 0.0)),
        Message::new(topic(&"y".repeat(129)), tpv("y", T0, 0.0, 0.0, 0.0, 0.0)),
        Message::new(topic("ok-1"), tpv("ok-1", T0, 0.0, 0.0, 0.0, 0.0)),
        Message::new(topic(&"z".repeat(128)), tpv("z", T0, 8.0, 0.0, 0.0, 0.0)),
    ];
    match h.send_batch(batch) {
        Err(ServiceError::BadInput(m)) => assert!(m.starts_with("9 of 11 messages rejected"), "{m}"),
        other => panic!("expected bad input, got {other:?}"),
    }
    let c = h.host().counters;
    assert_eq!(c.get("rejected_not_utf8"), Some(&2), "{c:?}");
    assert_eq!(c.get("rejected_malformed_json"), Some(&3), "{c:?}");
    assert_eq!(c.get("rejected_bad_topic"), Some(&4), "{c:?}");
    assert_eq!(c.get("fixes"), Some(&2));
    // The two good ones, 8 m apart, met.
    assert_eq!(states(&warnings(&take(&mut h), "ok-1")), ["start"]);
}

#[test]
fn the_encounter_cap_drops_new_encounters_and_counts_them() {
    // Four assets parked in a row 6 m apart: five pairs within the warning
    // separation (15 m; 18 m for the ends is not), room for two.
    let mut h = harness(json!({"max_encounters": 2}));
    let fixes: Vec<(&str, f64, f64, f64, f64)> = vec![
        ("e-1", 0.0, 0.0, 0.0, 0.0),
        ("e-2", 6.0, 0.0, 0.0, 0.0),
        ("e-3", 12.0, 0.0, 0.0, 0.0),
        ("e-4", 18.0, 0.0, 0.0, 0.0),
    ];
    let out = step(&mut h, 0, &fixes);
    let starts = out.iter().filter(|o| o.topic.ends_with("/warning") && o.body["state"] == "start").count();
    assert_eq!(starts, 4, "two encounters, two sides each");
    assert_eq!(h.host().counters.get("encounters_dropped"), Some(&3));
    // The service goes on; the cap holds across batches.
    step(&mut h, 1, &fixes);
    h.tick(1).expect("tick");
    assert_eq!(h.host().kpis.get("encounters_active"), Some(&2.0));
}
