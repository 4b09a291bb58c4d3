//! A live upgrade and rollback under load, beside steady streams.

use crate::mqtt::{client, free_port, start_mosquitto};
use crate::process::queue_depth;
use crate::report::{percentile, with_spread, Figure, Report, RUNS};
use crate::test_packages;
use rumqttc::{Event, Packet, QoS};
use std::time::{Duration, Instant};

/// The testbed package at `version` (v2 writes under `test/out/v2/`, so a
/// subscriber tells which version handled a message), signed by `key`.
fn signed_testbed(key: &outpost_package::SigningKey, version: &str, out: Option<&str>) -> Vec<u8> {
    let dir = test_packages().join("testbed");
    let mut manifest = std::fs::read_to_string(dir.join("service.toml")).expect("testbed manifest");
    manifest = manifest.replacen("version = \"0.1.0\"", &format!("version = \"{version}\""), 1);
    if let Some(out) = out {
        manifest = manifest.replacen("out = \"test/out\"", &format!("out = \"{out}\""), 1);
    }
    let wasm = std::fs::read(dir.join("service.wasm")).expect("testbed component");
    outpost_package::pack(manifest.as_bytes(), &wasm, Some(key)).expect("pack")
}

/// One arrival at the subscriber: when, whether v2 handled it, key, number.
#[derive(Clone, Copy)]
struct Arrival {
    at: Instant,
    v2: bool,
    key: usize,
    n: usize,
    latency_us: f64,
}

/// What one numbered stream showed.
#[derive(Default, Clone)]
struct StreamRun {
    /// Messages per second from the first publish to the last arrival.
    rate: f64,
    /// Arrivals per second in the 500 ms from the mark (the upgrade call,
    /// or the same point of a steady stream).
    window_rate: f64,
    lost: usize,
    duplicates: usize,
    in_order: bool,
    latency_p50_us: f64,
    /// Agent queue depth read from /metrics right before the mark.
    queue_at_mark: f64,
    /// Published but not yet seen by the subscriber at the mark.
    in_flight_at_mark: f64,
    upgrade: Option<Swap>,
    rollback: Option<Swap>,
}

#[derive(Default, Clone, Copy)]
struct Swap {
    /// The RPC's own latency (upload, verify, prepare, swap, reply).
    rpc_ms: f64,
    /// From the call to the first output of the version swapped in.
    serving_ms: f64,
    /// Outputs of the version swapped out that arrived after the call.
    old_after_call: usize,
}

const UPGRADE_KEYS: usize = 4;
/// Messages the publisher keeps in flight end to end (sent, not yet seen by
/// the subscriber): flat out, without building an unbounded broker queue.
const UPGRADE_WINDOW: usize = 1000;

