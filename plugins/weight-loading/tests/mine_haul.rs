//! The service on the mine's real haul cycles and refuels
//! (tests/data/mine-haul-dispatch), against an independent computation
//! (`tests/expected.py`, written from the README's rules with Python's csv
//! module): per (truck, shift) and per site shift reports, KPIs, counters.
//! Then the same data shuffled across trucks with redeliveries, and with an
//! agent restart in the middle: the results must not change.

mod common;

use common::{all_messages, feed, harness, manifest, manifest_config, Latest, Msg, Rng};
use outpost_sdk::testing::FakeHost;
use outpost_sdk::Message;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

/// The independent computation's output.
fn expected() -> Value {
    let out = Command::new("python3")
        .arg(common::crate_dir().join("tests/expected.py"))
        .arg(common::cycles_csv())
        .arg(common::fuel_csv())
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "expected.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("expected.py prints JSON")
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Numbers within `tol` (both null also agree); a mismatch is a message.
fn check(what: &str, ours: &Value, exp: &Value, tol: f64, errors: &mut Vec<String>) {
    let ok = match (f(ours), f(exp)) {
        (Some(a), Some(b)) => (a - b).abs() <= tol,
        (None, None) => ours.is_null() == exp.is_null(),
        _ => false,
    };
    if !ok {
        errors.push(format!("{what}: service {ours}, expected {exp}"));
    }
}

/// Rejected counts by reason, zero entries dropped.
fn reasons(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|o| o.iter().filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)).filter(|x| x.1 > 0)).collect())
        .unwrap_or_default()
}

fn run_sorted() -> (Latest, FakeHost) {
    let msgs: Vec<Message> = all_messages().iter().map(Msg::message).collect();
    let mut h = harness(&manifest_config());
    let mut latest = Latest::default();
    feed(&mut h, &msgs, 64, &mut latest);
    (latest, h.host())
}

