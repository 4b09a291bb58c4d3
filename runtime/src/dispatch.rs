//! The dispatcher: owns every service instance and runs them to completion
//! on one thread. Messages from the broker are routed into per-instance
//! queues; each round hands every ready instance one batch; what a service
//! publishes is routed straight into its in-agent subscribers' queues (no
//! broker round trip, no thread hop) and mirrored to the broker if asked.
//!
//! A message stays in its queue until its instance has handled it; its MQTT
//! acknowledgement goes out when the last service holding it lets go. After
//! a fault the failed batch is replayed one message at a time so a poison
//! message is found, dead-lettered and the rest still delivered.

use crate::config::DispatchConfig;
use crate::host::bindings::outpost::service::types::Message;
use crate::host::{CallError, CallOutput, HostEngine, LoadedComponent, ServiceContext, ServiceInstance};
use crate::manifest::Manifest;
use crate::telemetry::ServiceMetrics;
use crate::topic;
use base64::Engine as _;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs when dropped: the MQTT acknowledgement of an accepted message.
pub struct AckToken(Option<Box<dyn FnOnce() + Send + Sync>>);

impl AckToken {
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        AckToken(Some(Box::new(f)))
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f()
        }
    }
}

/// A message accepted by the agent.
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub received_ms: u64,
    /// At-least-once input: never shed when a queue is full.
    pub reliable: bool,
    pub ack: Option<AckToken>,
}

pub type Envelope = Arc<Inbound>;

impl Inbound {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Inbound {
        Inbound { topic: topic.into(), payload: payload.into(), received_ms: now_ms(), reliable: true, ack: None }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where messages leave the dispatcher for the outside world.
pub trait Egress: Send {
    fn publish(&mut self, topic: &str, payload: &[u8]);
}

/// One installed service as the dispatcher sees it.
pub struct ServiceSpec {
    pub manifest: Manifest,
    pub loaded: LoadedComponent,
    pub context: ServiceContext,
    /// Effective config (JSON) passed to `init`.
    pub config_json: String,
    pub instances: u32,
}

enum Health {
    Running(ServiceInstance),
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
}

struct ServiceSlot {
    spec: ServiceSpec,
    metrics: ServiceMetrics,
    instances: Vec<InstanceSlot>,
    started: Instant,
}

/// A row of the agent's status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub instances: usize,
    pub running: usize,
    pub queued: usize,
    pub restarts: u64,
    pub uptime_s: u64,
}

pub struct Dispatcher {
    host: Arc<HostEngine>,
    services: Vec<ServiceSlot>,
    config: DispatchConfig,
    gateway: String,
    egress: Box<dyn Egress>,
    last_tick: Instant,
    /// Send every output to the egress, ignoring `bus.mirror` (offline replay).
    mirror_all: bool,
}

impl Dispatcher {
    pub fn new(host: Arc<HostEngine>, config: DispatchConfig, gateway: &str, egress: Box<dyn Egress>) -> Self {
        Dispatcher {
            host,
            services: Vec::new(),
            config,
            gateway: gateway.to_owned(),
            egress,
            last_tick: Instant::now(),
            mirror_all: false,
        }
    }

    /// Adds a service and starts its instances. An instance whose `init`
    /// fails is retried with backoff; the error is returned for the first.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<(), CallError> {
        let metrics = spec.context.metrics.clone();
        let mut slot = ServiceSlot { metrics, instances: Vec::new(), started: Instant::now(), spec };
        let mut first_error = None;
        for _ in 0..slot.spec.instances.max(1) {
            let health = match self.start_instance(&slot.spec) {
                Ok(i) => Health::Running(i),
                Err(e) => {
                    let until = Instant::now() + Duration::from_millis(self.config.initial_backoff_ms);
                    first_error.get_or_insert(e);
                    Health::Backoff { until }
                }
            };
            slot.instances.push(InstanceSlot {
                health,
                queue: VecDeque::new(),
                isolate: 0,
                faults_in_a_row: 0,
                last_fault: None,
            });
        }
        slot.metrics.instances.set(slot.running() as i64);
        self.services.push(slot);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn start_instance(&self, spec: &ServiceSpec) -> Result<ServiceInstance, CallError> {
        self.host.instantiate(&spec.loaded, &spec.manifest, spec.context.clone(), &spec.config_json)
    }

