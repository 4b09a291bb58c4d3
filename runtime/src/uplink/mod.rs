//! The uplink: the gateway's side of the fleet protocol (`outpost-fleet`).
//!
//! ```text
//!  service outputs ─► DataTap ─┐ (bounded, counted)
//!  hub events ─────────────────┤
//!  report timer, apply results ┤
//!                              ▼
//!                 producer: customer's sharing policy (outpost-sharing)
//!                           + hash-chained audit of every export batch
//!                              ▼
//!                 outbox.rs: redb, in order, bounded, drops counted
//!                              ▼
//!                 link: MQTT to the operations center (own credentials,
//!                 TLS), QoS 1, removed from the outbox on PUBACK only
//!                              │ retained, signed desired state
//!                              ▼
//!                 applier (apply.rs, fetch.rs) → control::Lifecycle
//! ```
//!
//! The link runs on the agent's main runtime, never on the I/O thread: the
//! data path only pays a bounded `try_send` for topics the policy exports.
//! Offline, the agent keeps running what its own store says (the last
//! desired state it applied) and the outbox keeps what it must send.

pub mod apply;
pub mod fetch;
pub mod outbox;
pub mod report;

use crate::config::{parse_fleet_url, AgentConfig, FleetConfig};
use crate::control::Lifecycle;
use crate::events::Hub;
use crate::status::StatusBoard;
use outbox::Outbox;
use outpost_fleet::{topic, DesiredState, FleetEvent};
use outpost_sharing::{AuditLog, AuditMessage, Decision, Exporter, Policy};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Messages published and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// Site data waiting for the policy, at most (beyond: dropped and counted).
const TAP_CAPACITY: usize = 8192;
const APPLIED_REVISION: &str = "applied_revision";
const REPORT_SEQ: &str = "report_seq";
const EVENT_SEQ: &str = "event_seq";

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("[fleet] ops_key: {0}")]
    OpsKey(String),
    #[error("[fleet] credentials_file {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("[fleet] ca_file {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error("sharing audit log: {0}")]
    Audit(#[from] outpost_sharing::AuditError),
    #[error("{0}")]
    Config(String),
}

/// Where service outputs enter the uplink. Cheap on the I/O thread: a
/// read lock and a filter match, then a bounded `try_send`.
#[derive(Clone)]
pub struct DataTap {
    filters: Arc<RwLock<Vec<String>>>,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Outputs no rule for this provider covers: they stay on site, counted.
    no_rule: Arc<std::sync::atomic::AtomicU64>,
}