#[test]
fn real_data_matches_independent_computation() {
    let exp = expected();
    let (latest, host) = run_sorted();
    let mut errors = Vec::new();
    assert!(host.denied.is_empty(), "publishes outside the manifest ACL: {:?}", host.denied);

    // Per (truck, shift).
    let exp_ts = exp["truck_shift"].as_object().expect("truck_shift");
    let ours_keys: BTreeSet<String> = latest.truck_shift.keys().map(|(t, s)| format!("{t}|{s}")).collect();
    let exp_keys: BTreeSet<String> = exp_ts.keys().cloned().collect();
    assert_eq!(ours_keys, exp_keys, "(truck, shift) pairs reported");
    for ((truck, shift), r) in &latest.truck_shift {
        let e = &exp_ts[&format!("{truck}|{shift}")];
        let k = |field: &str| format!("{truck}/{shift} {field}");
        for field in ["cycles", "refuels", "under", "ok", "over", "overload"] {
            check(&k(field), &r[field], &e[field], 0.0, &mut errors);
        }
        for field in ["tonnes", "mean_payload_t", "litres"] {
            check(&k(field), &r[field], &e[field], 0.1, &mut errors);
        }
        for field in ["queue_s_total", "queue_s_mean"] {
            check(&k(field), &r[field], &e[field], 0.01, &mut errors);
        }
        check(&k("span_h"), &r["span_h"], &e["span_h"], 1e-9, &mut errors);
        check(&k("tonnes_per_hour"), &r["tonnes_per_hour"], &e["tonnes_per_hour"], 1e-6, &mut errors);
        if reasons(&r["rejected"]) != reasons(&e["rejected"]) {
            errors.push(format!("{truck}/{shift} rejected: service {}, expected {}", r["rejected"], e["rejected"]));
        }
        if reasons(&r["flagged"]) != reasons(&e["flagged"]) {
            errors.push(format!("{truck}/{shift} flagged: service {}, expected {}", r["flagged"], e["flagged"]));
        }
    }

    // Site per shift.
    let exp_site = exp["site_shift"].as_object().expect("site_shift");
    assert_eq!(
        latest.site_shift.keys().collect::<BTreeSet<_>>(),
        exp_site.keys().collect::<BTreeSet<_>>(),
        "shifts reported"
    );
    for (shift, r) in &latest.site_shift {
        let e = &exp_site[shift];
        let k = |field: &str| format!("site {shift} {field}");
        for field in ["trucks", "cycles", "refuels"] {
            check(&k(field), &r[field], &e[field], 0.0, &mut errors);
        }
        for field in ["tonnes", "mean_payload_t", "litres"] {
            check(&k(field), &r[field], &e[field], 0.1, &mut errors);
        }
        for field in ["queue_s_total", "queue_s_mean"] {
            check(&k(field), &r[field], &e[field], 0.01, &mut errors);
        }
        for field in ["span_h", "overload_share", "underload_share"] {
            check(&k(field), &r[field], &e[field], 1e-9, &mut errors);
        }
        check(&k("tonnes_per_hour"), &r["tonnes_per_hour"], &e["tonnes_per_hour"], 1e-6, &mut errors);
        if reasons(&r["rejected"]) != reasons(&e["rejected"]) {
            errors.push(format!("site {shift} rejected: service {}, expected {}", r["rejected"], e["rejected"]));
        }
        if reasons(&r["flagged"]) != reasons(&e["flagged"]) {
            errors.push(format!("site {shift} flagged: service {}, expected {}", r["flagged"], e["flagged"]));
        }
        check(&k("trucks_working"), &r["trucks_working"], &e["trucks_working"], 0.0, &mut errors);
        if r["trucks_rejected_only"] != e["trucks_rejected_only"] {
            errors.push(format!(
                "site {shift} trucks_rejected_only: service {}, expected {}",
                r["trucks_rejected_only"], e["trucks_rejected_only"]
            ));
        }
        assert!(r["rejected_unattributed"].as_object().is_some_and(|o| o.is_empty()), "{}", r["rejected_unattributed"]);
    }

    // KPIs: the same set of (name, subject), each value equal.
    let exp_kpi = exp["kpi"].as_object().expect("kpi");
    assert_eq!(
        host.kpis.keys().collect::<BTreeSet<_>>(),
        exp_kpi.keys().collect::<BTreeSet<_>>(),
        "KPI names and subjects"
    );
    for (name, e) in exp_kpi {
        let tol = if name.starts_with("tonnes_per_hour") {
            1e-6
        } else if name.starts_with("loader_queue_s") {
            0.01
        } else {
            1e-9
        };
        check(&format!("KPI {name}"), &Value::from(host.kpis[name]), e, tol, &mut errors);
    }
    let declared = manifest()["kpis"].as_table().expect("[kpis]").clone();
    for name in host.kpis.keys() {
        let base = name.split('/').next().unwrap_or(name);
        assert!(declared.contains_key(base), "KPI {base} is not declared in service.toml");
    }

    // Counters: every rejection reason and the acceptance counts.
    let exp_counters = exp["counters"].as_object().expect("counters");
    let counter = |n: &str| host.counters.get(n).copied().unwrap_or(0);
    // A replaced split record was accepted, then taken back: the counter
    // counts acceptances, the expected count is what stays accepted.
    let net_accepted = counter("cycles_accepted") - counter("cycles_replaced");
    let replaced = counter("cycles_replaced");
    for (name, e) in exp_counters {
        if event_counter(name) && name != "cycles_replaced" {
            // Counted as each record is accepted: a replaced record's dropped
            // durations were counted too, at most one count per replacement.
            let (ours, exp) = (counter(name), e.as_u64().unwrap_or(0));
            if ours < exp || ours > exp + replaced {
                errors.push(format!("counter {name}: service {ours}, expected {exp} (+ at most {replaced} replaced)"));
            }
            continue;
        }
        let ours = if name == "cycles_accepted" { net_accepted } else { counter(name) };
        check(&format!("counter {name}"), &Value::from(ours), e, 0.0, &mut errors);
    }
    for name in host.counters.keys().filter(|n| n.starts_with("rejected_")) {
        if !exp_counters.contains_key(name) {
            errors.push(format!("counter {name} = {} not expected", host.counters[name]));
        }
    }
    let accepted = counter("cycles_accepted");
    if latest.cycles as u64 != accepted || (latest.advice as u64) < accepted {
        errors.push(format!(
            "{} cycle summaries, {} advice for {accepted} accepted cycles",
            latest.cycles, latest.advice
        ));
    }

    print_report(&latest, &host);
    assert!(errors.is_empty(), "{} mismatches:\n{}", errors.len(), errors.join("\n"));
}