/// Publishes `n` numbered QoS 1 messages flat out (at most `UPGRADE_WINDOW`
/// unseen by the subscriber) over four keys through the
/// agent's testbed; with `control`, upgrades to `v2` once a third has
/// arrived and rolls back at two thirds. Counts what a subscriber received.
async fn upgrade_stream(
    mqtt: u16,
    http: u16,
    n: usize,
    mut control: Option<(&mut outpost::client::Client, &[u8])>,
) -> StreamRun {
    use std::sync::{Arc, Mutex};
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::new(Mutex::new(Vec::with_capacity(n + n / 10)));
    let (sub, mut sub_loop) = client("bench-upgrade-sub", mqtt);
    sub.subscribe("test/out/#", QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    let start = Instant::now();
    let sink = arrivals.clone();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_rx = seen.clone();
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (published_tx, seen_pub) = (published.clone(), seen.clone());
    let receiver = tokio::spawn(async move {
        let mut unique = std::collections::HashSet::with_capacity(n);
        while unique.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let at = Instant::now();
                    let text = std::str::from_utf8(&p.payload).unwrap_or("");
                    let mut parts = text.split(':');
                    let (Some(k), Some(num), Some(sent)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    let key: usize = k.trim_start_matches('k').parse().unwrap_or(usize::MAX);
                    let num: usize = num.parse().unwrap_or(usize::MAX);
                    let sent: u128 = sent.parse().unwrap_or(0);
                    let latency_us = at.duration_since(start).as_nanos().saturating_sub(sent) as f64 / 1e3;
                    if unique.insert((key, num)) {
                        seen_rx.store(unique.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    sink.lock().expect("lock").push(Arrival {
                        at,
                        v2: p.topic.starts_with("test/out/v2/"),
                        key,
                        n: num,
                        latency_us,
                    });
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = sub.disconnect().await;
    });
    let (pub_, mut pub_loop) = client("bench-upgrade-pub", mqtt);
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            while i >= seen_pub.load(std::sync::atomic::Ordering::Relaxed) + UPGRADE_WINDOW {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let (key, num) = (i % UPGRADE_KEYS, i / UPGRADE_KEYS);
            let payload = format!("k{key}:{num}:{}", start.elapsed().as_nanos());
            pub_.publish(format!("test/in/k{key}"), QoS::AtLeastOnce, false, payload).await.expect("publish");
            published_tx.store(i + 1, std::sync::atomic::Ordering::Relaxed);
        }
        pub_
    });
    let count = || arrivals.lock().expect("lock").len();
    let wait_for = |target: usize| async move {
        let t = Instant::now();
        while count() < target && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    };
    // The mark: a third of the stream has arrived.
    wait_for(n / 3).await;
    let queue_at_mark = tokio::task::spawn_blocking(move || queue_depth(http)).await.unwrap_or(f64::NAN);
    let in_flight_at_mark = published
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(seen.load(std::sync::atomic::Ordering::Relaxed)) as f64;
    let mark = Instant::now();
    let mut calls = Vec::new();
    if let Some((c, v2)) = control.as_mut() {
        let t0 = Instant::now();
        let up = outpost::client::upload(c, outpost::client::Upload::Upgrade, v2.to_vec(), "bench", |_, _| {})
            .await
            .expect("upgrade under load");
        assert_eq!(up.version, "2.0.0");
        calls.push((t0, t0.elapsed(), true));
        wait_for(n * 2 / 3).await;
        let t1 = Instant::now();
        let back = c.rollback(outpost_proto::agent::v1::ServiceRef { name: "testbed".into() }).await;
        assert_eq!(back.expect("rollback under load").into_inner().version, "1.0.0");
        calls.push((t1, t1.elapsed(), false));
    }
    let pub_ = publisher.await.expect("publisher");
    let _ = receiver.await;
    let _ = pub_.disconnect().await;
    let got = arrivals.lock().expect("lock").clone();

    let mut per_key: Vec<Vec<bool>> = vec![vec![false; n / UPGRADE_KEYS + 1]; UPGRADE_KEYS];
    let mut last = [None::<usize>; UPGRADE_KEYS];
    let (mut duplicates, mut in_order) = (0, true);
    for a in &got {
        let Some(seen) = per_key.get_mut(a.key).and_then(|k| k.get_mut(a.n)) else { continue };
        if *seen {
            duplicates += 1;
            continue;
        }
        *seen = true;
        if last[a.key].is_some_and(|l| l > a.n) {
            in_order = false;
        }
        last[a.key] = Some(a.n);
    }
    let unique = per_key.iter().flatten().filter(|s| **s).count();
    let end = got.iter().map(|a| a.at).max().unwrap_or(start);
    let window = got.iter().filter(|a| a.at >= mark && a.at < mark + Duration::from_millis(500)).count();
    let mut lat: Vec<f64> = got.iter().map(|a| a.latency_us).collect();
    let swap = |(t0, rpc, to_v2): (Instant, Duration, bool)| {
        let first_new = got.iter().filter(|a| a.at >= t0 && a.v2 == to_v2).map(|a| a.at).min();
        let old_after_call =
            got.iter().filter(|a| a.at >= t0 && a.v2 != to_v2 && first_new.is_none_or(|f| a.at < f)).count();
        Swap {
            rpc_ms: rpc.as_secs_f64() * 1e3,
            serving_ms: first_new.map_or(f64::NAN, |f| f.duration_since(t0).as_secs_f64() * 1e3),
            old_after_call,
        }
    };
    StreamRun {
        rate: n as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
        window_rate: window as f64 / 0.5,
        lost: n - unique,
        duplicates,
        in_order,
        latency_p50_us: percentile(&mut lat, 0.5),
        queue_at_mark,
        in_flight_at_mark,
        upgrade: calls.first().copied().map(swap),
        rollback: calls.get(1).copied().map(swap),
    }
}

/// (f) a live upgrade and rollback under load, each run beside a steady
/// stream of the same length through the same agent: the release `outpost`
/// binary with signed packages over the management API, Mosquitto between.
pub fn bench_upgrade(r: &mut Report, rt: &tokio::runtime::Runtime) {
    println!(
        "\n(f) live upgrade v1 -> v2 and rollback under a flat-out QoS1 stream, {UPGRADE_WINDOW} in flight end to end \
         (release agent, Mosquitto, signed packages)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let keys = dir.path().join("keys");
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&keys).expect("mkdir");
    std::fs::create_dir_all(&trust).expect("mkdir");
    let generated = outpost_package::keygen(&keys, "outpost-tests").expect("keygen");
    std::fs::copy(&generated.public_path, trust.join("outpost-tests.pub")).expect("trust the key");
    let key = outpost_package::ProviderSigningKey::load(&generated.private_path).expect("load key").key;
    let (v1, v2) = (signed_testbed(&key, "1.0.0", None), signed_testbed(&key, "2.0.0", Some("test/out/v2")));

    let (http, api) = (free_port(), free_port());
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"bench-upgrade\"\nsite = \"b\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\ntrust_dir = \"{}\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            dir.path().join("services").display(),
            dir.path().join("state").display(),
            trust.display()
        ),
    )
    .expect("config");
    std::fs::create_dir_all(dir.path().join("services")).expect("mkdir");
    let (_agent, _, _) = crate::process::spawn_ready(&config, http);
    let token = outpost::client::read_token(&dir.path().join("state/api.token")).expect("token");
    let mut control = rt.block_on(async {
        let mut c = outpost::client::connect(&format!("http://127.0.0.1:{api}"), &token).await.expect("connect");
        outpost::client::upload(&mut c, outpost::client::Upload::Deploy, v1.clone(), "bench", |_, _| {})
            .await
            .expect("deploy v1");
        c
    });
    // Size the stream to about three seconds of this machine's steady rate.
    let probe = rt.block_on(upgrade_stream(port, http, 20_000, None));
    let n = ((probe.rate * 3.0) as usize).clamp(20_000, 300_000) / UPGRADE_KEYS * UPGRADE_KEYS;
    println!("    warm-up: {:.0} msgs/s steady; {RUNS} pairs of {n}-message streams", probe.rate);
    let (mut steady, mut live) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let s = rt.block_on(upgrade_stream(port, http, n, None));
        let u = rt.block_on(upgrade_stream(port, http, n, Some((&mut control, v2.as_slice()))));
        let (up, back) = (u.upgrade.unwrap_or_default(), u.rollback.unwrap_or_default());
        println!(
            "    run {}: steady {:.0}/s ({} lost, {} dup) | with upgrade + rollback {:.0}/s ({:.2}x), {} lost, {} dup, order {}; \
             500 ms after the call {:.0}/s vs {:.0}/s; upgrade rpc {:.1} ms, v2 serving after {:.1} ms ({} v1 outputs between, queue {}); \
             rollback rpc {:.1} ms, v1 serving after {:.1} ms",
            i + 1,
            s.rate,
            s.lost,
            s.duplicates,
            u.rate,
            u.rate / s.rate,
            u.lost,
            u.duplicates,
            if u.in_order && s.in_order { "held" } else { "BROKEN" },
            u.window_rate,
            s.window_rate,
            up.rpc_ms,
            up.serving_ms,
            up.old_after_call,
            u.queue_at_mark,
            back.rpc_ms,
            back.serving_ms,
        );
        steady.push(s);
        live.push(u);
    }
    let f = |runs: &[StreamRun], g: &dyn Fn(&StreamRun) -> f64| runs.iter().map(g).collect::<Vec<f64>>();
    let ratios: Vec<f64> = live.iter().zip(&steady).map(|(u, s)| u.rate / s.rate).collect();
    r.push(
        Figure::new(
            "upgrade.rate",
            &format!("end to end during upgrade + rollback ({n} msgs, 4 keys, QoS1), msgs/s"),
            "msgs/s",
            f(&live, &|r| r.rate),
        )
        .baseline("steady stream, same agent", f(&steady, &|r| r.rate))
        .target(">= 0.9x")
        .note(format!("per pair {}", with_spread(&ratios, "x"))),
    );
    r.push(
        Figure::new(
            "upgrade.window_rate",
            "end to end in the 500 ms from the upgrade call, msgs/s",
            "msgs/s",
            f(&live, &|r| r.window_rate),
        )
        .baseline("steady, same point", f(&steady, &|r| r.window_rate))
        .target(">= 0.9x"),
    );
    let order = live.iter().all(|r| r.in_order);
    r.push(
        Figure::new(
            "upgrade.lost",
            &format!("lost per upgrade + rollback stream of {n}"),
            "msgs",
            f(&live, &|r| r.lost as f64),
        )
        .baseline("steady", f(&steady, &|r| r.lost as f64))
        .target("0 lost")
        .note(format!(
            "duplicates {}; per-key order {}",
            with_spread(&f(&live, &|r| r.duplicates as f64), ""),
            if order { "held" } else { "BROKEN" }
        )),
    );
    let latency = f(&steady, &|r| r.latency_p50_us / 1e3);
    r.push(
        Figure::new(
            "upgrade.serving_ms",
            "upgrade call -> first v2 output at the subscriber",
            "ms",
            f(&live, &|r| r.upgrade.unwrap_or_default().serving_ms),
        )
        .baseline("message latency p50 under the same load", latency.clone())
        .note(format!("the RPC itself {}", with_spread(&f(&live, &|r| r.upgrade.unwrap_or_default().rpc_ms), "ms"))),
    );
    r.push(
        Figure::new(
            "upgrade.rollback_serving_ms",
            "rollback call -> first v1 output at the subscriber",
            "ms",
            f(&live, &|r| r.rollback.unwrap_or_default().serving_ms),
        )
        .baseline("message latency p50 under the same load", latency)
        .note(format!("the RPC itself {}", with_spread(&f(&live, &|r| r.rollback.unwrap_or_default().rpc_ms), "ms"))),
    );
    r.push(
        Figure::new(
            "upgrade.in_flight",
            "messages in flight (published, not yet delivered) at the upgrade call",
            "msgs",
            f(&live, &|r| r.in_flight_at_mark),
        )
        .baseline("steady, same point", f(&steady, &|r| r.in_flight_at_mark))
        .target("all handled (0 lost)")
        .note(format!(
            "queued in the agent {} (steady {}); v1 outputs between the call and the first v2 one {}",
            with_spread(&f(&live, &|r| r.queue_at_mark), ""),
            with_spread(&f(&steady, &|r| r.queue_at_mark), ""),
            with_spread(&f(&live, &|r| r.upgrade.unwrap_or_default().old_after_call as f64), "")
        )),
    );
}
