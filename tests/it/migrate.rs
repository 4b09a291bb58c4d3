//! State handover across versions (`outpost:service@1.1.0`): an upgrade
//! calls the new version's `migrate` with the old version's number before it
//! takes traffic; a failing `migrate` refuses the upgrade and the old version
//! keeps serving on untouched state; components built against 1.0.0 (no
//! `migrate`) and 1.1.0 (no `handle-packed`) still load and run, and a 1.2.0
//! one gets the same messages whether its batch is packed or not.

use outpost::client::{self, Upload};
use outpost::config::DispatchConfig;
use outpost::dispatch::{Dispatcher, Egress, Inbound, ServiceSpec};
use outpost::host::{EngineOptions, HostEngine, ServiceContext};
use outpost::telemetry::Metrics;
use outpost_proto::agent::v1 as pb;
use outpost_tests::*;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_tests::TrustedProvider as Provider;

/// The migrating guest, for the shared test provider.
trait Migrating {
    fn migrating(&self, version: &str, format: &str, fail_migrate: bool) -> Vec<u8>;
}

impl Migrating for Provider {
    /// The migrating guest as `version`, storing its counter as `format`.
    fn migrating(&self, version: &str, format: &str, fail_migrate: bool) -> Vec<u8> {
        let fail = format!("fail_migrate = {fail_migrate}");
        let format = format!("format = \"{format}\"");
        let version = format!("version = \"{version}\"");
        self.package(
            "migrating",
            &[("version = \"1.0.0\"", &version), ("format = \"text\"", &format), ("fail_migrate = false", &fail)],
        )
    }
}

fn start(dir: &AgentDir, provider: &Provider) -> TestAgent {
    TestAgent::start_with(dir, None, &provider.config_line(), "")
}

/// Publishes `n` messages one by one, each after the previous output arrived
/// (so every count is its own call), and returns the last payload seen.
fn feed(agent: &TestAgent, sub: &Subscriber, topic: &str, n: usize) -> Vec<(String, String)> {
    for _ in 0..n {
        let before = sub.received().len();
        publish_bytes(agent.mqtt_port, topic, b"x");
        let got = sub.wait_until(Duration::from_secs(10), |r| r.len() > before);
        assert!(got.len() > before, "no output for {topic}; so far {got:?}");
    }
    sub.received()
}

fn last(received: &[(String, String)]) -> &str {
    received.last().map(|(_, p)| p.as_str()).unwrap_or("")
}

fn serving(c: &mut client::Client, rt: &tokio::runtime::Runtime) -> String {
    let list = rt.block_on(c.list_services(pb::ListServicesRequest {})).expect("list").into_inner();
    list.services[0].version.clone()
}

#[test]
fn upgrade_migrates_the_state_and_the_new_version_counts_on() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider);
    let sub = Subscriber::start(agent.mqtt_port, &["mig/out/#"]);
    let rt = client_runtime();
    let mut c = rt.block_on(agent.api());
    rt.block_on(client::upload(&mut c, Upload::Deploy, provider.migrating("1.0.0", "text", false), "t", |_, _| {}))
        .expect("deploy v1");
    let got = feed(&agent, &sub, "mig/in/a", 3);
    assert_eq!(last(&got), "text:3", "{got:?}");

    rt.block_on(client::upload(&mut c, Upload::Upgrade, provider.migrating("2.0.0", "json", false), "t", |_, _| {}))
        .expect("upgrade to v2 (migrate converts text to JSON)");
    assert_eq!(serving(&mut c, &rt), "2.0.0");
    // v2 reads only JSON: it counts on from 3 because migrate converted it.
    let got = feed(&agent, &sub, "mig/in/a", 2);
    assert_eq!(last(&got), "json:5", "{got:?}");
    assert!(!got.iter().any(|(_, p)| p.starts_with("json:1")), "v2 started from scratch: {got:?}");
}