    /// Every topic filter some service subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut all: Vec<String> =
            self.services.iter().flat_map(|s| s.spec.manifest.bus.subscribe.iter().cloned()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Filters that only another local service publishes to: served inside
    /// the agent, so the agent need not subscribe to them at the broker.
    pub fn is_internal(&self, filter: &str) -> bool {
        self.services.iter().any(|s| s.spec.manifest.bus.publish.iter().any(|p| topic::overlap(p, filter)))
    }

    /// Routes one accepted message into the queues of its subscribers.
    pub fn accept(&mut self, env: Envelope) {
        self.route(env, None);
    }

    fn route(&mut self, env: Envelope, from: Option<usize>) {
        for (idx, slot) in self.services.iter_mut().enumerate() {
            if Some(idx) == from || !slot.spec.manifest.bus.subscribe.iter().any(|f| topic::matches(f, &env.topic)) {
                continue;
            }
            let limits = &slot.spec.manifest.limits;
            if env.payload.len() > limits.max_payload_bytes {
                slot.metrics.dropped("oversized");
                tracing::warn!(service = %slot.spec.manifest.service.name, topic = %env.topic, bytes = env.payload.len(),
                    limit = limits.max_payload_bytes, "payload larger than limits.max_payload_bytes; not delivered");
                continue;
            }
            let n = slot.instances.len();
            let i = if n == 1 { 0 } else { shard(&env.topic, slot.spec.manifest.scale.shard_by, n) };
            let inst = &mut slot.instances[i];
            if inst.queue.len() >= limits.queue_capacity && !env.reliable {
                slot.metrics.dropped("queue_full");
                continue;
            }
            inst.queue.push_back(env.clone());
        }
    }

    /// Runs every ready instance until no queue can make progress.
    pub fn run_until_idle(&mut self) {
        loop {
            let mut progressed = false;
            for s in 0..self.services.len() {
                for i in 0..self.services[s].instances.len() {
                    progressed |= self.step(s, i);
                }
            }
            if !progressed {
                break;
            }
        }
        for slot in &self.services {
            slot.metrics.queue_depth.set(slot.instances.iter().map(|i| i.queue.len()).sum::<usize>() as i64);
        }
    }

    /// Restarts due instances, then hands one batch to instance `i` of service `s`.
    fn step(&mut self, s: usize, i: usize) -> bool {
        let now = Instant::now();
        if let Health::Backoff { until } = self.services[s].instances[i].health {
            if now < until {
                return false;
            }
            self.restart(s, i);
            return true;
        }
        let slot = &mut self.services[s];
        let InstanceSlot { health, queue, isolate, .. } = &mut slot.instances[i];
        if queue.is_empty() {
            return false;
        }
        let Health::Running(instance) = health else { return false };
        let n = if *isolate > 0 { 1 } else { queue.len().min(self.config.max_batch) };
        // Lowered straight from the queued envelopes: no per-message copies.
        let batch: Vec<Message<'_>> = queue
            .iter()
            .take(n)
            .map(|e| Message { topic: &e.topic, payload: &e.payload, received_ms: e.received_ms })
            .collect();
        let started = Instant::now();
        let result = instance.handle(&batch);
        slot.metrics.handle_seconds.observe(started.elapsed().as_secs_f64());
        drop(batch);
        match result {
            Ok(output) => {
                self.finish_batch(s, i, n, output);
            }
            Err(CallError::Service(reason)) => {
                let slot = &mut self.services[s];
                slot.metrics.service_errors.inc();
                if slot.metrics.admit_log() != crate::telemetry::LogAdmission::Suppressed {
                    tracing::warn!(service = %slot.spec.manifest.service.name, instance = i, %reason, "handle returned an error; batch counted as handled");
                }
                let output = match &mut slot.instances[i].health {
                    Health::Running(inst) => inst.take_output(),
                    Health::Backoff { .. } => CallOutput::default(),
                };
                self.finish_batch(s, i, n, output);
            }
            Err(CallError::Fault { kind, message }) => {
                self.fault(s, i, n, &kind.to_string(), &message);
            }
        }
        true
    }

    fn finish_batch(&mut self, s: usize, i: usize, n: usize, output: CallOutput) {
        let slot = &mut self.services[s];
        slot.metrics.messages_in.inc_by(n as u64);
        let inst = &mut slot.instances[i];
        inst.isolate = inst.isolate.saturating_sub(n);
        if inst.last_fault.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            inst.faults_in_a_row = 0;
        }
        // Dropping the envelopes releases their acknowledgements.
        inst.queue.drain(..n);
        self.route_outputs(s, output);
    }

