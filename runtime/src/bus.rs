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

use crate::dispatch::{now_ms, AckToken, Cause, Egress, Inbound};
use crate::telemetry::Metrics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Largest MQTT packet sent (a service's publish is capped lower).
pub const MAX_PACKET: usize = 4 << 20;
/// Largest MQTT packet accepted: the protocol's own maximum (a remaining
/// length of 256 MiB - 1). A packet over the client's limit makes it drop
/// the connection, and the broker would send the same message again on
/// every reconnect, wedging the link; so the agent reads whatever a broker
/// forwards and each service's `limits.max_payload_bytes` drops (and
/// counts) what is too large for it. Set the broker to refuse big messages
/// first, so the agent never has to hold one: Mosquitto
/// `message_size_limit 16777216` (the largest payload a manifest may accept).
pub const MAX_INCOMING_PACKET: usize = 268_435_455;
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
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
    /// `(username, password)` presented to the broker.
    pub credentials: Option<(String, String)>,
    /// Hold an input's acknowledgement until the broker acknowledged the
    /// outputs it caused. Right for a broker that outlives the agent
    /// (Mosquitto with persistence): a crash then loses nothing. Off for the
    /// embedded broker: it dies with the agent, so there is nothing to gain,
    /// and rumqttd sends PUBACKs only when it may also send the agent more
    /// input, which would deadlock against held acknowledgements.
    pub hold_acks_for_outputs: bool,
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
    /// Filters the broker refused (SUBACK failure); the agent is degraded.
    pub refused: Mutex<Vec<String>>,
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
type Outbox = Arc<Mutex<VecDeque<(String, Vec<u8>, bool, Option<Cause>)>>>;

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
    /// Causes of QoS 1 publishes on the wire, in order; a PUBACK lets the
    /// oldest go (MQTT 3.1.1 4.6: acks come in publish order).
    in_flight: InFlight,
    /// SUBSCRIBE packets waiting for their SUBACK, in order, each with its
    /// filters (a SUBACK has one return code per filter, in their order).
    pending_subacks: VecDeque<Vec<String>>,
    connected_at: Option<std::time::Instant>,
    retry_at: Option<tokio::time::Instant>,
}

type InFlight = Arc<Mutex<VecDeque<Option<Cause>>>>;

