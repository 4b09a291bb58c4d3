//! The agent's config file (`outpost.toml`): every setting with its default.
//! Syntax and unknown keys fail at parse (with line and column); meaning is
//! checked afterwards and every problem is reported at once.

use crate::manifest::Problems;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This gateway's id, used in `outpost/{gateway}/...` topics and as MQTT client id.
    pub gateway: String,
    /// The site this gateway serves.
    pub site: String,
    /// Where installed services live: one folder per service with `service.toml` and `service.wasm`.
    pub services_dir: PathBuf,
    /// Persistent state (service key-value store) and the precompiled cache.
    pub state_dir: PathBuf,
    /// Public keys of the providers whose signed packages this gateway
    /// accepts (`*.pub`); default `/etc/outpost/trust`.
    #[serde(default)]
    pub trust_dir: Option<PathBuf>,
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// The link to the operations center (fleet rollouts, reports, the
    /// customer-approved uplink); omit for a gateway managed on site only.
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    /// Per-site overrides, keyed by service name.
    #[serde(default)]
    pub services: BTreeMap<String, SiteServiceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `embedded` runs rumqttd inside the agent; `external` connects to `url`.
    #[serde(default)]
    pub mode: BrokerMode,
    /// Listen address of the embedded broker.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `mqtt://host:port` of an external broker (Mosquitto, EMQX, ...).
    #[serde(default)]
    pub url: Option<String>,
    /// MQTT keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Embedded broker: `user:password` lines clients must present when it
    /// listens beyond loopback (required then; loopback needs none).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Username and password file (one line `user:password`) the agent
    /// presents to the broker.
    #[serde(default)]
    pub client_credentials_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    #[default]
    Embedded,
    External,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_keep_alive() -> u64 {
    30
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mode: BrokerMode::Embedded,
            listen: default_listen(),
            url: None,
            keep_alive_s: default_keep_alive(),
            credentials_file: None,
            client_credentials_file: None,
        }
    }
}

impl BrokerConfig {
    /// Host and port the agent's MQTT client connects to.
    pub fn client_target(&self) -> Result<(String, u16), String> {
        match self.mode {
            BrokerMode::Embedded => Ok((self.listen.ip().to_string(), self.listen.port())),
            BrokerMode::External => {
                let url = self.url.as_deref().ok_or("broker.url is required when broker.mode = \"external\"")?;
                parse_mqtt_url(url)
            }
        }
    }
}

/// `mqtt://host:port` (port defaults to 1883).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| format!("broker.url '{url}' must start with mqtt:// (TLS is not supported yet)"))?;
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().map_err(|_| format!("broker.url '{url}': port '{port}' is not a number"))?;
            if host.is_empty() {
                return Err(format!("broker.url '{url}' has no host"));
            }
            Ok((host.trim_matches(['[', ']']).to_owned(), port))
        }
        None if !rest.is_empty() => Ok((rest.to_owned(), 1883)),
        None => Err(format!("broker.url '{url}' has no host")),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` and `/status`; omit to disable.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// gRPC management API (`outpostctl status`); omit to disable.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Bearer token every call must carry. Created (random, mode 0600) if
    /// missing; default `{state_dir}/api.token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// TLS for the API: the agent's certificate chain and private key (PEM).
    /// Both or neither; without them the API speaks plain HTTP/2, which is
    /// meant for loopback.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            token_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl ApiConfig {
    /// The API's certificate and key, read now so a missing or unreadable
    /// file stops the agent at start with its path.
    pub fn tls_identity(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let read = |p: &PathBuf, what: &str| std::fs::read(p).map_err(|e| format!("api.{what} {}: {e}", p.display()));
        Ok(Some((read(cert, "tls_cert")?, read(key, "tls_key")?)))
    }
}

impl AgentConfig {
    pub fn trust_dir(&self) -> PathBuf {
        self.trust_dir.clone().unwrap_or_else(|| PathBuf::from("/etc/outpost/trust"))
    }

