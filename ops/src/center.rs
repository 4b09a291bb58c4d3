//! The operations center's running core: one task that owns the [`Engine`],
//! takes gateways' messages from the MQTT link in batches (one store write
//! per batch), ticks the engine, turns its actions into signed, retained
//! desired state, and answers operator commands. Everything it decides is
//! in [`crate::desired`] (pure); this is the thin async shell around it.
//!
//! Several replicas may share one store ([`crate::PgStore`]): only the
//! replica holding the store's lease ([`LEASE`]) acts (ticks the engine,
//! feeds it reports, publishes desired state, takes operator commands);
//! the others stand by, keep their MQTT link and remember each gateway's
//! latest report, and try the lease every third of its ttl. A replica that
//! takes the lease reloads rollouts and desired state from the store,
//! rebuilds what the last leader lost, replays the reports it remembered
//! and republishes every desired state. A leader that cannot renew stops
//! acting before its lease can expire.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_fleet::{topic, DesiredState, FleetEvent, GatewayReport};
use outpost_package::SigningKey;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::desired::{apply_pins, check_plan, pins_of, pins_of_rollout, to_model_reports_managed, Catalogue, Pin};
use crate::engine::Engine;
use crate::model::{Plan, Report};
use crate::rollout::{Action, SystemClock};
use crate::store::{FleetStore, StoreError};
use crate::transport::{self, Inbound, LinkConfig, TransportError};

/// The store every part of `serve` shares.
pub type SharedStore = Arc<dyn FleetStore + Send + Sync>;

/// Most messages taken from the link per engine turn.
const MAX_BATCH: usize = 4096;

/// The store lease whose holder is the one replica that acts.
pub const LEASE: &str = "outpost-ops-core";

pub struct CenterConfig {
    /// The operations center's name, as signed into desired state.
    pub ops_name: String,
    pub key: SigningKey,
    pub link: LinkConfig,
    /// How often the engine ticks when nothing arrives (timeouts, bake).
    pub tick: Duration,
    /// This replica's name in the lease; unique among replicas.
    pub replica_id: String,
    /// How long the lease lasts unrenewed; renewed every third of it.
    pub lease_ttl: Duration,
}

/// Whether this replica leads, and who does; read at any time (HTTP API).
#[derive(Debug)]
pub struct Role {
    replica: String,
    leading: AtomicBool,
    leader: Mutex<Option<String>>,
}

