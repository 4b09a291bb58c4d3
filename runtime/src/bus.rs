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
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Request};
use std::collections::VecDeque;
use std::future::Future;
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
/// Most packets taken from the socket in one turn (rumqttc's `poll` stops
/// at 10): the services get up to one batch's worth per turn.
const READ_BATCH: usize = 256;
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Requests queued towards rumqttc's own event loop: only (un)subscribes and
/// the final disconnect go that way; publishes and acks the link writes itself.
const REQUEST_CAPACITY: usize = 1_000;

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

/// Publishes waiting for the link's next write turn (or for room in the
/// in-flight window), each with the inputs it holds unacknowledged.
type Outbox = Arc<Mutex<VecDeque<(rumqttc::Publish, Option<Cause>)>>>;

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
    /// (the message's ack, handled) in arrival order.
    pending: VecDeque<(Request, bool)>,
    /// Acks released in order and not yet written by the link.
    due: Vec<Request>,
}

impl AckQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckQueueInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers the arrival of a QoS 1 or 2 message; returns its
    /// (generation, sequence number).
    fn arrived(&self, ack: Request) -> (u64, u64) {
        let mut q = self.lock();
        let seq = q.head + q.pending.len() as u64;
        q.pending.push_back((ack, false));
        (q.generation, seq)
    }

    /// Marks a message handled and releases every ack now due, in order, for
    /// the link's next write turn.
    fn handled(&self, generation: u64, seq: u64) {
        let mut q = self.lock();
        if generation != q.generation || seq < q.head {
            return;
        }
        let index = (seq - q.head) as usize;
        if let Some(entry) = q.pending.get_mut(index) {
            entry.1 = true;
        }
        while q.pending.front().is_some_and(|e| e.1) {
            if let Some((ack, _)) = q.pending.pop_front() {
                q.head += 1;
                q.due.push(ack);
            }
        }
    }

    /// Moves the acks due into `into` (kept in order).
    fn take_due(&self, into: &mut Vec<Request>) {
        into.append(&mut self.lock().due);
    }

    /// The connection is gone: its acks, sent or not, are void (the broker
    /// redelivers those messages, and an ack for a packet id it did not send
    /// on the new connection would confuse it).
    fn new_connection(&self) {
        let mut q = self.lock();
        q.generation += 1;
        q.head += q.pending.len() as u64;
        q.pending.clear();
        q.due.clear();
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
    in_flight: VecDeque<Option<Cause>>,
    /// What a lost connection left unacknowledged (publishes, in publish
    /// order, their causes still in `in_flight`): written first on the next.
    resend: VecDeque<Request>,
    /// Acks taken from `acks` for the current write turn (kept for its capacity).
    due: Vec<Request>,
    /// What the protocol state answered to packets `read_more` took (a
    /// publish freed from a packet-id collision, QoS 2 steps): written first
    /// in the next turn.
    replies: Vec<Packet>,
    /// A read error met by `read_more`, raised once the packets read before
    /// it are handed over.
    read_error: Option<ConnectionError>,
    /// SUBSCRIBE packets waiting for their SUBACK, in order, each with its
    /// filters (a SUBACK has one return code per filter, in their order).
    pending_subacks: VecDeque<Vec<String>>,
    /// False while the services are still starting ([`Link::await_subscriptions`]):
    /// the link may connect, but is not ready before it knows its filters.
    subscriptions_known: bool,
    /// Until then (and before the first connect) a refused connection is
    /// the embedded broker still binding its listener: retried at once.
    broker_starting_until: Option<std::time::Instant>,
    connected_at: Option<std::time::Instant>,
    retry_at: Option<tokio::time::Instant>,
}

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
            in_flight: VecDeque::new(),
            resend: VecDeque::new(),
            due: Vec::new(),
            replies: Vec::new(),
            read_error: None,
            pending_subacks: VecDeque::new(),
            subscriptions_known: true,
            broker_starting_until: None,
            connected_at: None,
            retry_at: None,
        }
    }

    /// An egress for the dispatcher running on this link's thread.
    pub fn egress(&self) -> LinkEgress {
        LinkEgress { state: self.state.clone(), outbox: self.outbox.clone(), hold: self.opts.hold_acks_for_outputs }
    }

    /// The filters come later, with the first [`Link::set_subscriptions`]:
    /// the agent connects while its services start, and is ready only once
    /// they are subscribed.
    pub fn await_subscriptions(&mut self) {
        self.subscriptions_known = false;
    }

    /// The broker is starting beside the agent (embedded, in its own
    /// thread): for up to `patience` its refusals mean that it is not
    /// listening yet, and the first connect is retried within a millisecond
    /// instead of backing off.
    pub fn broker_starting(&mut self, patience: Duration) {
        self.broker_starting_until = Some(std::time::Instant::now() + patience);
    }

    /// Subscribes to filters added since the last call and unsubscribes
    /// from those gone (services added, upgraded or removed at run time).
    pub fn set_subscriptions(&mut self, filters: Vec<String>) {
        if !self.subscriptions_known {
            // The first set, the services' start done: all in one packet,
            // as after a connect (see `subscribe_all`).
            self.subscriptions_known = true;
            self.opts.subscriptions = filters;
            if self.eventloop.network.is_some() {
                self.subscribe_known();
            }
            return;
        }
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

    /// On a connection, once the filters are known: all of them in one
    /// SUBSCRIBE, ready at its SUBACK (at once with none).
    fn subscribe_known(&mut self) {
        if self.opts.subscriptions.is_empty() {
            self.state.mark_ready();
        }
        self.subscribe_all(self.opts.subscriptions.clone());
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

    /// Writes in one turn, and flushes once: what a lost connection left
    /// unacknowledged, then the queued publishes as far as the in-flight
    /// window allows, then the acks now due (after the outputs they may have
    /// waited for). rumqttc's event loop takes one request per `poll` and
    /// flushes after each, a write syscall per ack and per publish; here the
    /// protocol state (packet ids, in-flight accounting, what to resend) is
    /// still rumqttc's, only the batching is ours.
    async fn write_queued(&mut self) -> Result<(), ConnectionError> {
        let Some(network) = self.eventloop.network.as_mut() else { return Ok(()) };
        let state = &mut self.eventloop.state;
        let window = self.eventloop.mqtt_options.inflight();
        // Each packet handed to the state leaves an `Outgoing` event that
        // nobody reads; left buffered, it would pass for input (`has_buffered`).
        let events_before = state.events.len();
        let written: Result<bool, ConnectionError> = 'turn: {
            let mut wrote = false;
            for packet in self.replies.drain(..) {
                if let Err(e) = network.write(packet).await {
                    break 'turn Err(e.into());
                }
                wrote = true;
            }
            // One request through the state (packet ids, in-flight count)
            // onto the wire; `Network`'s type cannot be named, so no helper fn.
            macro_rules! send {
                ($turn:lifetime, $request:expr) => {
                    match state.handle_outgoing_packet($request) {
                        Ok(Some(packet)) => {
                            if let Err(e) = network.write(packet).await {
                                break $turn Err(e.into());
                            }
                            wrote = true;
                        }
                        Ok(None) => {}
                        Err(e) => break $turn Err(e.into()),
                    }
                };
            }
            while let Some(request) = self.resend.pop_front() {
                send!('turn, request);
            }
            // Past the window or after a packet-id collision rumqttc would stop
            // taking publishes too; the rest wait for PUBACKs.
            while state.inflight() < window && state.collision.is_none() {
                let Some((publish, cause)) = lock(&self.outbox).pop_front() else { break };
                match state.handle_outgoing_packet(Request::Publish(publish)) {
                    Ok(packet) => {
                        // On the wire (or held by the state until its packet
                        // id is free, sent before any later one): in order.
                        self.in_flight.push_back(cause);
                        if let Some(packet) = packet {
                            if let Err(e) = network.write(packet).await {
                                break 'turn Err(e.into());
                            }
                            wrote = true;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "publish refused by the MQTT client state");
                        self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
                        break 'turn Err(e.into());
                    }
                }
            }
            self.acks.take_due(&mut self.due);
            for request in self.due.drain(..) {
                send!('turn, request);
            }
            Ok(wrote)
        };
        state.events.truncate(events_before);
        self.due.clear();
        if written? {
            let limit = Duration::from_secs(self.eventloop.network_options.connection_timeout());
            match tokio::time::timeout(limit, network.flush()).await {
                Ok(flushed) => flushed?,
                Err(_) => return Err(ConnectionError::FlushTimeout),
            }
        }
        Ok(())
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
        if !self.has_buffered() {
            if let Some(e) = self.read_error.take() {
                self.eventloop.clean();
                self.connection_lost(e);
                return None;
            }
        }
        // Write once the buffered input is taken: the acks and publishes it
        // released go out together.
        if self.eventloop.network.is_some() && !self.has_buffered() {
            if let Err(e) = self.write_queued().await {
                // What the state holds unacknowledged moves to `pending`, as
                // rumqttc does after its own failed writes.
                self.eventloop.clean();
                self.connection_lost(e);
                return None;
            }
        }
        let event = if self.has_buffered() {
            // Already read from the socket: returns at once, no timer needed.
            self.eventloop.poll().await
        } else if self.eventloop.network.is_some() {
            match tokio::time::timeout(wait, self.eventloop.poll()).await {
                Ok(e) => {
                    if e.is_ok() {
                        self.read_more();
                    }
                    e
                }
                Err(_) => return None,
            }
        } else {
            self.eventloop.poll().await
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.connected_at = Some(std::time::Instant::now());
                self.broker_starting_until = None;
                self.acks.new_connection();
                self.metrics.mqtt_connected.set(1);
                tracing::info!(broker = %format!("{}:{}", self.opts.host, self.opts.port), session_present = ack.session_present, "connected to MQTT broker");
                self.pending_subacks.clear();
                if let Ok(mut refused) = self.state.refused.lock() {
                    refused.clear();
                }
                if self.subscriptions_known {
                    self.subscribe_known();
                }
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
                if self.pending_subacks.is_empty() && all_refused_known && self.subscriptions_known {
                    self.state.mark_ready();
                }
                None
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                self.state.unacked_out.fetch_sub(1, Ordering::AcqRel);
                // The oldest publish is safe: what caused it may be acked.
                drop(self.in_flight.pop_front());
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
                let ack = ack_request(&p).map(|request| {
                    let (generation, seq) = self.acks.arrived(request);
                    let acks = self.acks.clone();
                    AckToken::new(move || acks.handled(generation, seq))
                });
                let (topic, payload) = (p.topic, p.payload.to_vec());
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
                self.connection_lost(e);
                None
            }
        }
    }

    /// rumqttc's `poll` reads at most 10 packets; this takes what else the
    /// socket already holds, without waiting, so that a turn hands the
    /// services a bigger batch (bench e2e: the I/O thread's CPU per message
    /// fell by a fifth, and the throughput no longer trails the
    /// one-request-per-poll client's).
    fn read_more(&mut self) {
        let Some(network) = self.eventloop.network.as_mut() else { return };
        let state = &mut self.eventloop.state;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while state.events.len() < READ_BATCH {
            // Framed keeps a partial packet buffered: a read not ready loses nothing.
            let read = network.read();
            let packet = match std::pin::pin!(read).poll(&mut cx) {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(Ok(packet)) => packet,
                std::task::Poll::Ready(Err(e)) => {
                    self.read_error = Some(e.into());
                    break;
                }
            };
            match state.handle_incoming_packet(packet) {
                Ok(None) => {}
                Ok(Some(reply)) => self.replies.push(reply),
                Err(e) => {
                    self.read_error = Some(e.into());
                    break;
                }
            }
        }
    }

    /// After rumqttc's `clean()`: keeps what the broker has not acknowledged
    /// for the next connection, voids this connection's acks and schedules
    /// the reconnect.
    fn connection_lost(&mut self, e: ConnectionError) {
        // `pending` holds the unacknowledged publishes in publish order (and
        // requests still in the client's queue). The link writes them itself,
        // first, whatever the next session: rumqttc would drop them if the
        // broker lost the session, leaving their causes in `in_flight` for
        // the PUBACKs of later publishes to pop.
        let mut resend: VecDeque<Request> = VecDeque::new();
        for request in self.eventloop.pending.drain(..) {
            match request {
                Request::Publish(mut p) => {
                    p.dup = true;
                    resend.push_back(Request::Publish(p));
                }
                r @ (Request::PubRel(_) | Request::Unsubscribe(_)) => resend.push_back(r),
                // Acks of this connection are void; subscriptions are renewed
                // on connect (a stale SUBSCRIBE would take another's SUBACK).
                _ => {}
            }
        }
        resend.append(&mut self.resend);
        self.resend = resend;
        self.replies.clear();
        self.acks.new_connection();
        self.metrics.mqtt_connected.set(0);
        let not_listening_yet =
            matches!(&e, ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
        if not_listening_yet && self.broker_starting_until.is_some_and(|t| std::time::Instant::now() < t) {
            tracing::debug!("the embedded broker is not listening yet; connecting again");
            self.retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(1));
            return;
        }
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
    }

    /// Publishes a retained message (status updates), counted like any other.
    pub fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        queue_publish(&self.outbox, &self.state, topic, payload, true, None);
    }

    /// Waits (up to `timeout`) for outstanding publishes, then disconnects.
    pub async fn close(mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let never = |_: &str| false;
        // Acknowledgements can only come over a live connection: without
        // one, waiting would only delay the exit.
        while tokio::time::Instant::now() < deadline
            && self.eventloop.network.is_some()
            && (self.state.unacked_out.load(Ordering::Acquire) > 0 || !lock(&self.outbox).is_empty())
        {
            let _ = self.next(Duration::from_millis(20), &never).await;
        }
        let left = self.state.unacked_out.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(unacked = left, "closing MQTT link with publishes not yet acknowledged by the broker");
        }
        // The acks released while draining go out before the DISCONNECT.
        if self.eventloop.network.is_some() && !self.has_buffered() {
            if let Err(e) = self.write_queued().await {
                tracing::warn!(error = %e, "cannot write the last acknowledgements before disconnecting");
                self.eventloop.clean();
            }
        }
        if self.eventloop.network.is_some() && self.client.try_disconnect().is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), async { while self.eventloop.poll().await.is_ok() {} })
                    .await;
        }
        self.metrics.mqtt_connected.set(0);
    }
}