    /// Where the management API's bearer token lives.
    pub fn token_file(&self) -> PathBuf {
        self.api.token_file.clone().unwrap_or_else(|| self.state_dir.join("api.token"))
    }
}

/// The operations center's MQTT link (see `crate::uplink`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (then `ca_file`).
    pub broker: String,
    /// The operations center's public key (`ed25519 <b64>  <name>`, as
    /// `outpost-ops` writes it): desired state signed by any other key is refused.
    pub ops_key: PathBuf,
    /// One line `user:password`; the user is this gateway's id, so the
    /// broker's ACL lets it touch only its own topics.
    pub credentials_file: PathBuf,
    /// CA certificate (PEM) the broker's certificate must chain to (`mqtts://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Base URL that desired state's artifact paths are resolved against
    /// (`http://ops.example:8080`).
    #[serde(default)]
    pub artifacts_url: Option<String>,
    /// The provider whose operations center this is: the customer's
    /// sharing policy names what may go to it.
    pub provider: String,
    /// The customer's data-sharing policy (TOML). Missing file = nothing
    /// but version and health reports leaves the site.
    #[serde(default)]
    pub sharing_policy: Option<PathBuf>,
    /// How often the gateway reports its services, in seconds.
    #[serde(default = "default_report_interval")]
    pub report_interval_s: u64,
    /// The store-and-forward outbox keeps at most this many messages...
    #[serde(default = "default_outbox_messages")]
    pub outbox_max_messages: u64,
    /// ...and at most this many payload bytes; beyond either the oldest
    /// queued message is dropped and counted.
    #[serde(default = "default_outbox_bytes")]
    pub outbox_max_bytes: u64,
}

fn default_report_interval() -> u64 {
    30
}
fn default_outbox_messages() -> u64 {
    100_000
}
fn default_outbox_bytes() -> u64 {
    64 * 1024 * 1024
}

impl FleetConfig {
    fn problems(&self, p: &mut Vec<String>) {
        match parse_fleet_url(&self.broker) {
            Ok((_, _, tls)) if tls && self.ca_file.is_none() => {
                p.push("fleet.broker is mqtts:// : set fleet.ca_file to the operations center's CA certificate".into())
            }
            Ok(_) => {}
            Err(e) => p.push(e),
        }
        if let Some(url) = &self.artifacts_url {
            if !url.starts_with("http://") {
                p.push(format!("fleet.artifacts_url '{url}' must start with http:// (packages are verified by digest and signature, not by the transport)"));
            }
        }
        if outpost_package::keys::check_name(&self.provider).is_err() {
            p.push(format!("fleet.provider '{}' must be 1-64 of [A-Za-z0-9._-]", self.provider));
        }
        if self.report_interval_s == 0 {
            p.push("fleet.report_interval_s must be at least 1".into());
        }
        if self.outbox_max_messages == 0 || self.outbox_max_bytes < 64 * 1024 {
            p.push("fleet.outbox_max_messages must be at least 1 and fleet.outbox_max_bytes at least 65536".into());
        }
    }
}

/// `mqtt://host:port` or `mqtts://host:port` (ports default to 1883 and 8883);
/// the last value says whether the link uses TLS.
pub fn parse_fleet_url(url: &str) -> Result<(String, u16, bool), String> {
    match url.strip_prefix("mqtts://") {
        Some(rest) => {
            let (host, port) = parse_mqtt_url(&format!("mqtt://{rest}")).map_err(|e| format!("fleet.{e}"))?;
            let port = if rest.trim_end_matches('/').contains(':') { port } else { 8883 };
            Ok((host, port, true))
        }
        None => parse_mqtt_url(url).map(|(h, p)| (h, p, false)).map_err(|e| format!("fleet.{e}")),
    }
}

