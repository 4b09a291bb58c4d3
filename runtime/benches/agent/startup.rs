//! Agent start to ready, and resident memory, with the release binary.

use crate::mqtt::start_mosquitto;
use crate::process::{fill_cache, install, rss_anon_kib, rss_kib, start_agent, start_agent_env, until_optimized};
use crate::report::{Figure, Report, RUNS};
use crate::{packages, test_packages};
use std::time::Duration;

/// (d) start to ready, and (e) memory.
pub fn bench_start_and_memory(r: &mut Report) {
    println!("\n(d) agent start to ready with 4 services, and (e) resident memory");
    let (pkgs, tests) = (packages(), test_packages());
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), &pkgs.join("positioning"), "positioning");
    for name in ["testbed", "relay", "sink"] {
        install(dir.path(), &tests.join("testbed"), name);
    }
    let (mut cold, mut optimized_at, mut cranelift_only, mut warm, mut four) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        // Without the precompiled cache (the agent's state folder): with the
        // fast start, and waiting for optimized code; then with the cache.
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        let (agent, http, _, ms) = start_agent_env(dir.path(), "", &[]);
        cold.push(ms);
        optimized_at.push(ms + until_optimized(http).as_secs_f64() * 1e3);
        drop(agent);
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        let (agent, _, ms) = start_agent(dir.path(), "[dispatch]\nfast_start = false\n");
        cranelift_only.push(ms);
        drop(agent);
        // Cached starts vary with what else the two cores do in those few
        // milliseconds: three per run, so the median rests on fifteen.
        for _ in 0..2 {
            let (agent, _, ms) = start_agent(dir.path(), "");
            warm.push(ms);
            drop(agent);
        }
        let (agent, _, ms) = start_agent(dir.path(), "");
        warm.push(ms);
        std::thread::sleep(Duration::from_secs(1));
        four.push(rss_kib(agent.0.id()) as f64 / 1024.0);
        drop(agent);
    }
    r.push(
        Figure::new(
            "start.ready_cached",
            "start to ready, 4 services, precompiled cache (agent's ready_ms)",
            "ms",
            warm,
        )
        .baseline("without the cache, fast start", cold.clone())
        .target("< 5 ms"),
    );
    r.push(
        Figure::new(
            "start.ready_uncached",
            "start to ready, 4 services, nothing cached: baseline code (Winch) first",
            "ms",
            cold,
        )
        .baseline("waiting for optimized code (fast_start = false)", cranelift_only)
        .target("< 100 ms")
        .note(format!(
            "every service on optimized code {} after start",
            crate::report::with_spread(&optimized_at, "ms")
        )),
    );

    // Two agents side by side (one keeping start-up code resident), each
    // with its own state; first starts compile, the measured ones load
    // from the cache, as on a gateway.
    let (idle_dir, keep_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    for d in [&idle_dir, &keep_dir] {
        install(d.path(), &pkgs.join("positioning"), "positioning");
        fill_cache(d.path());
    }
    let (mut idle, mut kept, mut anon, mut mosq) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (agent, _, _) = start_agent(idle_dir.path(), "");
        // The same, keeping the code pages only start-up needed resident.
        let (keeping, _, _, _) = start_agent_env(keep_dir.path(), "", &[(outpost::residency::KEEP_ENV, "1")]);
        // A fresh Mosquitto, idle, settling for the same second.
        let mdir = tempfile::tempdir().expect("tempdir");
        let (fresh, _) = start_mosquitto(mdir.path());
        std::thread::sleep(Duration::from_secs(1));
        idle.push(rss_kib(agent.0.id()) as f64 / 1024.0);
        kept.push(rss_kib(keeping.0.id()) as f64 / 1024.0);
        anon.push(rss_anon_kib(agent.0.id()) as f64 / 1024.0);
        mosq.push(rss_kib(fresh.0.id()) as f64 / 1024.0);
    }
    r.push(
        Figure::new("memory.idle", "idle RSS, agent + embedded broker + positioning", "MiB", idle)
            .baseline("idle Mosquitto", mosq)
            .target("<= 1.5x")
            .note(format!(
                "{} of it anonymous; {} when the agent keeps start-up code resident ({}=1)",
                crate::report::with_spread(&anon, "MiB"),
                crate::report::with_spread(&kept, "MiB"),
                outpost::residency::KEEP_ENV
            )),
    );
    let mut hundred = Vec::new();
    for _ in 0..RUNS {
        let (agent, _, _) = start_agent(dir.path(), "[services.testbed]\ninstances = 97\n");
        std::thread::sleep(Duration::from_secs(1));
        hundred.push(rss_kib(agent.0.id()) as f64 / 1024.0);
    }
    let per: Vec<f64> = hundred.iter().zip(&four).map(|(h, f)| (h - f) * 1024.0 / 96.0).collect();
    r.push(
        Figure::new("memory.instances100", "RSS with 100 service instances (97 testbed + 3 others)", "MiB", hundred)
            .baseline("4 instances", four)
            .target("< 64 MB")
            .note(format!("{} per extra instance", crate::report::with_spread(&per, "KiB"))),
    );
}
