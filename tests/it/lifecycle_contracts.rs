//! Contracts between services on a running agent: a producer's upgrade
//! (or canary) whose published schema no longer guarantees what a running
//! consumer declared it requires is refused, naming topic, both services
//! and the mismatch, and the producer keeps running; a compatible upgrade
//! is accepted; a consumer whose `requires` a running producer does not
//! meet is refused at deploy. And the four services' declared schemas hold
//! for what they really publish on real data.

use outpost::client::{self, Upload};
use outpost::manifest::Manifest;
use outpost_proto::agent::v1 as pb;
use outpost_sdk::testing::Harness;
use outpost_tests::*;
use std::path::Path;

use outpost_tests::TrustedProvider as Provider;

/// Testbed packages with crafted manifests, for the shared test provider.
trait Crafted {
    fn crafted(&self, name: &str, version: &str, subscribe: &str, out: &str, contracts: &str) -> Vec<u8>;
}

impl Crafted for Provider {
    /// The testbed component as service `name` at `version`, reading
    /// `subscribe`, writing under `out`, with `contracts` appended, signed.
    fn crafted(&self, name: &str, version: &str, subscribe: &str, out: &str, contracts: &str) -> Vec<u8> {
        let dir = test_package("testbed");
        let manifest = std::fs::read_to_string(dir.join("service.toml")).expect("manifest");
        for part in ["name = \"testbed\"", "version = \"0.1.0\"", "subscribe = [\"test/in/#\"]", "out = \"test/out\""] {
            assert!(manifest.contains(part), "the testbed manifest changed: no {part}\n{manifest}");
        }
        let manifest = manifest
            .replace("name = \"testbed\"", &format!("name = \"{name}\""))
            .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
            .replace("subscribe = [\"test/in/#\"]", &format!("subscribe = [\"{subscribe}\"]"))
            .replace("publish = [\"test/out/#\"]", &format!("publish = [\"{out}/#\"]"))
            .replace("out = \"test/out\"", &format!("out = \"{out}\""));
        let manifest = format!("{manifest}\n{contracts}");
        Manifest::parse(&manifest, Path::new("service.toml")).expect("the crafted manifest is valid");
        self.sign(&manifest, &std::fs::read(dir.join("service.wasm")).expect("component"))
    }
}

const FIX_V1: &str = r#"
[contracts.publish."test/fix/#"]
version = "1.0.0"
schema = '''{"type": "object", "required": ["mode", "lat", "lon", "speed"],
  "properties": {"mode": {"type": "integer", "enum": [2, 3]}, "lat": {"type": "number"},
                 "lon": {"type": "number"}, "speed": {"type": "number"}}}'''
"#;

/// Adds `track` and makes `mode` narrower: still everything the consumer relies on.
const FIX_V1_1: &str = r#"
[contracts.publish."test/fix/#"]
version = "1.1.0"
schema = '''{"type": "object", "required": ["mode", "lat", "lon", "speed", "track"],
  "properties": {"mode": {"type": "integer", "enum": [3]}, "lat": {"type": "number"},
                 "lon": {"type": "number"}, "speed": {"type": "integer"}, "track": {"type": "number"}}}'''
"#;

/// 1.1.0 plus a guaranteed `heading`.
const FIX_V1_2: &str = r#"
[contracts.publish."test/fix/#"]
version = "1.2.0"
schema = '''{"type": "object", "required": ["mode", "lat", "lon", "speed", "track", "heading"],
  "properties": {"mode": {"type": "integer", "enum": [3]}, "lat": {"type": "number"},
                 "lon": {"type": "number"}, "speed": {"type": "integer"}, "track": {"type": "number"},
                 "heading": {"type": "number"}}}'''
"#;

/// Drops `speed` and lets `mode` be 4.
const FIX_V2: &str = r#"
[contracts.publish."test/fix/#"]
version = "2.0.0"
schema = '''{"type": "object", "required": ["mode", "lat", "lon"],
  "properties": {"mode": {"type": "integer", "enum": [2, 3, 4]}, "lat": {"type": "number"},
                 "lon": {"type": "number"}}}'''
"#;

const CONSUMER: &str = r#"
[contracts.subscribe."test/fix/+"]
requires = '''{"type": "object", "required": ["lat", "lon", "speed"],
  "properties": {"mode": {"type": "integer", "enum": [0, 1, 2, 3]}, "lat": {"type": "number"},
                 "lon": {"type": "number"}, "speed": {"type": "number"}}}'''
"#;

