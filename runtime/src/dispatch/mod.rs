//! The dispatcher: owns every service instance and runs them to completion
//! on one thread. Messages from the broker are routed into per-instance
//! queues; each round hands every ready instance one batch; what a service
//! publishes is routed straight into its in-agent subscribers' queues (no
//! broker round trip, no thread hop) and mirrored to the broker if asked.
//!
//! Services are keyed by name; each has a serving version and may have a
//! canary (a share of shard keys), a shadow (a copy of the traffic, outputs
//! held aside and compared) and a probation window after an upgrade. Every
//! change happens between batches, on this thread, so no message is ever
//! half-handled by two versions: the queued envelopes (and with them their
//! unsent MQTT acknowledgements) move to the version that takes over.
//!
//! A message stays queued until its instance has handled it; its MQTT
//! acknowledgement goes out when the last holder lets go, which includes
//! the outputs it caused (see [`Cause`]). After a fault the failed batch is
//! replayed one message at a time so a poison message is found,
//! dead-lettered and the rest still delivered.

mod envelope;
mod lifecycle;
mod probation;
mod seams;
mod shadow;
#[cfg(test)]
mod tests;

pub use envelope::{now_ms, stable_hash, AckToken, Cause, Egress, Envelope, Inbound, NullEgress};
pub use probation::ProbationPolicy;
pub use seams::{Instance, InstanceFactory, WasmFactory};
pub use shadow::{ShadowReport, TopicDiff};

use crate::config::DispatchConfig;
use crate::host::{CallError, CallOutput, CodeTier, HostEngine, LoadedComponent, ServiceContext};
use crate::manifest::Manifest;
use crate::status::ServiceStatus;
use crate::telemetry::ServiceMetrics;
use crate::topic;
use base64::Engine as _;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One installed service as the agent loads it (a compiled component).
pub struct ServiceSpec {
    pub manifest: Manifest,
    pub loaded: LoadedComponent,
    pub context: ServiceContext,
    /// Effective config (JSON) passed to `init`.
    pub config_json: String,
    pub instances: u32,
}

/// One version of a service as the dispatcher sees it: what to start and how.
#[derive(Clone)]
pub struct ServiceDef {
    pub manifest: Manifest,
    pub config_json: String,
    pub instances: u32,
    pub factory: Arc<dyn InstanceFactory>,
    pub metrics: ServiceMetrics,
}

impl ServiceDef {
    pub fn name(&self) -> &str {
        &self.manifest.service.name
    }
    pub fn version(&self) -> &str {
        &self.manifest.service.version
    }
}

/// Why a lifecycle change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("service '{0}' is not installed")]
    Unknown(String),
    #[error("service '{0}' is already installed (use upgrade)")]
    Exists(String),
    #[error("{service}@{version} failed to start: {error}")]
    Start { service: String, version: String, error: CallError },
    #[error("service '{service}': {message}")]
    Refused { service: String, message: String },
}

enum Health {
    Running(Box<dyn Instance>),
    /// Waiting to restart after a fault or a failed init.
    Backoff {
        until: Instant,
    },
}

struct InstanceSlot {
    health: Health,
    queue: VecDeque<Envelope>,
    /// Messages at the queue's front to hand over one at a time after a fault.
    isolate: usize,
    faults_in_a_row: u32,
    last_fault: Option<Instant>,
    /// Smoothed cost of one message, for sizing batches to the deadline.
    per_message: Duration,
}

/// The running instances of one version.
struct Deployment {
    def: Arc<ServiceDef>,
    /// Which compiler made the code its instances started from.
    code: CodeTier,
    instances: Vec<InstanceSlot>,
    started: Instant,
    /// Faults since this deployment started (probation counts these).
    faults: u64,
}

/// A share of shard keys routed to a new version.
struct Canary {
    deployment: Deployment,
    percent: u8,
}

/// After an upgrade: the previous version, kept for automatic rollback
/// until the window passes without a crash loop and the new version is
/// judged no worse (`probation.rs`).
struct Probation {
    previous: Arc<ServiceDef>,
    until: Instant,
    policy: ProbationPolicy,
    baseline: probation::Baseline,
}

