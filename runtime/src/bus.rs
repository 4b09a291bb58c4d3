//! The agent's MQTT link. One I/O thread owns both the rumqttc event loop
//! and the dispatcher: messages read from the socket are handed to the
//! services as a whole batch on the same thread, and what the services
//! publish, and the acknowledgements they release, go back into the same
//! event loop without a cross-thread wake-up per message.
//!
//! Input is QoS 1 with manual acknowledgement: a message is acknowledged
//! only after every service it was routed to has handled it. The session is
//! persistent (clean_session = false), so what arrives while the agent is
//! down or draining is redelivered by the broker.

use crate::dispatch::{now_ms, AckToken, Egress, Inbound};
use crate::telemetry::Metrics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Largest MQTT packet accepted or sent.
pub const MAX_PACKET: usize = 4 << 20;
/// Requests (publishes, acks) queued towards the event loop.
const REQUEST_CAPACITY: usize = 100_000;

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

/// Shared view of the link for the agent's other tasks.
pub struct LinkState {
    /// QoS 1 publishes sent and not yet acknowledged by the broker.
    pub unacked_out: AtomicI64,
    /// Set once the subscriptions are acknowledged.
    pub is_ready: AtomicBool,
    pub ready: Notify,
    /// Stop taking input (drain on shutdown).
    pub stop_input: AtomicBool,
}

impl LinkState {
    pub async fn wait_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.is_ready.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn mark_ready(&self) {
        if !self.is_ready.swap(true, Ordering::AcqRel) {
            self.ready.notify_waiters();
        }
    }
}

/// Publishes waiting for room in the client's request queue.
type Outbox = Arc<Mutex<VecDeque<(String, Vec<u8>, bool)>>>;

/// QoS 1 acknowledgements go out in the order the publishes arrived,
/// whatever order the services finish them in: MQTT 3.1.1 (4.6) requires
/// it and rumqttd disconnects a client that acks out of order. A message is
/// acknowledged once it and every message before it are handled.
#[derive(Default)]
struct AckQueue {
    inner: Mutex<AckQueueInner>,
}

#[derive(Default)]
struct AckQueueInner {
    /// Sequence number of `pending[0]`.
    head: u64,
    /// Bumped on every new connection: acks of an earlier connection are void
    /// (the broker redelivers those messages).
    generation: u64,
    /// (publish, handled) in arrival order.
    pending: VecDeque<(rumqttc::Publish, bool)>,
}

impl AckQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckQueueInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers an arrival; returns its (generation, sequence number).
    fn arrived(&self, p: rumqttc::Publish) -> (u64, u64) {
        let mut q = self.lock();
        let seq = q.head + q.pending.len() as u64;
        q.pending.push_back((p, false));
        (q.generation, seq)
    }

    /// Marks a message handled and sends every ack now due, in order.
    fn handled(&self, generation: u64, seq: u64, mut send: impl FnMut(&rumqttc::Publish)) {
        let mut q = self.lock();
        if generation != q.generation || seq < q.head {
            return;
        }
        let index = (seq - q.head) as usize;
        if let Some(entry) = q.pending.get_mut(index) {
            entry.1 = true;
        }
        while q.pending.front().is_some_and(|e| e.1) {
            if let Some((p, _)) = q.pending.pop_front() {
                q.head += 1;
                send(&p);
            }
        }
    }

    fn new_connection(&self) {
        let mut q = self.lock();
        q.generation += 1;
        q.head += q.pending.len() as u64;
        q.pending.clear();
    }
}

pub struct Link {
    pub client: AsyncClient,
    eventloop: EventLoop,
    pub state: Arc<LinkState>,
    opts: LinkOptions,
    metrics: Arc<Metrics>,
    outbox: Outbox,
    acks: Arc<AckQueue>,
    failures: u32,
}

