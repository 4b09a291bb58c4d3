//! The embedded MQTT broker (rumqttd), so a gateway needs nothing else.
//!
//! It listens on loopback by default. Listening anywhere else requires a
//! credentials file, and then every client logs in. The agent's own MQTT
//! session is reserved: its client id carries a secret kept in the private
//! state directory (so no other client can connect as the agent and take
//! its session over), and with credentials on, only the agent's own login
//! may use an `outpost-{gateway}` client id.

use crate::config::BrokerConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker config: {0}")]
    Config(String),
    #[error("embedded broker cannot listen on {addr}: {message} (is another broker running? set broker.listen or broker.mode = \"external\")")]
    Listen { addr: SocketAddr, message: String },
}

/// The agent's login on its embedded broker.
pub const AGENT_USER: &str = "outpost-agent";

/// Reads (or creates, mode 0600) the agent's broker secret.
fn agent_secret(state_dir: &Path) -> Result<String, BrokerError> {
    let path = state_dir.join("broker.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 16 {
            return Ok(s);
        }
    }
    let secret = crate::api::random_token();
    crate::api::write_private(&path, secret.as_bytes())
        .map_err(|e| BrokerError::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(secret)
}

/// The agent's client id on its embedded broker (stable across restarts,
/// so its persistent session survives; unguessable, so it is its own).
pub fn agent_client_id(gateway: &str, secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let tag = hex::encode(Sha256::digest(format!("client-id:{secret}")));
    format!("outpost-{gateway}-{}", &tag[..16])
}

/// `user:password` lines (blank lines and `#` comments skipped).
pub fn parse_credentials(text: &str) -> Result<HashMap<String, String>, String> {
    let mut pairs = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, pass) = line.split_once(':').ok_or_else(|| format!("line {}: expected user:password", i + 1))?;
        if user.is_empty() || pass.len() < 8 {
            return Err(format!("line {}: empty user or password shorter than 8 characters", i + 1));
        }
        pairs.insert(user.to_owned(), pass.to_owned());
    }
    Ok(pairs)
}

/// The agent's own login at an external broker, if configured.
pub fn read_credentials(path: Option<&Path>) -> Result<Option<(String, String)>, String> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("broker.client_credentials_file {}: {e}", path.display()))?;
    let pairs =
        parse_credentials(&text).map_err(|e| format!("broker.client_credentials_file {}: {e}", path.display()))?;
    let mut it = pairs.into_iter();
    match (it.next(), it.next()) {
        (Some(pair), None) => Ok(Some(pair)),
        _ => Err(format!("broker.client_credentials_file {}: expected exactly one user:password line", path.display())),
    }
}

/// Starts rumqttd in its own threads. Fails early if the port is taken.
/// Returns the agent's own login.
pub fn start_embedded(cfg: &BrokerConfig, state_dir: &Path, gateway: &str) -> Result<(String, String), BrokerError> {
    let listen = cfg.listen;
    // rumqttd reports bind failures only in its own thread; probe first.
    std::net::TcpListener::bind(listen).map_err(|e| BrokerError::Listen { addr: listen, message: e.to_string() })?;
    let secret = agent_secret(state_dir)?;
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1024
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max}
    max_inflight_count = 500
    dynamic_filters = true
"#,
        max = crate::bus::MAX_PACKET
    );
    let mut config: rumqttd::Config = toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
    if let Some(path) = &cfg.credentials_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Config(format!("broker.credentials_file {}: {e}", path.display())))?;
        let users = parse_credentials(&text)
            .map_err(|e| BrokerError::Config(format!("broker.credentials_file {}: {e}", path.display())))?;
        let reserved = format!("outpost-{gateway}");
        let agent_secret = secret.clone();
        if let Some(server) = config.v4.as_mut().and_then(|v| v.get_mut("1")) {
            server.connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
                let is_agent = user == AGENT_USER && pass == agent_secret;
                let ok = if client_id.starts_with(&reserved) {
                    is_agent
                } else {
                    is_agent || users.get(&user).is_some_and(|p| *p == pass)
                };
                if !ok {
                    tracing::warn!(%client_id, %user, "embedded broker refused a login");
                }
                async move { ok }
            });
        }
    }
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("outpost-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Config(format!("cannot start broker thread: {e}")))?;
    tracing::info!(%listen, auth = cfg.credentials_file.is_some(), "embedded MQTT broker started");
    Ok((AGENT_USER.to_owned(), secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_lines() {
        let p = parse_credentials("# users\nalice:correct-horse\n\nbob:battery-staple\n").expect("valid");
        assert_eq!(p.get("alice").map(String::as_str), Some("correct-horse"));
        assert!(parse_credentials("alice").unwrap_err().contains("line 1"));
        assert!(parse_credentials("a:short").unwrap_err().contains("shorter than 8"));
    }
}