impl Link {
    pub fn new(opts: LinkOptions, metrics: Arc<Metrics>) -> Link {
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_keep_alive(opts.keep_alive);
        mqtt.set_clean_session(false);
        mqtt.set_manual_acks(true);
        mqtt.set_max_packet_size(MAX_INCOMING_PACKET, MAX_PACKET);
        if let Some((user, pass)) = &opts.credentials {
            mqtt.set_credentials(user.clone(), pass.clone());
        }
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
            refused: Mutex::new(Vec::new()),
        });
        Link {
            client,
            eventloop,
            state,
            opts,
            metrics,
            outbox: Arc::default(),
            acks: Arc::default(),
            failures: 0,
            in_flight: Arc::default(),
            pending_subacks: VecDeque::new(),
            connected_at: None,
            retry_at: None,
        }
    }

    /// An egress for the dispatcher running on this link's thread.
    pub fn egress(&self) -> LinkEgress {
        LinkEgress {
            client: self.client.clone(),
            state: self.state.clone(),
            outbox: self.outbox.clone(),
            in_flight: self.in_flight.clone(),
            hold: self.opts.hold_acks_for_outputs,
        }
    }

    /// Subscribes to filters added since the last call and unsubscribes
    /// from those gone (services added, upgraded or removed at run time).
    pub fn set_subscriptions(&mut self, filters: Vec<String>) {
        if filters == self.opts.subscriptions {
            return;
        }
        let connected = self.eventloop.network.is_some();
        let added: Vec<String> = filters.iter().filter(|f| !self.opts.subscriptions.contains(f)).cloned().collect();
        for f in added {
            tracing::info!(filter = %f, "subscribing");
            if connected {
                self.subscribe(f);
            }
        }
        for f in self.opts.subscriptions.iter().filter(|f| !filters.contains(f)) {
            tracing::info!(filter = %f, "unsubscribing");
            if connected {
                if let Err(e) = self.client.try_unsubscribe(f.clone()) {
                    tracing::error!(filter = %f, error = %e, "cannot unsubscribe");
                }
            }
        }
        if let Ok(mut refused) = self.state.refused.lock() {
            refused.retain(|f| filters.contains(f));
        }
        self.opts.subscriptions = filters;
    }

    fn subscribe(&mut self, filter: String) {
        match self.client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
            Ok(()) => self.pending_subacks.push_back(vec![filter]),
            Err(e) => tracing::error!(filter = %filter, error = %e, "cannot subscribe"),
        }
    }

    /// Subscribes to `filters` in one SUBSCRIBE packet, so one SUBACK comes
    /// back: several small SUBACKs in a row from a broker without
    /// TCP_NODELAY (rumqttd) can wait for the agent's delayed ACK, 40 ms on
    /// Linux, before the agent is ready. Falls back to one packet per filter
    /// if the client refuses the batch.
    fn subscribe_all(&mut self, filters: Vec<String>) {
        if filters.is_empty() {
            return;
        }
        let batch = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        match self.client.try_subscribe_many(batch) {
            Ok(()) => self.pending_subacks.push_back(filters),
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to every filter at once; one by one");
                for f in filters {
                    self.subscribe(f);
                }
            }
        }
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
        while let Some((topic, payload, retain, cause)) = outbox.pop_front() {
            match self.client.try_publish(topic.as_str(), QoS::AtLeastOnce, retain, payload.clone()) {
                Ok(()) => lock(&self.in_flight).push_back(cause),
                Err(rumqttc::ClientError::TryRequest(_)) => {
                    outbox.push_front((topic, payload, retain, cause));
                    break;
                }
                Err(e) => {
                    tracing::error!(%topic, error = %e, "publish refused by the MQTT client");
                    self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Drives the connection until a message arrives (returned) or `wait`
    /// passes (None). While disconnected it waits for the reconnect instead,
    /// so a slow connect is never cut short.
    pub async fn next(&mut self, wait: Duration, ignore: &(dyn Fn(&str) -> bool + Send + Sync)) -> Option<Inbound> {
        if let Some(at) = self.retry_at {
            // Backing off after a failed connection: stay responsive to the
            // caller (commands, shutdown) without hammering the broker.
            if tokio::time::Instant::now() < at {
                tokio::time::sleep_until(at.min(tokio::time::Instant::now() + wait)).await;
                return None;
            }
            self.retry_at = None;
        }
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
                self.connected_at = Some(std::time::Instant::now());
                self.acks.new_connection();
                self.metrics.mqtt_connected.set(1);
                tracing::info!(broker = %format!("{}:{}", self.opts.host, self.opts.port), session_present = ack.session_present, "connected to MQTT broker");
                self.pending_subacks.clear();
                if let Ok(mut refused) = self.state.refused.lock() {
                    refused.clear();
                }
                if self.opts.subscriptions.is_empty() {
                    self.state.mark_ready();
                }
                self.subscribe_all(self.opts.subscriptions.clone());
                None
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let filters = self.pending_subacks.pop_front().unwrap_or_default();
                for (i, filter) in filters.into_iter().enumerate() {
                    if matches!(ack.return_codes.get(i), Some(rumqttc::SubscribeReasonCode::Failure)) {
                        tracing::error!(filter = %filter, "the broker refused the subscription (check its ACL); the agent is degraded");
                        if let Ok(mut r) = self.state.refused.lock() {
                            r.push(filter);
                        }
                    }
                }
                let all_refused_known = self.state.refused.lock().map(|r| r.is_empty()).unwrap_or(false);
                if self.pending_subacks.is_empty() && all_refused_known {
                    self.state.mark_ready();
                }
                None
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
                // The oldest publish is safe: what caused it may be acked.
                drop(lock(&self.in_flight).pop_front());
                None
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if self.state.stop_input.load(Ordering::Acquire) {
                    // Draining: leave it unacknowledged; the broker redelivers it.
                    return None;
                }
                self.metrics.ingress.inc();
                let reliable = p.qos != QoS::AtMostOnce;
                let bad_topic = crate::topic::validate_topic(&p.topic).err();
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
                if let Some(why) = bad_topic {
                    // Refused once (acknowledged, counted), never redelivered forever.
                    self.metrics.bad_input.inc();
                    tracing::warn!(topic = %topic.escape_debug(), reason = %why, "message with an invalid topic refused");
                    drop(ack);
                    return None;
                }
                if ignore(&topic) {
                    drop(ack); // acknowledged in its turn
                    return None;
                }
                Some(Inbound { topic, payload, received_ms: now_ms(), reliable, ack, cause: None })
            }
            Ok(_) => None,
            Err(e) => {
                self.metrics.mqtt_connected.set(0);
                // A broker that accepts and then drops us must not reset the
                // backoff: only a connection that held counts as recovered.
                if self.connected_at.take().is_some_and(|t| t.elapsed() >= STABLE_CONNECTION) {
                    self.failures = 0;
                }
                self.failures += 1;
                let backoff = Duration::from_millis((100u64 << self.failures.min(6)).min(5_000));
                let oversized = matches!(
                    &e,
                    rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                        rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
                    ))
                );
                if oversized {
                    tracing::error!(
                        limit = MAX_INCOMING_PACKET,
                        "the broker sent a message larger than the agent accepts; \
                        set the broker's message_size_limit to at most this (Mosquitto: message_size_limit)"
                    );
                    self.metrics.bad_input.inc();
                }
                if self.failures == 1 || self.failures.is_multiple_of(20) || oversized {
                    tracing::warn!(broker = %format!("{}:{}", self.opts.host, self.opts.port), error = %e,
                        retry_ms = backoff.as_millis() as u64, attempt = self.failures, "MQTT connection lost or refused; retrying");
                }
                self.retry_at = Some(tokio::time::Instant::now() + backoff);
                None
            }
        }
    }

    /// Publishes a retained message (status updates), counted like any other.
    pub fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.state.unacked_out.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.push_back((topic.to_owned(), payload, true, None));
        }
        self.flush_outbox();
    }

    /// Waits (up to `timeout`) for outstanding publishes, then disconnects.
    pub async fn close(mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let never = |_: &str| false;
        // Acknowledgements can only come over a live connection: without
        // one, waiting would only delay the exit.
        while tokio::time::Instant::now() < deadline
            && self.eventloop.network.is_some()
            && (self.state.unacked_out.load(Ordering::Acquire) > 0 || self.outbox.lock().is_ok_and(|o| !o.is_empty()))
        {
            self.flush_outbox();
            let _ = self.next(Duration::from_millis(20), &never).await;
        }
        let left = self.state.unacked_out.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(unacked = left, "closing MQTT link with publishes not yet acknowledged by the broker");
        }
        if self.eventloop.network.is_some() && self.client.try_disconnect().is_ok() {
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
    in_flight: InFlight,
    hold: bool,
}

impl LinkEgress {
    fn send(&mut self, topic: &str, payload: &[u8], cause: Option<Cause>) {
        self.state.unacked_out.fetch_add(1, Ordering::AcqRel);
        let queued_before = self.outbox.lock().is_ok_and(|o| !o.is_empty());
        if !queued_before {
            // The in-flight entry goes in under the same lock order as the
            // wire order: PUBACKs pop them oldest first.
            let mut in_flight = lock(&self.in_flight);
            match self.client.try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec()) {
                Ok(()) => {
                    in_flight.push_back(cause);
                    return;
                }
                Err(rumqttc::ClientError::TryRequest(_)) => {}
                Err(e) => {
                    tracing::error!(%topic, error = %e, "publish refused by the MQTT client");
                    self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.push_back((topic.to_owned(), payload.to_vec(), false, cause));
        }
    }
}

impl Egress for LinkEgress {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.send(topic, payload, None)
    }

    fn publish_caused(&mut self, topic: &str, payload: &[u8], cause: &Cause) {
        self.send(topic, payload, (self.hold && !cause.is_empty()).then(|| cause.clone()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
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
