//! `service.toml`: what a service is, what it may touch, and its defaults.
//!
//! Deny by default: a service receives only what it subscribes to and may
//! publish only to its `publish` list (enforced by the host, not the guest).

use crate::topic;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The newest WIT world this agent hosts (it also hosts 1.0.0, see
/// `host::HOSTED_VERSIONS`). Components built against another major
/// version, or a newer minor one, are refused with both versions named.
pub const SUPPORTED_WORLD: &str = "outpost:service@1.2.0";

/// Most instances of one service on one gateway.
pub const MAX_INSTANCES: u32 = 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub service: ServiceInfo,
    pub bus: BusSpec,
    #[serde(default)]
    pub scale: ScaleSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Default config; the site's `[services.NAME.config]` overrides keys.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub kpis: BTreeMap<String, KpiSpec>,
    /// WASI the component may use beyond what every guest needs to start.
    #[serde(default)]
    pub capabilities: CapabilitiesSpec,
    /// Payload schemas of what it publishes and what it relies on in what
    /// it subscribes to (see [`crate::contract`]).
    #[serde(default)]
    pub contracts: ContractsSpec,
}

/// `[contracts]`: by topic filter, the JSON Schema (inline JSON text) of
/// what the service publishes there and of what it requires of what it
/// receives there.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractsSpec {
    #[serde(default)]
    pub publish: BTreeMap<String, PublishContract>,
    #[serde(default)]
    pub subscribe: BTreeMap<String, SubscribeContract>,
}

/// `[contracts.publish."TOPIC"]`: what every payload on the topic is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishContract {
    /// Version of the schema (semver), named in mismatches.
    pub version: String,
    /// JSON Schema (JSON text).
    pub schema: String,
}

/// `[contracts.subscribe."TOPIC"]`: what the service relies on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeContract {
    /// JSON Schema (JSON text): the properties it reads, their types and values.
    pub requires: String,
}

impl ContractsSpec {
    fn problems(&self, bus: &BusSpec) -> Vec<String> {
        let mut p = Vec::new();
        let sections = [
            ("publish", &bus.publish, self.publish.keys().collect::<Vec<_>>()),
            ("subscribe", &bus.subscribe, self.subscribe.keys().collect()),
        ];
        for (section, filters, topics) in sections {
            for t in topics {
                if let Err(e) = topic::validate_filter(t) {
                    p.push(format!("contracts.{section}.\"{t}\": {e}"));
                } else if !filters.iter().any(|f| topic::overlap(f, t)) {
                    p.push(format!(
                        "contracts.{section}.\"{t}\": the topic is not in bus.{section} ({})",
                        filters.join(", ")
                    ));
                }
            }
        }
        for (t, c) in &self.publish {
            if let Err(e) = semver::Version::parse(&c.version) {
                p.push(format!("contracts.publish.\"{t}\".version '{}' is not semver (like 1.0.0): {e}", c.version));
            }
            for e in crate::contract::schema_problems(&c.schema) {
                p.push(format!("contracts.publish.\"{t}\".schema: {e}"));
            }
        }
        for (t, c) in &self.subscribe {
            for e in crate::contract::schema_problems(&c.requires) {
                p.push(format!("contracts.subscribe.\"{t}\".requires: {e}"));
            }
        }
        p
    }
}

/// `[capabilities]`: deny by default. Every guest gets WASI's stdio (stderr
/// reaches the agent's log, for panics), an empty environment and exit;
/// clocks and randomness only when declared; files and sockets never.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesSpec {
    /// WASI capabilities by name: `"clocks"`, `"random"`.
    #[serde(default)]
    pub wasi: Vec<String>,
}

/// A WASI capability a manifest may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WasiCapability {
    /// `wasi:clocks/wall-clock` and `wasi:clocks/monotonic-clock`.
    Clocks,
    /// `wasi:random/random`, `wasi:random/insecure`, `wasi:random/insecure-seed`.
    Random,
}

impl WasiCapability {
    pub const ALL: [WasiCapability; 2] = [WasiCapability::Clocks, WasiCapability::Random];