/// The site manager's view: per shift, per truck, truck x shift tonnes, junk.
fn print_report(latest: &Latest, host: &FakeHost) {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("\nWEIGHT LOADING — site report (train CSV, default calibration: KOM 930E rated 290 t, band ±5%, overload > 319 t)");
    println!(
        "{:<10} {:>6} {:>7} {:>10} {:>8} {:>7} {:>7} {:>9} {:>8} {:>7} {:>8} {:>9}",
        "shift",
        "trucks",
        "cycles",
        "tonnes",
        "mean t",
        "over%",
        "under%",
        "queue s",
        "t/h",
        "refuel",
        "litres",
        "rejected"
    );
    for (shift, r) in &latest.site_shift {
        println!(
            "{:<10} {:>6} {:>7} {:>10.0} {:>8.1} {:>7.1} {:>7.1} {:>9.1} {:>8.0} {:>7} {:>8.0} {:>9}",
            shift,
            num(&r["trucks"]),
            num(&r["cycles"]),
            num(&r["tonnes"]),
            num(&r["mean_payload_t"]),
            100.0 * num(&r["overload_share"]),
            100.0 * num(&r["underload_share"]),
            num(&r["queue_s_mean"]),
            num(&r["tonnes_per_hour"]),
            num(&r["refuels"]),
            num(&r["litres"]),
            num(&r["rejected_total"])
        );
    }
    // Trucks that sent cycles but had none accepted, apart from those that worked.
    println!("\ntrucks that worked / trucks whose every cycle was rejected, per shift");
    let mut rejected_only: BTreeMap<String, usize> = BTreeMap::new();
    for (shift, r) in &latest.site_shift {
        let names: Vec<&str> = r["trucks_rejected_only"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for n in &names {
            *rejected_only.entry((*n).to_owned()).or_default() += 1;
        }
        println!(
            "{:<10} worked {:>3}  only rejected {:>2} {:?}  flagged {}",
            shift,
            num(&r["trucks_working"]),
            names.len(),
            names,
            r["flagged"]
        );
    }
    println!("trucks with only rejected cycles (shifts): {rejected_only:?}");
    // Per truck over every shift.
    let mut trucks: BTreeMap<&str, [f64; 8]> = BTreeMap::new();
    for ((truck, _), r) in &latest.truck_shift {
        let t = trucks.entry(truck).or_default();
        t[0] += num(&r["cycles"]);
        t[1] += num(&r["tonnes"]);
        t[2] += num(&r["queue_s_total"]);
        t[3] += num(&r["queue_n"]);
        t[4] += num(&r["refuels"]);
        t[5] += num(&r["litres"]);
        t[6] += num(&r["rejected_total"]);
        t[7] += num(&r["overload"]);
    }
    println!(
        "\n{:<7} {:>7} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8} {:>7} {:>6} {:>9}",
        "truck", "cycles", "tonnes", "mean t", "over%", "queue s", "t/h", "refuels", "litres", "l/t", "rejected"
    );
    for (truck, t) in &trucks {
        let kpi = |n: &str| host.kpis.get(&format!("{n}/{truck}")).copied().unwrap_or(f64::NAN);
        println!(
            "{:<7} {:>7} {:>9.0} {:>7.1} {:>8.1} {:>8.1} {:>7.0} {:>8} {:>7.0} {:>6.2} {:>9}",
            truck,
            t[0],
            t[1],
            t[1] / t[0],
            100.0 * t[7] / t[0],
            t[2] / t[3],
            kpi("tonnes_per_hour"),
            t[4],
            t[5],
            kpi("fuel_per_tonne"),
            t[6]
        );
    }
    // Truck x shift: accepted tonnes (cycles).
    let shifts: Vec<&String> = latest.site_shift.keys().collect();
    print!("\ntonnes (cycles) per truck and shift\n{:<7}", "truck");
    for s in &shifts {
        print!(" {:>10}", &s[s.len().saturating_sub(6)..]);
    }
    println!();
    for truck in trucks.keys() {
        print!("{truck:<7}");
        for s in &shifts {
            match latest.truck_shift.get(&(truck.to_string(), s.to_string())) {
                Some(r) => print!(" {:>6.0}({:>2})", num(&r["tonnes"]), num(&r["cycles"])),
                None => print!(" {:>10}", "-"),
            }
        }
        println!();
    }
    println!("\nloaders: mean queue s, overload share, underload share, payload/rated");
    let loaders: BTreeSet<&str> = host.kpis.keys().filter_map(|k| k.strip_prefix("loader_queue_s/")).collect();
    for l in loaders {
        let k = |n: &str| host.kpis.get(&format!("{n}/{l}")).copied().unwrap_or(f64::NAN);
        println!(
            "  {l:<6} queue {:>6.1} s  overload {:>5.1}%  underload {:>5.1}%  ratio {:.3}",
            k("loader_queue_s"),
            100.0 * k("overload_share"),
            100.0 * k("underload_share"),
            k("payload_ratio")
        );
    }
    println!("\nsite KPIs:");
    for (k, v) in host.kpis.iter().filter(|(k, _)| !k.contains('/')) {
        println!("  {k:<16} {v:.4}");
    }
    println!("\nrejected and other counters:");
    for (k, v) in &host.counters {
        println!("  {k:<28} {v}");
    }
}

/// Compares two published documents, numbers to a relative 1e-9 (sums
/// added in another order differ in the last bits).
fn same(a: &Value, b: &Value, path: &str, errors: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                same(
                    &x.get(k).cloned().unwrap_or(Value::Null),
                    &y.get(k).cloned().unwrap_or(Value::Null),
                    &format!("{path}.{k}"),
                    errors,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same(p, q, &format!("{path}[{i}]"), errors);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (p, q) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            if (p - q).abs() > 1e-9 * p.abs().max(q.abs()).max(1.0) {
                errors.push(format!("{path}: {p} vs {q}"));
            }
        }
        _ if a == b => {}
        _ => errors.push(format!("{path}: {a} vs {b}")),
    }
}

