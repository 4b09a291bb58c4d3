//! The agent: reads its config, starts the broker (embedded) or connects to
//! one, starts every service of the desired state, and runs the dispatcher
//! until told to stop; then it drains what it accepted before exiting.
//! Lifecycle changes (deploy, upgrade, scale, ...) arrive at run time
//! through [`crate::control`] and are applied between two batches.

use crate::bus::{Link, LinkOptions};
use crate::config::{AgentConfig, BrokerMode};
use crate::control::{self, CommandEnvelope, DesiredOverrides, Lifecycle};
use crate::dispatch::{Dispatcher, Notice, NullEgress};
use crate::host::{EngineOptions, HostEngine};
use crate::state::StateStore;
use crate::status::{AgentStatus, StatusBoard};
use crate::telemetry::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Engine(#[from] crate::host::LoadError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("{0}")]
    Config(String),
    #[error("cannot serve metrics on {addr}: {message} (set [metrics] listen to a free address, or remove it)")]
    Metrics { addr: String, message: String },
    #[error("cannot serve the management API on {addr}: {message} (set [api] listen to a free address, or remove it)")]
    Api { addr: String, message: String },
    #[error("cannot start the dispatcher thread: {0}")]
    Thread(String),
    #[error("the dispatcher thread failed: {0}; the agent stops so that its supervisor restarts it")]
    IoThread(String),
}

pub struct Agent {
    config: AgentConfig,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Agent {
        Agent { config }
    }

    /// Runs until `shutdown` completes, then drains and returns.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut phase = Phases::new(started);
        let cfg = Arc::new(self.config);
        let pool = EngineOptions {
            max_instances: cfg.dispatch.max_instances.unwrap_or_else(crate::host::default_max_instances),
            ..EngineOptions::default()
        };
        tracing::debug!(slots = pool.max_instances, "instance pool");
        // The engine (instance pool, linker) needs nothing from the state
        // store, the broker or the package scan: it is built beside them.
        let engine = std::thread::Builder::new()
            .name("outpost-engine".into())
            .spawn(move || HostEngine::new(&pool))
            .map_err(|e| AgentError::Thread(e.to_string()))?;
        private_dir(&cfg.state_dir);
        // So is the state store, which the broker and the link do not need.
        let state_file = cfg.state_dir.join("state.redb");
        let state = std::thread::Builder::new()
            .name("outpost-state".into())
            .spawn(move || StateStore::open(&state_file))
            .map_err(|e| AgentError::Thread(e.to_string()))?;
        let embedded_secret = if cfg.broker.mode == BrokerMode::Embedded {
            Some(crate::broker::start_embedded(&cfg.broker, &cfg.state_dir, &cfg.gateway)?)
        } else {
            None
        };
        phase.done("broker start");