impl Link {
    pub fn new(opts: LinkOptions, metrics: Arc<Metrics>) -> Link {
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_keep_alive(opts.keep_alive);
        mqtt.set_clean_session(false);
        mqtt.set_manual_acks(true);
        mqtt.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        // Outgoing QoS 1 window: acks for input share the request queue with
        // publishes, so a small window would stall input behind output.
        mqtt.set_inflight(1000);
        if let Some((topic, payload)) = &opts.last_will {
            mqtt.set_last_will(rumqttc::LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, REQUEST_CAPACITY);
        // An ack followed by a publish are two small writes: without
        // TCP_NODELAY, Nagle holds the second until the broker's delayed ACK.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let state = Arc::new(LinkState {
            unacked_out: AtomicI64::new(0),
            is_ready: AtomicBool::new(false),
            ready: Notify::new(),
            stop_input: AtomicBool::new(false),
        });
        Link { client, eventloop, state, opts, metrics, outbox: Arc::default(), acks: Arc::default(), failures: 0 }
    }

    /// An egress for the dispatcher running on this link's thread.
    pub fn egress(&self) -> LinkEgress {
        LinkEgress { client: self.client.clone(), state: self.state.clone(), outbox: self.outbox.clone() }
    }

    /// Anything read from the socket and not yet returned by `next`?
    pub fn has_buffered(&self) -> bool {
        !self.eventloop.state.events.is_empty()
    }

    /// Moves waiting publishes into the client's queue as far as it has room.
    pub fn flush_outbox(&self) {
        let Ok(mut outbox) = self.outbox.lock() else { return };
        if outbox.is_empty() {
            return;
        }
        while let Some((topic, payload, retain)) = outbox.pop_front() {
            if let Err(rumqttc::ClientError::TryRequest(_)) =
                self.client.try_publish(topic.as_str(), QoS::AtLeastOnce, retain, payload.clone())
            {
                outbox.push_front((topic, payload, retain));
                break;
            }
        }
    }

    /// Drives the connection until a message arrives (returned) or `wait`
    /// passes (None). While disconnected it waits for the reconnect instead,
    /// so a slow connect is never cut short.
    pub async fn next(&mut self, wait: Duration, ignore: &(dyn Fn(&str) -> bool + Send + Sync)) -> Option<Inbound> {
        let event = if self.has_buffered() {
            // Already read from the socket: returns at once, no timer needed.
            self.eventloop.poll().await
        } else if self.eventloop.network.is_some() {
            match tokio::time::timeout(wait, self.eventloop.poll()).await {
                Ok(e) => e,
                Err(_) => return None,
            }
        } else {
            self.eventloop.poll().await
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.failures = 0;
                self.acks.new_connection();
                self.metrics.mqtt_connected.set(1);
                tracing::info!(broker = %format!("{}:{}", self.opts.host, self.opts.port), session_present = ack.session_present, "connected to MQTT broker");
                if self.opts.subscriptions.is_empty() {
                    self.state.mark_ready();
                }
                for f in &self.opts.subscriptions {
                    if let Err(e) = self.client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        tracing::error!(filter = %f, error = %e, "cannot subscribe");
                    }
                }
                None
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                self.state.mark_ready();
                None
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
                None
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if self.state.stop_input.load(Ordering::Acquire) {
                    // Draining: leave it unacknowledged; the broker redelivers it.
                    return None;
                }
                self.metrics.ingress.inc();
                let reliable = p.qos != QoS::AtMostOnce;
                let (topic, payload) = (p.topic.clone(), p.payload.to_vec());
                let ack = reliable.then(|| {
                    let (generation, seq) = self.acks.arrived(p);
                    let (acks, client) = (self.acks.clone(), self.client.clone());
                    AckToken::new(move || {
                        acks.handled(generation, seq, |p| {
                            if let Err(e) = client.try_ack(p) {
                                tracing::warn!(error = %e, "cannot queue MQTT acknowledgement");
                            }
                        })
                    })
                });
                if ignore(&topic) {
                    drop(ack); // acknowledged in its turn
                    return None;
                }
                Some(Inbound { topic, payload, received_ms: now_ms(), reliable, ack })
            }
            Ok(_) => None,
            Err(e) => {
                self.metrics.mqtt_connected.set(0);
                self.failures += 1;
                let backoff = Duration::from_millis((100u64 << self.failures.min(6)).min(5_000));
                if self.failures == 1 || self.failures.is_multiple_of(20) {
                    tracing::warn!(broker = %format!("{}:{}", self.opts.host, self.opts.port), error = %e,
                        retry_ms = backoff.as_millis() as u64, "MQTT connection lost or refused; retrying");
                }
                tokio::time::sleep(backoff.min(wait.max(Duration::from_millis(100)))).await;
                None
            }
        }
    }

    /// Publishes a retained message (status updates), counted like any other.
    pub fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.state.unacked_out.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.push_back((topic.to_owned(), payload, true));
        }
        self.flush_outbox();
    }

    /// Waits (up to `timeout`) for outstanding publishes, then disconnects.
    pub async fn close(mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let never = |_: &str| false;
        while tokio::time::Instant::now() < deadline
            && (self.state.unacked_out.load(Ordering::Acquire) > 0 || self.outbox.lock().is_ok_and(|o| !o.is_empty()))
        {
            self.flush_outbox();
            let _ = self.next(Duration::from_millis(20), &never).await;
        }
        let left = self.state.unacked_out.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(unacked = left, "closing MQTT link with publishes not yet acknowledged by the broker");
        }
        if self.client.try_disconnect().is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), async { while self.eventloop.poll().await.is_ok() {} })
                    .await;
        }
        self.metrics.mqtt_connected.set(0);
    }
}

/// The dispatcher's way out: straight into the client's request queue, or
/// the outbox when the queue is full (never blocks the I/O thread).
pub struct LinkEgress {
    client: AsyncClient,
    state: Arc<LinkState>,
    outbox: Outbox,
}

impl Egress for LinkEgress {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.state.unacked_out.fetch_add(1, Ordering::AcqRel);
        let queued_before = self.outbox.lock().is_ok_and(|o| !o.is_empty());
        if !queued_before && self.client.try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).is_ok() {
            return;
        }
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.push_back((topic.to_owned(), payload.to_vec(), false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16) -> rumqttc::Publish {
        let mut p = rumqttc::Publish::new("t", QoS::AtLeastOnce, vec![]);
        p.pkid = pkid;
        p
    }

    /// Acks leave in arrival order, however the services finish, and acks
    /// from before a reconnect are dropped.
    #[test]
    fn acks_are_sent_in_arrival_order() {
        let q = AckQueue::default();
        let ids: Vec<(u64, u64)> = (1..=4).map(|pkid| q.arrived(publish(pkid))).collect();
        let mut sent = Vec::new();
        let handled = |i: (u64, u64)| {
            let mut out = Vec::new();
            q.handled(i.0, i.1, |p| out.push(p.pkid));
            out
        };
        sent.extend(handled(ids[2]));
        sent.extend(handled(ids[1]));
        assert_eq!(sent, Vec::<u16>::new(), "nothing before the first is handled");
        assert_eq!(handled(ids[0]), vec![1, 2, 3]);
        q.new_connection();
        assert_eq!(handled(ids[3]), Vec::<u16>::new(), "acks of an old connection are void");
        let next = q.arrived(publish(9));
        assert_eq!(handled(next), vec![9]);
    }
}