struct ServiceSlot {
    current: Deployment,
    canary: Option<Canary>,
    shadow: Option<(Deployment, ShadowReport)>,
    probation: Option<Probation>,
}

/// Which deployment of a service: the serving one, its canary, its shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Canary,
    Shadow,
}

/// Something the agent should know about a change the dispatcher made on
/// its own (automatic rollback), to persist and report.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    RolledBack { service: String, from: String, to: String, reason: String },
    Promoted { service: String, version: String },
}

pub struct Dispatcher {
    host: Option<Arc<HostEngine>>,
    services: Vec<ServiceSlot>,
    config: DispatchConfig,
    gateway: String,
    egress: Box<dyn Egress>,
    last_tick: Instant,
    /// Send every output to the egress, ignoring `bus.mirror` (offline replay).
    mirror_all: bool,
    notices: Vec<Notice>,
    events: crate::events::Hub,
}

impl Dispatcher {
    pub fn new(host: Arc<HostEngine>, config: DispatchConfig, gateway: &str, egress: Box<dyn Egress>) -> Self {
        let mut d = Self::without_host(config, gateway, egress);
        d.host = Some(host);
        d
    }

    /// A dispatcher whose services come with their own factories (tests).
    pub fn without_host(config: DispatchConfig, gateway: &str, egress: Box<dyn Egress>) -> Self {
        Dispatcher {
            host: None,
            services: Vec::new(),
            config,
            gateway: gateway.to_owned(),
            egress,
            last_tick: Instant::now(),
            mirror_all: false,
            notices: Vec::new(),
            events: crate::events::Hub::default(),
        }
    }

    /// Turns a loaded component into a definition on this dispatcher's engine.
    pub fn define(&self, spec: ServiceSpec) -> Result<ServiceDef, LifecycleError> {
        let host = self.host.clone().ok_or_else(|| LifecycleError::Refused {
            service: spec.manifest.service.name.clone(),
            message: "this dispatcher has no engine".into(),
        })?;
        Ok(ServiceDef {
            metrics: spec.context.metrics.clone(),
            factory: Arc::new(WasmFactory::new(host, spec.loaded, Arc::new(spec.context))),
            manifest: spec.manifest,
            config_json: spec.config_json,
            instances: spec.instances,
        })
    }

