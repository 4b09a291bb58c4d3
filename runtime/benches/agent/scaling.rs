//! How cost grows: per-message cost and agent memory as instances grow,
//! per-message cost as payloads grow, traffic awareness as the site grows;
//! each curve also drawn as an SVG file next to the JSON.

use crate::plot::{curve, Series};
use crate::process::{install, rss_kib, start_agent};
use crate::report::{median, Figure, Report, RUNS};
use crate::{context, load, test_packages, Null};
use outpost::config::DispatchConfig;
use outpost::dispatch::{Dispatcher, Inbound, ServiceSpec};
use outpost::host::{EngineOptions, HostEngine};
use outpost::telemetry::Metrics;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSTANCES: [u32; 3] = [1, 10, 100];
const PAYLOADS: [usize; 4] = [64, 1024, 16 * 1024, 64 * 1024];

pub fn bench_scaling(r: &mut Report, out: &Path) {
    println!("\n(g) scaling: cost as instances, payloads and the site grow");
    let host = Arc::new(HostEngine::new(&EngineOptions::default()).expect("engine"));
    let mut cost_points = Vec::new();
    for n in INSTANCES {
        let runs = per_message(&host, n, 100, 50_000);
        cost_points.push(point(n as f64, &runs));
        r.push(
            Figure::new(
                &format!("scaling.instances{n}.cost"),
                &format!("per message, testbed echo with {n} instance(s) in one dispatcher (keys spread over all)"),
                "ns/msg",
                runs,
            )
            .target("flat"),
        );
    }
    let mut rss_points = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), &test_packages().join("testbed"), "testbed");
    // The first start compiles into the cache; the measured ones load from it.
    crate::process::fill_cache(dir.path());
    for n in INSTANCES {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let (agent, _, _) = start_agent(dir.path(), &format!("[services.testbed]\ninstances = {n}\n"));
            std::thread::sleep(Duration::from_millis(700));
            runs.push(rss_kib(agent.0.id()) as f64 / 1024.0);
        }
        rss_points.push(point(n as f64, &runs));
        r.push(
            Figure::new(
                &format!("scaling.instances{n}.rss"),
                &format!("agent RSS (release, embedded broker) with {n} testbed instance(s), idle"),
                "MiB",
                runs,
            )
            .target("< 64 MB at 100"),
        );
    }
    let mut payload_points = Vec::new();
    for size in PAYLOADS {
        let n = (20_000).min((256usize << 20) / size).max(2_000);
        let runs = per_message(&host, 1, size, n);
        payload_points.push(point(size as f64, &runs));
        let mb_s: Vec<f64> = runs.iter().map(|ns| size as f64 / ns * 1e3).collect();
        r.push(
            Figure::new(
                &format!("scaling.payload{size}"),
                &format!("per message through the host, {size} B payload (testbed echo, output leaves the host)"),
                "ns/msg",
                runs,
            )
            .note(format!("{} of payload in", crate::report::with_spread(&mb_s, "MB/s"))),
        );
    }
    let mut traffic: [Vec<(f64, f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    if crate::guest::TRAFFIC_ASSETS.iter().any(|a| r.get(&format!("traffic.assets{a}")).is_none()) {
        crate::guest::bench_traffic(r);
    }
    for a in crate::guest::TRAFFIC_ASSETS {
        if let Some(f) = r.get(&format!("traffic.assets{a}")) {
            traffic[0].push(point(a as f64, &f.runs));
            if let Some(b) = &f.baseline {
                traffic[1].push(point(a as f64, &b.runs));
            }
        }
    }

    let _ = std::fs::create_dir_all(out);
    let plots = [
        (
            "scaling-instances-cost.svg",
            "Per-message cost by instances of one service",
            "instances of the testbed in one agent",
            "ns per message",
            vec![Series { name: "WASM testbed echo, in-process dispatcher".into(), points: cost_points }],
        ),
        (
            "scaling-instances-rss.svg",
            "Agent memory by instances of one service",
            "instances of the testbed in one agent",
            "agent RSS, MiB",
            vec![Series { name: "release agent, embedded broker, idle".into(), points: rss_points }],
        ),
        (
            "scaling-payload.svg",
            "Per-message cost by payload size",
            "payload, bytes",
            "ns per message",
            vec![Series { name: "WASM testbed echo through the host".into(), points: payload_points }],
        ),
        (
            "scaling-traffic.svg",
            "Traffic awareness per fix by site size",
            "assets on the site (one fix each per second, one call per second)",
            "ns per fix",
            vec![
                Series { name: "WASM (real host)".into(), points: traffic[0].clone() },
                Series { name: "native (same crate)".into(), points: traffic[1].clone() },
            ],
        ),
    ];
    for (file, title, x, y, series) in plots {
        match curve(&out.join(file), title, x, y, &series) {
            Ok(()) => println!("    curve: {}", out.join(file).display()),
            Err(e) => println!("    curve {file} not drawn: {e}"),
        }
    }
}

fn point(x: f64, runs: &[f64]) -> (f64, f64, f64, f64) {
    let lo = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (x, median(runs), lo, hi)
}

/// ns per message of `n` messages of `size` bytes through one testbed
/// service of `instances` instances (keys spread over 1,000 shards), in
/// bursts of 256, per run.
fn per_message(host: &Arc<HostEngine>, instances: u32, size: usize, n: usize) -> Vec<f64> {
    let metrics = Metrics::new();
    let mut d = Dispatcher::new(host.clone(), DispatchConfig::default(), "bench", Box::new(Null));
    let (mut manifest, loaded) = load(host, &test_packages().join("testbed"));
    manifest.service.name = "echo".into();
    manifest.bus.subscribe = vec!["bench/in/#".into()];
    manifest.bus.publish = vec!["bench/out/#".into()];
    // A batch of 256 payloads of 64 KiB and their echoes must fit.
    manifest.limits.memory_mib = 128;
    manifest.limits.max_payload_bytes = manifest.limits.max_payload_bytes.max(size);
    manifest.scale.instances = instances;
    manifest.scale.shard_by = Some(2);
    let ctx = context("echo", &manifest, &metrics);
    d.add_service(ServiceSpec {
        config_json: "{\"out\": \"bench/out\", \"echo_only\": true}".into(),
        instances,
        manifest,
        loaded,
        context: ctx,
    })
    .expect("add service");
    let seen = metrics.service("echo");
    let topics: Vec<String> = (0..1000).map(|k| format!("bench/in/k{k}")).collect();
    let payload = vec![b'x'; size];
    let mut one_run = |count: usize| {
        let before = seen.messages_in.get();
        let mut elapsed = Duration::ZERO;
        let mut sent = 0;
        while sent < count {
            // Messages are made outside the clock: the copy is the broker link's, not the host's.
            let burst: Vec<_> = (sent..(sent + 256).min(count))
                .map(|i| Arc::new(Inbound::new(&topics[i % topics.len()], payload.clone())))
                .collect();
            sent += burst.len();
            let t = Instant::now();
            for m in burst {
                d.accept(m);
            }
            d.run_until_idle();
            elapsed += t.elapsed();
        }
        assert_eq!(seen.messages_in.get() - before, count as u64, "every message handled");
        elapsed.as_nanos() as f64 / count as f64
    };
    one_run(n / 10);
    (0..RUNS).map(|_| one_run(n)).collect()
}
