//! A start that has to compile (first start, new agent version) serves on
//! baseline code (Winch) at once and moves each service to optimized code
//! (Cranelift) in the background, losing and reordering nothing; the next
//! start loads the optimized code from the cache.

use outpost::host::{CallError, CodeTier, EngineOptions, HostEngine, ServiceContext, WitMessage};
use outpost::manifest::Manifest;
use outpost::telemetry::Metrics;
use outpost_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn testbed() -> (Manifest, Vec<u8>, std::path::PathBuf) {
    let dir = test_package("testbed");
    let text = std::fs::read_to_string(dir.join("service.toml")).expect("testbed manifest");
    let manifest = Manifest::parse(&text, &dir.join("service.toml")).expect("manifest");
    let wasm = std::fs::read(dir.join("service.wasm")).expect("testbed component");
    (manifest, wasm, dir.join("service.wasm"))
}

fn cache_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Published topics and payloads of one `handle` call.
fn run(
    host: &HostEngine,
    loaded: &outpost::host::LoadedComponent,
    m: &Manifest,
    payloads: &[&str],
) -> Result<Vec<(String, String)>, CallError> {
    let ctx = ServiceContext {
        service: "testbed".into(),
        publish_acl: m.bus.publish.clone().into(),
        state: None,
        metrics: Metrics::new().service("testbed"),
    };
    let config = outpost::package::effective_config(&m.config, None);
    let mut instance = host.instantiate(loaded, m, ctx, &config)?;
    let batch: Vec<WitMessage<'_>> =
        payloads.iter().map(|p| WitMessage { topic: "test/in/a", payload: p.as_bytes(), received_ms: 1 }).collect();
    let out = instance.handle(&batch)?;
    Ok(out.published.into_iter().map(|(t, p)| (t, String::from_utf8_lossy(&p).into_owned())).collect())
}

#[test]
fn baseline_code_behaves_as_optimized_code_and_is_never_cached() {
    let (manifest, wasm, path) = testbed();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let host = HostEngine::new(&EngineOptions { pooling: false, max_instances: 4 }).expect("engine");

    let baseline = host.load_for_start(&path, &wasm, &cache).expect("baseline load");
    assert_eq!(baseline.tier, CodeTier::Baseline, "nothing cached yet: baseline code");
    assert!(cache_entries(&cache).iter().all(|n| !n.ends_with(".cwasm")), "baseline code is not cached");
    let optimized = host.load(&path, &wasm, Some(&cache)).expect("optimized load");
    assert_eq!(optimized.tier, CodeTier::Optimized);
    assert_eq!(optimized.digest, baseline.digest);
    let entries = cache_entries(&cache);
    assert_eq!(entries.iter().filter(|n| n.ends_with(".cwasm")).count(), 1, "{entries:?}");

    // Same outputs from both tiers.
    let input = ["m1", "spin:1:m2", "m3"];
    let from_baseline = run(&host, &baseline, &manifest, &input).expect("baseline handle");
    let from_optimized = run(&host, &optimized, &manifest, &input).expect("optimized handle");
    assert_eq!(from_baseline.len(), 3, "{from_baseline:?}");
    assert_eq!(from_baseline, from_optimized);
    // The deadline holds on baseline code too (its epoch is ticked), and a trap is a trap.
    let t0 = Instant::now();
    let looped = run(&host, &baseline, &manifest, &["loop"]).expect_err("an endless loop is stopped");
    assert!(looped.to_string().contains("interrupt"), "{looped}");
    assert!(t0.elapsed() < Duration::from_secs(5), "stopped at its deadline, took {:?}", t0.elapsed());
    let trapped = run(&host, &baseline, &manifest, &["trap"]).expect_err("trap");
    assert!(trapped.to_string().contains("unreachable"), "{trapped}");

    // A start with the cache filled gets optimized code, also on a new engine.
    assert_eq!(host.load_for_start(&path, &wasm, &cache).expect("load").tier, CodeTier::Optimized);
    let fresh = HostEngine::new(&EngineOptions { pooling: false, max_instances: 4 }).expect("engine");
    assert_eq!(fresh.load_for_start(&path, &wasm, &cache).expect("load").tier, CodeTier::Optimized);
}

fn code_of(agent: &TestAgent, service: &str) -> Option<String> {
    let status = agent.status()?;
    let services = status["services"].as_array()?;
    let s = services.iter().find(|s| s["name"] == service)?;
    s["code"].as_str().map(str::to_owned)
}