    /// Adds a service and starts its instances. An instance whose `init`
    /// fails is retried with backoff; the error is returned for the first.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<(), CallError> {
        let def = self.define(spec).map_err(|e| CallError::Internal(e.to_string()))?;
        let (deployment, first_error) = self.deploy(Arc::new(def));
        self.services.push(ServiceSlot { current: deployment, canary: None, shadow: None, probation: None });
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Changes made by the dispatcher itself since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Installed services: name, serving version and the definition.
    pub fn definitions(&self) -> Vec<Arc<ServiceDef>> {
        self.services.iter().map(|s| s.current.def.clone()).collect()
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.current.def.name() == name)
    }

    /// Starts every instance of a version; instances whose init fails wait
    /// in backoff. Returns the first init error.
    fn deploy(&self, def: Arc<ServiceDef>) -> (Deployment, Option<CallError>) {
        let mut first_error = None;
        let mut instances = Vec::new();
        for _ in 0..def.instances.max(1) {
            let health = match def.factory.start(&def.manifest, &def.config_json) {
                Ok(i) => Health::Running(i),
                Err(e) => {
                    first_error.get_or_insert(e);
                    Health::Backoff { until: Instant::now() + Duration::from_millis(self.config.initial_backoff_ms) }
                }
            };
            instances.push(InstanceSlot::new(health));
        }
        let code = def.factory.code_tier();
        let d = Deployment { def, code, instances, started: Instant::now(), faults: 0 };
        d.def.metrics.instances.set(d.running() as i64);
        (d, first_error)
    }

    /// Like `deploy`, but every instance must start.
    fn deploy_strict(&self, def: Arc<ServiceDef>) -> Result<Deployment, LifecycleError> {
        let (service, version) = (def.name().to_owned(), def.version().to_owned());
        match self.deploy(def) {
            (d, None) => Ok(d),
            (_, Some(error)) => Err(LifecycleError::Start { service, version, error }),
        }
    }

    /// Every topic filter some service subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .services
            .iter()
            .flat_map(|s| s.deployments())
            .flat_map(|(_, d)| d.def.manifest.bus.subscribe.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Filters that only another local service publishes to: served inside
    /// the agent, so the agent need not subscribe to them at the broker.
    pub fn is_internal(&self, filter: &str) -> bool {
        self.output_filters().iter().any(|p| topic::overlap(p, filter))
    }

    /// What the agent subscribes to at the broker now.
    pub fn broker_subscriptions(&self) -> Vec<String> {
        self.subscriptions().into_iter().filter(|f| !self.is_internal(f)).collect()
    }

    /// Routes one accepted message into the queues of its subscribers.
    pub fn accept(&mut self, env: Envelope) {
        self.route(env, None);
    }

    fn route(&mut self, env: Envelope, from: Option<usize>) {
        for (idx, slot) in self.services.iter_mut().enumerate() {
            if Some(idx) == from
                || !slot.current.def.manifest.bus.subscribe.iter().any(|f| topic::matches(f, &env.topic))
            {
                continue;
            }
            // Read per message, so copied out rather than holding the definition.
            let def = &slot.current.def;
            let (max_payload, capacity, shard_by) = (
                def.manifest.limits.max_payload_bytes,
                def.manifest.limits.queue_capacity,
                def.manifest.scale.shard_by,
            );
            if env.payload.len() > max_payload {
                def.metrics.dropped("oversized");
                tracing::warn!(service = %def.name(), topic = %env.topic, bytes = env.payload.len(),
                    limit = max_payload, "payload larger than limits.max_payload_bytes; not delivered");
                continue;
            }
            if let Some((shadow, _)) = &mut slot.shadow {
                // A copy without the acknowledgement: a slow or failing
                // shadow never holds back live traffic.
                let copy = Inbound {
                    topic: env.topic.clone(),
                    payload: env.payload.clone(),
                    received_ms: env.received_ms,
                    reliable: false,
                    ack: None,
                    cause: None,
                };
                shadow.push(Arc::new(copy), shard_by);
            }
            let target = match &mut slot.canary {
                Some(c) if canary_bucket(&env.topic, shard_by) < u64::from(c.percent) => &mut c.deployment,
                _ => &mut slot.current,
            };
            let i = target.shard_of(&env.topic);
            if target.instances[i].queue.len() >= capacity && !env.reliable {
                slot.current.def.metrics.dropped("queue_full");
                continue;
            }
            target.instances[i].queue.push_back(env.clone());
        }
    }

    /// Runs every ready instance until no queue can make progress.
    pub fn run_until_idle(&mut self) {
        self.run_for(None);
    }

    /// Runs ready instances until idle or until `budget` has passed (the
    /// caller then serves the network and comes back), so one turn never
    /// starves MQTT keep-alive and acknowledgements.
    pub fn run_for(&mut self, budget: Option<Duration>) {
        let started = Instant::now();
        let consumers = self.local_consumers();
        loop {
            let mut progressed = false;
            for (s, consumers) in consumers.iter().enumerate() {
                for role in [Role::Current, Role::Canary, Role::Shadow] {
                    let n = self.services[s].deployment(role).map_or(0, |d| d.instances.len());
                    for i in 0..n {
                        progressed |= self.step(s, role, i, consumers);
                    }
                }
            }
            self.check_probation();
            if !progressed || budget.is_some_and(|b| started.elapsed() >= b) {
                break;
            }
        }
        for slot in &self.services {
            for (_, d) in slot.deployments() {
                d.def.metrics.queue_depth.set(d.queued() as i64);
            }
        }
    }

    /// For each service, the other local services that subscribe to what
    /// it publishes. Worked out once per `run_for`, not per batch: matching
    /// filters against filters is string work the hot path need not repeat.
    fn local_consumers(&self) -> Vec<Vec<usize>> {
        let services = &self.services;
        services
            .iter()
            .enumerate()
            .map(|(s, producer)| {
                let publishes = &producer.current.def.manifest.bus.publish;
                (0..services.len())
                    .filter(|&c| {
                        c != s
                            && services[c]
                                .current
                                .def
                                .manifest
                                .bus
                                .subscribe
                                .iter()
                                .any(|f| publishes.iter().any(|p| topic::overlap(p, f)))
                    })
                    .collect()
            })
            .collect()
    }

    /// Would a batch from a service overflow one of its local `consumers`'
    /// queues? Then it waits (back-pressure inside the agent), and with it
    /// the acknowledgements of its input, which in turn holds the broker back.
    fn downstream_full(&self, consumers: &[usize]) -> bool {
        consumers.iter().any(|&c| {
            let current = &self.services[c].current;
            current.instances.iter().any(|i| i.queue.len() >= current.def.manifest.limits.queue_capacity)
        })
    }

    /// Restarts a due instance, or hands one batch to it.
    fn step(&mut self, s: usize, role: Role, i: usize, consumers: &[usize]) -> bool {
        let now = Instant::now();
        let max_batch = self.config.max_batch;
        let Some(dep) = self.services[s].deployment_mut(role) else { return false };
        if let Health::Backoff { until } = dep.instances[i].health {
            if now < until {
                return false;
            }
            self.restart(s, role, i);
            return true;
        }
        if dep.instances[i].queue.is_empty() {
            return false;
        }
        if role != Role::Shadow && self.downstream_full(consumers) {
            return false;
        }
        let Some(dep) = self.services[s].deployment_mut(role) else { return false };
        let def = dep.def.clone();
        let inst = &mut dep.instances[i];
        let Health::Running(instance) = &mut inst.health else { return false };
        let n = if inst.isolate > 0 {
            1
        } else {
            batch_size(inst.per_message, Duration::from_millis(def.manifest.limits.call_deadline_ms), max_batch)
                .min(inst.queue.len())
        };
        let batch = &inst.queue.make_contiguous()[..n];
        let started = Instant::now();
        let result = instance.handle(batch);
        let took = started.elapsed();
        def.metrics.handle_seconds.observe(took.as_secs_f64());
        inst.per_message = smooth(inst.per_message, took / n as u32);
        match result {
            Ok(output) => self.finish_batch(s, role, i, n, output),
            Err(CallError::Service(reason)) => {
                def.metrics.service_errors.inc();
                if def.metrics.admit_log() {
                    tracing::warn!(service = %def.name(), instance = i, %reason, "handle refused its input (bad input or config); batch counted as handled");
                }
                self.finish_batch(s, role, i, n, CallOutput::default())
            }
            Err(CallError::Internal(reason)) => {
                def.metrics.service_errors.inc();
                self.failed_call(s, role, i, n, "internal error", &reason, true);
            }
            Err(CallError::Fault { kind, message }) => {
                let poison_possible = kind != crate::host::FaultKind::State;
                self.failed_call(s, role, i, n, &kind.to_string(), &message, poison_possible);
            }
        }
        true
    }

    fn finish_batch(&mut self, s: usize, role: Role, i: usize, n: usize, output: CallOutput) {
        let Some(dep) = self.services[s].deployment_mut(role) else { return };
        dep.def.metrics.messages_in.inc_by(n as u64);
        let inst = &mut dep.instances[i];
        inst.isolate = inst.isolate.saturating_sub(n);
        if inst.last_fault.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            inst.faults_in_a_row = 0;
        }
        // The batch's envelopes become the cause of its outputs; once those
        // are safe (and the queue lets go here), the inputs are acknowledged.
        let cause: Cause = inst.queue.drain(..n).collect();
        if role == Role::Shadow {
            if let Some((_, report)) = &mut self.services[s].shadow {
                report.record_shadow(&output.published);
            }
            return;
        }
        if role == Role::Current || role == Role::Canary {
            if let Some((_, report)) = &mut self.services[s].shadow {
                report.record_live(&output.published);
            }
        }
        self.route_outputs(s, output, &cause);
    }

    fn route_outputs(&mut self, s: usize, output: CallOutput, cause: &Cause) {
        let def = self.services[s].current.def.clone();
        let mirror = self.mirror_all || def.manifest.bus.mirror;
        // One clock read per batch: its outputs were made in the same call.
        let now = now_ms();
        def.metrics.messages_out.inc_by(output.published.len() as u64);
        for (topic_name, payload) in output.published {
            self.events.record_output(def.name(), &topic_name, &payload, now);
            if mirror {
                self.egress.publish_caused(&topic_name, &payload, cause);
            }
            let env = Arc::new(Inbound {
                topic: topic_name,
                payload,
                received_ms: now,
                reliable: true,
                ack: None,
                cause: (!cause.is_empty()).then(|| cause.clone()),
            });
            self.route(env, Some(s));
        }
    }

    /// A call that did not complete: nothing it did stands. With more than
    /// one message the batch is replayed one by one; a single message that
    /// fails on its own is dead-lettered (unless the failure is the agent's,
    /// like its state store). A fault restarts the instance after backoff.
    #[allow(clippy::too_many_arguments)]
    fn failed_call(
        &mut self,
        s: usize,
        role: Role,
        i: usize,
        n: usize,
        kind: &str,
        message: &str,
        poison_possible: bool,
    ) {
        let restart = kind != "internal error";
        let backoff = self.backoff(s, role, i);
        let gateway = self.gateway.clone();
        let Some(dep) = self.services[s].deployment_mut(role) else { return };
        let def = dep.def.clone();
        let name = def.name().to_owned();
        let inst = &mut dep.instances[i];
        let mut events = Vec::new();
        if restart {
            def.metrics.traps.inc();
            dep.faults += 1;
            inst.faults_in_a_row += 1;
            inst.last_fault = Some(Instant::now());
            inst.health = Health::Backoff { until: Instant::now() + backoff };
            tracing::error!(service = %name, version = %def.version(), instance = i, kind, error = %message, batch = n,
                backoff_ms = backoff.as_millis() as u64, "instance fault; restarting after backoff");
            events.push((
                format!("outpost/{gateway}/events"),
                serde_json::json!({"event": "instance_fault", "service": name, "version": def.version(), "instance": i,
                    "kind": kind, "error": message, "backoff_ms": backoff.as_millis() as u64, "ts_ms": now_ms()}),
            ));
        } else {
            tracing::warn!(service = %name, instance = i, error = %message, batch = n, "handle failed (internal error); outputs discarded, batch isolated");
        }
        if n > 1 {
            // Replay the batch one by one to find the message at fault.
            inst.isolate = n;
        } else if n == 1 && poison_possible {
            if let Some(poison) = inst.queue.pop_front() {
                inst.isolate = inst.isolate.saturating_sub(1);
                def.metrics.dead_letters.inc();
                tracing::error!(service = %name, topic = %poison.topic, "message failed on its own; dead-lettered");
                if role != Role::Shadow {
                    events.push((
                        format!("outpost/{gateway}/deadletter/{name}"),
                        serde_json::json!({"service": name, "version": def.version(), "topic": poison.topic, "error": message,
                            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&poison.payload),
                            "received_ms": poison.received_ms}),
                    ));
                }
            }
        }
        for (t, body) in events {
            self.emit(&t, &body.to_string());
        }
    }

    /// An agent event: on the bus, and to management API readers.
    fn emit(&mut self, topic: &str, json: &str) {
        self.egress.publish(topic, json.as_bytes());
        self.events.raise(topic, json);
    }

    fn backoff(&self, s: usize, role: Role, i: usize) -> Duration {
        let tries = self.services[s].deployment(role).map_or(0, |d| d.instances[i].faults_in_a_row.min(20));
        let ms = self.config.initial_backoff_ms.saturating_mul(1u64 << tries).min(self.config.max_backoff_ms);
        Duration::from_millis(ms)
    }

    fn restart(&mut self, s: usize, role: Role, i: usize) {
        let backoff = self.backoff(s, role, i);
        let Some(dep) = self.services[s].deployment_mut(role) else { return };
        let def = dep.def.clone();
        let result = def.factory.start(&def.manifest, &def.config_json);
        let inst = &mut dep.instances[i];
        match result {
            Ok(instance) => {
                inst.health = Health::Running(instance);
                def.metrics.restarts.inc();
                tracing::info!(service = %def.name(), version = %def.version(), instance = i, "instance restarted");
            }
            Err(e) => {
                inst.faults_in_a_row += 1;
                dep.faults += 1;
                inst.health = Health::Backoff { until: Instant::now() + backoff };
                tracing::error!(service = %def.name(), instance = i, error = %e, backoff_ms = backoff.as_millis() as u64, "instance failed to start");
            }
        }
        if role == Role::Current {
            def.metrics.instances.set(dep.running() as i64);
        }
    }

    /// Calls `tick` on every running instance if the interval has passed.
    pub fn tick_if_due(&mut self) {
        if self.last_tick.elapsed() < Duration::from_millis(self.config.tick_interval_ms) {
            return;
        }
        self.last_tick = Instant::now();
        self.tick_all(now_ms());
        for slot in &self.services {
            for (_, d) in slot.deployments() {
                d.def.metrics.report_held_back();
            }
        }
    }

    pub fn tick_all(&mut self, now: u64) {
        for s in 0..self.services.len() {
            for role in [Role::Current, Role::Canary, Role::Shadow] {
                let n = self.services[s].deployment(role).map_or(0, |d| d.instances.len());
                for i in 0..n {
                    let Some(dep) = self.services[s].deployment_mut(role) else { continue };
                    let Health::Running(instance) = &mut dep.instances[i].health else { continue };
                    let empty: Cause = Arc::new([]);
                    match instance.tick(now) {
                        Ok(output) if role == Role::Shadow => {
                            if let Some((_, r)) = &mut self.services[s].shadow {
                                r.record_shadow(&output.published);
                            }
                        }
                        Ok(output) => self.route_outputs(s, output, &empty),
                        Err(CallError::Service(reason) | CallError::Internal(reason)) => {
                            dep.def.metrics.service_errors.inc();
                            tracing::warn!(service = %dep.def.name(), %reason, "tick returned an error");
                        }
                        // No message is at fault in a tick: nothing is dead-lettered.
                        Err(CallError::Fault { kind, message }) => {
                            self.failed_call(s, role, i, 0, &kind.to_string(), &message, false)
                        }
                    }
                }
            }
        }
    }

    /// How long the caller may sleep before something here needs attention.
    pub fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut wait = Duration::from_millis(self.config.tick_interval_ms).saturating_sub(self.last_tick.elapsed());
        for slot in &self.services {
            for (_, d) in slot.deployments() {
                for inst in &d.instances {
                    if let Health::Backoff { until } = inst.health {
                        wait = wait.min(until.saturating_duration_since(now));
                    }
                }
            }
            if let Some(p) = &slot.probation {
                wait = wait.min(p.until.saturating_duration_since(now));
            }
        }
        wait
    }

    /// Messages still waiting in any live queue (shadow copies not counted).
    pub fn queued(&self) -> usize {
        self.services.iter().map(|s| s.current.queued() + s.canary.as_ref().map_or(0, |c| c.deployment.queued())).sum()
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| {
                let d = &s.current;
                ServiceStatus {
                    name: d.def.name().to_owned(),
                    version: d.def.version().to_owned(),
                    digest: d.def.factory.digest(),
                    code: d.code,
                    instances: d.instances.len(),
                    running: d.running(),
                    queued: d.queued(),
                    restarts: d.def.metrics.restarts.get(),
                    uptime_s: d.started.elapsed().as_secs(),
                    canary: s.canary.as_ref().map(|c| (c.deployment.def.version().to_owned(), c.percent)),
                    shadow: s.shadow.as_ref().map(|(d, _)| d.def.version().to_owned()),
                    probation: s.probation.is_some(),
                    kpis: d.def.manifest.kpis.iter().map(|(n, k)| crate::status::DeclaredKpi::new(n, k)).collect(),
                }
            })
            .collect()
    }

    /// Where agent events go besides the bus (the API's StreamEvents).
    pub fn set_events(&mut self, hub: crate::events::Hub) {
        self.events = hub;
    }

    pub fn set_mirror_all(&mut self, on: bool) {
        self.mirror_all = on;
    }

    pub fn set_egress(&mut self, egress: Box<dyn Egress>) {
        self.egress = egress;
    }

    /// Publish filters of every local service (their outputs are routed in-agent).
    pub fn output_filters(&self) -> Vec<String> {
        self.services.iter().flat_map(|s| s.current.def.manifest.bus.publish.iter().cloned()).collect()
    }
}