/// The dispatcher's way out: into the link's outbox, written in the link's
/// next turn (never blocks the I/O thread).
pub struct LinkEgress {
    state: Arc<LinkState>,
    outbox: Outbox,
    hold: bool,
}

impl LinkEgress {
    fn send(&mut self, topic: &str, payload: &[u8], cause: Option<Cause>) {
        queue_publish(&self.outbox, &self.state, topic, payload.to_vec(), false, cause);
    }
}

/// Queues a QoS 1 publish, counted in `unacked_out` until its PUBACK.
fn queue_publish(
    outbox: &Outbox,
    state: &LinkState,
    topic: &str,
    payload: Vec<u8>,
    retain: bool,
    cause: Option<Cause>,
) {
    if !rumqttc::valid_topic(topic) {
        // Refused, as the client would: its cause is released with it.
        tracing::error!(topic = %topic.escape_debug(), "publish refused: not a valid MQTT topic");
        return;
    }
    let mut publish = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload);
    publish.retain = retain;
    state.unacked_out.fetch_add(1, Ordering::AcqRel);
    lock(outbox).push_back((publish, cause));
}

/// The ack MQTT expects for a received publish (none for QoS 0).
fn ack_request(p: &rumqttc::Publish) -> Option<Request> {
    match p.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Request::PubAck(rumqttc::PubAck::new(p.pkid))),
        QoS::ExactlyOnce => Some(Request::PubRec(rumqttc::PubRec::new(p.pkid))),
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
    use crate::dispatch::Egress;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Instant;

    fn ack_of(pkid: u16) -> Request {
        let mut p = rumqttc::Publish::new("t", QoS::AtLeastOnce, vec![]);
        p.pkid = pkid;
        ack_request(&p).expect("QoS 1 has an ack")
    }

    fn pkids(requests: &[Request]) -> Vec<u16> {
        requests
            .iter()
            .map(|r| match r {
                Request::PubAck(a) => a.pkid,
                other => panic!("not a PUBACK: {other:?}"),
            })
            .collect()
    }

    /// Acks are released in arrival order, however the services finish, and
    /// acks from before a reconnect (released or not) are dropped.
    #[test]
    fn acks_are_sent_in_arrival_order() {
        let q = AckQueue::default();
        let ids: Vec<(u64, u64)> = (1..=4).map(|pkid| q.arrived(ack_of(pkid))).collect();
        let due = |q: &AckQueue| {
            let mut out = Vec::new();
            q.take_due(&mut out);
            pkids(&out)
        };
        q.handled(ids[2].0, ids[2].1);
        q.handled(ids[1].0, ids[1].1);
        assert_eq!(due(&q), Vec::<u16>::new(), "nothing before the first is handled");
        q.handled(ids[0].0, ids[0].1);
        assert_eq!(due(&q), vec![1, 2, 3]);
        let late = q.arrived(ack_of(5));
        q.handled(ids[3].0, ids[3].1);
        q.handled(late.0, late.1);
        q.new_connection();
        assert_eq!(due(&q), Vec::<u16>::new(), "acks released but not written before a disconnect are void");
        let next = q.arrived(ack_of(9));
        q.handled(ids[3].0, ids[3].1);
        assert_eq!(due(&q), Vec::<u16>::new(), "acks of an old connection are void");
        q.handled(next.0, next.1);
        assert_eq!(due(&q), vec![9]);
    }

    /// A scripted MQTT 3.1.1 broker on loopback: just enough protocol to
    /// see what the link writes, byte for byte.
    struct Peer(TcpStream);

    #[derive(Debug, PartialEq)]
    enum Seen {
        Publish { pkid: u16, payload: String, dup: bool },
        PubAck(u16),
        Other(u8),
    }

    impl Peer {
        fn accept(listener: &TcpListener, session_present: bool) -> Peer {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut peer = Peer(stream);
            let (header, _) = peer.read().expect("CONNECT");
            assert_eq!(header >> 4, 1, "first packet is CONNECT");
            peer.write(0x20, &[u8::from(session_present), 0]);
            peer
        }

        fn read(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
            let mut byte = [0u8; 1];
            self.0.read_exact(&mut byte)?;
            let header = byte[0];
            let (mut len, mut shift) = (0usize, 0);
            loop {
                self.0.read_exact(&mut byte)?;
                len |= ((byte[0] & 0x7f) as usize) << shift;
                shift += 7;
                if byte[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0; len];
            self.0.read_exact(&mut body)?;
            Ok((header, body))
        }

        /// The next packet the link wrote, PINGREQs answered and skipped.
        fn next(&mut self) -> std::io::Result<Seen> {
            loop {
                let (header, body) = self.read()?;
                let id = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                return Ok(match header >> 4 {
                    3 => {
                        let topic_len = id(0) as usize;
                        let pkid = id(2 + topic_len);
                        let payload = String::from_utf8_lossy(&body[4 + topic_len..]).into_owned();
                        Seen::Publish { pkid, payload, dup: header & 0x08 != 0 }
                    }
                    4 => Seen::PubAck(id(0)),
                    12 => {
                        self.write(0xd0, &[]);
                        continue;
                    }
                    other => Seen::Other(other),
                });
            }
        }

        fn write(&mut self, header: u8, body: &[u8]) {
            let mut frame = vec![header];
            let mut len = body.len();
            loop {
                let byte = (len % 128) as u8;
                len /= 128;
                frame.push(if len > 0 { byte | 0x80 } else { byte });
                if len == 0 {
                    break;
                }
            }
            frame.extend_from_slice(body);
            self.0.write_all(&frame).expect("write to the link");
        }

        fn publish(&mut self, pkid: u16, topic: &str, payload: &[u8]) {
            let mut body = (topic.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&pkid.to_be_bytes());
            body.extend_from_slice(payload);
            self.write(0x32, &body);
        }

        fn puback(&mut self, pkid: u16) {
            self.write(0x40, &pkid.to_be_bytes());
        }

        /// Nothing more within `quiet` (PINGREQs aside)?
        fn silent_for(&mut self, quiet: Duration) -> Result<(), Seen> {
            self.0.set_read_timeout(Some(quiet)).expect("timeout");
            let seen = self.next();
            self.0.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            match seen {
                Ok(packet) => Err(packet),
                Err(_) => Ok(()),
            }
        }
    }

    fn link_to(listener: &TcpListener, inflight: Option<u16>) -> Link {
        let port = listener.local_addr().expect("addr").port();
        let mut link = Link::new(
            LinkOptions {
                host: "127.0.0.1".into(),
                port,
                client_id: "link-test".into(),
                keep_alive: Duration::from_secs(60),
                subscriptions: Vec::new(),
                last_will: None,
                credentials: None,
                hold_acks_for_outputs: true,
            },
            Metrics::new(),
        );
        if let Some(window) = inflight {
            link.eventloop.mqtt_options.set_inflight(window);
            link.eventloop.state = rumqttc::MqttState::new(window, true);
        }
        link
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// Drives the link (as the I/O thread does) until `done` or 10 s.
    fn drive(
        rt: &tokio::runtime::Runtime,
        link: &mut Link,
        inbound: &mut Vec<Inbound>,
        mut done: impl FnMut(&mut Link, &mut Vec<Inbound>) -> bool,
    ) {
        let never = |_: &str| false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(link, inbound) {
            assert!(Instant::now() < deadline, "the link did not get there in 10 s");
            if let Some(m) = rt.block_on(link.next(Duration::from_millis(5), &never)) {
                inbound.push(m);
            }
        }
    }

    fn payloads(seen: &[Seen]) -> Vec<String> {
        seen.iter()
            .filter_map(|s| match s {
                Seen::Publish { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    /// Inputs (more than one read takes) are handed over in order, and,
    /// handled out of order, acknowledged on the wire in arrival order, once.
    #[test]
    fn the_write_turn_sends_acks_in_arrival_order() {
        const INPUTS: u16 = 300;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (tx, rx) = mpsc::channel();
        let broker = std::thread::spawn({
            let listener = listener.try_clone().expect("listener");
            move || {
                let mut peer = Peer::accept(&listener, false);
                for pkid in 1..=INPUTS {
                    peer.publish(pkid, "in/x", format!("m{pkid}").as_bytes());
                }
                let mut seen: Vec<Seen> = (0..INPUTS).map(|_| peer.next().expect("ack")).collect();
                if let Err(extra) = peer.silent_for(Duration::from_millis(300)) {
                    seen.push(extra);
                }
                tx.send(seen).expect("report");
            }
        });
        let rt = runtime();
        let mut link = link_to(&listener, None);
        let mut inbound = Vec::new();
        drive(&rt, &mut link, &mut inbound, |_, got| got.len() == INPUTS as usize);
        let read: Vec<String> = inbound.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
        assert_eq!(read, (1..=INPUTS).map(|i| format!("m{i}")).collect::<Vec<_>>(), "handed over in order, once");
        let mut acks: Vec<Option<AckToken>> = inbound.iter_mut().map(|m| m.ack.take()).collect();
        // Handled in a scrambled order, some in the same turn, some not.
        let all: Vec<usize> = (0..INPUTS as usize).collect();
        let order: Vec<usize> = all.chunks(7).flat_map(|c| c.iter().rev().copied()).collect();
        for (n, i) in order.into_iter().enumerate() {
            drop(acks[i].take());
            if n % 97 == 0 {
                let _ = rt.block_on(link.next(Duration::from_millis(1), &|_: &str| false));
            }
        }
        let mut report = None;
        drive(&rt, &mut link, &mut inbound, |_, _| {
            report = rx.try_recv().ok();
            report.is_some()
        });
        broker.join().expect("broker");
        assert_eq!(report.expect("report"), (1..=INPUTS).map(Seen::PubAck).collect::<Vec<_>>());
    }

    /// Publishes beyond the in-flight window wait for PUBACKs, then leave
    /// in order; each PUBACK releases the oldest cause.
    #[test]
    fn the_write_turn_respects_the_in_flight_window() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (tx, rx) = mpsc::channel();
        let broker = std::thread::spawn({
            let listener = listener.try_clone().expect("listener");
            move || {
                let mut peer = Peer::accept(&listener, false);
                let mut seen = vec![peer.next().expect("first"), peer.next().expect("second")];
                let quiet = peer.silent_for(Duration::from_millis(300));
                while seen.len() < 5 {
                    let oldest = seen.iter().filter(|s| matches!(s, Seen::Publish { .. })).count() - 2;
                    if let Seen::Publish { pkid, .. } = seen[oldest] {
                        peer.puback(pkid);
                    }
                    seen.push(peer.next().expect("next publish"));
                }
                for s in &seen[3..] {
                    if let Seen::Publish { pkid, .. } = s {
                        peer.puback(*pkid);
                    }
                }
                tx.send((seen, quiet)).expect("report");
                let _ = peer.silent_for(Duration::from_secs(1));
            }
        });
        let rt = runtime();
        let mut link = link_to(&listener, Some(2));
        let mut egress = link.egress();
        for i in 0..5 {
            egress.publish("out/x", format!("m{i}").as_bytes());
        }
        assert_eq!(link.state.unacked_out.load(Ordering::Acquire), 5);
        let mut inbound = Vec::new();
        let mut report = None;
        drive(&rt, &mut link, &mut inbound, |link, _| {
            if report.is_none() {
                report = rx.try_recv().ok();
            }
            report.is_some() && link.state.unacked_out.load(Ordering::Acquire) == 0
        });
        let (seen, quiet) = report.expect("report");
        assert_eq!(quiet, Ok(()), "a third publish went out with two in flight and a window of two");
        assert_eq!(payloads(&seen), ["m0", "m1", "m2", "m3", "m4"]);
        assert!(link.in_flight.is_empty(), "every PUBACK popped one cause");
        assert!(lock(&link.outbox).is_empty());
        broker.join().expect("broker");
    }

    /// The agent connects while its services start. A broker keeping the
    /// session may deliver at once (handed over like any input); the link
    /// is ready only once the services' filters are known, subscribed in one
    /// packet, and acknowledged.
    #[test]
    fn the_link_connects_before_its_filters_are_known_and_is_ready_once_subscribed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (tx, rx) = mpsc::channel();
        let broker = std::thread::spawn({
            let listener = listener.try_clone().expect("listener");
            move || {
                let mut peer = Peer::accept(&listener, true);
                peer.publish(1, "in/kept", b"queued while away");
                // Every SUBSCRIBE: the filters it carries.
                let mut subscribes = Vec::new();
                while let Ok((header, body)) = peer.read() {
                    match header >> 4 {
                        8 => {
                            let mut filters = Vec::new();
                            let mut at = 2;
                            while at + 2 <= body.len() {
                                let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
                                filters.push(String::from_utf8_lossy(&body[at + 2..at + 2 + len]).into_owned());
                                at += 2 + len + 1;
                            }
                            let mut ack = body[..2].to_vec();
                            ack.extend(std::iter::repeat_n(1u8, filters.len()));
                            peer.write(0x90, &ack);
                            subscribes.push(filters);
                            // Anything more within 300 ms would be another SUBSCRIBE.
                            peer.0.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
                        }
                        12 => peer.write(0xd0, &[]),
                        _ => {}
                    }
                }
                tx.send(subscribes).expect("report");
            }
        });
        let rt = runtime();
        let mut link = link_to(&listener, None);
        link.await_subscriptions();
        let mut inbound = Vec::new();
        drive(&rt, &mut link, &mut inbound, |link, got| got.len() == 1 && link.eventloop.network.is_some());
        assert_eq!(inbound[0].payload, b"queued while away");
        for _ in 0..10 {
            assert!(rt.block_on(link.next(Duration::from_millis(5), &|_| false)).is_none());
        }
        assert!(!link.state.is_ready.load(Ordering::Acquire), "not ready before the services' filters are known");
        link.set_subscriptions(vec!["in/a".into(), "in/b/#".into()]);
        drive(&rt, &mut link, &mut inbound, |link, _| link.state.is_ready.load(Ordering::Acquire));
        drop(inbound);
        let subscribes = rx.recv_timeout(Duration::from_secs(5)).expect("report");
        assert_eq!(subscribes, vec![vec!["in/a".to_string(), "in/b/#".to_string()]], "one SUBSCRIBE with both");
        broker.join().expect("broker");
    }

    /// The embedded broker binds its listener in its own thread: while it is
    /// starting a refused connection is retried within milliseconds, not
    /// after the reconnect backoff, and is not counted as a failure.
    #[test]
    fn a_broker_still_binding_is_retried_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut link = link_to(&listener, None);
        link.broker_starting(Duration::from_secs(2));
        // Nothing listens on the port yet: refused.
        let refused = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        link.connection_lost(refused);
        let retry = link.retry_at.expect("retry planned") - tokio::time::Instant::now();
        assert!(retry <= Duration::from_millis(1), "retried within a millisecond, not after {retry:?}");
        assert_eq!(link.failures, 0, "not a failure of the broker");
        // Once the patience is over (or after a first connect) the backoff applies.
        link.broker_starting(Duration::ZERO);
        let refused = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        link.connection_lost(refused);
        let retry = link.retry_at.expect("retry planned") - tokio::time::Instant::now();
        assert!(retry >= Duration::from_millis(100), "backoff after the broker's start: {retry:?}");
    }

    /// A connection lost with publishes unacknowledged: the next connection
    /// gets exactly those (marked DUP), in order, before anything queued
    /// since, whether or not the broker kept the session; an ack of the lost
    /// connection is never written on the new one.
    fn nothing_lost_or_duplicated_across_a_disconnect(session_present: bool) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (tx, rx) = mpsc::channel();
        let broker = std::thread::spawn({
            let listener = listener.try_clone().expect("listener");
            move || {
                let mut first = Peer::accept(&listener, false);
                first.publish(7, "in/x", b"held");
                let before: Vec<Seen> = (0..3).map(|_| first.next().expect("publish")).collect();
                if let Seen::Publish { pkid, .. } = before[0] {
                    first.puback(pkid);
                }
                std::thread::sleep(Duration::from_millis(50));
                drop(first);
                let mut second = Peer::accept(&listener, session_present);
                let after: Vec<Seen> = (0..3).map(|_| second.next().expect("resent publish")).collect();
                for s in &after {
                    if let Seen::Publish { pkid, .. } = s {
                        second.puback(*pkid);
                    }
                }
                let extra = second.silent_for(Duration::from_millis(300));
                tx.send((before, after, extra)).expect("report");
            }
        });
        let rt = runtime();
        let mut link = link_to(&listener, None);
        let mut egress = link.egress();
        for i in 0..3 {
            egress.publish("out/x", format!("m{i}").as_bytes());
        }
        let mut inbound = Vec::new();
        // Connected, the held input read, then the connection lost.
        drive(&rt, &mut link, &mut inbound, |link, got| !got.is_empty() && link.retry_at.is_some());
        assert_eq!(link.state.unacked_out.load(Ordering::Acquire), 2, "m0 was acknowledged");
        egress.publish("out/x", b"m3");
        drop(inbound.pop().and_then(|mut m| m.ack.take()));
        let mut report = None;
        drive(&rt, &mut link, &mut inbound, |link, _| {
            if report.is_none() {
                report = rx.try_recv().ok();
            }
            report.is_some() && link.state.unacked_out.load(Ordering::Acquire) == 0
        });
        let (before, after, extra) = report.expect("report");
        assert_eq!(payloads(&before), ["m0", "m1", "m2"]);
        assert_eq!(payloads(&after), ["m1", "m2", "m3"], "resent in order, then the new one: {after:?}");
        let dups: Vec<bool> = after.iter().map(|s| matches!(s, Seen::Publish { dup: true, .. })).collect();
        assert_eq!(dups, [true, true, false], "a resent publish carries DUP");
        assert_eq!(extra, Ok(()), "nothing else on the new connection (no stale ack, no duplicate)");
        assert!(link.in_flight.is_empty() && link.resend.is_empty());
        broker.join().expect("broker");
    }

    #[test]
    fn nothing_lost_or_duplicated_across_a_disconnect_with_the_session_kept() {
        nothing_lost_or_duplicated_across_a_disconnect(true);
    }

    #[test]
    fn nothing_lost_or_duplicated_across_a_disconnect_with_the_session_lost() {
        nothing_lost_or_duplicated_across_a_disconnect(false);
    }
}