    fn route_outputs(&mut self, s: usize, output: CallOutput) {
        let mirror = self.mirror_all || self.services[s].spec.manifest.bus.mirror;
        let metrics = self.services[s].metrics.clone();
        for (topic_name, payload) in output.published {
            metrics.messages_out.inc();
            if mirror {
                self.egress.publish(&topic_name, &payload);
            }
            let env =
                Arc::new(Inbound { topic: topic_name, payload, received_ms: now_ms(), reliable: true, ack: None });
            self.route(env, Some(s));
        }
    }

    fn fault(&mut self, s: usize, i: usize, n: usize, kind: &str, message: &str) {
        let backoff = self.backoff(s, i);
        let gateway = self.gateway.clone();
        let slot = &mut self.services[s];
        let name = slot.spec.manifest.service.name.clone();
        slot.metrics.traps.inc();
        let inst = &mut slot.instances[i];
        inst.faults_in_a_row += 1;
        inst.last_fault = Some(Instant::now());
        inst.health = Health::Backoff { until: Instant::now() + backoff };
        tracing::error!(service = %name, instance = i, kind, error = %message, batch = n, backoff_ms = backoff.as_millis() as u64,
            "instance fault; restarting after backoff");
        let mut events = vec![(
            format!("outpost/{gateway}/events"),
            serde_json::json!({"event": "instance_fault", "service": name, "instance": i, "kind": kind,
                "error": message, "backoff_ms": backoff.as_millis() as u64, "ts_ms": now_ms()}),
        )];
        if n > 1 {
            // Replay the batch one by one to find the message at fault.
            inst.isolate = n;
        } else if let Some(poison) = inst.queue.pop_front() {
            inst.isolate = inst.isolate.saturating_sub(1);
            slot.metrics.dead_letters.inc();
            tracing::error!(service = %name, topic = %poison.topic, "message faulted the instance on its own; dead-lettered");
            events.push((
                format!("outpost/{gateway}/deadletter/{name}"),
                serde_json::json!({"service": name, "topic": poison.topic, "error": message,
                    "payload_base64": base64::engine::general_purpose::STANDARD.encode(&poison.payload),
                    "received_ms": poison.received_ms}),
            ));
        }
        for (t, body) in events {
            self.egress.publish(&t, body.to_string().as_bytes());
        }
    }

    fn backoff(&self, s: usize, i: usize) -> Duration {
        let tries = self.services[s].instances[i].faults_in_a_row.min(20);
        let ms = self.config.initial_backoff_ms.saturating_mul(1u64 << tries).min(self.config.max_backoff_ms);
        Duration::from_millis(ms)
    }