/// Relies on a field no producer guarantees.
const GREEDY: &str = r#"
[contracts.subscribe."test/fix/+"]
requires = '''{"type": "object", "required": ["heading"], "properties": {"heading": {"type": "number"}}}'''
"#;

async fn versions(c: &mut client::Client) -> Vec<(String, String)> {
    let list = c.list_services(pb::ListServicesRequest {}).await.expect("list").into_inner();
    list.services.into_iter().map(|s| (s.name, s.version)).collect()
}

#[test]
fn an_upgrade_that_breaks_a_running_consumer_is_refused_with_the_mismatch_named() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = TestAgent::start_with(&dir, None, &provider.config_line(), "");
    client_runtime().block_on(async {
        let mut c = agent.api().await;
        let producer = |v: &str, contracts: &str| provider.crafted("producer", v, "test/in/#", "test/fix", contracts);
        let consumer =
            |v: &str, contracts: &str| provider.crafted("consumer", v, "test/fix/#", "test/alert", contracts);

        client::upload(&mut c, Upload::Deploy, producer("1.0.0", FIX_V1), "t", |_, _| {}).await.expect("producer");
        client::upload(&mut c, Upload::Deploy, consumer("1.0.0", CONSUMER), "t", |_, _| {}).await.expect("consumer");

        // Incompatible: refused as an upgrade and as a canary, every mismatch named.
        for kind in [Upload::Upgrade, Upload::Canary(10)] {
            let err = client::upload(&mut c, kind, producer("2.0.0", FIX_V2), "t", |_, _| {}).await.unwrap_err();
            let text = err.to_string();
            assert!(text.contains("producer@2.0.0 would break a contract between services"), "{text}");
            assert!(
                text.contains(
                    "test/fix/+: consumer@1.0.0 requires property `speed` (number) but producer@2.0.0 \
                     (schema 2.0.0 on test/fix/#) does not guarantee it"
                ),
                "{text}"
            );
            assert!(
                text.contains(
                    "test/fix/+: consumer@1.0.0 accepts `mode` only as one of 0, 1, 2, 3 but producer@2.0.0 \
                     (schema 2.0.0 on test/fix/#) may send 4"
                ),
                "{text}"
            );
        }
        assert_eq!(
            versions(&mut c).await,
            vec![("consumer".into(), "1.0.0".into()), ("producer".into(), "1.0.0".into())],
            "the refused version did not replace the running one"
        );

        // Compatible: more fields, narrower values, integer where number is required.
        let up = client::upload(&mut c, Upload::Upgrade, producer("1.1.0", FIX_V1_1), "t", |_, _| {})
            .await
            .expect("a compatible upgrade is accepted");
        assert_eq!(up.version, "1.1.0");

        // A new consumer relying on what the running producer does not guarantee is refused at deploy.
        let greedy = provider.crafted("greedy", "1.0.0", "test/fix/#", "test/greedy", GREEDY);
        let text = client::upload(&mut c, Upload::Deploy, greedy, "t", |_, _| {}).await.unwrap_err().to_string();
        assert!(
            text.contains(
                "test/fix/+: greedy@1.0.0 requires property `heading` (number) but producer@1.1.0 \
                 (schema 1.1.0 on test/fix/#) does not guarantee it"
            ),
            "{text}"
        );
        // A producer on the consumer's topic that declares no schema guarantees nothing.
        let bare = provider.crafted("producer", "3.0.0", "test/in/#", "test/fix", "");
        let text = client::upload(&mut c, Upload::Upgrade, bare, "t", |_, _| {}).await.unwrap_err().to_string();
        assert!(text.contains("producer@3.0.0 publishes to test/fix/# without a contract"), "{text}");
        assert_eq!(
            versions(&mut c).await,
            vec![("consumer".into(), "1.0.0".into()), ("producer".into(), "1.1.0".into())]
        );

        // Once a producer guarantees `heading`, greedy may run; rolling the
        // producer back to the version without it would break greedy: refused.
        let with_heading = provider.crafted("producer", "1.2.0", "test/in/#", "test/fix", FIX_V1_2);
        client::upload(&mut c, Upload::Upgrade, with_heading, "t", |_, _| {}).await.expect("upgrade to 1.2.0");
        let greedy = provider.crafted("greedy", "1.0.0", "test/fix/#", "test/greedy", GREEDY);
        client::upload(&mut c, Upload::Deploy, greedy, "t", |_, _| {}).await.expect("greedy, now satisfied");
        let text = c
            .rollback(pb::ServiceRef { name: "producer".into() })
            .await
            .expect_err("a rollback that breaks greedy")
            .message()
            .to_owned();
        assert!(
            text.contains("producer@1.1.0 would break a contract between services")
                && text.contains("greedy@1.0.0 requires property `heading`"),
            "{text}"
        );
        assert_eq!(
            versions(&mut c).await,
            vec![
                ("consumer".into(), "1.0.0".into()),
                ("greedy".into(), "1.0.0".into()),
                ("producer".into(), "1.2.0".into())
            ]
        );
    });
    agent.stop().expect("stop");
}

