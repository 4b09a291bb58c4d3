//! The embedded MQTT broker (rumqttd), so a gateway needs nothing else.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker config: {0}")]
    Config(String),
    #[error("embedded broker cannot listen on {addr}: {message} (is another broker running? set broker.listen or broker.mode = \"external\")")]
    Listen { addr: SocketAddr, message: String },
}

/// Starts rumqttd on `listen` in its own threads. Fails early if the port is taken.
pub fn start_embedded(listen: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd reports bind failures only in its own thread; probe first.
    std::net::TcpListener::bind(listen).map_err(|e| BrokerError::Listen { addr: listen, message: e.to_string() })?;
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
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("outpost-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Config(format!("cannot start broker thread: {e}")))?;
    tracing::info!(%listen, "embedded MQTT broker started");
    Ok(())
}
