//! Property-based fuzzing of the two parsers that take outside input (the SCADA step and the
//! network model) and of the whole service behind them: arbitrary input never panics, is
//! refused with a counted reason or used, and the service keeps running.
//!
//! Bounded for CI (256 cases per parser property, 64 of the whole service); more on demand
//! (the service gets a quarter of `PROPTEST_CASES`):
//! `PROPTEST_CASES=100000 cargo test -p leak-detection --release --test fuzz`.

use leak_detection::input::parse_scada;
use leak_detection::model::{ModelLimits, NetModel};
use leak_detection::LeakDetection;
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// JSON values of any shape, numbers included (and big ones written as text below).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_filter("JSON numbers are finite", |x| x.is_finite()).prop_map(|x| json!(x)),
        any::<i64>().prop_map(|x| json!(x)),
        "[a-z0-9 :\\-]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z0-9_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A SCADA-like step: plausible keys and times, arbitrary values.
fn scada_step() -> impl Strategy<Value = String> {
    let time = prop_oneof![
        (0u32..40, 0u32..24, 0u32..12).prop_map(|(d, h, s)| format!(
            "2017-{:02}-{:02} {h:02}:{:02}",
            1 + d / 28,
            1 + d % 28,
            s * 5
        )),
        "[0-9: \\-T]{0,20}",
    ];
    let value = prop_oneof![
        (-1e6f64..1e6).prop_map(|x| format!("{x}")),
        Just("1e400".to_string()),
        Just("-1e400".to_string()),
        Just("null".to_string()),
        Just("\"12\"".to_string()),
        Just("[]".to_string()),
    ];
    let group = prop::collection::vec(("(1|2|3|p227|n1|T1|[a-z0-9]{1,4})", value), 0..5).prop_map(|kv| {
        let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    });
    (time, group.clone(), group.clone(), group.clone(), group).prop_map(|(t, p, f, d, l)| {
        format!("{{\"time\":\"{t}\",\"pressure_m\":{p},\"flow_m3h\":{f},\"demand_lph\":{d},\"level_m\":{l}}}")
    })
}

/// A small model whose shapes and indices are drawn independently (mostly inconsistent).
fn model_json() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(1u32), any::<u32>()],
        prop::collection::vec("[a-z0-9]{1,3}", 0..5),
        0usize..6,
        0usize..6,
        prop::collection::vec(any::<usize>().prop_map(|i| i % 8), 0..8),
        prop::collection::vec(prop::collection::vec(-10.0f64..10.0, 0..6), 0..7),
    )
        .prop_map(|(version, sensors, nodes, pipes, idx, sens)| {
            let ids: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
            let xs: Vec<f64> = (0..nodes).map(|i| i as f64).collect();
            let n1: Vec<usize> = idx.iter().take(pipes).copied().collect();
            let n2: Vec<usize> = idx.iter().rev().take(pipes).copied().collect();
            json!({"version": version, "sensors": sensors, "nodes": {"ids": ids, "x": xs, "y": xs},
                   "sensitivity": sens, "pipes": {"ids": (0..pipes).map(|i| format!("p{i}")).collect::<Vec<_>>(),
                   "n1": n1, "n2": n2}})
            .to_string()
            .into_bytes()
        })
}

/// A model of consistent shape (sometimes a node index out of range, values of any size).
fn model_consistent() -> impl Strategy<Value = Vec<u8>> {
    (1usize..5, 1usize..6, 1usize..6).prop_flat_map(|(ns, nn, np)| {
        (
            prop::collection::vec(prop::collection::vec(-1e300f64..1e300, ns), nn),
            prop::collection::vec(0usize..nn + 1, np),
            prop::collection::vec(0usize..nn, np),
        )
            .prop_map(move |(sens, n1, n2)| {
                let ids: Vec<String> = (0..nn).map(|i| format!("n{i}")).collect();
                let xs: Vec<f64> = (0..nn).map(|i| i as f64 * 10.0).collect();
                json!({"version": 1, "sensors": (0..ns).map(|i| format!("{}", i + 1)).collect::<Vec<_>>(),
                       "nodes": {"ids": ids, "x": xs, "y": xs}, "sensitivity": sens,
                       "pipes": {"ids": (0..np).map(|i| format!("p{i}")).collect::<Vec<_>>(), "n1": n1, "n2": n2}})
                .to_string()
                .into_bytes()
            })
    })
}

fn any_model() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![model_json(), model_consistent()]
}