/// Upgrades on a running gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// After an upgrade, how long the new version is on probation; 0 turns
    /// automatic rollback off.
    #[serde(default = "default_probation")]
    pub probation_s: u64,
    /// Faults (traps, deadlines, failed starts) within probation that roll
    /// the upgrade back.
    #[serde(default = "default_probation_faults")]
    pub probation_max_faults: u64,
    /// At the end of probation, the share of messages the new version
    /// answered with an error may exceed the previous version's by at most
    /// this much (0.05: five points), else the upgrade is rolled back.
    #[serde(default = "default_probation_error_margin")]
    pub probation_error_margin: f64,
    /// Fewest messages the new version must have handled in the window for
    /// its error share to be judged (fewer say nothing either way).
    #[serde(default = "default_probation_min_messages")]
    pub probation_min_messages: u64,
}

fn default_probation() -> u64 {
    120
}
fn default_probation_faults() -> u64 {
    3
}
fn default_probation_error_margin() -> f64 {
    0.05
}
fn default_probation_min_messages() -> u64 {
    50
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            probation_s: default_probation(),
            probation_max_faults: default_probation_faults(),
            probation_error_margin: default_probation_error_margin(),
            probation_min_messages: default_probation_min_messages(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Most messages handed to one `handle` call.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How often each instance's `tick` runs.
    #[serde(default = "default_tick")]
    pub tick_interval_ms: u64,
    /// First restart delay after a fault; doubles up to `max_backoff_ms`.
    #[serde(default = "default_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// On SIGTERM, how long to keep handling accepted messages before exiting.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
    /// Instance slots for all services together (wasmtime's pooling
    /// allocator, reserved at start). Default: one per 16 MiB of the
    /// machine's memory, 64 to 8192.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// At start, a service whose optimized code is not in the precompiled
    /// cache (first start, new agent version) starts on code from the fast
    /// baseline compiler (Winch) and is restarted on optimized code
    /// (Cranelift) once that is compiled in the background. Off: start
    /// waits for optimized code.
    #[serde(default = "default_fast_start")]
    pub fast_start: bool,
}

fn default_fast_start() -> bool {
    true
}

fn default_max_batch() -> usize {
    256
}
fn default_tick() -> u64 {
    1000
}
fn default_backoff() -> u64 {
    100
}
fn default_max_backoff() -> u64 {
    30_000
}
fn default_drain() -> u64 {
    10_000
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_batch: default_max_batch(),
            tick_interval_ms: default_tick(),
            initial_backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
            drain_timeout_ms: default_drain(),
            fast_start: default_fast_start(),
            max_instances: None,
        }
    }
}

/// A site's calibration of one service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteServiceConfig {
    /// Keys override the manifest's `[config]` defaults (shallow merge per key).
    #[serde(default)]
    pub config: toml::Table,
    /// Overrides `scale.instances`.
    #[serde(default)]
    pub instances: Option<u32>,
    /// `false` keeps the service installed but not running.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_enabled() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n{}", problems.len(), Problems(problems))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let id_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !id_ok(&self.gateway) {
            p.push(format!("gateway '{}' must be non-empty ASCII letters, digits, '-', '_' or '.'", self.gateway));
        }
        if !id_ok(&self.site) {
            p.push(format!("site '{}' must be non-empty ASCII letters, digits, '-', '_' or '.'", self.site));
        }
        if let Err(e) = self.broker.client_target() {
            p.push(e);
        }
        if self.broker.mode == BrokerMode::Embedded && self.broker.url.is_some() {
            p.push("broker.url is set but broker.mode is \"embedded\"; set mode = \"external\" to use it".into());
        }
        if self.broker.keep_alive_s < 5 {
            p.push(format!("broker.keep_alive_s is {}; it must be at least 5", self.broker.keep_alive_s));
        }
        let d = &self.dispatch;
        if d.max_batch == 0 || d.max_batch > 65_536 {
            p.push(format!("dispatch.max_batch is {}; it must be 1 to 65536", d.max_batch));
        }
        if d.tick_interval_ms == 0 {
            p.push("dispatch.tick_interval_ms must be at least 1".into());
        }
        if d.initial_backoff_ms == 0 || d.initial_backoff_ms > d.max_backoff_ms {
            p.push(format!(
                "dispatch.initial_backoff_ms ({}) must be at least 1 and at most dispatch.max_backoff_ms ({})",
                d.initial_backoff_ms, d.max_backoff_ms
            ));
        }
        if let Some(n) = d.max_instances {
            if n == 0 || n > crate::host::MAX_POOL_INSTANCES {
                p.push(format!("dispatch.max_instances is {n}; it must be 1 to {}", crate::host::MAX_POOL_INSTANCES));
            }
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            p.push("api.tls_cert and api.tls_key go together: set both (PEM files) or neither".into());
        }
        if self.lifecycle.probation_max_faults == 0 {
            p.push("lifecycle.probation_max_faults must be at least 1".into());
        }
        let m = self.lifecycle.probation_error_margin;
        if !(m.is_finite() && (0.0..=1.0).contains(&m)) {
            p.push(format!("lifecycle.probation_error_margin is {m}; it must be a share from 0 to 1"));
        }
        if self.broker.mode == BrokerMode::Embedded
            && !self.broker.listen.ip().is_loopback()
            && self.broker.credentials_file.is_none()
        {
            p.push(format!(
                "broker.listen {} is beyond loopback: set broker.credentials_file so clients must log in",
                self.broker.listen
            ));
        }
        if let Some(f) = &self.fleet {
            f.problems(&mut p);
        }
        for (name, s) in &self.services {
            if s.instances == Some(0) || s.instances.is_some_and(|n| n > crate::manifest::MAX_INSTANCES) {
                p.push(format!("services.{name}.instances must be 1 to {}", crate::manifest::MAX_INSTANCES));
            }
        }
        p
    }
}