impl Role {
    fn new(replica: String) -> Role {
        Role { replica, leading: AtomicBool::new(false), leader: Mutex::new(None) }
    }
    fn set(&self, leading: bool, leader: Option<String>) {
        self.leading.store(leading, Ordering::SeqCst);
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = leader;
    }
    pub fn replica(&self) -> &str {
        &self.replica
    }
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }
    /// The lease holder last seen in the store (None before the first try
    /// or when the store could not be read).
    pub fn leader(&self) -> Option<String> {
        self.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the core counted since it started; read at any time.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub reports: AtomicU64,
    pub bad_reports: AtomicU64,
    pub refused_reports: AtomicU64,
    pub events: AtomicU64,
    pub bad_events: AtomicU64,
    pub data: AtomicU64,
    pub unexpected_topics: AtomicU64,
    pub desired_published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub link_down: AtomicU64,
    pub connected: AtomicU64,
    /// Subscription filters the broker granted (all three after a CONNACK).
    pub subscribed: AtomicU64,
    pub subscribe_refused: AtomicU64,
    /// Times this replica took the lease (became the acting leader).
    pub leader_terms: AtomicU64,
    /// Reports a standby kept for a takeover instead of acting on them.
    pub standby_reports: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountersSnapshot {
    pub received: u64,
    pub reports: u64,
    pub bad_reports: u64,
    pub refused_reports: u64,
    pub events: u64,
    pub bad_events: u64,
    pub data: u64,
    pub unexpected_topics: u64,
    pub desired_published: u64,
    pub publish_errors: u64,
    pub link_down: u64,
    pub connected: u64,
    pub subscribed: u64,
    pub subscribe_refused: u64,
    #[serde(default)]
    pub leader_terms: u64,
    #[serde(default)]
    pub standby_reports: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            received: g(&self.received),
            reports: g(&self.reports),
            bad_reports: g(&self.bad_reports),
            refused_reports: g(&self.refused_reports),
            events: g(&self.events),
            bad_events: g(&self.bad_events),
            data: g(&self.data),
            unexpected_topics: g(&self.unexpected_topics),
            desired_published: g(&self.desired_published),
            publish_errors: g(&self.publish_errors),
            link_down: g(&self.link_down),
            connected: g(&self.connected),
            subscribed: g(&self.subscribed),
            subscribe_refused: g(&self.subscribe_refused),
            leader_terms: g(&self.leader_terms),
            standby_reports: g(&self.standby_reports),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum CenterError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
    #[error("this replica is on standby; the leader is {}", .leader.as_deref().unwrap_or("unknown"))]
    Standby { leader: Option<String> },
    #[error("the operations center has stopped")]
    Stopped,
}

enum Command {
    Start { plan: Box<Plan>, actor: String, reply: oneshot::Sender<Result<(), CenterError>> },
    Pause { id: String, actor: String, reply: oneshot::Sender<Result<(), CenterError>> },
    Resume { id: String, actor: String, reply: oneshot::Sender<Result<(), CenterError>> },
    Abort { id: String, actor: String, reason: String, reply: oneshot::Sender<Result<(), CenterError>> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// Talks to the running core.
#[derive(Clone)]
pub struct CenterHandle {
    tx: mpsc::Sender<Command>,
    pub counters: Arc<Counters>,
    pub role: Arc<Role>,
}

impl CenterHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CenterError>>) -> Command,
    ) -> Result<T, CenterError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| CenterError::Stopped)?;
        rx.await.map_err(|_| CenterError::Stopped)?
    }

    /// Checks the plan against the fleet and the catalogue and starts it.
    pub async fn start(&self, plan: Plan, actor: &str) -> Result<(), CenterError> {
        let actor = actor.to_string();
        self.ask(|reply| Command::Start { plan: Box::new(plan), actor, reply }).await
    }

    pub async fn pause(&self, id: &str, actor: &str) -> Result<(), CenterError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.ask(|reply| Command::Pause { id, actor, reply }).await
    }

    pub async fn resume(&self, id: &str, actor: &str) -> Result<(), CenterError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.ask(|reply| Command::Resume { id, actor, reply }).await
    }

    pub async fn abort(&self, id: &str, actor: &str, reason: &str) -> Result<(), CenterError> {
        let (id, actor, reason) = (id.to_string(), actor.to_string(), reason.to_string());
        self.ask(|reply| Command::Abort { id, actor, reason, reply }).await
    }

    /// Stops the core and disconnects from the broker; pending publishes are
    /// flushed first.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Core {
    engine: Engine<SharedStore, SystemClock>,
    store: SharedStore,
    desired: BTreeMap<String, DesiredState>,
    client: AsyncClient,
    ops_name: String,
    key: SigningKey,
    counters: Arc<Counters>,
    connected_once: bool,
    /// Desired state could not be stored: rebuild it from the rollouts at
    /// the next turn (the engine already persisted the actions).
    rebuild: bool,
    role: Arc<Role>,
    lease_ttl: Duration,
    /// Holding the lease and acting on it.
    leading: bool,
    /// Local time after which this replica must not act on its lease: the
    /// lease's expiry less a fifth of the ttl for clock skew between replicas.
    act_until_ms: u64,
    /// The latest report of each gateway heard while on standby, replayed at
    /// a takeover: the last leader may have taken it and died before storing.
    held_reports: BTreeMap<String, GatewayReport>,
}

/// Starts the link and the core. Desired state lost in a crash (actions the
/// engine persisted but whose desired state was not written) is rebuilt from
/// the active rollouts first; every gateway's desired state is republished
/// (retained) on the first connection.
pub fn spawn(
    store: SharedStore,
    cfg: CenterConfig,
) -> Result<(CenterHandle, tokio::task::JoinHandle<()>), CenterError> {
    let subs = topic::OPS_SUBSCRIPTIONS.iter().map(|s| s.to_string()).collect();
    let (client, inbound, link) = transport::spawn(&cfg.link, subs, MAX_BATCH * 2)?;
    let engine = Engine::resume(store.clone(), SystemClock)?;
    let desired = store.desired_states()?.into_iter().map(|d| (d.gateway.clone(), d)).collect();
    let counters = Arc::new(Counters::default());
    let role = Arc::new(Role::new(cfg.replica_id.clone()));
    let mut core = Core {
        engine,
        store,
        desired,
        client,
        ops_name: cfg.ops_name,
        key: cfg.key,
        counters: counters.clone(),
        connected_once: false,
        rebuild: false,
        role: role.clone(),
        lease_ttl: cfg.lease_ttl,
        leading: false,
        act_until_ms: 0,
        held_reports: BTreeMap::new(),
    };
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        // Leading from the start if the lease is free (one replica, or the
        // first of several); rebuilt desired state goes out with everything
        // else on the first connection.
        core.lease_turn().await;
        core.run(inbound, rx, cfg.tick).await;
        link.abort();
    });
    Ok((CenterHandle { tx, counters, role }, task))
}