/// A network without AMR meters (profile mode), calibrated on 7 synthetic days so that the
/// detector itself runs on what follows.
fn calibrated() -> Harness<LeakDetection> {
    const CFG: &str = r#"{"step_minutes":30,"min_steps_per_hour":2,"inlet_flows":["1"],"pump_flow":"","tank_level":"",
      "calibration":{"start":"2017-01-02 00:00","end":"2017-01-08 23:30"},"cusum_threshold_m3h":50,"min_leak_m3h":10}"#;
    let mut h = Harness::<LeakDetection>::with_acl(CFG, &["svc/leak-detection/+/alarm"]).expect("init");
    let mut batch = Vec::new();
    for k in 0..7 * 48 {
        let (d, hh, mm) = (2 + k / 48, (k % 48) / 2, (k % 2) * 30);
        let q = 500.0 + 100.0 * ((k % 48) as f64 / 48.0 * std::f64::consts::TAU).sin();
        let body = format!(
            "{{\"time\":\"2017-01-{d:02} {hh:02}:{mm:02}\",\"flow_m3h\":{{\"1\":{q}}},\"pressure_m\":{{\"2\":40}}}}"
        );
        batch.push(Message::new("site/f/net/scada", body.into_bytes()));
    }
    h.send_batch(batch).expect("calibration");
    assert!(h.host().state.contains_key("calib/f/net"), "calibrated");
    h
}

/// The whole service per case costs a 7-day calibration: a quarter of the cases.
fn service_config() -> ProptestConfig {
    let c = config();
    ProptestConfig { cases: (c.cases / 4).max(1), ..c }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scada_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_scada(&bytes);
    }

    #[test]
    fn scada_parser_takes_any_json(v in any_json()) {
        let text = v.to_string();
        if let Ok(s) = parse_scada(text.as_bytes()) {
            // Accepted: a time string and the four groups, always.
            prop_assert_eq!(s.groups.len(), 4);
            prop_assert_eq!(v["time"].as_str(), Some(s.time.as_str()));
        }
    }

    #[test]
    fn model_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = NetModel::parse(&bytes);
    }

    #[test]
    fn model_parser_checks_every_shape(m in any_model()) {
        let lim = ModelLimits { bytes: 1 << 20, nodes: 5, pipes: 5, sensors: 4 };
        if let Ok(net) = NetModel::parse_limited(&m, &lim) {
            // Whatever it accepts is consistent: one signature of the sensors' length per pipe.
            prop_assert_eq!(net.pipe_sig.len(), net.pipe_ids.len());
            prop_assert_eq!(net.pipe_xy.len(), net.pipe_ids.len());
            prop_assert!(net.pipe_sig.iter().all(|r| r.len() == net.sensors.len()));
            prop_assert!(net.pipe_ids.len() <= 5 && net.sensors.len() <= 4 && !net.sensors.is_empty());
        }
    }

}

proptest! {
    #![proptest_config(service_config())]

    /// The running, calibrated service behind the parsers: arbitrary steps, models and commands
    /// on its topics never make `handle` fail or panic, and every step refused is counted.
    #[test]
    fn service_keeps_running(steps in prop::collection::vec(scada_step(), 1..40),
                             junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..4),
                             model in any_model()) {
        let mut h = calibrated();
        let mut batch: Vec<Message> =
            steps.iter().map(|s| Message::new("site/f/net/scada", s.clone().into_bytes())).collect();
        for j in &junk {
            batch.push(Message::new("site/f/net/scada", j.clone()));
            batch.push(Message::new("site/f/net/calibrate", j.clone()));
        }
        batch.push(Message::new("site/f/net/leak-model", model));
        let refused = |c: &std::collections::BTreeMap<String, u64>| -> u64 {
            ["flag_not_utf8", "flag_number_overflow", "flag_bad_message"].iter().map(|k| c.get(*k).copied().unwrap_or(0)).sum()
        };
        let before = refused(&h.host().counters);
        // Independently: the steps the parser refuses, each must be counted once.
        let expected = steps.iter().map(|s| s.as_bytes()).chain(junk.iter().map(|j| j.as_slice()))
            .filter(|b| parse_scada(b).is_err()).count() as u64;
        prop_assert!(h.send_batch(batch).is_ok());
        prop_assert_eq!(refused(&h.host().counters) - before, expected);
        // Still serving: a well-formed step after all that is handled.
        let ok = br#"{"time":"2017-03-01 00:00","flow_m3h":{"1":500}}"#.to_vec();
        let handled = h.send("site/f/net/scada", ok).is_ok();
        prop_assert!(handled);
    }
}