/// Every payload checked against the contract of the first publish filter
/// its topic matches; a topic no contract covers is a failure too.
fn check_outputs(manifest: &Manifest, published: &[(String, Vec<u8>)]) -> std::collections::BTreeMap<String, usize> {
    let mut per_contract = std::collections::BTreeMap::new();
    let schemas: Vec<(&String, serde_json::Value)> = manifest
        .contracts
        .publish
        .iter()
        .map(|(t, c)| (t, serde_json::from_str(&c.schema).expect("schema is JSON")))
        .collect();
    for (topic, payload) in published {
        let (filter, schema) = schemas
            .iter()
            .find(|(f, _)| outpost::topic::matches(f, topic))
            .unwrap_or_else(|| panic!("{}: no contract covers {topic}", manifest.id()));
        let value: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
        let problems = outpost::contract::validate(schema, &value);
        assert!(problems.is_empty(), "{topic} breaks {}'s schema {filter}: {problems:?}\n{value}", manifest.id());
        *per_contract.entry((*filter).clone()).or_insert(0) += 1;
    }
    per_contract
}

fn plugin_manifest(name: &str) -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins").join(name).join("service.toml");
    Manifest::load(&path).expect("plugin manifest")
}

/// The manifest's `[config]` as JSON, as the agent passes it, with `site` overrides.
fn config(m: &Manifest, extra: &str) -> String {
    let site: toml::Table = toml::from_str(extra).expect("site config");
    outpost::package::effective_config(&m.config, Some(&site))
}

#[test]
fn declared_schemas_hold_for_what_the_services_publish() {
    // Positioning on a scene's NMEA, traffic awareness on its fixes.
    let scene = tempfile::NamedTempFile::new().expect("temp file");
    let mut csv = String::from("track_id,object_type,timestep,position_x,position_y,velocity_x,velocity_y\n");
    for step in 0..=200 {
        let t = step as f64 * 0.1;
        csv += &format!("haul-1,vehicle,{step},{:.4},0,8,0\n", -100.5 + 8.0 * t);
        csv += &format!("haul-2,vehicle,{step},{:.4},0,-8,0\n", 100.5 - 8.0 * t);
        csv += &format!("lv-1,vehicle,{step},40,{:.4},0,10\n", -50.0 + 10.0 * t);
    }
    std::fs::write(scene.path(), csv).expect("scene");
    let opts = outpost_devtools::sim::scene::SceneOptions {
        origin: (-23.44, -70.25),
        origin_xy: (0.0, 0.0),
        period_s: 0.1,
        start_utc: 1_770_000_000.0,
        skip_types: vec![],
        output: outpost_devtools::sim::scene::SceneOutput::Nmea,
    };
    let track = outpost_devtools::sim::scene::load("s1", scene.path(), &opts).expect("scene track");
    let positioning = plugin_manifest("positioning");
    let mut h = Harness::<positioning::Positioning>::new(&config(&positioning, "")).expect("positioning init");
    for m in &track.messages {
        h.send(&m.topic, m.payload.clone()).expect("positioning handles NMEA");
    }
    let fixes = h.take_published();
    let counts = check_outputs(&positioning, &fixes);
    assert!(counts["svc/positioning/+/fix"] >= 600, "{counts:?}");

    let traffic = plugin_manifest("traffic-awareness");
    let zone = r#"zones = [{name = "pit", kind = "no_go", polygon = [[-23.4399, -70.2500], [-23.4399, -70.2490], [-23.4390, -70.2490], [-23.4390, -70.2500]]}]"#;
    let cfg = config(&traffic, &format!("site = \"s1\"\norigin = {{ lat = -23.44, lon = -70.25 }}\n{zone}\n"));
    let mut h = Harness::<traffic_awareness::TrafficAwareness>::new(&cfg).expect("traffic-awareness init");
    let mut published = Vec::new();
    for (i, (topic, payload)) in fixes.iter().enumerate() {
        h.send(topic, payload.clone()).expect("traffic-awareness handles fixes");
        if i % 50 == 0 {
            h.tick(1_770_000_000_000 + i as u64 * 100).expect("tick");
        }
        published.extend(h.take_published());
    }
    let counts = check_outputs(&traffic, &published);
    for contract in ["svc/traffic-awareness/+/warning", "svc/traffic-awareness/site/+/picture"] {
        assert!(counts.get(contract).is_some_and(|n| *n > 0), "no output on {contract}: {counts:?}");
    }

    // Weight loading on the mine's haul cycles and refuels.
    let weight = plugin_manifest("weight-loading");
    let cycles =
        outpost_devtools::sim::haul::load_cycles("s1", &data("mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv"))
            .expect("haul");
    let fuel =
        outpost_devtools::sim::haul::load_fuel("s1", &data("mine-haul-dispatch/SfdShiftFueltrucksAllUpdatedFin.csv"))
            .expect("fuel");
    let mut tracks = vec![cycles, fuel];
    outpost_devtools::sim::align(&mut tracks);
    let mut stream: Vec<outpost_devtools::sim::Scheduled> = tracks.iter().flat_map(|t| t.messages.clone()).collect();
    stream.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut h = Harness::<weight_loading::WeightLoading>::new(&config(&weight, "")).expect("weight-loading init");
    for m in stream.iter().take(3000) {
        h.send(&m.topic, m.payload.clone()).expect("weight-loading handles records");
    }
    let counts = check_outputs(&weight, &h.take_published());
    for contract in ["svc/weight-loading/+/cycle", "svc/weight-loading/+/shift", "svc/weight-loading/site/+/shift"] {
        assert!(counts.get(contract).is_some_and(|n| *n > 0), "no output on {contract}: {counts:?}");
    }
}