    /// Its name in `capabilities.wasi`.
    pub fn name(self) -> &'static str {
        match self {
            WasiCapability::Clocks => "clocks",
            WasiCapability::Random => "random",
        }
    }

    /// The WASI package whose interfaces it grants (`wasi:clocks`).
    pub fn wasi_package(self) -> &'static str {
        match self {
            WasiCapability::Clocks => "wasi:clocks",
            WasiCapability::Random => "wasi:random",
        }
    }

    pub fn from_name(name: &str) -> Option<WasiCapability> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl CapabilitiesSpec {
    /// Whether the manifest declares `cap`.
    pub fn allows(&self, cap: WasiCapability) -> bool {
        self.wasi.iter().any(|n| n == cap.name())
    }

    fn problems(&self) -> Vec<String> {
        let unknown: Vec<&str> =
            self.wasi.iter().map(String::as_str).filter(|n| WasiCapability::from_name(n).is_none()).collect();
        if unknown.is_empty() {
            return Vec::new();
        }
        let known: Vec<&str> = WasiCapability::ALL.iter().map(|c| c.name()).collect();
        let mut p = format!(
            "capabilities.wasi: unknown {} (this agent grants {})",
            unknown.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", "),
            known.join(", ")
        );
        if unknown.iter().any(|n| ["filesystem", "files", "sockets", "network"].contains(n)) {
            p.push_str("; files and sockets are never available to a service: use the bus and its state");
        }
        vec![p]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    pub name: String,
    pub version: String,
    pub provider: String,
    pub world: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSpec {
    /// Topic filters delivered to the service.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Topic filters the service may publish to (the ACL).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Also publish outputs to the MQTT broker (not only to in-agent
    /// subscribers). Default true so outside tools see them.
    #[serde(default = "default_true")]
    pub mirror: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSpec {
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Topic level used as the shard key: one key always goes to the same
    /// instance, in order. Without it, instance = hash of the whole topic.
    #[serde(default)]
    pub shard_by: Option<usize>,
}

fn default_instances() -> u32 {
    1
}

impl Default for ScaleSpec {
    fn default() -> Self {
        ScaleSpec { instances: 1, shard_by: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default = "default_deadline_ms")]
    pub call_deadline_ms: u64,
    /// Largest payload accepted for this service; bigger ones are counted and dropped.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Messages queued per instance before QoS0 input is shed.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

fn default_memory_mib() -> u32 {
    16
}
fn default_deadline_ms() -> u64 {
    50
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_queue() -> usize {
    10_000
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            memory_mib: default_memory_mib(),
            call_deadline_ms: default_deadline_ms(),
            max_payload_bytes: default_max_payload(),
            queue_capacity: default_queue(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiSpec {
    pub unit: String,
    pub better: Better,
    #[serde(default)]
    pub description: Option<String>,
    /// A health KPI: at the end of an upgrade's probation, the new
    /// version's site-wide value may be worse than the previous version's
    /// by at most this share of it (0.2: 20 % worse), else the upgrade is
    /// rolled back. Absent: the KPI is reported, not judged.
    #[serde(default)]
    pub health_margin: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} is not valid TOML for a service manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("manifest {path} has {} problem(s):\n{}", problems.len(), Problems(problems))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

/// Renders a list of problems one per line.
pub struct Problems<'a>(pub &'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; every problem is reported at once.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let problems = manifest.problems();
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError::Invalid { path: path.to_owned(), problems })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let s = &self.service;
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            p.push(format!("service.name '{}' must be non-empty ASCII letters, digits, '-' or '_'", s.name));
        }
        if let Err(e) = semver::Version::parse(&s.version) {
            p.push(format!("service.version '{}' is not semver (like 1.2.0): {e}", s.version));
        }
        if s.provider.is_empty() {
            p.push("service.provider is empty".into());
        }
        if let Err(e) = check_world(&s.world) {
            p.push(format!("service.world: {e}"));
        }
        if self.bus.subscribe.is_empty() {
            p.push("bus.subscribe is empty: the service would never receive a message".into());
        }
        for f in &self.bus.subscribe {
            if let Err(e) = topic::validate_filter(f) {
                p.push(format!("bus.subscribe: {e}"));
            }
        }
        for f in &self.bus.publish {
            if let Err(e) = topic::validate_filter(f) {
                p.push(format!("bus.publish: {e}"));
            }
        }
        if self.scale.instances == 0 || self.scale.instances > MAX_INSTANCES {
            p.push(format!("scale.instances is {}; it must be 1 to {MAX_INSTANCES}", self.scale.instances));
        }
        if self.scale.instances > 1 && self.scale.shard_by.is_none() {
            p.push("scale.shard_by is required when scale.instances > 1 (which topic level keeps order)".into());
        }
        let l = &self.limits;
        if l.memory_mib == 0 || l.memory_mib > 4096 {
            p.push(format!("limits.memory_mib is {}; it must be 1 to 4096", l.memory_mib));
        }
        if l.call_deadline_ms == 0 || l.call_deadline_ms > 60_000 {
            p.push(format!("limits.call_deadline_ms is {}; it must be 1 to 60000", l.call_deadline_ms));
        }
        if l.max_payload_bytes == 0 || l.max_payload_bytes > 16 << 20 {
            p.push(format!("limits.max_payload_bytes is {}; it must be 1 to 16777216", l.max_payload_bytes));
        }
        if l.queue_capacity == 0 {
            p.push("limits.queue_capacity must be at least 1".into());
        }
        for (name, kpi) in &self.kpis {
            if kpi.unit.is_empty() {
                p.push(format!("kpis.{name}.unit is empty"));
            }
            if name.contains('/') {
                p.push(format!("kpis.{name}: a declared KPI is site-wide; its name cannot hold '/' (a subject)"));
            }
            if let Some(m) = kpi.health_margin {
                if !(m.is_finite() && (0.0..=10.0).contains(&m)) {
                    p.push(format!(
                        "kpis.{name}.health_margin is {m}; it must be a share from 0 to 10 (0.2 = 20 % worse)"
                    ));
                }
            }
        }
        p.extend(self.capabilities.problems());
        p.extend(self.contracts.problems(&self.bus));
        p
    }

    /// `name@version`, as used in logs and metrics.
    pub fn id(&self) -> String {
        format!("{}@{}", self.service.name, self.service.version)
    }
}

/// Accepts `outpost:service@1.0.0`, `@1.1.0` and `@1.2.0` (the versions
/// this agent hosts; a 1.2.z patch is the same world).
pub fn check_world(world: &str) -> Result<(), String> {
    let (pkg, version) =
        world.split_once('@').ok_or_else(|| format!("'{world}' has no version; this agent hosts {SUPPORTED_WORLD}"))?;
    if pkg != "outpost:service" {
        return Err(format!("'{world}' is not an Outpost world; this agent hosts {SUPPORTED_WORLD}"));
    }
    let v = semver::Version::parse(version).map_err(|e| format!("'{world}': bad version: {e}"))?;
    if v.major != 1 {
        return Err(format!("service targets {world} but this agent hosts {SUPPORTED_WORLD} (major versions differ)"));
    }
    if v.minor > 2 {
        return Err(format!(
            "service targets {world} but this agent hosts outpost:service@1.0.0 to {SUPPORTED_WORLD} (a newer agent is needed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[service]
name = "positioning"
version = "1.2.0"
provider = "acme"
world = "outpost:service@1.0.0"
[bus]
subscribe = ["site/+/+/gnss/nmea"]
publish = ["svc/positioning/+/fix"]
"#;

    #[test]
    fn good_manifest_parses_with_defaults() {
        let m = Manifest::parse(GOOD, Path::new("service.toml")).expect("valid");
        assert_eq!(m.limits.memory_mib, 16);
        assert_eq!(m.scale.instances, 1);
        assert!(m.bus.mirror);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let bad = GOOD
            .replace("1.2.0", "one")
            .replace("outpost:service@1.0.0", "outpost:service@2.0.0")
            .replace("svc/positioning/+/fix", "svc/#/fix");
        let err = Manifest::parse(&bad, Path::new("x/service.toml")).unwrap_err().to_string();
        assert!(err.contains("3 problem(s)"), "{err}");
        assert!(err.contains("service.version 'one'"), "{err}");
        assert!(err.contains("outpost:service@2.0.0") && err.contains(SUPPORTED_WORLD), "{err}");
        assert!(err.contains("bus.publish"), "{err}");
        assert!(err.contains("x/service.toml"), "{err}");
    }

    #[test]
    fn capabilities_default_to_none_and_unknown_names_are_listed() {
        let m = Manifest::parse(GOOD, Path::new("service.toml")).expect("valid");
        assert!(WasiCapability::ALL.iter().all(|c| !m.capabilities.allows(*c)));

        let with = format!("{GOOD}\n[capabilities]\nwasi = [\"clocks\"]\n");
        let m = Manifest::parse(&with, Path::new("service.toml")).expect("valid");
        assert!(m.capabilities.allows(WasiCapability::Clocks));
        assert!(!m.capabilities.allows(WasiCapability::Random));

        let bad = format!("{GOOD}\n[capabilities]\nwasi = [\"clocks\", \"sockets\", \"gpu\"]\n");
        let err = Manifest::parse(&bad, Path::new("service.toml")).unwrap_err().to_string();
        assert!(err.contains("1 problem(s)"), "{err}");
        assert!(err.contains("unknown 'sockets', 'gpu' (this agent grants clocks, random)"), "{err}");
        assert!(err.contains("files and sockets are never available"), "{err}");

        let typo = format!("{GOOD}\n[capabilities]\nwassi = []\n");
        let err = Manifest::parse(&typo, Path::new("service.toml")).unwrap_err().to_string();
        assert!(err.contains("wassi"), "{err}");
    }

    #[test]
    fn contracts_parse_and_every_problem_is_listed() {
        let with = format!(
            "{GOOD}{}",
            r#"
[contracts.publish."svc/positioning/+/fix"]
version = "1.0.0"
schema = '''{"type": "object", "required": ["mode"]}'''
[contracts.subscribe."site/+/+/gnss/nmea"]
requires = '''{"type": "string"}'''
"#
        );
        let m = Manifest::parse(&with, Path::new("service.toml")).expect("valid");
        assert_eq!(m.contracts.publish["svc/positioning/+/fix"].version, "1.0.0");
        assert!(m.contracts.subscribe.contains_key("site/+/+/gnss/nmea"));

        let bad = format!(
            "{GOOD}{}",
            r#"
[contracts.publish."svc/other/+/fix"]
version = "one"
schema = '''{"type": "obj"'''
[contracts.publish."svc/positioning/+/fix"]
version = "1.0.0"
schema = '''[1]'''
[contracts.subscribe."a/#/b"]
requires = '''{"required": 1}'''
"#
        );
        let err = Manifest::parse(&bad, Path::new("service.toml")).unwrap_err().to_string();
        assert!(err.contains("6 problem(s)"), "{err}");
        for want in [
            "contracts.publish.\"svc/other/+/fix\": the topic is not in bus.publish (svc/positioning/+/fix)",
            "contracts.subscribe.\"a/#/b\": '#' must be a whole level",
            "contracts.publish.\"svc/other/+/fix\".version 'one' is not semver",
            "contracts.publish.\"svc/other/+/fix\".schema: is not JSON",
            "contracts.publish.\"svc/positioning/+/fix\".schema: the schema is not a JSON object",
            "contracts.subscribe.\"a/#/b\".requires: the schema: `required` must be a list",
        ] {
            assert!(err.contains(want), "{want}\n{err}");
        }

        let typo = format!("{GOOD}\n[contracts.subscribe.\"x\"]\nrequire = \"{{}}\"\n");
        let err = Manifest::parse(&typo, Path::new("service.toml")).unwrap_err().to_string();
        assert!(err.contains("require"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let bad = format!("{GOOD}\n[limits]\nmemory_mb = 3\n");
        let err = Manifest::parse(&bad, Path::new("service.toml")).unwrap_err().to_string();
        assert!(err.contains("memory_mb"), "{err}");
    }
}