/// Counters that count events as they happen: a split record accepted and
/// later replaced was counted at its acceptance. Compared net instead.
fn event_counter(name: &str) -> bool {
    name == "cycles_replaced"
        || name == "dump_payload_mismatch"
        || name.starts_with("dropped_")
        || name.starts_with("flagged_")
        || name == "cycles_without_loader"
}

/// Counters with acceptances net of replacements and event counters left out.
fn net_counters(c: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let replaced = c.get("cycles_replaced").copied().unwrap_or(0);
    let mut out: BTreeMap<String, u64> =
        c.iter().filter(|(k, _)| !event_counter(k)).map(|(k, v)| (k.clone(), *v)).collect();
    if let Some(n) = out.get_mut("cycles_accepted") {
        *n -= replaced;
    }
    out
}

fn same_results(base: &(Latest, FakeHost), other: &(Latest, FakeHost), redelivered: u64) {
    let mut errors = Vec::new();
    assert_eq!(base.0.truck_shift.len(), other.0.truck_shift.len());
    for (k, v) in &base.0.truck_shift {
        same(v, &other.0.truck_shift[k], &format!("{}/{}", k.0, k.1), &mut errors);
    }
    assert_eq!(base.0.site_shift.len(), other.0.site_shift.len());
    for (k, v) in &base.0.site_shift {
        same(v, &other.0.site_shift[k], &format!("site {k}"), &mut errors);
    }
    assert_eq!(base.1.kpis.keys().collect::<Vec<_>>(), other.1.kpis.keys().collect::<Vec<_>>());
    for (k, v) in &base.1.kpis {
        same(&Value::from(*v), &Value::from(other.1.kpis[k]), &format!("KPI {k}"), &mut errors);
    }
    let mut counters = net_counters(&other.1.counters);
    let extra =
        counters.get("redelivered").copied().unwrap_or(0) - base.1.counters.get("redelivered").copied().unwrap_or(0);
    assert_eq!(extra, redelivered, "every extra copy is counted as a redelivery");
    counters.insert("redelivered".into(), base.1.counters["redelivered"]);
    assert_eq!(net_counters(&base.1.counters), counters, "counters");
    let summaries =
        |r: &(Latest, FakeHost)| r.0.cycles as u64 - r.1.counters.get("cycles_replaced").copied().unwrap_or(0);
    assert_eq!(summaries(base), summaries(other), "cycle summaries net of replacements");
    assert!(errors.is_empty(), "{} differences:\n{}", errors.len(), errors.join("\n"));
}