#[test]
fn the_plugins_contracts_are_compatible_with_each_other() {
    let all: Vec<Manifest> = ["positioning", "traffic-awareness", "weight-loading", "leak-detection"]
        .into_iter()
        .map(plugin_manifest)
        .collect();
    for m in &all {
        assert!(!m.contracts.publish.is_empty(), "{} declares its outputs", m.id());
        assert_eq!(outpost::contract::check_deploy(m, &all), Vec::<String>::new(), "{}", m.id());
    }
    // Traffic awareness relies on positioning's mode, and the check sees it go.
    let mut broken = all[0].clone();
    let fix = broken.contracts.publish.get_mut("svc/positioning/+/fix").expect("fix contract");
    fix.schema = fix.schema.replace(r#""required": ["class", "device", "mode"]"#, r#""required": ["class", "device"]"#);
    broken.service.version = "2.0.0".into();
    assert_eq!(
        outpost::contract::check_deploy(&broken, &all),
        vec![
            "svc/positioning/+/fix: traffic-awareness@1.0.0 requires property `mode` (integer) but positioning@2.0.0 \
              (schema 1.0.0 on svc/positioning/+/fix) does not guarantee it"
                .to_owned()
        ]
    );
}

/// The L-Town windows the leak-detection crate's own tests simulate (WNTR),
/// cached under `$OUTPOST_DATA/battledim`.
fn ltown(name: &str) -> std::path::PathBuf {
    let root = std::env::var("OUTPOST_DATA").unwrap_or_else(|_| "/var/tmp/outpost-data".into());
    let path = Path::new(&root).join("battledim").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p leak-detection --test ltown_windows` simulates it",
        path.display()
    );
    path
}

#[test]
fn leak_alarms_hold_their_declared_schema() {
    use leak_detection::{replay, LeakDetection};
    const NET: &str = "site/ci/ltown";
    let manifest = plugin_manifest("leak-detection");
    let mut h = Harness::<LeakDetection>::with_acl("{}", &["svc/leak-detection/+/alarm"]).expect("init");
    h.send(&format!("{NET}/leak-model"), std::fs::read(ltown("ci-leak-model.json")).expect("model")).expect("model");
    let (from, to) = ("2019-01-02 00:00", "2019-01-11 23:55");
    h.send(&format!("{NET}/calibrate"), format!("{{\"start\":\"{from}\",\"end\":\"{to}\"}}")).expect("calibrate");
    for dir in ["ci-leakfree-cal", "ci-eval-p523"] {
        let steps = replay::load_dir(&ltown(dir), None, None).expect("SCADA csv");
        for chunk in steps.chunks(12) {
            let batch = chunk
                .iter()
                .map(|s| outpost_sdk::Message::new(format!("{NET}/scada"), s.payload.clone().into_bytes()))
                .collect();
            h.send_batch(batch).expect("handle");
        }
    }
    let counts = check_outputs(&manifest, &h.take_published());
    assert!(counts.get("svc/leak-detection/+/alarm").is_some_and(|n| *n >= 2), "{counts:?}");
}
