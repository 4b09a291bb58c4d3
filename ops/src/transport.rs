//! The MQTT link: broker address, credentials, TLS, and one task that owns
//! the rumqttc event loop and polls it without pause (so acks and
//! reconnects never wait on the operations center's work). Incoming
//! publishes go out on a channel; publishing goes through the client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("broker url `{0}`: expected mqtt://host:port or mqtts://host:port")]
    Url(String),
    #[error("TLS CA file {path}: {why}")]
    Ca { path: PathBuf, why: String },
    #[error("broker url `{0}` is mqtts:// but no CA file is configured (tls_ca)")]
    NoCa(String),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: String,
    pub user: String,
    pub password: String,
    /// PEM CA bundle that signs the broker's certificate (mqtts:// only).
    pub tls_ca: Option<PathBuf>,
    /// Persistent session: what arrives while we are away is kept for us.
    pub clean_session: bool,
    /// QoS 1 publishes in flight at once.
    pub inflight: u16,
    /// Requests queued towards the event loop.
    pub channel_capacity: usize,
    pub keep_alive: Duration,
}

impl LinkConfig {
    pub fn new(url: &str, client_id: &str, user: &str, password: &str) -> LinkConfig {
        LinkConfig {
            url: url.to_string(),
            client_id: client_id.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            tls_ca: None,
            clean_session: true,
            inflight: 100,
            channel_capacity: 1000,
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// Host, port and whether TLS is asked, from `mqtt[s]://host:port`.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), TransportError> {
    let bad = || TransportError::Url(url.to_string());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((host.to_string(), port, tls))
}

/// A rustls client configuration trusting only the CA in `path` (ring
/// provider, so no other crypto library is linked).
pub fn tls_config(path: &std::path::Path) -> Result<TlsConfiguration, TransportError> {
    use rustls_pki_types::pem::PemObject;
    let err = |why: String| TransportError::Ca { path: path.to_owned(), why };
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| err(e.to_string()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(cfg)))
}

pub fn mqtt_options(cfg: &LinkConfig) -> Result<MqttOptions, TransportError> {
    let (host, port, tls) = parse_url(&cfg.url)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), host, port);
    o.set_credentials(cfg.user.clone(), cfg.password.clone())
        .set_clean_session(cfg.clean_session)
        .set_keep_alive(cfg.keep_alive)
        .set_inflight(cfg.inflight)
        .set_request_channel_capacity(cfg.channel_capacity)
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    if tls {
        let ca = cfg.tls_ca.as_ref().ok_or_else(|| TransportError::NoCa(cfg.url.clone()))?;
        o.set_transport(Transport::Tls(tls_config(ca)?));
    }
    Ok(o)
}

/// What the link hands to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// CONNACK; `session_present` false means the broker forgot us.
    Connected {
        session_present: bool,
    },
    /// The connection failed or dropped (the loop retries).
    Down(String),
    /// A SUBACK: how many filters were granted and refused.
    Subscribed {
        granted: usize,
        refused: usize,
    },
    Message {
        topic: String,
        payload: Vec<u8>,
    },
}

/// Starts the event-loop task. On every CONNACK it (re)subscribes to
/// `subscriptions` at QoS 1. Errors are reported as [`Inbound::Down`] and
/// retried with a growing pause (100 ms to 5 s).
pub fn spawn(
    cfg: &LinkConfig,
    subscriptions: Vec<String>,
    inbound_capacity: usize,
) -> Result<(AsyncClient, mpsc::Receiver<Inbound>, tokio::task::JoinHandle<()>), TransportError> {
    let opts = mqtt_options(cfg)?;
    let (client, eventloop) = AsyncClient::new(opts, cfg.channel_capacity);
    let (tx, rx) = mpsc::channel(inbound_capacity);
    let task = tokio::spawn(drive(client.clone(), eventloop, subscriptions, tx));
    Ok((client, rx, task))
}

async fn drive(client: AsyncClient, mut el: EventLoop, subs: Vec<String>, tx: mpsc::Sender<Inbound>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                for s in &subs {
                    // try_: awaiting here would wait on the loop we are in.
                    if let Err(e) = client.try_subscribe(s.as_str(), QoS::AtLeastOnce) {
                        tracing::warn!(filter = %s, error = %e, "could not queue a subscription");
                    }
                }
                if tx.send(Inbound::Connected { session_present: ack.session_present }).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused =
                    ack.return_codes.iter().filter(|rc| matches!(rc, rumqttc::SubscribeReasonCode::Failure)).count();
                if refused > 0 {
                    tracing::warn!(pkid = ack.pkid, "the broker refused a subscription (ACL?)");
                }
                let granted = ack.return_codes.len() - refused;
                if tx.send(Inbound::Subscribed { granted, refused }).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let m = Inbound::Message { topic: p.topic, payload: p.payload.to_vec() };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT link down; retrying in {:?}", backoff);
                if tx.send(Inbound::Down(e.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1883").unwrap(), ("127.0.0.1".into(), 1883, false));
        assert_eq!(parse_url("mqtts://broker.example").unwrap(), ("broker.example".into(), 8883, true));
        for bad in ["http://x:1", "mqtt://", "mqtt://h:port", "mqtt://h/x:1"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let cfg = LinkConfig::new("mqtts://h:8883", "c", "u", "p");
        assert!(matches!(mqtt_options(&cfg), Err(TransportError::NoCa(_))));
    }
}