impl fmt::Display for BrokerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerMode::Embedded => "embedded",
            BrokerMode::External => "external",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = AgentConfig::parse(
            "gateway = \"gw1\"\nsite = \"s1\"\nservices_dir = \"svc\"\nstate_dir = \"st\"\n",
            Path::new("a.toml"),
        )
        .expect("valid");
        assert_eq!(c.broker.mode, BrokerMode::Embedded);
        assert_eq!(c.dispatch.max_batch, 256);
    }

    #[test]
    fn all_problems_are_listed() {
        let text = r#"
gateway = "gw 1"
site = ""
services_dir = "svc"
state_dir = "st"
[broker]
mode = "external"
url = "http://x"
[dispatch]
max_batch = 0
"#;
        let err = AgentConfig::parse(text, Path::new("a.toml")).unwrap_err().to_string();
        assert!(err.contains("4 problem(s)"), "{err}");
        for needle in ["gateway 'gw 1'", "site ''", "mqtt://", "dispatch.max_batch"] {
            assert!(err.contains(needle), "missing {needle}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_position() {
        let err = AgentConfig::parse(
            "gateway = \"g\"\nsite = \"s\"\nservices_dir = \"a\"\nstate_dir = \"b\"\nbrokr = 1\n",
            Path::new("a.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("brokr") && err.contains("line 5"), "{err}");
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:1884").unwrap(), ("127.0.0.1".into(), 1884));
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(parse_mqtt_url("mqtt://h:x").is_err());
        assert_eq!(parse_fleet_url("mqtts://ops").unwrap(), ("ops".into(), 8883, true));
        assert_eq!(parse_fleet_url("mqtts://ops:9000").unwrap(), ("ops".into(), 9000, true));
        assert_eq!(parse_fleet_url("mqtt://ops").unwrap(), ("ops".into(), 1883, false));
    }

    #[test]
    fn fleet_problems_are_listed_together() {
        let text = r#"
gateway = "g"
site = "s"
services_dir = "a"
state_dir = "b"
[fleet]
broker = "mqtts://ops"
ops_key = "ops.pub"
credentials_file = "fleet.credentials"
provider = "acme co"
artifacts_url = "ftp://x"
report_interval_s = 0
"#;
        let err = AgentConfig::parse(text, Path::new("a.toml")).unwrap_err().to_string();
        for needle in ["fleet.ca_file", "fleet.artifacts_url", "fleet.provider", "fleet.report_interval_s"] {
            assert!(err.contains(needle), "missing {needle}: {err}");
        }
    }
}