        // The link connects on the I/O thread while the services start; it
        // subscribes (and the agent is ready) once they have.
        let (host_name, port) = cfg.broker.client_target().map_err(AgentError::Config)?;
        let status_topic = format!("outpost/{}/status", cfg.gateway);
        let credentials = match &embedded_secret {
            Some(secret) => Some(secret.clone()),
            None => crate::broker::read_credentials(cfg.broker.client_credentials_file.as_deref())
                .map_err(AgentError::Config)?,
        };
        let client_id = match &embedded_secret {
            Some((_, secret)) => crate::broker::agent_client_id(&cfg.gateway, secret),
            None => format!("outpost-{}", cfg.gateway),
        };
        let metrics = Metrics::new();
        let mut link = Link::new(
            LinkOptions {
                host: host_name.clone(),
                port,
                client_id,
                keep_alive: Duration::from_secs(cfg.broker.keep_alive_s),
                subscriptions: Vec::new(),
                last_will: Some((status_topic.clone(), br#"{"state":"offline"}"#.to_vec())),
                credentials,
                hold_acks_for_outputs: cfg.broker.mode == BrokerMode::External,
            },
            metrics.clone(),
        );
        link.await_subscriptions();
        if embedded_secret.is_some() {
            link.broker_starting(Duration::from_secs(2));
        }
        let (egress, link_state) = (link.egress(), link.state.clone());
        let (parts_tx, parts_rx) = tokio::sync::oneshot::channel::<(IoParts, Vec<String>)>();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let io = std::thread::Builder::new()
            .name("outpost-io".into())
            .spawn(move || {
                // Dropped when this thread ends, normally or by a panic.
                let _ended = ended_tx;
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => {
                        if let Some(io) = IoLoop::connect_while_starting(&rt, link, parts_rx) {
                            io.run(&rt);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start the I/O thread's runtime"),
                }
            })
            .map_err(|e| AgentError::Thread(e.to_string()))?;
        phase.done("I/O thread started, connecting");
        let state = match state.join() {
            Ok(state) => Arc::new(state?),
            Err(_) => return Err(AgentError::Thread("the thread opening the state store panicked".into())),
        };
        phase.done("state store open (waited for)");
        let (desired, mut rejected) = control::boot_desired(&cfg, &state)?;
        phase.done("package scan");
        let host = match engine.join() {
            Ok(host) => Arc::new(host?),
            Err(_) => return Err(AgentError::Thread("the thread building the wasmtime engine panicked".into())),
        };
        phase.done("engine, pool and linker (waited for)");

        let board = StatusBoard::new(
            AgentStatus {
                gateway: cfg.gateway.clone(),
                site: cfg.site.clone(),
                state: "starting",
                broker: format!("{}:{port} ({})", host_name, cfg.broker.mode),
                mqtt_connected: false,
                refused_subscriptions: Vec::new(),
                services: Vec::new(),
                rejected: rejected.clone(),
                uptime_s: 0,
                ready_ms: None,
            },
            metrics.clone(),
        );
        let (commands_tx, commands_rx) = mpsc::unbounded_channel::<CommandEnvelope>();
        let (notices_tx, mut notices_rx) = mpsc::unbounded_channel::<Notice>();
        let hub = crate::events::Hub::default();
        let lifecycle = Arc::new(Lifecycle::new(
            cfg.clone(),
            host.clone(),
            state.clone(),
            metrics.clone(),
            commands_tx,
            desired.clone(),
            hub.clone(),
        )?);
        {
            let lifecycle = lifecycle.clone();
            tokio::spawn(async move {
                while let Some(n) = notices_rx.recv().await {
                    lifecycle.observe(n).await;
                }
            });
        }
        // Status and API come up on the runtime's workers while the services
        // start (the status says "starting"; commands wait for the I/O thread).
        let http = cfg.metrics.listen.map(|addr| {
            let serving = crate::http::serve(addr, board.clone(), hub.recent());
            tokio::spawn(async move {
                serving.await.map_err(|e| AgentError::Metrics { addr: addr.to_string(), message: e.to_string() })
            })
        });
        let api = cfg.api.listen.map(|addr| {
            let (cfg, board, lifecycle, hub) = (cfg.clone(), board.clone(), lifecycle.clone(), hub.clone());
            tokio::spawn(async move {
                let failed = |message: String| AgentError::Api { addr: addr.to_string(), message };
                let token = crate::api::load_or_create_token(&cfg.token_file()).map_err(failed)?;
                let tls = cfg.api.tls_identity().map_err(failed)?;
                crate::api::serve(addr, board, lifecycle, hub, token, tls).await.map_err(|e| failed(e.to_string()))
            })
        });
        // Init outputs before the link takes over are discarded.
        let mut dispatcher = Dispatcher::new(host.clone(), cfg.dispatch.clone(), &cfg.gateway, Box::new(NullEgress));
        dispatcher.set_events(hub.clone());
        let optimize = start_desired(&cfg, &host, &state, &metrics, &desired, &mut dispatcher, &mut rejected);
        phase.done("services loaded and started");
        for name in cfg.services.keys() {
            if !desired.services.contains_key(name) {
                tracing::warn!(service = %name, "config has [services.{name}] but no such service is installed");
            }
        }
        dispatcher.set_egress(Box::new(egress));

        for serving in [http, api].into_iter().flatten() {
            serving.await.map_err(|e| AgentError::Thread(format!("starting the status or API server: {e}")))??;
        }
        board.update(|s| {
            s.services = dispatcher.status();
            s.rejected = rejected;
        });
        phase.done("HTTP and API listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if crate::uplink::enabled(&cfg) {
            let tap = crate::uplink::start(cfg.clone(), lifecycle.clone(), board.clone(), hub.clone(), stop_rx.clone())
                .map_err(|e| AgentError::Config(e.to_string()))?;
            hub.set_uplink(tap);
        }
        let subscriptions = dispatcher.broker_subscriptions();
        let parts = IoParts {
            dispatcher,
            stop: stop_rx,
            commands: commands_rx,
            notices: notices_tx,
            board: board.clone(),
            drain: Duration::from_millis(cfg.dispatch.drain_timeout_ms),
            turn_budget: turn_budget(&cfg),
            started,
            status_topic,
        };
        if parts_tx.send((parts, subscriptions)).is_err() {
            return Err(AgentError::IoThread("it ended before the services were handed to it".into()));
        }
        phase.done("services handed to the I/O thread");
        // After ready, in the background: services that started on baseline
        // code move to optimized code, cache entries no longer loadable go,
        // then the code pages start-up alone needed leave the resident set
        // (`residency`). It waits for the link so as not to slow the start
        // it follows.
        {
            let (lifecycle, ready, host, cfg) = (lifecycle.clone(), link_state.clone(), host.clone(), cfg.clone());
            tokio::spawn(async move {
                let waited = Instant::now();
                while !ready.is_ready.load(Ordering::Acquire) && waited.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if !optimize.is_empty() {
                    lifecycle.optimize(optimize).await;
                }
                let cache = cfg.state_dir.join("cache");
                match tokio::task::spawn_blocking(move || host.prune_cache(&cache)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(entries = n, "removed precompiled code of another engine version"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the precompiled cache"),
                    Err(e) => tracing::error!(error = %e, "pruning the precompiled cache stopped"),
                }
                match tokio::task::spawn_blocking(crate::residency::release_startup_code).await {
                    Ok(Ok(kib)) => tracing::debug!(released_kib = kib, "start-up code pages released"),
                    Ok(Err(e)) => tracing::info!(error = %e, "start-up code pages kept resident"),
                    Err(e) => tracing::error!(error = %e, "releasing start-up code pages stopped"),
                }
            });
        }
        let mut ended_rx = ended_rx;
        let ended_early = tokio::select! {
            _ = shutdown => false,
            _ = &mut ended_rx => true,
        };
        if !ended_early {
            tracing::info!("shutdown requested; draining accepted messages");
            board.update(|s| s.state = "draining");
            let _ = stop_tx.send(true);
        }
        let _ = link_state; // the I/O thread owns the link's lifetime
        let joined = tokio::task::spawn_blocking(move || io.join()).await;
        match joined {
            Ok(Ok(())) if !ended_early => {
                tracing::info!("agent stopped");
                Ok(())
            }
            Ok(Ok(())) => {
                board.update(|s| s.state = "failed");
                Err(AgentError::IoThread("it ended without being asked to".into()))
            }
            Ok(Err(panic)) => {
                board.update(|s| s.state = "failed");
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(AgentError::IoThread(why))
            }
            Err(e) => Err(AgentError::IoThread(e.to_string())),
        }
    }
}

/// Debug-level timings of the start path, one line per phase, so that
/// `RUST_LOG=outpost::agent=debug` shows where start-up time goes.
struct Phases {
    last: Instant,
}

impl Phases {
    fn new(started: Instant) -> Phases {
        Phases { last: started }
    }

    fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        tracing::debug!(phase, ms = format!("{:.2}", (now - self.last).as_secs_f64() * 1e3), "start phase");
        self.last = now;
    }
}

/// The state directory holds the precompiled code cache and the API token:
/// only the agent's user may read or write it.
fn private_dir(dir: &std::path::Path) {
    if std::fs::create_dir_all(dir).is_err() {
        return; // StateStore::open reports it with the path
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the state directory private");
        }
    }
}

/// The longest the dispatcher runs before serving the network again: well
/// under the keep-alive, and never shorter than one call deadline.
fn turn_budget(cfg: &AgentConfig) -> Duration {
    Duration::from_millis((cfg.broker.keep_alive_s * 1000 / 10).clamp(20, 500))
}

/// Starts every service the desired state names. One that cannot start
/// falls back to its previous version if it has one; otherwise it is
/// reported and the others still run.
///
/// Reading, checking and compiling (or loading the precompiled code of)
/// each service's package is independent of the others, so it runs on
/// every core at once; the instances then start service after service, in
/// name order, as before.
fn start_desired(
    cfg: &Arc<AgentConfig>,
    host: &Arc<HostEngine>,
    state: &Arc<StateStore>,
    metrics: &Arc<Metrics>,
    desired: &control::DesiredState,
    dispatcher: &mut Dispatcher,
    rejected: &mut Vec<(String, String)>,
) -> Vec<control::PendingOptimization> {
    let wanted: Vec<(&String, &control::DesiredService)> = desired
        .services
        .iter()
        .filter(|(name, want)| {
            if want.removed {
                return false;
            }
            if cfg.services.get(*name).is_some_and(|s| !s.enabled) {
                tracing::info!(service = %name, "disabled by site config");
                return false;
            }
            true
        })
        .collect();
    let mut pending = Vec::new();
    let build = |want: &control::DesiredService, package: &std::path::Path| {
        let t0 = Instant::now();
        let overrides = DesiredOverrides::of(want);
        let code =
            if cfg.dispatch.fast_start { control::CodeWanted::FastStart } else { control::CodeWanted::Optimized };
        let built = control::build_def(cfg, host, state, metrics, package, &overrides, code);
        (built, t0.elapsed())
    };
    let first_tries = parallel_map(&wanted, |(_, want)| build(want, &want.package));
    for ((name, want), first) in wanted.iter().zip(first_tries) {
        let mut errors = Vec::new();
        let mut attempt = Some((want.version.clone(), first));
        let mut fallback = want.previous.as_ref();
        while let Some((version, (built, load_time))) = attempt.take() {
            let t0 = Instant::now();
            let outcome = match built {
                Ok((def, optimize)) => dispatcher.install(def).map(|()| pending.extend(optimize)).map_err(|e| {
                    tracing::error!(service = %name, %version, error = %e, "service failed to start");
                    e.to_string()
                }),
                Err(e) => {
                    tracing::error!(service = %name, %version, error = %e, "service not loaded");
                    Err(e.to_string())
                }
            };
            match outcome {
                Ok(()) => {
                    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
                    tracing::debug!(service = %name, load_ms = ms(load_time), instances_ms = ms(t0.elapsed()), "service loaded and its instances started");
                    tracing::info!(service = %name, %version, load_ms = (load_time + t0.elapsed()).as_millis() as u64, "service started");
                    errors.clear();
                }
                Err(e) => {
                    errors.push(e);
                    if let Some(p) = fallback.take() {
                        attempt = Some((p.version.clone(), build(want, &p.package)));
                    }
                }
            }
        }
        if !errors.is_empty() {
            rejected.push(((*name).clone(), errors.join("; ")));
        }
    }
    pending
}

/// `f` over `items` on up to as many threads as there are cores; results
/// in the order of `items`.
fn parallel_map<I: Sync, R: Send>(items: &[I], f: impl Fn(&I) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { break };
        let r = f(item);
        if let Ok(mut slot) = slots[i].lock() {
            *slot = Some(r);
        }
    };
    std::thread::scope(|s| {
        // The calling thread works too; a helper that cannot be started
        // leaves its share to the others.
        for _ in 1..threads {
            if std::thread::Builder::new().name("outpost-load".into()).spawn_scoped(s, work).is_err() {
                break;
            }
        }
        work();
    });
    // Every slot is filled unless a worker panicked, which the scope has
    // already propagated; the fallback only keeps this free of unwrap.
    slots.into_iter().zip(items).map(|(m, item)| m.into_inner().ok().flatten().unwrap_or_else(|| f(item))).collect()
}