#[test]
fn a_first_start_moves_to_optimized_code_while_serving_and_loses_nothing() {
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let sub = Subscriber::start(mosquitto.port, &["test/out/#", "outpost/test-gw/events"]);
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    let first = code_of(&agent, "testbed");

    // A steady stream on three keys until well after the move.
    let mut publisher = RawMqtt::connect(mosquitto.port, "fast-start-pub", None).expect("publisher");
    let moved = |g: &[(String, String)]| g.iter().any(|(t, p)| t.ends_with("/events") && p.contains("optimized_code"));
    let (mut sent, mut after_move) = (0usize, 0usize);
    let t0 = Instant::now();
    while after_move < 150 && t0.elapsed() < Duration::from_secs(60) {
        let key = ["a", "b", "c"][sent % 3];
        publisher.publish(format!("test/in/{key}").as_bytes(), format!("m{sent}").as_bytes()).expect("publish");
        sent += 1;
        if sent % 30 == 0 {
            std::thread::sleep(Duration::from_millis(5));
            if moved(&sub.received()) {
                after_move += 30;
            }
        }
    }
    let got = sub
        .wait_until(Duration::from_secs(30), |g| g.iter().filter(|(t, _)| t.starts_with("test/out/")).count() >= sent);
    let event = got.iter().position(|(t, p)| t.ends_with("/events") && p.contains("optimized_code"));
    let event = event.unwrap_or_else(|| panic!("no optimized_code event within 60 s; first status code {first:?}"));
    let outputs_before = got[..event].iter().filter(|(t, _)| t.starts_with("test/out/")).count();
    assert!(
        outputs_before > 0 && outputs_before < sent,
        "the move happened mid-stream ({outputs_before} of {sent} before)"
    );
    for (k, key) in ["a", "b", "c"].iter().enumerate() {
        let seq: Vec<&str> =
            got.iter().filter(|(t, _)| *t == format!("test/out/{key}")).map(|(_, p)| p.as_str()).collect();
        let want: Vec<String> = (0..sent).filter(|i| i % 3 == k).map(|i| format!("m{i}")).collect();
        assert_eq!(seq, want, "key {key}: every message exactly once, in order, across the move");
    }
    assert_eq!(first.as_deref(), Some("baseline"), "served on baseline code right after a start without cache");
    assert_eq!(code_of(&agent, "testbed").as_deref(), Some("optimized"));
    // The management API says the same (`outpostctl status`).
    let api_code = client_runtime().block_on(async {
        let mut c = agent.api().await;
        let status = c.get_status(outpost_proto::agent::v1::GetStatusRequest {}).await.expect("GetStatus").into_inner();
        status.services.iter().find(|s| s.name == "testbed").map(|s| s.code.clone())
    });
    assert_eq!(api_code.as_deref(), Some("optimized"));
    let cache = cache_entries(&dir.path().join("state").join("cache"));
    assert_eq!(cache.iter().filter(|n| n.ends_with(".cwasm")).count(), 1, "optimized code cached: {cache:?}");
    agent.stop().expect("stop");

    // The next start loads the optimized code: nothing to move.
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    assert_eq!(code_of(&agent, "testbed").as_deref(), Some("optimized"));
    agent.stop().expect("stop");
}

#[test]
fn with_fast_start_off_a_start_waits_for_optimized_code() {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let agent = TestAgent::start(&dir, None, "fast_start = false\n");
    assert_eq!(code_of(&agent, "testbed").as_deref(), Some("optimized"));
    agent.stop().expect("stop");
}

/// A package entering the agent's store records its component's digest, so
/// a start whose optimized code is cached does not read the component at
/// all. Without the cache the component is read again, and a damaged one is
/// refused naming its file.
#[test]
fn a_cached_start_does_not_read_the_component() {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let agent = TestAgent::start(&dir, None, "fast_start = false\n");
    let digest = agent.status().and_then(|s| s["services"][0]["digest"].as_str().map(str::to_owned));
    agent.stop().expect("stop");
    let stored_root = dir.path().join("state").join("packages").join("testbed");
    let stored = std::fs::read_dir(&stored_root).expect("stored package").filter_map(|e| e.ok()).next().expect("one");
    let stored = stored.path();
    let record = std::fs::read_to_string(stored.join("service.wasm.sha256")).expect("digest recorded at import");
    assert_eq!(Some(record.trim().to_owned()), digest, "the record is the component's sha256");

    let wasm = stored.join("service.wasm");
    std::fs::write(&wasm, b"\0asm\x0d\0\x01\0 damaged on disk").expect("damage");
    let agent = TestAgent::start(&dir, None, "");
    assert_eq!(code_of(&agent, "testbed").as_deref(), Some("optimized"), "started from its cached code");
    agent.stop().expect("stop");

    std::fs::remove_dir_all(dir.path().join("state").join("cache")).expect("drop the cache");
    let agent = TestAgent::start(&dir, None, "");
    let status = agent.status().expect("status");
    let rejected = status["rejected"].to_string();
    assert!(rejected.contains("testbed") && rejected.contains(&wasm.display().to_string()), "{status:#}");
    agent.stop().expect("stop");
}
