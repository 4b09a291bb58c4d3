//! `ops.toml`: every setting of `outpost-ops serve` (and of the CLI, which
//! reads the API address and token from the same file). Unknown keys are
//! refused; [`OpsConfig::validate`] lists every problem at once.
//!
//! ```toml
//! [broker]
//! url = "mqtts://broker.example:8883"   # or mqtt://host:port
//! user = "ops"                           # the operations center's MQTT user
//! password_file = "/etc/outpost-ops/broker.pass"
//! tls_ca = "/etc/outpost-ops/ca.pem"     # required for mqtts://
//! gateway_password_file = "/etc/mosquitto/passwd"  # `gateway add` writes here
//!
//! [ops]
//! key = "/var/lib/outpost-ops/keys/ops-eu.key"   # outpost_package::keygen
//! store = "/var/lib/outpost-ops/fleet.redb"     # or postgresql://user@host/db (replicas)
//! artifacts = "/var/lib/outpost-ops/artifacts"
//! trust = "/etc/outpost-ops/trust"       # provider keys packages must verify against
//! replica_id = "ops-1"                   # default: hostname-pid; unique per replica
//! lease_ttl_ms = 5000                    # leader lease; a standby takes over within it
//!
//! [http]
//! listen = "127.0.0.1:8470"
//! token_file = "/var/lib/outpost-ops/api.token"  # created at first start
//! artifacts_url = "http://ops.example:8470"      # printed for gateways' [fleet] artifacts_url
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    pub broker: BrokerConfig,
    pub ops: CoreConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub url: String,
    pub user: String,
    pub password_file: PathBuf,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// MQTT client id; a persistent session is kept under it.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Mosquitto password file `gateway add` writes credentials to.
    #[serde(default)]
    pub gateway_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    pub key: PathBuf,
    /// A redb file, or a `postgresql://` URL for a store replicas share.
    pub store: PathBuf,
    pub artifacts: PathBuf,
    pub trust: PathBuf,
    /// Milliseconds between engine ticks when nothing arrives (default 200).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// This replica's name in the leader lease (default: hostname-pid).
    #[serde(default)]
    pub replica_id: Option<String>,
    /// How long the leader's lease lasts unrenewed (default 5000); it is
    /// renewed every third of that, and a standby takes over within it.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
}

impl CoreConfig {
    /// `replica_id`, or hostname-pid.
    pub fn replica_id(&self) -> String {
        if let Some(id) = &self.replica_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "outpost-ops".to_string());
        format!("{host}-{}", std::process::id())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    pub token_file: PathBuf,
    #[serde(default)]
    pub artifacts_url: Option<String>,
}

fn default_client_id() -> String {
    "outpost-ops".to_string()
}
fn default_tick_ms() -> u64 {
    200
}
fn default_lease_ttl_ms() -> u64 {
    5000
}

/// Every problem with a config file, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: configuration refused:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl OpsConfig {
    pub fn load(path: &Path) -> Result<OpsConfig, ConfigErrors> {
        let err = |p: String| ConfigErrors { path: path.to_owned(), problems: vec![p] };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let cfg: OpsConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        Ok(cfg)
    }

    /// What `serve` needs to exist; every problem at once.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigErrors> {
        let mut p = Vec::new();
        match crate::transport::parse_url(&self.broker.url) {
            Err(e) => p.push(format!("broker.url: {e}")),
            Ok((_, _, true)) if self.broker.tls_ca.is_none() => {
                p.push("broker.tls_ca: required for an mqtts:// url".to_string())
            }
            Ok(_) => {}
        }
        if self.broker.user.trim().is_empty() {
            p.push("broker.user is empty".into());
        }
        if self.broker.client_id.trim().is_empty() {
            p.push("broker.client_id is empty".into());
        }
        file_exists(&mut p, "broker.password_file", &self.broker.password_file);
        if let Some(ca) = &self.broker.tls_ca {
            file_exists(&mut p, "broker.tls_ca", ca);
        }
        file_exists(&mut p, "ops.key", &self.ops.key);
        if !self.ops.trust.is_dir() {
            p.push(format!("ops.trust: {} is not a folder of provider .pub keys", self.ops.trust.display()));
        }
        for (k, v) in [
            ("ops.store", &self.ops.store),
            ("ops.artifacts", &self.ops.artifacts),
            ("http.token_file", &self.http.token_file),
        ] {
            if v.as_os_str().is_empty() {
                p.push(format!("{k} is empty"));
            }
        }
        if self.ops.tick_ms == 0 || self.ops.tick_ms > 60_000 {
            p.push(format!("ops.tick_ms {} is outside 1..=60000", self.ops.tick_ms));
        }
        if let Some(id) = &self.ops.replica_id {
            if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
                p.push(format!("ops.replica_id `{id}` is not 1-128 printable ASCII characters without spaces"));
            }
        }
        // A third of the ttl must leave room for a renewal round trip.
        if !(300..=600_000).contains(&self.ops.lease_ttl_ms) {
            p.push(format!("ops.lease_ttl_ms {} is outside 300..=600000", self.ops.lease_ttl_ms));
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            p.push(format!("http.listen `{}` is not an address like 127.0.0.1:8470", self.http.listen));
        }
        if let Some(u) = &self.http.artifacts_url {
            if crate::client::split_url(u).is_err() {
                p.push(format!("http.artifacts_url `{u}` is not http://host:port"));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors { path: path.to_owned(), problems: p })
        }
    }

    /// The API base URL the CLI talks to.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.http.listen)
    }
}

fn file_exists(p: &mut Vec<String>, key: &str, path: &Path) {
    if !path.is_file() {
        p.push(format!("{key}: {} does not exist or is not a file", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed() {
        let text = r#"
            [broker]
            url = "mqtts://h"
            user = ""
            password_file = "/nonexistent/pass"
            [ops]
            key = "/nonexistent/k"
            store = "s.redb"
            artifacts = "a"
            trust = "/nonexistent/trust"
            replica_id = "two words"
            lease_ttl_ms = 10
            [http]
            listen = "localhost"
            token_file = "t"
        "#;
        let cfg: OpsConfig = toml::from_str(text).unwrap();
        let e = cfg.validate(Path::new("ops.toml")).unwrap_err();
        let all = e.problems.join("\n");
        for want in [
            "tls_ca: required",
            "broker.user is empty",
            "password_file",
            "ops.key",
            "ops.trust",
            "http.listen",
            "ops.replica_id `two words`",
            "ops.lease_ttl_ms 10",
        ] {
            assert!(all.contains(want), "missing `{want}` in:\n{all}");
        }
        assert_eq!(e.problems.len(), 8, "{all}");
        let unknown = toml::from_str::<OpsConfig>(&text.replace("[http]", "[http]\nport = 1"));
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn replica_defaults() {
        let text = r#"
            [broker]
            url = "mqtt://h:1"
            user = "ops"
            password_file = "p"
            [ops]
            key = "k"
            store = "s.redb"
            artifacts = "a"
            trust = "t"
            [http]
            listen = "127.0.0.1:1"
            token_file = "t"
        "#;
        let cfg: OpsConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.ops.lease_ttl_ms, 5000);
        let id = cfg.ops.replica_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        let named: OpsConfig = toml::from_str(&text.replace("[http]", "replica_id = \"ops-2\"\n[http]")).unwrap();
        assert_eq!(named.ops.replica_id(), "ops-2");
    }
}