#[test]
fn shuffled_trucks_and_redeliveries_change_nothing() {
    let base = run_sorted();
    // Each truck's messages stay in order; trucks interleave at random and
    // about 1 in 20 messages is delivered again up to 40 messages later.
    let mut queues: BTreeMap<String, VecDeque<Msg>> = BTreeMap::new();
    for m in all_messages() {
        queues.entry(m.truck.clone()).or_default().push_back(m);
    }
    let mut rng = Rng(0x5eed_2022_1107);
    let mut order: Vec<Message> = Vec::new();
    let mut pending: Vec<(usize, Message)> = Vec::new();
    let mut redelivered = 0;
    let mut names: Vec<String> = queues.keys().cloned().collect();
    while !names.is_empty() {
        let i = rng.below(names.len());
        let Some(m) = queues.get_mut(&names[i]).and_then(VecDeque::pop_front) else {
            names.swap_remove(i);
            continue;
        };
        order.push(m.message());
        if rng.below(20) == 0 {
            pending.push((order.len() + rng.below(40), m.message()));
            redelivered += 1;
        }
        let due: Vec<Message> = {
            let (now, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _)| *at <= order.len());
            pending = later;
            now.into_iter().map(|(_, m)| m).collect()
        };
        order.extend(due);
    }
    order.extend(pending.into_iter().map(|(_, m)| m));
    assert!(redelivered > 300, "a real sample is redelivered ({redelivered})");

    let mut h = harness(&manifest_config());
    let mut latest = Latest::default();
    let mut at = 0;
    while at < order.len() {
        let n = 1 + rng.below(100);
        let end = (at + n).min(order.len());
        feed(&mut h, &order[at..end], n, &mut latest);
        at = end;
    }
    same_results(&base, &(latest, h.host()), redelivered);
}

