//! A provider's loop outside this repository: `outpostctl new` scaffolds a
//! service crate in its own folder, `outpostctl build` compiles it to a
//! component with the toolchain `cargo xtask build` uses (`outpost-toolchain`)
//! and lays out the package folder `outpostctl package` takes.

use anyhow::{bail, Context, Result};
use outpost_toolchain::{component_path, Guest};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The SDK this outpostctl was built with (a checkout's `sdk/`).
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

#[derive(clap::Args)]
pub struct NewArgs {
    /// Service name: lowercase letters, digits and '-', starting with a letter
    /// (it names the crate, the service and its topics).
    pub name: String,
    /// Folder to create the service folder in.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The Outpost SDK folder (`sdk/` of an Outpost checkout); default: the
    /// one this outpostctl was built from.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
    /// The provider the service is signed as (`service.provider`; the name
    /// given to `outpostctl keygen --name`).
    #[arg(long, default_value = "my-company")]
    pub provider: String,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The service crate (a folder with Cargo.toml and service.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// Checks a service name the way manifests and cargo both accept it.
fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    if !ok {
        bail!(
            "service name {name:?} is not usable: use lowercase ASCII letters, digits and '-', \
             starting with a letter (e.g. pump-monitor)"
        );
    }
    Ok(())
}

/// `outpostctl new`: writes the crate, refusing to write into a non-empty folder.
pub fn new_service(args: &NewArgs) -> Result<PathBuf> {
    check_name(&args.name)?;
    if args.provider.trim().is_empty() {
        bail!("--provider is empty; give the provider name your signing key is made for");
    }
    let sdk_given = args.sdk.clone().unwrap_or_else(|| PathBuf::from(BUILT_SDK));
    let sdk = sdk_given.canonicalize().ok().filter(|p| p.join("Cargo.toml").is_file()).with_context(|| {
        format!(
            "the Outpost SDK is not at {} (no Cargo.toml there); pass --sdk PATH to the sdk/ folder of an Outpost checkout",
            sdk_given.display()
        )
    })?;
    let dir = args.dir.join(&args.name);
    if dir.exists() {
        let non_empty = std::fs::read_dir(&dir)
            .with_context(|| format!("{} exists and cannot be read", dir.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "{} already exists and is not empty; choose another name or --dir, or remove it first",
                dir.display()
            );
        }
    }
    let files = files(&args.name, &args.provider, &sdk);
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created service {} in {} (SDK {})", args.name, dir.display(), sdk.display());
    for (rel, _) in &files {
        println!("    {rel}");
    }
    println!("next: cd {} && cargo test && outpostctl build", dir.display());
    Ok(dir)
}

/// A TOML basic string (quotes and escapes as needed).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The world the SDK at `sdk` builds components against (`package
/// outpost:service@X;` in its `wit/service.wit`), so the manifest names what
/// the component will import; this outpostctl's own SDK's when unreadable.
fn sdk_world(sdk: &Path) -> String {
    std::fs::read_to_string(sdk.join("wit/service.wit"))
        .ok()
        .and_then(|wit| {
            wit.lines().find_map(|l| {
                let rest = l.trim().strip_prefix("package ")?.trim_end_matches(';').trim();
                rest.starts_with("outpost:service@").then(|| rest.to_owned())
            })
        })
        .unwrap_or_else(|| outpost_sdk::WORLD.to_owned())
}

fn files(name: &str, provider: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let lib = name.replace('-', "_");
    let type_name: String = name
        .split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    let cargo = format!(
        r#"[package]
name = {name_q}
version = "0.1.0"
edition = "2021"
publish = false

[lib]
name = "{lib}"
# cdylib: the WASM component; rlib: the native tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
outpost-sdk = {{ path = {sdk_q} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[dev-dependencies]
# The manifest test reads service.toml.
toml = "0.8"

# A workspace of its own: this crate builds wherever it lives.
[workspace]
"#,
        name_q = toml_str(name),
        sdk_q = toml_str(&sdk.to_string_lossy()),
    );
    let manifest = format!(
        r#"[service]
name = {name_q}
version = "0.1.0"
provider = {provider_q}
world = {world_q}
description = "Mean of each asset's recent readings, flagged above a limit."

[bus]
# site/{{site}}/{{asset}}/reading, payload {{"value": 12.5}}
subscribe = ["site/+/+/reading"]
# svc/{name}/{{asset}}/mean; the host refuses any other topic.
publish = ["svc/{name}/+/mean"]

[limits]
memory_mib = 16
call_deadline_ms = 50

# WASI the component may use; none by default (no files or sockets ever).
# "clocks" (wall and monotonic clocks) and "random" may be declared.
[capabilities]
wasi = []

[config]
# Readings averaged per asset.
window = 5
# Mean above which `above_limit` is true (reading units).
limit = 80.0

[kpis]
readings_per_call = {{ unit = "1", better = "higher" }}
"#,
        name_q = toml_str(name),
        provider_q = toml_str(provider),
        world_q = toml_str(&sdk_world(sdk)),
    );
    let lib_rs = format!(
        r##"//! {name}: the mean of each asset's last `window` readings, published on
//! `svc/{name}/{{asset}}/mean` with whether it is above `limit`.

use outpost_sdk::{{export_service, host, Message, Service, ServiceError}};
use serde::{{Deserialize, Serialize}};
use std::collections::{{BTreeMap, VecDeque}};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {{
    /// Readings averaged per asset.
    window: usize,
    /// Mean above which `above_limit` is true.
    limit: f64,
}}

/// One input: `{{"value": 12.5}}` on `site/{{site}}/{{asset}}/reading`.
#[derive(Deserialize)]
struct Reading {{
    value: f64,
}}

/// One output on `svc/{name}/{{asset}}/mean`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Mean {{
    pub asset: String,
    pub mean: f64,
    pub n: usize,
    pub above_limit: bool,
}}

pub struct {type_name} {{
    config: Config,
    recent: BTreeMap<String, VecDeque<f64>>,
}}

impl Service for {type_name} {{
    fn init(config_json: &str) -> Result<Self, ServiceError> {{
        let config: Config =
            serde_json::from_str(config_json).map_err(|e| ServiceError::BadConfig(e.to_string()))?;
        if config.window == 0 {{
            return Err(ServiceError::BadConfig("window must be at least 1".into()));
        }}
        Ok({type_name} {{ config, recent: BTreeMap::new() }})
    }}

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {{
        let mut bad = None;
        let n = batch.len();
        for m in batch {{
            let asset = m.topic_segment(2).unwrap_or("unknown").to_owned();
            let reading: Reading = match serde_json::from_slice(&m.payload) {{
                Ok(r) => r,
                Err(e) => {{
                    // Report it after the rest of the batch is handled.
                    bad.get_or_insert(ServiceError::BadInput(format!("{{}}: {{e}}", m.topic)));
                    continue;
                }}
            }};
            let recent = self.recent.entry(asset.clone()).or_default();
            recent.push_back(reading.value);
            while recent.len() > self.config.window {{
                recent.pop_front();
            }}
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            let out = Mean {{ asset: asset.clone(), mean, n: recent.len(), above_limit: mean > self.config.limit }};
            let payload = serde_json::to_vec(&out).map_err(|e| ServiceError::Internal(e.to_string()))?;
            host::publish(&format!("svc/{name}/{{asset}}/mean"), &payload).map_err(ServiceError::Internal)?;
        }}
        host::kpi("readings_per_call", n as f64);
        bad.map_or(Ok(()), Err)
    }}
}}

export_service!({type_name});

#[cfg(test)]
mod tests {{
    use super::*;
    use outpost_sdk::testing::Harness;

    fn means(h: &mut Harness<{type_name}>) -> Vec<(String, Mean)> {{
        h.take_published()
            .into_iter()
            .map(|(t, p)| (t, serde_json::from_slice(&p).expect("JSON output")))
            .collect()
    }}

    #[test]
    fn mean_of_the_window_per_asset() {{
        let config = r#"{{"window": 2, "limit": 50.0}}"#;
        let mut h = Harness::<{type_name}>::with_acl(config, &["svc/{name}/+/mean"]).expect("init");
        h.send("site/demo/pump1/reading", r#"{{"value": 40}}"#).expect("first");
        h.send("site/demo/pump1/reading", r#"{{"value": 70}}"#).expect("second");
        h.send("site/demo/pump2/reading", r#"{{"value": 10}}"#).expect("other asset");
        h.send("site/demo/pump1/reading", r#"{{"value": 80}}"#).expect("window slides");
        let out = means(&mut h);
        let topic = "svc/{name}/pump1/mean".to_string();
        assert_eq!(out[0], (topic.clone(), Mean {{ asset: "pump1".into(), mean: 40.0, n: 1, above_limit: false }}));
        assert_eq!(out[1], (topic.clone(), Mean {{ asset: "pump1".into(), mean: 55.0, n: 2, above_limit: true }}));
        assert_eq!(out[2].1, Mean {{ asset: "pump2".into(), mean: 10.0, n: 1, above_limit: false }});
        assert_eq!(out[3], (topic, Mean {{ asset: "pump1".into(), mean: 75.0, n: 2, above_limit: true }}));
        assert!(h.host().denied.is_empty(), "every output inside the manifest's publish list");
    }}

    #[test]
    fn bad_input_is_reported_and_the_rest_still_handled() {{
        let mut h = Harness::<{type_name}>::new(r#"{{"window": 5, "limit": 1.0}}"#).expect("init");
        let batch = vec![
            Message::new("site/demo/pump1/reading", "not json"),
            Message::new("site/demo/pump1/reading", r#"{{"value": 3}}"#),
        ];
        assert!(matches!(h.send_batch(batch), Err(ServiceError::BadInput(_))));
        assert_eq!(means(&mut h).len(), 1);
    }}

    #[test]
    fn the_manifest_defaults_are_a_valid_config() {{
        let manifest: toml::Table = toml::from_str(include_str!("../service.toml")).expect("service.toml");
        let config = serde_json::to_string(&manifest["config"]).expect("config as JSON");
        assert!(Harness::<{type_name}>::new(&config).is_ok());
    }}
}}
"##
    );
    // A recording (the format `outpostctl record` writes): `outpostctl run
    // --replay` and `outpost-sim --recording` play it back.
    let samples = [
        (0, "pump1", "61.5"),
        (1000, "pump2", "12.0"),
        (2000, "pump1", "74.0"),
        (3000, "pump1", "88.5"),
        (4000, "pump1", "97.0"),
    ]
    .iter()
    .map(|(t, asset, v)| {
        let payload = format!("{{\"value\": {v}}}");
        serde_json::json!({"t_ms": t, "topic": format!("site/demo/{asset}/reading"), "payload": payload}).to_string()
            + "\n"
    })
    .collect::<String>();
    let readme = format!(
        r#"# {name}

An Outpost service: the mean of each asset's last `window` readings.

| | |
|---|---|
| input | `site/{{site}}/{{asset}}/reading`, JSON `{{"value": 12.5}}` |
| output | `svc/{name}/{{asset}}/mean`, JSON `{{"asset", "mean", "n", "above_limit"}}` |
| config | `window` (readings, default 5), `limit` (reading units, default 80.0) |
| KPIs | `readings_per_call` |

## The loop

```sh
cargo test                                   # native tests (outpost_sdk::testing::Harness)
outpostctl build                             # component + manifest into target/outpost/{name}/
outpostctl run target/outpost/{name} --replay samples/input.jsonl   # a recorded bus session
outpostctl keygen --out keys --name {provider}  # once; give keys/{provider}.pub to each gateway
outpostctl package target/outpost/{name} --key keys/{provider}.key
outpostctl deploy {name}-0.1.0.opkg --agent http://GATEWAY:PORT --token-file api.token
```

WASI capabilities: none by default. Declare `wasi = ["clocks"]` or
`["random"]` in `service.toml`'s `[capabilities]` if the code needs them
(the agent refuses a component that imports them undeclared); files and
sockets are never available.
"#,
        provider = provider,
    );
    let gitignore = "/target\n".to_owned();
    vec![
        ("Cargo.toml", cargo),
        ("service.toml", manifest),
        ("src/lib.rs", lib_rs),
        ("samples/input.jsonl", samples),
        ("README.md", readme),
        (".gitignore", gitignore),
    ]
}

/// The `[package] name` of a crate's Cargo.toml.
fn crate_name(dir: &Path) -> Result<String> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}: is {} a service crate?", path.display(), dir.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let package = table.get("package").and_then(|p| p.as_table());
    let lib_name =
        package.and_then(|_| table.get("lib")).and_then(|l| l.get("name")).and_then(|n| n.as_str()).map(str::to_owned);
    let name = package
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .with_context(|| format!("{} has no [package] name", path.display()))?;
    Ok(lib_name.unwrap_or_else(|| name.to_owned()))
}

/// `outpostctl build`: the component for wasm32-wasip2 and the package folder.
pub fn build(args: &BuildArgs) -> Result<PathBuf> {
    let started = Instant::now();
    let dir = args.dir.canonicalize().with_context(|| format!("cannot find {}", args.dir.display()))?;
    let manifest_path = dir.join("service.toml");
    let manifest = outpost::manifest::Manifest::load(&manifest_path)
        .with_context(|| format!("{} needs a valid service.toml (outpostctl new writes one)", dir.display()))?;
    let lib = crate_name(&dir)?;
    let name = &manifest.service.name;
    let guest = Guest::detect()?;
    println!("==> building {} {} with {}", name, manifest.service.version, guest.describe());
    // CARGO_TARGET_DIR, when set, is honoured (a shared or cached target folder).
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| dir.join("target"));
    let mut cmd = guest.cargo_build(&target_dir);
    cmd.arg("--manifest-path").arg(dir.join("Cargo.toml")).current_dir(&dir);
    let status = cmd.status().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("cargo build for {} failed ({status}); the compiler's errors are above", outpost_toolchain::WASM_TARGET);
    }
    let wasm = component_path(&target_dir, &lib);
    let bytes = std::fs::read(&wasm).with_context(|| {
        format!("the build did not produce {}: is [lib] crate-type = [\"cdylib\", ...] in Cargo.toml?", wasm.display())
    })?;
    outpost::host::check_component_bytes(&bytes).map_err(|e| anyhow::anyhow!("{} {e}", wasm.display()))?;
    let package_dir = dir.join("target/outpost").join(name);
    std::fs::create_dir_all(&package_dir).with_context(|| format!("cannot create {}", package_dir.display()))?;
    std::fs::copy(&manifest_path, package_dir.join("service.toml"))
        .with_context(|| format!("cannot copy service.toml into {}", package_dir.display()))?;
    std::fs::write(package_dir.join("service.wasm"), &bytes)
        .with_context(|| format!("cannot write {}", package_dir.join("service.wasm").display()))?;
    println!(
        "    {}: service.toml + service.wasm ({} KiB) in {:.1}s",
        package_dir.display(),
        bytes.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    println!("next: outpostctl package {} --key KEY", package_dir.display());
    Ok(package_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("pump-monitor").is_ok());
        assert!(check_name("p2").is_ok());
        for bad in ["", "Pump", "2pump", "pump_", "pump-", "a b", "pump/x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_manifest_names_the_sdks_world() {
        let sdk = Path::new(BUILT_SDK);
        assert_eq!(sdk_world(sdk), outpost_sdk::WORLD, "this checkout's SDK and WIT agree");
        let other = tempfile_dir();
        std::fs::create_dir_all(other.join("wit")).expect("mkdir");
        std::fs::write(other.join("wit/service.wit"), "// x\npackage outpost:service@1.7.2;\n").expect("write");
        assert_eq!(sdk_world(&other), "outpost:service@1.7.2");
        let _ = std::fs::remove_dir_all(&other);
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("outpostctl-scaffold-test-{}", std::process::id()))
    }

    #[test]
    fn the_scaffolded_manifest_is_valid() {
        for (rel, text) in files("pump-monitor", "acme \"inc\"", Path::new("/opt/outpost/sdk")) {
            if rel == "service.toml" {
                let m = outpost::manifest::Manifest::parse(&text, Path::new(rel)).expect("valid manifest");
                assert_eq!(m.service.provider, "acme \"inc\"");
                assert_eq!(m.bus.publish, vec!["svc/pump-monitor/+/mean".to_string()]);
            }
            if rel == "Cargo.toml" {
                let t: toml::Table = toml::from_str(&text).expect("Cargo.toml");
                assert_eq!(t["dependencies"]["outpost-sdk"]["path"].as_str(), Some("/opt/outpost/sdk"));
                assert!(t.contains_key("workspace"));
            }
        }
    }
}