    fn restart(&mut self, s: usize, i: usize) {
        let result = self.start_instance(&self.services[s].spec);
        let backoff = self.backoff(s, i);
        let slot = &mut self.services[s];
        let name = slot.spec.manifest.service.name.clone();
        let inst = &mut slot.instances[i];
        match result {
            Ok(instance) => {
                inst.health = Health::Running(instance);
                slot.metrics.restarts.inc();
                tracing::info!(service = %name, instance = i, "instance restarted");
            }
            Err(e) => {
                inst.faults_in_a_row += 1;
                inst.health = Health::Backoff { until: Instant::now() + backoff };
                tracing::error!(service = %name, instance = i, error = %e, backoff_ms = backoff.as_millis() as u64, "instance failed to start");
            }
        }
        slot.metrics.instances.set(slot.running() as i64);
    }

    /// Calls `tick` on every running instance if the interval has passed.
    pub fn tick_if_due(&mut self) {
        if self.last_tick.elapsed() < Duration::from_millis(self.config.tick_interval_ms) {
            return;
        }
        self.last_tick = Instant::now();
        self.tick_all(now_ms());
    }

    pub fn tick_all(&mut self, now: u64) {
        for s in 0..self.services.len() {
            for i in 0..self.services[s].instances.len() {
                let Health::Running(instance) = &mut self.services[s].instances[i].health else { continue };
                match instance.tick(now) {
                    Ok(output) => self.route_outputs(s, output),
                    Err(CallError::Service(reason)) => {
                        self.services[s].metrics.service_errors.inc();
                        tracing::warn!(service = %self.services[s].spec.manifest.service.name, %reason, "tick returned an error");
                    }
                    Err(CallError::Fault { kind, message }) => self.fault(s, i, 0, &kind.to_string(), &message),
                }
            }
        }
    }

    /// How long the caller may sleep before something here needs attention.
    pub fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut wait = Duration::from_millis(self.config.tick_interval_ms).saturating_sub(self.last_tick.elapsed());
        for slot in &self.services {
            for inst in &slot.instances {
                if let Health::Backoff { until } = inst.health {
                    wait = wait.min(until.saturating_duration_since(now));
                }
            }
        }
        wait
    }

    /// Messages still waiting in any queue.
    pub fn queued(&self) -> usize {
        self.services.iter().flat_map(|s| s.instances.iter()).map(|i| i.queue.len()).sum()
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| ServiceStatus {
                name: s.spec.manifest.service.name.clone(),
                version: s.spec.manifest.service.version.clone(),
                digest: s.spec.loaded.digest.clone(),
                instances: s.instances.len(),
                running: s.running(),
                queued: s.instances.iter().map(|i| i.queue.len()).sum(),
                restarts: s.metrics.restarts.get(),
                uptime_s: s.started.elapsed().as_secs(),
            })
            .collect()
    }

    pub fn set_mirror_all(&mut self, on: bool) {
        self.mirror_all = on;
    }

    pub fn set_egress(&mut self, egress: Box<dyn Egress>) {
        self.egress = egress;
    }

    /// Publish filters of every local service (their outputs are routed in-agent).
    pub fn output_filters(&self) -> Vec<String> {
        self.services.iter().flat_map(|s| s.spec.manifest.bus.publish.iter().cloned()).collect()
    }
}

impl ServiceSlot {
    fn running(&self) -> usize {
        self.instances.iter().filter(|i| matches!(i.health, Health::Running(_))).count()
    }
}

/// Instance index for a topic: the shard key's hash modulo the instance count.
fn shard(topic_name: &str, shard_by: Option<usize>, n: usize) -> usize {
    let key = match shard_by {
        Some(level) => topic::segment(topic_name, level).unwrap_or(topic_name),
        None => topic_name,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn one_shard_key_always_goes_to_one_instance() {
        let a = shard("site/s1/truck-7/gnss/nmea", Some(2), 4);
        for signal in ["gnss/ubx", "payload", "fuel"] {
            assert_eq!(shard(&format!("site/s2/truck-7/{signal}"), Some(2), 4), a);
        }
    }

    #[test]
    fn keys_spread_over_instances() {
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[shard(&format!("site/s/asset-{i}/x"), Some(2), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