fn now_ms() -> u64 {
    use crate::rollout::Clock;
    SystemClock.now_ms()
}

impl Core {
    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
        tick: Duration,
    ) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // interval() refuses a zero period.
        let mut lease = tokio::time::interval((self.lease_ttl / 3).max(Duration::from_millis(1)));
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = inbound.recv() => {
                    let Some(m) = m else { return };
                    let mut batch = vec![m];
                    while batch.len() < MAX_BATCH {
                        match inbound.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    self.on_batch(batch).await;
                }
                c = commands.recv() => match c {
                    None => return,
                    Some(Command::Shutdown { reply }) => {
                        if self.leading {
                            self.step_down();
                            if let Err(e) = self.store.release_lease(LEASE, self.role.replica()) {
                                tracing::warn!(error = %e, "cannot release the lease; it expires by itself");
                            }
                        }
                        let _ = self.client.disconnect().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                },
                _ = interval.tick() => {}
                _ = lease.tick() => self.lease_turn().await,
            }
            self.advance().await;
        }
    }

    /// Takes or renews the lease; takes over when newly leading, stops
    /// acting when the lease is lost or cannot be renewed.
    async fn lease_turn(&mut self) {
        let asked = now_ms();
        let ttl = self.lease_ttl.as_millis() as u64;
        match self.store.try_lease(LEASE, self.role.replica(), ttl, asked) {
            Ok(l) if l.holder == self.role.replica() => {
                // Counted from before the request: the store's expiry is later.
                self.act_until_ms = asked + ttl - ttl / 5;
                if !self.leading {
                    self.take_over().await;
                }
                self.role.set(self.leading, Some(l.holder));
            }
            Ok(l) => {
                if self.leading {
                    tracing::warn!(leader = %l.holder, "lease lost; standing by");
                }
                self.step_down();
                self.role.set(false, Some(l.holder));
            }
            Err(e) => {
                if self.leading {
                    tracing::error!(error = %e, "cannot renew the lease; standing by");
                }
                self.step_down();
                self.role.set(false, None);
            }
        }
    }

    fn step_down(&mut self) {
        self.leading = false;
        self.act_until_ms = 0;
        self.role.leading.store(false, Ordering::SeqCst);
    }

    /// Whether this replica may act now: it holds a lease that has not run
    /// out on its own clock (a renewal can be late when a turn was long).
    fn acting(&mut self) -> bool {
        if self.leading && now_ms() >= self.act_until_ms {
            tracing::warn!("lease not renewed in time; standing by");
            self.step_down();
        }
        self.leading
    }

    /// Newly leading: everything the last leader knew is in the store.
    async fn take_over(&mut self) {
        let loaded =
            Engine::resume(self.store.clone(), SystemClock).and_then(|e| Ok((e, self.store.desired_states()?)));
        let (engine, desired) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "lease taken but the store cannot be read; not acting");
                // Let another replica lead rather than hold a lease unused.
                let _ = self.store.release_lease(LEASE, self.role.replica());
                return;
            }
        };
        self.engine = engine;
        self.desired = desired.into_iter().map(|d| (d.gateway.clone(), d)).collect();
        self.leading = true;
        self.role.leading.store(true, Ordering::SeqCst);
        bump(&self.counters.leader_terms);
        tracing::info!(
            replica = %self.role.replica(),
            rollouts = self.engine.active().count(),
            held_reports = self.held_reports.len(),
            "leading"
        );
        // Actions the last leader persisted but whose desired state it never
        // wrote are rebuilt here (stored; published below with the rest).
        self.reconcile().await;
        let held: Vec<GatewayReport> = std::mem::take(&mut self.held_reports).into_values().collect();
        self.on_reports(held);
        // Before the first connection, `Connected` publishes everything.
        if self.connected_once {
            self.republish_all().await;
        }
    }

    /// Pins implied by every active rollout, made good in desired state;
    /// returns the states that changed (stored, not yet published).
    async fn reconcile(&mut self) -> Vec<DesiredState> {
        let pins: Vec<Pin> = self.engine.active().flat_map(pins_of_rollout).collect();
        if pins.is_empty() {
            return Vec::new();
        }
        let changed = self.apply(&pins);
        if !changed.is_empty() {
            tracing::info!(gateways = changed.len(), "desired state rebuilt from the rollouts' state");
        }
        changed
    }

    async fn republish_all(&mut self) {
        let all: Vec<DesiredState> = self.desired.values().cloned().collect();
        tracing::info!(gateways = all.len(), "republishing every gateway's desired state (retained)");
        for d in &all {
            self.publish(d).await;
        }
    }

    async fn on_batch(&mut self, batch: Vec<Inbound>) {
        let mut reports: Vec<GatewayReport> = Vec::new();
        for m in batch {
            match m {
                Inbound::Connected { session_present } => {
                    bump(&self.counters.connected);
                    if self.acting() && (!self.connected_once || !session_present) {
                        self.republish_all().await;
                    }
                    self.connected_once = true;
                }
                Inbound::Down(_) => bump(&self.counters.link_down),
                Inbound::Subscribed { granted, refused } => {
                    self.counters.subscribed.fetch_add(granted as u64, Ordering::Relaxed);
                    self.counters.subscribe_refused.fetch_add(refused as u64, Ordering::Relaxed);
                }
                Inbound::Message { topic, payload } => {
                    bump(&self.counters.received);
                    self.on_message(&topic, &payload, &mut reports);
                }
            }
        }
        if reports.is_empty() {
            return;
        }
        if !self.acting() {
            self.counters.standby_reports.fetch_add(reports.len() as u64, Ordering::Relaxed);
            for r in reports {
                self.held_reports.insert(r.gateway.clone(), r);
            }
            return;
        }
        self.on_reports(reports);
    }

    /// Feeds reports to the engine (leading only).
    fn on_reports(&mut self, reports: Vec<GatewayReport>) {
        if reports.is_empty() {
            return;
        }
        let per_service: Vec<Report> =
            reports.iter().flat_map(|r| to_model_reports_managed(r, self.desired.get(&r.gateway))).collect();
        // A gateway with nothing to report about a service is still alive.
        let silent: Vec<&str> = reports
            .iter()
            .filter(|r| !per_service.iter().any(|p| p.gateway == r.gateway))
            .map(|r| r.gateway.as_str())
            .collect();
        self.touch(&silent);
        let batch = per_service.iter().map(|r| (r.gateway.as_str(), r));
        match self.engine.on_reports_from(batch) {
            Ok(verdicts) => {
                for (v, r) in verdicts.iter().zip(&per_service) {
                    if let Err(e) = v {
                        bump(&self.counters.refused_reports);
                        tracing::warn!(gateway = %r.gateway, service = %r.service, error = %e, "report refused");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not store a batch of reports"),
        }
    }

    /// Records that these gateways were heard from (unknown ones are refused).
    fn touch(&mut self, gateways: &[&str]) {
        if gateways.is_empty() {
            return;
        }
        let now = now_ms();
        let mut known = Vec::new();
        for id in gateways {
            match self.store.gateway(id) {
                Ok(Some(mut g)) => {
                    g.last_seen_ms = now;
                    known.push(g);
                }
                Ok(None) => {
                    bump(&self.counters.refused_reports);
                    tracing::warn!(gateway = id, "report from a gateway this operations center does not know");
                }
                Err(e) => tracing::error!(error = %e, "cannot read a gateway record"),
            }
        }
        if let Err(e) = self.store.put_gateways(&known) {
            tracing::error!(error = %e, "cannot store gateways' last-seen time");
        }
    }

    fn on_message(&mut self, topic_name: &str, payload: &[u8], reports: &mut Vec<GatewayReport>) {
        match topic::parse(topic_name) {
            // The broker's ACL lets a gateway write only its own topics, so
            // the topic's gateway is the sender.
            Some(topic::FleetTopic::Reported(gw)) => match GatewayReport::parse(gw, payload) {
                Ok(r) => {
                    bump(&self.counters.reports);
                    reports.push(r);
                }
                Err(e) => {
                    bump(&self.counters.bad_reports);
                    tracing::warn!(gateway = gw, error = %e, "bad report");
                }
            },
            Some(topic::FleetTopic::Events(gw)) => match FleetEvent::parse(gw, payload) {
                Ok(e) => {
                    bump(&self.counters.events);
                    tracing::info!(gateway = gw, kind = %e.kind, service = ?e.service, detail = %e.detail, "gateway event");
                }
                Err(e) => {
                    bump(&self.counters.bad_events);
                    tracing::warn!(gateway = gw, error = %e, "bad event");
                }
            },
            Some(topic::FleetTopic::Data { .. }) => bump(&self.counters.data),
            Some(topic::FleetTopic::Desired(_)) | None => {
                bump(&self.counters.unexpected_topics);
                tracing::warn!(topic = topic_name, "message on a topic outpost-ops does not read");
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        if !self.acting() {
            let refused = || CenterError::Standby { leader: self.role.leader() };
            let _ = match c {
                Command::Start { reply, .. }
                | Command::Pause { reply, .. }
                | Command::Resume { reply, .. }
                | Command::Abort { reply, .. } => reply.send(Err(refused())),
                Command::Shutdown { .. } => Ok(()),
            };
            return;
        }
        match c {
            Command::Start { plan, actor, reply } => {
                let _ = reply.send(self.start(*plan, &actor));
            }
            Command::Pause { id, actor, reply } => {
                let _ = reply.send(self.engine.pause(&id, &actor).map_err(|e| CenterError::Refused(e.to_string())));
            }
            Command::Resume { id, actor, reply } => {
                let r = self.engine.resume_rollout(&id, &actor).map_err(|e| CenterError::Refused(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Abort { id, actor, reason, reply } => {
                let r = self.engine.abort(&id, &actor, &reason).map_err(|e| CenterError::Refused(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn start(&mut self, plan: Plan, actor: &str) -> Result<(), CenterError> {
        let fleet = self.store.gateways()?;
        let catalogue = Catalogue::new(self.store.packages()?);
        if let Err(problems) = check_plan(&plan, &fleet, &catalogue) {
            return Err(CenterError::Refused(format!("rollout plan refused:\n  - {}", problems.join("\n  - "))));
        }
        self.engine.start(plan, actor).map_err(|e| CenterError::Refused(e.to_string()))
    }

    /// Ticks the engine and publishes what its actions changed.
    async fn advance(&mut self) {
        if !self.acting() {
            return;
        }
        if self.rebuild {
            self.rebuild = false;
            for d in self.reconcile().await {
                self.publish(&d).await;
            }
        }
        let actions = match self.engine.tick() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "engine tick could not be stored; retried at the next tick");
                return;
            }
        };
        for a in &actions {
            if let Action::Notify { rollout, notice } = a {
                tracing::info!(rollout = %rollout, ?notice, "rollout");
            }
        }
        let pins = pins_of(&actions);
        if pins.is_empty() {
            return;
        }
        let changed = self.apply(&pins);
        for d in &changed {
            self.publish(d).await;
        }
    }

    /// Applies pins to desired state and stores the changed states (before
    /// anything is published, so a restart republishes them).
    fn apply(&mut self, pins: &[Pin]) -> Vec<DesiredState> {
        let catalogue = match self.store.packages() {
            Ok(p) => Catalogue::new(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the package catalogue");
                return Vec::new();
            }
        };
        let before = self.desired.clone();
        let (changed, problems) = apply_pins(&mut self.desired, pins, &catalogue, now_ms());
        for p in problems {
            tracing::error!(error = %p, "desired state not changed");
        }
        if let Err(e) = self.store.put_desired(&changed) {
            tracing::error!(error = %e, "cannot store desired state; not published, retried from the rollouts");
            self.desired = before;
            self.rebuild = true;
            return Vec::new();
        }
        changed
    }

    async fn publish(&mut self, d: &DesiredState) {
        let payload = d.sign(&self.ops_name, &self.key).to_json();
        match self.client.publish(topic::desired(&d.gateway), QoS::AtLeastOnce, true, payload).await {
            Ok(()) => bump(&self.counters.desired_published),
            Err(e) => {
                bump(&self.counters.publish_errors);
                tracing::error!(gateway = %d.gateway, error = %e, "cannot publish desired state");
            }
        }
    }
}