#[test]
fn a_failing_migrate_refuses_the_upgrade_and_the_old_version_keeps_serving() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider);
    let sub = Subscriber::start(agent.mqtt_port, &["mig/out/#"]);
    let rt = client_runtime();
    let mut c = rt.block_on(agent.api());
    rt.block_on(client::upload(&mut c, Upload::Deploy, provider.migrating("1.0.0", "text", false), "t", |_, _| {}))
        .expect("deploy v1");
    let got = feed(&agent, &sub, "mig/in/a", 2);
    assert_eq!(last(&got), "text:2", "{got:?}");

    let err = rt
        .block_on(client::upload(&mut c, Upload::Upgrade, provider.migrating("2.0.0", "json", true), "t", |_, _| {}))
        .expect_err("a failing migrate refuses the upgrade")
        .to_string();
    assert!(
        err.contains("2.0.0") && err.contains("1.0.0") && err.contains("cannot convert the state of 1.0.0"),
        "the error names both versions and the service's message: {err}"
    );
    assert_eq!(serving(&mut c, &rt), "1.0.0");
    // v1 serves on, on state the failed migrate did not touch.
    let got = feed(&agent, &sub, "mig/in/a", 1);
    assert_eq!(last(&got), "text:3", "{got:?}");
}

#[test]
fn a_1_0_component_still_loads_and_runs() {
    // Told apart by its exports: no `migrate`, imports outpost:service@1.0.0.
    let host = HostEngine::new(&EngineOptions { pooling: false, max_instances: 2 }).expect("engine");
    for (name, version, migrate, packed) in [
        ("legacy-1-0", "1.0.0", false, false),
        ("legacy-1-1", "1.1.0", true, false),
        ("migrating", "1.2.0", true, true),
    ] {
        let wasm = std::fs::read(test_package(name).join("service.wasm")).expect("component");
        let loaded = host.load(Path::new("service.wasm"), &wasm, None).expect(name);
        assert_eq!(
            (loaded.wit_version.to_string(), loaded.has_migrate(), loaded.takes_packed_batches()),
            (version.to_owned(), migrate, packed),
            "{name}"
        );
    }

    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider);
    let sub = Subscriber::start(agent.mqtt_port, &["legacy/out/#"]);
    let rt = client_runtime();
    let mut c = rt.block_on(agent.api());
    rt.block_on(client::upload(&mut c, Upload::Deploy, provider.package("legacy-1-0", &[]), "t", |_, _| {}))
        .expect("a 1.0.0 component deploys");
    let got = feed(&agent, &sub, "legacy/in/a", 2);
    assert_eq!(last(&got), "legacy:2", "{got:?}");
    // Upgrading a 1.0.0 component (no migrate) takes the state over as is.
    let v2 = provider.package("legacy-1-0", &[("version = \"1.0.0\"", "version = \"1.0.1\"")]);
    rt.block_on(client::upload(&mut c, Upload::Upgrade, v2, "t", |_, _| {})).expect("upgrade without migrate");
    assert_eq!(serving(&mut c, &rt), "1.0.1");
    let got = feed(&agent, &sub, "legacy/in/a", 1);
    assert_eq!(last(&got), "legacy:3", "{got:?}");
}

#[test]
fn a_manifest_naming_an_older_world_than_its_component_is_refused() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, &provider);
    let rt = client_runtime();
    let mut c = rt.block_on(agent.api());
    // The migrating component is built against 1.2.0; its manifest says 1.1.0.
    let pkg = provider.package("migrating", &[("outpost:service@1.2.0", "outpost:service@1.1.0")]);
    let err =
        rt.block_on(client::upload(&mut c, Upload::Deploy, pkg, "t", |_, _| {})).expect_err("refused").to_string();
    assert!(err.contains("outpost:service@1.2.0") && err.contains("outpost:service@1.1.0"), "{err}");
    // The other way round is fine: a 1.0.0 component may say 1.2.0.
    let pkg = provider.package("legacy-1-0", &[("outpost:service@1.0.0", "outpost:service@1.2.0")]);
    rt.block_on(client::upload(&mut c, Upload::Deploy, pkg, "t", |_, _| {})).expect("1.0.0 component, 1.2.0 manifest");
}

/// Records what the dispatcher sends out.
#[derive(Clone, Default)]
struct Outputs(Arc<Mutex<Vec<(String, Vec<u8>)>>>);

impl Egress for Outputs {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.0.lock().expect("outputs").push((topic.to_owned(), payload.to_vec()));
    }
}