impl InstanceSlot {
    fn new(health: Health) -> Self {
        InstanceSlot {
            health,
            queue: VecDeque::new(),
            isolate: 0,
            faults_in_a_row: 0,
            last_fault: None,
            per_message: Duration::ZERO,
        }
    }
}

impl Deployment {
    fn running(&self) -> usize {
        self.instances.iter().filter(|i| matches!(i.health, Health::Running(_))).count()
    }

    fn queued(&self) -> usize {
        self.instances.iter().map(|i| i.queue.len()).sum()
    }

    fn shard_of(&self, topic_name: &str) -> usize {
        shard(topic_name, self.def.manifest.scale.shard_by, self.instances.len())
    }

    fn push(&mut self, env: Envelope, _shard_by: Option<usize>) {
        let i = self.shard_of(&env.topic);
        self.instances[i].queue.push_back(env);
    }

    /// The same version with no instances (to rebuild around).
    fn shell(&self) -> Deployment {
        Deployment {
            def: self.def.clone(),
            code: self.code,
            instances: Vec::new(),
            started: self.started,
            faults: self.faults,
        }
    }
}

impl ServiceSlot {
    fn deployment(&self, role: Role) -> Option<&Deployment> {
        match role {
            Role::Current => Some(&self.current),
            Role::Canary => self.canary.as_ref().map(|c| &c.deployment),
            Role::Shadow => self.shadow.as_ref().map(|(d, _)| d),
        }
    }

