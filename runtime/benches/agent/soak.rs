//! The soak: a steady rate through the whole path (publisher -> Mosquitto ->
//! release agent -> testbed -> Mosquitto -> subscriber) for 30 minutes
//! (`OUTPOST_SOAK_SECS`), RSS, queue depth and latency sampled every few
//! seconds; memory must not grow after warm-up.

use crate::mqtt::{client, free_port, start_mosquitto};
use crate::process::{queue_depth, rss_kib};
use crate::report::{median, percentile, Figure, Report};
use crate::test_packages;
use rumqttc::{Event, Packet, QoS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Growth of the last quarter's median RSS over the second quarter's that fails the soak.
const MAX_GROWTH: f64 = 0.05;

fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Sample {
    at_s: f64,
    rss_mib: f64,
    queue: f64,
    delivered: usize,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn bench_soak(r: &mut Report, rt: &tokio::runtime::Runtime) {
    let secs = env_num("OUTPOST_SOAK_SECS", 1800);
    let rate = env_num("OUTPOST_SOAK_RATE", 1000) as usize;
    let every = env_num("OUTPOST_SOAK_SAMPLE_SECS", if secs >= 300 { 10 } else { 2 });
    println!(
        "\n(h) soak: {rate} msgs/s QoS1 for {secs} s through publisher -> Mosquitto -> agent -> testbed -> Mosquitto -> \
         subscriber, sampled every {every} s"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let services = dir.path().join("services/testbed");
    std::fs::create_dir_all(&services).expect("mkdir");
    for f in ["service.toml", "service.wasm"] {
        std::fs::copy(test_packages().join("testbed").join(f), services.join(f)).expect("copy");
    }
    let (http, api) = (free_port(), free_port());
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"soak\"\nsite = \"b\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            dir.path().join("services").display(),
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    let (agent, _, _) = crate::process::spawn_ready(&config, http);
    let pid = agent.0.id();
    let total = rate * secs as usize;
    let (samples, sent, seen) = rt.block_on(run(port, http, pid, rate, total, Duration::from_secs(every)));
    drop(agent);
    summarise(r, &samples, sent, seen, rate);
}

/// Drives the stream; returns the samples, messages sent, distinct ones seen.
async fn run(
    port: u16,
    http: u16,
    pid: u32,
    rate: usize,
    total: usize,
    every: Duration,
) -> (Vec<Sample>, usize, usize) {
    let (sub, mut sub_loop) = client("soak-sub", port);
    sub.subscribe("test/out/#", QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    let start = Instant::now();
    let window: Arc<Mutex<Vec<f64>>> = Arc::default();
    let seen_flags = Arc::new(Mutex::new(vec![false; total]));
    let seen = Arc::new(AtomicUsize::new(0));
    let (w, flags, seen_rx) = (window.clone(), seen_flags.clone(), seen.clone());
    let receiver = tokio::spawn(async move {
        while seen_rx.load(Ordering::Relaxed) < total {
            match tokio::time::timeout(Duration::from_secs(15), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let text = std::str::from_utf8(&p.payload).unwrap_or("");
                    let Some((seq, sent)) = text.split_once(':') else { continue };
                    let (Ok(seq), Ok(sent)) = (seq.parse::<usize>(), sent.parse::<u128>()) else { continue };
                    let now = start.elapsed().as_nanos();
                    w.lock().expect("lock").push(now.saturating_sub(sent) as f64 / 1e6);
                    if let Some(f) = flags.lock().expect("lock").get_mut(seq) {
                        if !*f {
                            *f = true;
                            seen_rx.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = sub.disconnect().await;
    });
    let (pub_, mut pub_loop) = client("soak-pub", port);
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let sent = Arc::new(AtomicUsize::new(0));
    let sent_tx = sent.clone();
    // A steady rate: each 10 ms tick sends what the clock says is due.
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut i = 0;
        while i < total {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
            while i < due {
                let payload = format!("{i}:{}", start.elapsed().as_nanos());
                pub_.publish("test/in/soak", QoS::AtLeastOnce, false, payload).await.expect("publish");
                i += 1;
                sent_tx.store(i, Ordering::Relaxed);
            }
        }
        pub_
    });
    let mut samples = Vec::new();
    let mut last_seen = 0;
    let mut next = start + every;
    while sent.load(Ordering::Relaxed) < total {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let mut lat = std::mem::take(&mut *window.lock().expect("lock"));
        let queue = tokio::task::spawn_blocking(move || queue_depth(http)).await.unwrap_or(f64::NAN);
        let now_seen = seen.load(Ordering::Relaxed);
        let s = Sample {
            at_s: start.elapsed().as_secs_f64(),
            rss_mib: rss_kib(pid) as f64 / 1024.0,
            queue,
            delivered: now_seen - last_seen,
            p50_ms: percentile(&mut lat, 0.5),
            p99_ms: percentile(&mut lat, 0.99),
        };
        last_seen = now_seen;
        println!(
            "    {:>6.0} s: RSS {:.1} MiB, queue {:.0}, delivered {}/s, latency p50 {:.2} ms p99 {:.2} ms",
            s.at_s,
            s.rss_mib,
            s.queue,
            s.delivered as f64 / every.as_secs_f64(),
            s.p50_ms,
            s.p99_ms
        );
        samples.push(s);
    }
    let pub_ = publisher.await.expect("publisher");
    let _ = receiver.await;
    let _ = pub_.disconnect().await;
    let distinct = seen.load(Ordering::Relaxed);
    (samples, sent.load(Ordering::Relaxed), distinct)
}

fn summarise(r: &mut Report, samples: &[Sample], sent: usize, seen: usize, rate: usize) {
    let q = samples.len() / 4;
    if q == 0 {
        println!("    too few samples for quarters ({}); run longer", samples.len());
        return;
    }
    let rss = |from: usize, to: usize| samples[from..to].iter().map(|s| s.rss_mib).collect::<Vec<_>>();
    let (second, last) = (rss(q, 2 * q), rss(samples.len() - q, samples.len()));
    let growth = median(&last) / median(&second) - 1.0;
    let verdict = if growth > MAX_GROWTH { "FAIL" } else { "pass" };
    println!(
        "    memory after warm-up: last quarter median {:.2} MiB vs second quarter {:.2} MiB: {:+.1} % ({verdict}, bound {:.0} %); {} of {sent} delivered",
        median(&last),
        median(&second),
        growth * 100.0,
        MAX_GROWTH * 100.0,
        seen
    );
    r.push(
        Figure::new("soak.rss", "soak: agent RSS, last quarter's samples", "MiB", last)
            .baseline("second quarter's samples (after warm-up)", second)
            .target(&format!("<= {:.2}x", 1.0 + MAX_GROWTH))
            .note(format!("{verdict}: {:+.1} % growth", growth * 100.0)),
    );
    r.push(
        Figure::new(
            "soak.lost",
            &format!("soak: messages lost of {sent} at {rate}/s"),
            "msgs",
            vec![(sent - seen) as f64],
        )
        .target("0"),
    );
    let f = |g: &dyn Fn(&Sample) -> f64| samples.iter().map(g).collect::<Vec<f64>>();
    r.push(
        Figure::new("soak.latency_p99", "soak: end-to-end latency p99 per sample", "ms", f(&|s| s.p99_ms))
            .note(format!("p50 per sample {}", crate::report::with_spread(&f(&|s| s.p50_ms), "ms"))),
    );
    r.push(Figure::new("soak.queue_depth", "soak: agent queue depth per sample", "msgs", f(&|s| s.queue)));
}
