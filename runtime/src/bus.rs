//! The agent's MQTT link: one task owns the rumqttc event loop (acks and
//! reconnects never stall), forwards accepted messages to the dispatcher in
//! arrival order, and carries the dispatcher's publishes out.
//!
//! Input is QoS 1 with manual acknowledgement: a message is acknowledged
//! only after every service it was routed to has handled it. The session is
//! persistent (clean_session = false), so what arrives while the agent is
//! down or draining is redelivered by the broker.

use crate::dispatch::{now_ms, AckToken, Egress, Envelope, Inbound};
use crate::telemetry::Metrics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Largest MQTT packet accepted or sent.
pub const MAX_PACKET: usize = 1 << 20;

/// Settings of one MQTT connection.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    /// Filters to subscribe to (again) after every connect.
    pub subscriptions: Vec<String>,
    /// A retained message the broker publishes if the agent vanishes.
    pub last_will: Option<(String, Vec<u8>)>,
}

/// Shared view of the link for the agent and the dispatcher's egress.
pub struct LinkState {
    /// QoS 1 publishes sent and not yet acknowledged by the broker.
    pub unacked_out: AtomicI64,
    /// Set once the first subscription is acknowledged.
    pub ready: Notify,
    pub is_ready: AtomicBool,
    /// Stop forwarding input (drain on shutdown).
    pub stop_input: AtomicBool,
}

pub struct MqttLink {
    pub client: AsyncClient,
    pub state: Arc<LinkState>,
    finish: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttLink {
    /// Connects in the background; `ingress` receives every accepted message.
    /// `ignore` drops topics the agent itself produced (echoes).
    pub fn start(
        opts: LinkOptions,
        ingress: crossbeam_channel::Sender<Envelope>,
        ignore: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        metrics: Arc<Metrics>,
    ) -> MqttLink {
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_keep_alive(opts.keep_alive);
        mqtt.set_clean_session(false);
        mqtt.set_manual_acks(true);
        mqtt.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        mqtt.set_inflight(100);
        if let Some((topic, payload)) = &opts.last_will {
            mqtt.set_last_will(rumqttc::LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 10_000);
        // An ack followed by a publish are two small writes: without
        // TCP_NODELAY, Nagle holds the second until the broker's delayed ACK.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let state = Arc::new(LinkState {
            unacked_out: AtomicI64::new(0),
            ready: Notify::new(),
            is_ready: AtomicBool::new(false),
            stop_input: AtomicBool::new(false),
        });
        let (finish, finish_rx) = watch::channel(false);
        let task = tokio::spawn(drive(eventloop, client.clone(), opts, ingress, ignore, metrics, state.clone(), finish_rx));
        MqttLink { client, state, finish, task }
    }

    pub async fn wait_ready(&self) {
        while !self.state.is_ready.load(Ordering::Acquire) {
            let notified = self.state.ready.notified();
            if self.state.is_ready.load(Ordering::Acquire) {
                break;
            }
            notified.await;
        }
    }

    /// An egress for the dispatcher thread.
    pub fn egress(&self, runtime: tokio::runtime::Handle) -> MqttEgress {
        MqttEgress { client: self.client.clone(), state: self.state.clone(), runtime }
    }

    /// Publishes a retained message (status updates), counted like any other.
    pub async fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.state.unacked_out.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, true, payload).await {
            self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(topic, error = %e, "cannot publish retained message");
        }
    }

    /// Waits (up to `timeout`) for outstanding publishes, then disconnects.
    pub async fn close(self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.state.unacked_out.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = self.state.unacked_out.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(unacked = left, "closing MQTT link with publishes not yet acknowledged by the broker");
        }
        let _ = self.client.disconnect().await;
        let _ = self.finish.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    opts: LinkOptions,
    ingress: crossbeam_channel::Sender<Envelope>,
    ignore: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    metrics: Arc<Metrics>,
    state: Arc<LinkState>,
    mut finish: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = finish.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                metrics.mqtt_connected.set(1);
                tracing::info!(broker = %format!("{}:{}", opts.host, opts.port), session_present = ack.session_present, "connected to MQTT broker");
                if opts.subscriptions.is_empty() {
                    mark_ready(&state);
                }
                for f in &opts.subscriptions {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        tracing::error!(filter = %f, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => mark_ready(&state),
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                state.unacked_out.fetch_sub(1, Ordering::AcqRel);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if state.stop_input.load(Ordering::Acquire) {
                    // Draining: leave it unacknowledged; the broker redelivers it.
                    continue;
                }
                metrics.ingress.inc();
                if ignore(&p.topic) {
                    let _ = client.try_ack(&p);
                    continue;
                }
                let c = client.clone();
                let reliable = p.qos != QoS::AtMostOnce;
                let topic = p.topic.clone();
                let payload = p.payload.to_vec();
                let ack = AckToken::new(move || {
                    if let Err(e) = c.try_ack(&p) {
                        tracing::warn!(error = %e, "cannot queue MQTT acknowledgement");
                    }
                });
                let env = Arc::new(Inbound { topic, payload, received_ms: now_ms(), reliable, ack: Some(ack) });
                if ingress.send(env).is_err() {
                    tracing::debug!("dispatcher gone; input no longer forwarded");
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.set(0);
                failures += 1;
                let wait = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(broker = %format!("{}:{}", opts.host, opts.port), error = %e, retry_ms = wait.as_millis() as u64,
                        "MQTT connection lost or refused; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = finish.changed() => break,
                }
            }
        }
    }
    metrics.mqtt_connected.set(0);
}

fn mark_ready(state: &LinkState) {
    if !state.is_ready.swap(true, Ordering::AcqRel) {
        state.ready.notify_waiters();
    }
}

/// Publishes from the dispatcher thread; blocks only when the client's
/// request queue is full (backpressure), never on a broker round trip.
pub struct MqttEgress {
    client: AsyncClient,
    state: Arc<LinkState>,
    runtime: tokio::runtime::Handle,
}

impl Egress for MqttEgress {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.state.unacked_out.fetch_add(1, Ordering::AcqRel);
        let result = match self.client.try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec()) {
            Ok(()) => Ok(()),
            Err(_) => self.runtime.block_on(self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec())),
        };
        if let Err(e) = result {
            self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(topic, error = %e, "cannot publish to the broker");
        }
    }
}