/// What the I/O thread takes over, beside its link, once the services
/// have started.
struct IoParts {
    dispatcher: Dispatcher,
    stop: tokio::sync::watch::Receiver<bool>,
    commands: mpsc::UnboundedReceiver<CommandEnvelope>,
    notices: mpsc::UnboundedSender<Notice>,
    board: StatusBoard,
    drain: Duration,
    turn_budget: Duration,
    started: Instant,
    status_topic: String,
}

/// The I/O thread: the MQTT link, the dispatcher and lifecycle commands,
/// run to completion together (see `bus`).
struct IoLoop {
    link: Link,
    parts: IoParts,
}

// Both variants live for one loop turn on the stack; boxing the message
// would cost an allocation per input.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Message(Option<crate::dispatch::Inbound>),
    Command(Option<CommandEnvelope>),
}

impl IoLoop {
    /// Connects `link` while the agent starts its services, until they are
    /// handed over in `parts` (None: the start failed). A broker keeping
    /// this client's session may deliver before then; those messages wait
    /// for the dispatcher, in order.
    fn connect_while_starting(
        rt: &tokio::runtime::Runtime,
        mut link: Link,
        mut handover: tokio::sync::oneshot::Receiver<(IoParts, Vec<String>)>,
    ) -> Option<IoLoop> {
        let mut early = Vec::new();
        let nothing_local = |_: &str| false;
        let parts = loop {
            let turn = rt.block_on(async {
                tokio::select! {
                    biased;
                    handover = &mut handover => Err(handover),
                    m = link.next(Duration::from_millis(100), &nothing_local) => Ok(m),
                }
            });
            match turn {
                Ok(Some(m)) => early.push(m),
                Ok(None) => {}
                Err(Ok(handover)) => break handover,
                Err(Err(_)) => return None,
            }
        };
        let (mut parts, subscriptions) = parts;
        link.set_subscriptions(subscriptions);
        let local_outputs = parts.dispatcher.output_filters();
        for m in early {
            // The agent's own outputs, served in the agent, are acknowledged in their turn.
            if !local_outputs.iter().any(|f| crate::topic::matches(f, &m.topic)) {
                parts.dispatcher.accept(Arc::new(m));
            }
        }
        Some(IoLoop { link, parts })
    }

