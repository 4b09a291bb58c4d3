//! Bad packages and bad messages get clear errors naming what and where;
//! the agent keeps running what is good.

use outpost::host::{EngineOptions, HostEngine};
use outpost::manifest::Manifest;
use outpost_tests::*;
use std::path::Path;
use std::time::Duration;

fn load_error(bytes: &[u8]) -> String {
    let host = HostEngine::new(&EngineOptions { pooling: false, max_instances: 1 }).expect("engine");
    match host.load(Path::new("pkg/service.wasm"), bytes, None) {
        Ok(_) => panic!("loaded a bad component"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn not_wasm_is_refused_by_name() {
    let err = load_error(b"#!/bin/sh\necho not wasm\n");
    assert!(err.contains("pkg/service.wasm") && err.contains("not a WebAssembly binary"), "{err}");
}

#[test]
fn core_module_is_refused_with_a_hint() {
    let err = load_error(&wat::parse_str("(module (func (export \"handle\")))").expect("wat"));
    assert!(err.contains("core WebAssembly module, not a component") && err.contains("wasm32-wasip2"), "{err}");
}

#[test]
fn wrong_wit_version_names_both_versions() {
    let component = wat::parse_str(r#"(component (import "outpost:service/bus@2.0.0" (instance)))"#).expect("wat");
    let err = load_error(&component);
    assert!(err.contains("outpost:service/bus@2.0.0") && err.contains("outpost:service@1.0.0"), "{err}");
}

#[test]
fn missing_exports_are_listed() {
    let err = load_error(&wat::parse_str("(component)").expect("wat"));
    for export in ["`init`", "`handle`", "`tick`"] {
        assert!(err.contains(export), "{export} not named in: {err}");
    }
}

#[test]
fn truncated_component_is_refused() {
    let bytes = std::fs::read(test_package("testbed").join("service.wasm")).expect("testbed");
    let err = load_error(&bytes[..bytes.len() / 2]);
    assert!(err.contains("pkg/service.wasm") && err.contains("failed to compile"), "{err}");
}

#[test]
fn manifest_errors_are_all_listed() {
    let text = r#"
[service]
name = "bad name"
version = "1.0"
provider = "acme"
world = "outpost:service@3.0.0"
[bus]
subscribe = ["site/#/x"]
publish = []
[limits]
memory_mib = 0
"#;
    let err = Manifest::parse(text, Path::new("bad/service.toml")).unwrap_err().to_string();
    for needle in [
        "bad/service.toml",
        "service.name",
        "service.version",
        "outpost:service@3.0.0",
        "bus.subscribe",
        "limits.memory_mib",
    ] {
        assert!(err.contains(needle), "{needle} missing in: {err}");
    }
}

#[test]
fn agent_runs_good_services_beside_broken_packages() {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let broken = dir.path().join("services/broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::copy(test_package("testbed").join("service.toml"), broken.join("service.toml")).expect("copy");
    std::fs::write(broken.join("service.wasm"), b"garbage").expect("write");
    let bad_manifest = dir.path().join("services/bad-manifest");
    std::fs::create_dir_all(&bad_manifest).expect("mkdir");
    std::fs::write(bad_manifest.join("service.toml"), "[service]\nname = \"x\"\nunknown = 1\n").expect("write");

    let agent = TestAgent::start(&dir, None, "");
    let status = agent.status().expect("status");
    let rejected = status["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), 2, "{status:#}");
    let text = status.to_string();
    assert!(text.contains("not a WebAssembly binary"), "{text}");
    assert!(text.contains("unknown"), "{text}");

    // Oversized, binary-garbage and good payloads: the good ones come through.
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    publish_bytes(agent.mqtt_port, "test/in/big", &vec![b'x'; 100 * 1024]);
    publish_bytes(agent.mqtt_port, "test/in/bin", &[0xff, 0x00, 0xfe, 0x0a, 0x80]);
    publish_bytes(agent.mqtt_port, "test/in/ok", b"fine");
    let got = sub.wait_until(Duration::from_secs(20), |g| g.iter().any(|(t, _)| t == "test/out/ok"));
    assert!(got.iter().any(|(t, p)| t == "test/out/ok" && p == "fine"), "{got:?}\n{}", agent.metrics());
    assert!(got.iter().any(|(t, _)| t == "test/out/bin"), "binary payload delivered: {got:?}");
    assert!(!got.iter().any(|(t, _)| t == "test/out/big"), "oversized payload must not be delivered");
    assert_eq!(agent.metric("outpost_dropped_total", &["testbed", "oversized"]), 1.0);
    agent.stop().expect("stop");
}

/// `outpost --check` starts each service with the site's calibration, so a
/// mistyped key is reported before the agent is restarted with it.
#[test]
fn check_reports_a_site_config_the_service_refuses() {
    let dir = AgentDir::new();
    dir.install(&package("traffic-awareness"), "traffic-awareness");
    let check = |extra: &str| {
        let (text, ..) = dir.config(None, extra);
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, text).expect("write config");
        let o = std::process::Command::new(binary("outpost"))
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("outpost --check");
        let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.success(), out)
    };
    let (ok, out) = check("[services.traffic-awareness.config]\nwarn_gap_m = 12.0\n");
    assert!(ok, "a valid calibration passes: {out}");
    let (ok, out) = check("[services.traffic-awareness.config]\nwarn_gap = 12.0\n");
    assert!(!ok, "a mistyped key fails the check: {out}");
    assert!(out.contains("traffic-awareness") && out.contains("warn_gap"), "names the service and the key: {out}");
}