impl DataTap {
    pub fn offer(&self, topic: &str, payload: &[u8]) {
        let wanted = self
            .filters
            .read()
            .map(|f| f.iter().any(|filter| crate::topic::matches(filter, topic)))
            .unwrap_or(false);
        if !wanted {
            self.no_rule.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else if self.tx.try_send((topic.to_owned(), payload.to_vec())).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What the applier tells the producer.
struct Applied {
    revision: u64,
    managed: BTreeSet<String>,
    errors: BTreeMap<String, String>,
}

/// Shared by the uplink's tasks.
struct Shared {
    cfg: Arc<AgentConfig>,
    fleet: FleetConfig,
    outbox: Outbox,
    wake_link: Notify,
    board: StatusBoard,
}

impl Shared {
    fn now_ms() -> u64 {
        crate::dispatch::now_ms()
    }

    /// Queues messages and wakes the link; an outbox that cannot write is
    /// logged as an error (the message is not silently lost: the caller's
    /// counters and the log say so).
    fn queue(&self, items: &[(String, Vec<u8>)]) -> bool {
        match self.outbox.push(items) {
            Ok(dropped) => {
                if dropped > 0 {
                    self.board.metrics().uplink_dropped.inc_by(dropped);
                    tracing::warn!(dropped, "uplink outbox full: the oldest queued messages were dropped");
                }
                self.refresh_gauge();
                self.wake_link.notify_one();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, messages = items.len(), "cannot queue uplink messages");
                false
            }
        }
    }

    fn refresh_gauge(&self) {
        if let Ok((len, _, _)) = self.outbox.stats() {
            self.board.metrics().uplink_queued.set(len as i64);
        }
    }

    fn next(&self, key: &str) -> u64 {
        let n = self.outbox.get_meta(key).ok().flatten().unwrap_or(0) + 1;
        if let Err(e) = self.outbox.set_meta(key, n) {
            tracing::error!(error = %e, key, "cannot persist an uplink sequence number");
        }
        n
    }
}

/// Starts the uplink's tasks; returns the tap the dispatcher feeds.
pub fn start(
    cfg: Arc<AgentConfig>,
    lifecycle: Arc<Lifecycle>,
    board: StatusBoard,
    hub: Hub,
    stop: watch::Receiver<bool>,
) -> Result<DataTap, UplinkError> {
    let fleet = cfg.fleet.clone().ok_or_else(|| UplinkError::Config("no [fleet] section".into()))?;
    let ops_key = outpost_package::ProviderKey::load(&fleet.ops_key).map_err(|e| UplinkError::OpsKey(e.to_string()))?;
    let (user, password) = read_credentials(&fleet)?;
    let mut options = mqtt_options(&cfg, &fleet, &user, &password)?;
    options.set_max_packet_size(1 << 20, 1 << 20);
    let outbox = Outbox::open(&cfg.state_dir.join("uplink.redb"), fleet.outbox_max_messages, fleet.outbox_max_bytes)?;
    let audit = AuditLog::open(&cfg.state_dir.join("sharing-audit.jsonl"))?;
    let policy = load_policy(&fleet);
    let (tap_tx, tap_rx) = mpsc::channel(TAP_CAPACITY);
    let tap = DataTap {
        filters: Arc::new(RwLock::new(export_filters(&policy, &fleet.provider))),
        tx: tap_tx,
        dropped: Default::default(),
        no_rule: Default::default(),
    };
    let shared = Arc::new(Shared { cfg: cfg.clone(), fleet, outbox, wake_link: Notify::new(), board });
    let (desired_tx, desired_rx) = watch::channel::<Option<DesiredState>>(None);
    let (applied_tx, applied_rx) = mpsc::unbounded_channel::<Applied>();
    let (refused_tx, refused_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(link(shared.clone(), options, ops_key, desired_tx, refused_tx, stop.clone()));
    tokio::spawn(applier(shared.clone(), lifecycle, desired_rx, applied_tx));
    let producer = Producer {
        shared,
        exporter: Exporter::new(policy),
        audit,
        tap: tap.clone(),
        managed: BTreeSet::new(),
        apply_errors: BTreeMap::new(),
        policy_stamp: None,
    };
    tokio::spawn(producer.run(hub, tap_rx, applied_rx, refused_rx, stop));
    Ok(tap)
}

fn read_credentials(fleet: &FleetConfig) -> Result<(String, String), UplinkError> {
    let err = |message: String| UplinkError::Credentials { path: fleet.credentials_file.clone(), message };
    let text = std::fs::read_to_string(&fleet.credentials_file).map_err(|e| err(e.to_string()))?;
    parse_credentials(&text).map_err(err)
}

/// One line `user:password`, or what `outpost-ops gateway add --out` writes
/// (`user = "..."` and `password = "..."` lines, TOML).
fn parse_credentials(text: &str) -> Result<(String, String), String> {
    if let Ok(table) = text.parse::<toml::Table>() {
        if let (Some(u), Some(p)) = (table.get("user"), table.get("password")) {
            return match (u.as_str(), p.as_str()) {
                (Some(u), Some(p)) if !u.is_empty() => Ok((u.to_owned(), p.to_owned())),
                _ => Err("`user` and `password` must be non-empty strings".into()),
            };
        }
    }
    let line = text.lines().find(|l| !l.trim().is_empty()).ok_or("the file is empty")?;
    match line.trim().split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_owned(), p.to_owned())),
        _ => Err("expected one line `user:password`, or the file `outpost-ops gateway add --out` writes".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_either_format() {
        assert_eq!(super::parse_credentials("gw-1:s3cr:et\n"), Ok(("gw-1".into(), "s3cr:et".into())));
        let ops = "gateway = \"gw-1\"\nuser = \"gw-1\"\npassword = \"abc\"\n";
        assert_eq!(super::parse_credentials(ops), Ok(("gw-1".into(), "abc".into())));
        assert!(super::parse_credentials("").is_err());
        assert!(super::parse_credentials("nocolon").is_err());
    }
}

fn mqtt_options(cfg: &AgentConfig, fleet: &FleetConfig, user: &str, password: &str) -> Result<MqttOptions, UplinkError> {
    let (host, port, tls) = parse_fleet_url(&fleet.broker).map_err(UplinkError::Config)?;
    let mut o = MqttOptions::new(format!("outpost-fleet-{}", cfg.gateway), host, port);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(cfg.broker.keep_alive_s));
    // The outbox, not the broker session, is what keeps messages: each
    // connection starts clean and resends from the outbox's head.
    o.set_clean_session(true);
    if tls {
        let path = fleet.ca_file.clone().ok_or_else(|| UplinkError::Config("mqtts:// needs [fleet] ca_file".into()))?;
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(
            tls_config(&path)?,
        ))));
    }
    Ok(o)
}

fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, UplinkError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let err = |message: String| UplinkError::Tls { path: path.to_owned(), message };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    for c in certs {
        roots.add(c.map_err(|e| err(e.to_string()))?).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The customer's policy; an unreadable or invalid file keeps everything
/// on site (and says why) rather than guessing.
fn load_policy(fleet: &FleetConfig) -> Policy {
    match &fleet.sharing_policy {
        None => Policy::default(),
        Some(path) if !path.exists() => {
            tracing::info!(path = %path.display(), "no sharing policy file: only versions and health leave the site");
            Policy::default()
        }
        Some(path) => Policy::load(path).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the sharing policy is invalid: nothing but versions and health leaves the site until it is fixed");
            Policy::default()
        }),
    }
}

/// Topic filters of the rules for this operations center's provider: the
/// tap copies only what could leave.
fn export_filters(policy: &Policy, provider: &str) -> Vec<String> {
    policy
        .rules()
        .iter()
        .filter(|r| r.provider == provider)
        .flat_map(|r| r.topics.iter().map(|t| t.as_str().to_owned()))
        .collect()
}

/// The MQTT connection to the operations center: delivers the outbox in
/// order, receives desired state.
async fn link(
    shared: Arc<Shared>,
    options: MqttOptions,
    ops_key: outpost_package::ProviderKey,
    desired_tx: watch::Sender<Option<DesiredState>>,
    refused_tx: mpsc::UnboundedSender<String>,
    mut stop: watch::Receiver<bool>,
) {
    let gateway = shared.cfg.gateway.clone();
    let desired_topic = topic::desired(&gateway);
    let metrics = shared.board.metrics().clone();
    let mut failures = 0u32;
    loop {
        let (client, mut events) = AsyncClient::new(options.clone(), WINDOW * 2);
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut last_sent: Option<u64> = None;
        // Acknowledged by the broker, not yet removed from the outbox.
        let mut acked: Option<u64> = None;
        let mut connected = false;
        loop {
            tokio::select! {
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        failures = 0;
                        metrics.fleet_connected.set(1);
                        tracing::info!(broker = %shared.fleet.broker, "connected to the operations center");
                        if let Err(e) = client.try_subscribe(desired_topic.clone(), QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe to the desired state");
                        }
                        fill(&shared, &client, &mut in_flight, &mut last_sent);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::error!(topic = %desired_topic, "the operations center's broker refused the desired-state subscription (check its ACL for this gateway's user)");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired_topic => {
                        match outpost_fleet::desired::verify(&p.payload, &gateway, &ops_key) {
                            Ok(state) => {
                                tracing::debug!(revision = state.revision, "desired state received");
                                desired_tx.send_replace(Some(state));
                            }
                            Err(e) => {
                                metrics.fleet_desired_refused.inc();
                                tracing::warn!(error = %e, "desired state refused");
                                let _ = refused_tx.send(e.to_string());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        // Mosquitto and rumqttd acknowledge QoS 1 in order.
                        if let Some(seq) = in_flight.pop_front() {
                            metrics.uplink_sent.inc();
                            acked = Some(seq);
                        }
                        // One outbox commit and one refill per half window,
                        // not a durable write and a read per acknowledgement.
                        if in_flight.len() <= WINDOW / 2 {
                            forget_delivered(&shared, &mut acked);
                            fill(&shared, &client, &mut in_flight, &mut last_sent);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        forget_delivered(&shared, &mut acked);
                        metrics.fleet_connected.set(0);
                        failures += 1;
                        if connected || failures == 1 || failures.is_multiple_of(20) {
                            tracing::warn!(broker = %shared.fleet.broker, error = %e, attempt = failures,
                                "operations center unreachable; reports queue in the outbox");
                        }
                        break;
                    }
                },
                _ = shared.wake_link.notified(), if connected => fill(&shared, &client, &mut in_flight, &mut last_sent),
                _ = stop.changed() => {
                    forget_delivered(&shared, &mut acked);
                    let _ = client.try_disconnect();
                    return;
                }
            }
        }
        let backoff = Duration::from_millis((200u64 << failures.min(5)).min(5_000));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Removes what the broker acknowledged from the outbox. A failure only
/// means those messages are sent again (the operations center sees their
/// sequence numbers twice), never that one is lost.
fn forget_delivered(shared: &Shared, acked: &mut Option<u64>) {
    let Some(seq) = acked.take() else { return };
    if let Err(e) = shared.outbox.delivered(seq) {
        tracing::error!(error = %e, "cannot mark uplink messages delivered; they will be sent again");
    }
    shared.refresh_gauge();
}

/// Publishes queued messages after `last_sent` until the window is full.
fn fill(shared: &Shared, client: &AsyncClient, in_flight: &mut VecDeque<u64>, last_sent: &mut Option<u64>) {
    if in_flight.len() >= WINDOW {
        return;
    }
    let batch = match shared.outbox.peek(*last_sent, WINDOW - in_flight.len()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the uplink outbox");
            return;
        }
    };
    for m in batch {
        if let Err(e) = client.try_publish(m.topic, QoS::AtLeastOnce, false, m.payload) {
            tracing::warn!(error = %e, "uplink publish queue full; retrying on the next acknowledgement");
            return;
        }
        in_flight.push_back(m.seq);
        *last_sent = Some(m.seq);
    }
}

/// Applies each newer desired state; a failed one is tried again after a
/// while (a download cut, a busy lifecycle) unless a newer one arrives.
async fn applier(
    shared: Arc<Shared>,
    lifecycle: Arc<Lifecycle>,
    mut desired_rx: watch::Receiver<Option<DesiredState>>,
    applied_tx: mpsc::UnboundedSender<Applied>,
) {
    let downloads = shared.cfg.state_dir.join("downloads");
    let approved_by = format!("operations center ({})", shared.fleet.provider);
    let mut retry: Option<DesiredState> = None;
    // 10 s after a failure, doubling to 5 min: a broken package is not
    // fetched in a tight loop, a cut download resumes soon.
    let mut retry_after = Duration::from_secs(10);
    loop {
        let want = match retry.take() {
            Some(w) => {
                tokio::select! {
                    changed = desired_rx.changed() => {
                        if changed.is_err() { return; }
                        retry_after = Duration::from_secs(10);
                        desired_rx.borrow_and_update().clone()
                    }
                    _ = tokio::time::sleep(retry_after) => {
                        retry_after = (retry_after * 2).min(Duration::from_secs(300));
                        Some(w)
                    }
                }
            }
            None => {
                if desired_rx.changed().await.is_err() {
                    return;
                }
                desired_rx.borrow_and_update().clone()
            }
        };
        let Some(want) = want else { continue };
        let applied = shared.outbox.get_meta(APPLIED_REVISION).ok().flatten();
        let managed: BTreeSet<String> = want.services.keys().cloned().collect();
        if applied.is_some_and(|a| want.revision <= a) {
            // Already applied (a retained message after a reconnect): report only.
            let _ = applied_tx.send(Applied { revision: want.revision, managed, errors: BTreeMap::new() });
            continue;
        }
        let errors = apply::apply(&lifecycle, &want, shared.fleet.artifacts_url.as_deref(), &downloads, &approved_by).await;
        if errors.is_empty() {
            retry_after = Duration::from_secs(10);
            if let Err(e) = shared.outbox.set_meta(APPLIED_REVISION, want.revision) {
                tracing::error!(error = %e, "cannot record the applied desired-state revision");
            }
        } else {
            retry = Some(want.clone());
        }
        let _ = applied_tx.send(Applied { revision: want.revision, managed, errors });
    }
}

/// Turns what happens on the gateway into queued uplink messages, under
/// the customer's sharing policy.
struct Producer {
    shared: Arc<Shared>,
    exporter: Exporter,
    audit: AuditLog,
    tap: DataTap,
    managed: BTreeSet<String>,
    apply_errors: BTreeMap<String, String>,
    policy_stamp: Option<(std::time::SystemTime, u64)>,
}

impl Producer {
    async fn run(
        mut self,
        hub: Hub,
        mut tap_rx: mpsc::Receiver<(String, Vec<u8>)>,
        mut applied_rx: mpsc::UnboundedReceiver<Applied>,
        mut refused_rx: mpsc::UnboundedReceiver<String>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut events = hub.subscribe();
        let mut report_every = tokio::time::interval(Duration::from_secs(self.shared.fleet.report_interval_s));
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        self.policy_stamp = self.policy_file_stamp();
        loop {
            tokio::select! {
                _ = report_every.tick() => self.report(),
                _ = housekeeping.tick() => {
                    self.reload_policy_if_changed();
                    self.flush_aggregates();
                    let held = self.tap.no_rule.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if held > 0 {
                        self.shared.board.metrics().uplink_held(outpost_sharing::HeldReason::NoRule.kind(), held);
                    }
                    let dropped = self.tap.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if dropped > 0 {
                        self.shared.board.metrics().uplink_held("tap_full", dropped);
                        tracing::warn!(dropped, "site data arrived faster than the uplink could queue it; dropped and counted");
                    }
                }
                Some(first) = tap_rx.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < 512 {
                        match tap_rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    self.export(batch);
                }
                Some(a) = applied_rx.recv() => {
                    self.managed = a.managed;
                    for (service, why) in &a.errors {
                        self.event("apply_failed", Some(service), why);
                    }
                    self.apply_errors = a.errors;
                    tracing::debug!(revision = a.revision, "reporting after applying desired state");
                    self.report();
                }
                Some(why) = refused_rx.recv() => self.event("desired_refused", None, &why),
                event = events.recv() => match event {
                    Ok(e) => self.forward_event(&e.json),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "uplink missed agent events");
                    }
                    Err(_) => return,
                },
                _ = stop.changed() => return,
            }
        }
    }

    fn report(&mut self) {
        let Some(status) = self.shared.board.snapshot() else { return };
        let kpis = crate::events::kpis_from_metrics(&self.shared.board.metrics().encode());
        let seq = self.shared.next(REPORT_SEQ);
        let dropped = self.shared.outbox.stats().map(|s| s.2).unwrap_or(0);
        let input = report::ReportInput {
            status: &status,
            kpis: &kpis,
            managed: &self.managed,
            apply_errors: &self.apply_errors,
            applied_revision: self.shared.outbox.get_meta(APPLIED_REVISION).ok().flatten(),
            outbox_dropped: dropped,
            seq,
            at_ms: Shared::now_ms(),
        };
        let provider = self.shared.fleet.provider.clone();
        let mut held = 0u64;
        let exporter = &self.exporter;
        let r = report::build(&input, &mut |service, kpi| {
            let ok = exporter.kpi_allowed(&provider, service, kpi);
            held += u64::from(!ok);
            ok
        });
        if held > 0 {
            self.shared.board.metrics().uplink_held("kpi_not_allowed", held);
        }
        let kpi_values: Vec<AuditMessage> = r
            .services
            .iter()
            .filter(|s| !s.kpis.is_empty())
            .map(|s| {
                let body = serde_json::to_vec(&s.kpis).unwrap_or_default();
                AuditMessage::new(&format!("kpi/{}", s.service), "service KPIs in the gateway report", &body)
            })
            .collect();
        let Ok(payload) = serde_json::to_vec(&r) else { return };
        // KPI values are site data: recorded before they can leave.
        if !kpi_values.is_empty() && !self.record(kpi_values) {
            return;
        }
        self.shared.queue(&[(topic::reported(&self.shared.cfg.gateway), payload)]);
    }

    fn event(&mut self, kind: &str, service: Option<&str>, detail: &str) {
        let e = FleetEvent {
            gateway: self.shared.cfg.gateway.clone(),
            seq: self.shared.next(EVENT_SEQ),
            at_ms: Shared::now_ms(),
            kind: kind.to_owned(),
            service: service.map(str::to_owned),
            detail: detail.to_owned(),
        };
        if let Ok(payload) = serde_json::to_vec(&e) {
            self.shared.queue(&[(topic::events(&self.shared.cfg.gateway), payload)]);
        }
    }

    /// Lifecycle events go up (and trigger a report, since a version
    /// changed); faults and dead letters stay in the gateway's own feeds.
    fn forward_event(&mut self, json: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return };
        let kind = v["event"].as_str().unwrap_or_default().to_owned();
        if !matches!(kind.as_str(), "rolled_back" | "lifecycle") {
            return;
        }
        let service = v["service"].as_str().or_else(|| v["detail"]["service"].as_str()).map(str::to_owned);
        self.event(&kind, service.as_deref(), json);
        self.report();
    }

    fn export(&mut self, batch: Vec<(String, Vec<u8>)>) {
        let (provider, now) = (self.shared.fleet.provider.clone(), Shared::now_ms());
        let mut out = Vec::new();
        for (topic, payload) in batch {
            match self.exporter.offer(&provider, &topic, &payload, now) {
                Decision::Export(e) => out.push(e),
                Decision::Aggregated { .. } => {}
                Decision::Held(why) => self.shared.board.metrics().uplink_held(why.kind(), 1),
            }
        }
        self.send_exports(out);
    }

    fn flush_aggregates(&mut self) {
        let provider = self.shared.fleet.provider.clone();
        let due = self.exporter.flush_due(&provider, Shared::now_ms());
        self.send_exports(due);
    }

    fn send_exports(&mut self, exports: Vec<outpost_sharing::Export>) {
        if exports.is_empty() {
            return;
        }
        let messages = exports.iter().map(|e| AuditMessage::new(&e.topic, &e.purpose, &e.payload)).collect();
        if !self.record(messages) {
            self.shared.board.metrics().uplink_held("audit_failed", exports.len() as u64);
            return;
        }
        let gw = &self.shared.cfg.gateway;
        let items: Vec<(String, Vec<u8>)> = exports.into_iter().map(|e| (topic::data(gw, &e.topic), e.payload)).collect();
        self.shared.queue(&items);
    }

    /// Appends an export batch to the audit log; false (logged) when it
    /// could not be recorded, and then it must not be sent.
    fn record(&mut self, messages: Vec<AuditMessage>) -> bool {
        let policy_sha = self.exporter.policy().sha256().to_owned();
        let (provider, destination) = (self.shared.fleet.provider.clone(), self.shared.fleet.broker.clone());
        match self.audit.append(Shared::now_ms(), &provider, &destination, &policy_sha, messages) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot record an export batch in the audit log; it stays on site");
                false
            }
        }
    }

    fn policy_file_stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        let path = self.shared.fleet.sharing_policy.as_ref()?;
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// A policy change takes effect within a second, without a restart.
    fn reload_policy_if_changed(&mut self) {
        let stamp = self.policy_file_stamp();
        if stamp == self.policy_stamp {
            return;
        }
        self.policy_stamp = stamp;
        let policy = load_policy(&self.shared.fleet);
        tracing::info!(sha256 = %policy.sha256(), "sharing policy changed; in force from now");
        if let Ok(mut f) = self.tap.filters.write() {
            *f = export_filters(&policy, &self.shared.fleet.provider);
        }
        self.exporter.set_policy(policy);
    }
}

/// True when the config asks for an uplink.
pub fn enabled(cfg: &AgentConfig) -> bool {
    cfg.fleet.is_some()
}