    /// Network waits run inside `rt`; service calls run outside it, because
    /// WASI's synchronous bindings start their own runtime for host I/O
    /// (a guest writing to stderr) and must not be nested in ours.
    fn run(mut self, rt: &tokio::runtime::Runtime) {
        let mut announced = false;
        let mut last_status = Instant::now();
        let mut draining_since: Option<Instant> = None;
        let mut local_outputs = self.parts.dispatcher.output_filters();
        loop {
            if draining_since.is_none() && *self.parts.stop.borrow() {
                draining_since = Some(Instant::now());
                self.link.state.stop_input.store(true, Ordering::Release);
            }
            let wait = self.parts.dispatcher.next_wakeup().clamp(Duration::from_millis(1), Duration::from_millis(100));
            let ignore = |t: &str| local_outputs.iter().any(|f| crate::topic::matches(f, t));
            let (link, commands) = (&mut self.link, &mut self.parts.commands);
            let wake = rt.block_on(async {
                tokio::select! {
                    biased;
                    m = link.next(wait, &ignore) => Wake::Message(m),
                    c = commands.recv(), if draining_since.is_none() => Wake::Command(c),
                }
            });
            match wake {
                Wake::Message(Some(msg)) => self.parts.dispatcher.accept(Arc::new(msg)),
                Wake::Message(None) | Wake::Command(None) => {}
                Wake::Command(Some((cmd, reply))) => {
                    let result = control::apply(&mut self.parts.dispatcher, cmd);
                    // The topology may have changed: subscribe to what the
                    // services now need, and serve new internal topics here.
                    self.link.set_subscriptions(self.parts.dispatcher.broker_subscriptions());
                    local_outputs = self.parts.dispatcher.output_filters();
                    self.refresh_status();
                    let _ = reply.send(result);
                }
            }
            // Hand over whole batches: run the services once the socket's
            // buffered packets are taken.
            if !self.link.has_buffered() {
                self.parts.dispatcher.run_for(Some(self.parts.turn_budget));
                self.parts.dispatcher.tick_if_due();
                for n in self.parts.dispatcher.take_notices() {
                    if let Notice::RolledBack { .. } = &n {
                        self.link.set_subscriptions(self.parts.dispatcher.broker_subscriptions());
                        local_outputs = self.parts.dispatcher.output_filters();
                    }
                    let _ = self.parts.notices.send(n);
                }
            }
            if !announced && self.link.state.is_ready.load(Ordering::Acquire) {
                announced = true;
                let ms = self.parts.started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(ready_ms = format!("{ms:.1}"), "agent ready");
                self.parts.board.update(|s| {
                    s.state = "ready";
                    s.ready_ms = Some(ms);
                });
                let body =
                    serde_json::json!({"state": "ready", "ready_ms": ms, "services": self.parts.dispatcher.status()});
                self.link.publish_retained(&self.parts.status_topic, body.to_string().into_bytes());
            }
            if last_status.elapsed() > Duration::from_millis(200) {
                last_status = Instant::now();
                self.refresh_status();
            }
            if let Some(since) = draining_since {
                if self.parts.dispatcher.queued() == 0 || since.elapsed() > self.parts.drain {
                    break;
                }
            }
        }
        let left = self.parts.dispatcher.queued();
        if left > 0 {
            tracing::error!(
                messages = left,
                "drain timeout: messages left unacknowledged; the broker will redeliver them"
            );
        } else {
            tracing::info!("all accepted messages handled");
        }
        self.refresh_status();
        self.link.publish_retained(&self.parts.status_topic, br#"{"state":"stopped"}"#.to_vec());
        rt.block_on(self.link.close(Duration::from_secs(5)));
    }

    fn refresh_status(&self) {
        let services = self.parts.dispatcher.status();
        let refused = self.link.state.refused.lock().map(|r| r.clone()).unwrap_or_default();
        let uptime = self.parts.started.elapsed().as_secs();
        self.parts.board.update(|s| {
            s.services = services;
            s.refused_subscriptions = refused;
            s.uptime_s = uptime;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::parallel_map;

    #[test]
    fn parallel_map_keeps_the_order_and_runs_every_item_once() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let items: Vec<u64> = (0..37).collect();
        let out = parallel_map(&items, |&i| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Uneven work, so the threads finish out of order.
            std::thread::sleep(std::time::Duration::from_micros((37 - i) * 50));
            i * i
        });
        assert_eq!(out, items.iter().map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(calls.into_inner(), 37);
        assert!(parallel_map(&[] as &[u64], |&i| i).is_empty());
    }
}