#[test]
fn restart_mid_stream_keeps_aggregates() {
    let base = run_sorted();
    let msgs: Vec<Message> = all_messages().iter().map(Msg::message).collect();
    let half = msgs.len() / 2;
    let config = manifest_config();
    let mut h = harness(&config);
    let mut latest = Latest::default();
    feed(&mut h, &msgs[..half], 64, &mut latest);

    // One compact record per (truck, shift), (loader, shift) and loader, plus the index.
    let state = h.host().state;
    let records = state.keys().filter(|k| k.starts_with("t/")).count();
    let reported: BTreeSet<_> = latest.truck_shift.keys().collect();
    assert_eq!(records, reported.len(), "one state record per (truck, shift) reported");
    assert!(state.contains_key("index"));
    let biggest = state.values().map(Vec::len).max().unwrap_or(0);
    assert!(biggest < 64 * 1024, "records stay small ({biggest} bytes)");

    h.restart(&config).expect("restart");
    // The broker redelivers what was in flight when the agent stopped.
    let replay = 100;
    feed(&mut h, &msgs[half - replay..], 64, &mut latest);
    same_results(&base, &(latest, h.host()), replay as u64);
}

/// The (truck, full_time) of a haul-cycle message, when it has both.
fn load_key(m: &Msg) -> Option<(String, String)> {
    if !m.topic.ends_with("/payload") {
        return None;
    }
    let v: Value = serde_json::from_slice(&m.payload).ok()?;
    Some((m.truck.clone(), v["full_time"].as_str()?.to_owned()))
}

#[test]
fn split_records_are_chosen_whatever_their_order() {
    let base = run_sorted();
    // Every group of records of one load (same truck and full time) is sent
    // in the reverse of the sorted order; everything else stays in place.
    let mut msgs = all_messages();
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, m) in msgs.iter().enumerate() {
        if let Some(k) = load_key(m) {
            groups.entry(k).or_default().push(i);
        }
    }
    let split: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    assert!(split.len() >= 40, "the export's split records are in the data ({} loads)", split.len());
    for g in &split {
        let reversed: Vec<Msg> = g.iter().rev().map(|&i| msgs[i].clone()).collect();
        for (&i, m) in g.iter().zip(reversed) {
            msgs[i] = m;
        }
    }
    let mut h = harness(&manifest_config());
    let mut latest = Latest::default();
    let order: Vec<Message> = msgs.iter().map(Msg::message).collect();
    feed(&mut h, &order, 64, &mut latest);
    let other = (latest, h.host());
    let replaced = |r: &(Latest, FakeHost)| r.1.counters.get("cycles_replaced").copied().unwrap_or(0);
    // Both orders really exercised a replacement (the kept record came second).
    assert!(replaced(&base) > 0 && replaced(&other) > 0, "replacements {} and {}", replaced(&base), replaced(&other));
    same_results(&base, &other, 0);

    // The kept record of each load is the consistent one: its dump weight
    // agrees with the payload and its dump comes after its full time.
    let svc = h.service();
    let mut kept_loads = 0;
    for g in &split {
        let (truck, full) = load_key(&msgs[g[0]]).expect("key");
        let t = weight_loading::time::parse(&full).expect("full_time");
        let kept: Vec<_> = svc
            .truck_shifts()
            .filter(|(tr, _, _)| *tr == truck)
            .flat_map(|(_, _, r)| r.kept.iter())
            .filter(|k| k.t == t)
            .collect();
        assert!(kept.len() <= 1, "{truck} {full}: one record per load");
        if let Some(k) = kept.first() {
            kept_loads += 1;
            // No record of the load with a usable payload agrees with itself better.
            for &i in g {
                let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&msgs[i].payload) else { continue };
                let Ok(c) = weight_loading::input::Cycle::read(&o, &truck) else { continue };
                if c.payload_t > 0.0 && c.payload_t <= 400.0 {
                    let other = c.consistency();
                    assert!(
                        (k.consistency.fails, std::cmp::Reverse(k.consistency.checks))
                            <= (other.fails, std::cmp::Reverse(other.checks)),
                        "{truck} {full}: kept {:?}, another record {:?}",
                        k.consistency,
                        other
                    );
                }
            }
        }
    }
    assert!(kept_loads >= 20, "split loads with a weighed payload were kept ({kept_loads})");
}