/// One batch of `payloads` on `{prefix}/in/{n}` through `name`, in one
/// dispatcher turn; returns what came out.
fn one_batch(name: &str, config_json: &str, prefix: &str, payloads: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
    let host = Arc::new(HostEngine::new(&EngineOptions { pooling: false, max_instances: 2 }).expect("engine"));
    let out = Outputs::default();
    let mut d = Dispatcher::new(host.clone(), DispatchConfig::default(), "t", Box::new(out.clone()));
    let pkg = outpost::package::Package::load(&test_package(name)).expect("package");
    let loaded = host.load(&pkg.wasm_path, &pkg.wasm, None).expect("component");
    let context = ServiceContext {
        service: name.into(),
        publish_acl: pkg.manifest.bus.publish.clone().into(),
        state: None,
        metrics: Metrics::new().service(name),
    };
    let spec = ServiceSpec { config_json: config_json.into(), instances: 1, manifest: pkg.manifest, loaded, context };
    d.add_service(spec).expect("add service");
    for (n, p) in payloads.iter().enumerate() {
        d.accept(Arc::new(Inbound::new(format!("{prefix}/in/{n}"), p.clone())));
    }
    d.run_until_idle();
    let got = out.0.lock().expect("outputs").clone();
    got
}

/// 300 small payloads of every byte value; with `large`, messages 150 to
/// 154 are 60 KiB each, so the batch they are in is too big to pack.
fn payloads(large: bool) -> Vec<Vec<u8>> {
    let mut p: Vec<Vec<u8>> = (0..300u32).map(|n| (0..n % 40).map(|b| (n * 7 + b) as u8).collect()).collect();
    if large {
        for (i, payload) in p.iter_mut().enumerate().skip(150).take(5) {
            *payload = vec![i as u8; 60 << 10];
        }
    }
    p
}

#[test]
fn a_1_1_component_gets_whole_batches_through_handle() {
    // Built against 1.1.0: `migrate` but no `handle-packed`, so batches are
    // lowered as lists of messages, and arrive whole.
    let sent = payloads(false);
    let got = one_batch("legacy-1-1", "", "old", &sent);
    assert_eq!(got.len(), sent.len(), "every message came out once");
    // Each output says its place in its batch: batches follow each other,
    // each counted 0..size, and the first (16, before the cost is known) is
    // more than one message.
    let (mut expect_place, mut sizes) = (0, Vec::new());
    for (n, (topic, payload)) in got.iter().enumerate() {
        assert_eq!(topic, &format!("old/out/{n}"));
        let colon = payload.iter().position(|&b| b == b':').expect("a place prefix");
        let place = std::str::from_utf8(&payload[..colon]).expect("ascii");
        let (i, size) = place.split_once('/').expect("i/size");
        let (i, size): (usize, usize) = (i.parse().expect("i"), size.parse().expect("size"));
        assert_eq!(i, expect_place, "message {n} is {place}");
        if i == 0 {
            sizes.push(size);
        }
        expect_place = if i + 1 == size { 0 } else { i + 1 };
        assert_eq!(&payload[colon + 1..], &sent[n][..], "message {n}");
    }
    assert_eq!(expect_place, 0, "the last batch ended");
    assert_eq!(sizes.iter().sum::<usize>(), sent.len());
    assert!(sizes[0] > 1, "batch sizes {sizes:?}");
}

#[test]
fn a_1_2_component_gets_the_same_messages_packed_or_not() {
    // The testbed (SDK, 1.2.0) echoes each payload to test/out/{n}: batches
    // of small messages go to `handle-packed`, the one with five 60 KiB
    // messages to `handle`; both must hand over every message as it was sent.
    for with_large in [false, true] {
        let sent = payloads(with_large);
        let got = one_batch("testbed", r#"{"echo_only": true}"#, "test", &sent);
        let want: Vec<(String, Vec<u8>)> =
            sent.iter().enumerate().map(|(n, p)| (format!("test/out/{n}"), p.clone())).collect();
        assert!(
            got == want,
            "with a large message: {with_large}; {} of {} outputs differ",
            got.iter().zip(&want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len()),
            want.len()
        );
    }
}