    fn deployment_mut(&mut self, role: Role) -> Option<&mut Deployment> {
        match role {
            Role::Current => Some(&mut self.current),
            Role::Canary => self.canary.as_mut().map(|c| &mut c.deployment),
            Role::Shadow => self.shadow.as_mut().map(|(d, _)| d),
        }
    }

    fn deployments(&self) -> impl Iterator<Item = (Role, &Deployment)> {
        [Role::Current, Role::Canary, Role::Shadow].into_iter().filter_map(|r| self.deployment(r).map(|d| (r, d)))
    }
}

/// Moves every queued message of `from` into `to`, queue by queue, so each
/// shard key's messages keep their order (a key lives in one queue).
fn drain_into(mut from: Deployment, to: &mut Deployment, shard_by: Option<usize>) {
    for inst in &mut from.instances {
        for env in inst.queue.drain(..) {
            to.push(env, shard_by);
        }
    }
    // The version that stopped serving shows no instances any more (its
    // counters stay); with the same version the series is the same one.
    if from.def.version() != to.def.version() {
        from.def.metrics.retire();
    }
    to.def.metrics.instances.set(to.running() as i64);
}

/// How many messages fit in one call: half the deadline at the observed
/// per-message cost, so a backlog never turns a healthy service's batch
/// into a deadline fault.
fn batch_size(per_message: Duration, deadline: Duration, max_batch: usize) -> usize {
    if per_message.is_zero() {
        // Nothing measured yet: a small first batch to learn the cost.
        return max_batch.clamp(1, 16);
    }
    let fit = (deadline / 2).as_nanos() / per_message.as_nanos().max(1);
    (fit as usize).clamp(1, max_batch.max(1))
}

fn smooth(old: Duration, new: Duration) -> Duration {
    if old.is_zero() {
        new
    } else {
        // Rise fast (a slow message must shrink the next batch), fall slowly.
        if new > old {
            new
        } else {
            (old * 7 + new) / 8
        }
    }
}

fn shard_key(topic_name: &str, shard_by: Option<usize>) -> &str {
    match shard_by {
        Some(level) => topic::segment(topic_name, level).unwrap_or(topic_name),
        None => topic_name,
    }
}

/// Instance index for a topic: the shard key's stable hash modulo the count.
fn shard(topic_name: &str, shard_by: Option<usize>, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (stable_hash(shard_key(topic_name, shard_by)) % n as u64) as usize
}

/// Canary bucket 0..100 of a topic's shard key (independent of the
/// instance shard: a different mix of the same stable hash).
fn canary_bucket(topic_name: &str, shard_by: Option<usize>) -> u64 {
    stable_hash(shard_key(topic_name, shard_by)).rotate_left(29) % 100
}
