//! The agent: reads its config, starts the broker (embedded) or connects to
//! one, loads every installed service, and runs the dispatcher until told
//! to stop; then it drains what it accepted before exiting.

use crate::bus::{LinkOptions, MqttLink};
use crate::config::{AgentConfig, BrokerMode};
use crate::dispatch::{Dispatcher, Envelope, ServiceSpec, ServiceStatus};
use crate::host::{EngineOptions, HostEngine, ServiceContext};
use crate::package::{effective_config, Package};
use crate::state::StateStore;
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Engine(#[from] crate::host::LoadError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("services_dir {path}: {message}")]
    ServicesDir { path: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot serve metrics on {addr}: {message} (set [metrics] listen to a free address, or remove it)")]
    Metrics { addr: String, message: String },
    #[error("cannot serve the management API on {addr}: {message} (set [api] listen to a free address, or remove it)")]
    Api { addr: String, message: String },
    #[error("cannot start the dispatcher thread: {0}")]
    Thread(String),
}

/// What the status page and `/status` show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentStatus {
    pub gateway: String,
    pub site: String,
    pub state: &'static str,
    pub broker: String,
    pub mqtt_connected: bool,
    pub services: Vec<ServiceStatus>,
    /// Services that could not be loaded, with the reason.
    pub rejected: Vec<(String, String)>,
    pub uptime_s: u64,
    /// Milliseconds from start to ready (services loaded, subscribed).
    pub ready_ms: Option<f64>,
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
        let cfg = self.config;
        let metrics = Metrics::new();
        if cfg.broker.mode == BrokerMode::Embedded {
            crate::broker::start_embedded(cfg.broker.listen)?;
        }
        let host = Arc::new(HostEngine::new(&EngineOptions::default())?);
        let state = Arc::new(StateStore::open(&cfg.state_dir.join("state.redb"))?);
        let cache_dir = cfg.state_dir.join("cache");

        let (host_name, port) = cfg.broker.client_target().map_err(AgentError::Config)?;
        let (tx, rx) = crossbeam_channel::unbounded::<Envelope>();
        let status_topic = format!("outpost/{}/status", cfg.gateway);

        // Load services before connecting, so subscriptions are known.
        let placeholder: Box<dyn crate::dispatch::Egress> = Box::new(NullEgress);
        let mut dispatcher = Dispatcher::new(host.clone(), cfg.dispatch.clone(), &cfg.gateway, placeholder);
        let rejected = load_services(&cfg, &host, &state, &metrics, &cache_dir, &mut dispatcher)?;
        for name in cfg.services.keys() {
            if !dispatcher.status().iter().any(|s| &s.name == name) && !rejected.iter().any(|(n, _)| n == name) {
                tracing::warn!(service = %name, "config has [services.{name}] but no such service is installed");
            }
        }
        let subscriptions: Vec<String> =
            dispatcher.subscriptions().into_iter().filter(|f| !dispatcher.is_internal(f)).collect();
        let echo_filter = {
            let local = dispatcher.output_filters();
            Arc::new(move |t: &str| local.iter().any(|f| crate::topic::matches(f, t))) as Arc<dyn Fn(&str) -> bool + Send + Sync>
        };
        let link = MqttLink::start(
            LinkOptions {
                host: host_name.clone(),
                port,
                client_id: format!("outpost-{}", cfg.gateway),
                keep_alive: Duration::from_secs(cfg.broker.keep_alive_s),
                subscriptions: subscriptions.clone(),
                last_will: Some((status_topic.clone(), br#"{"state":"offline"}"#.to_vec())),
            },
            tx,
            echo_filter,
            metrics.clone(),
        );
        dispatcher.set_egress(Box::new(link.egress(tokio::runtime::Handle::current())));

        let status = Arc::new(Mutex::new(AgentStatus {
            gateway: cfg.gateway.clone(),
            site: cfg.site.clone(),
            state: "starting",
            broker: format!("{}:{port} ({})", host_name, cfg.broker.mode),
            mqtt_connected: false,
            services: dispatcher.status(),
            rejected,
            uptime_s: 0,
            ready_ms: None,
        }));
        if let Some(addr) = cfg.metrics.listen {
            crate::http::serve(addr, metrics.clone(), status.clone()).await.map_err(|e| AgentError::Metrics {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        }
        if let Some(addr) = cfg.api.listen {
            crate::api::serve(addr, status.clone(), metrics.clone()).await.map_err(|e| AgentError::Api {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        }
        let drain = Duration::from_millis(cfg.dispatch.drain_timeout_ms);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let status = status.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("outpost-dispatch".into())
                .spawn(move || dispatch_loop(dispatcher, rx, &stop, status, drain, started))
                .map_err(|e| AgentError::Thread(e.to_string()))?
        };

        tokio::select! {
            _ = link.wait_ready() => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(ready_ms = format!("{ms:.1}"), subscriptions = ?subscriptions, "agent ready");
                set_state(&status, "ready");
                if let Ok(mut s) = status.lock() {
                    s.ready_ms = Some(ms);
                }
                let body = serde_json::json!({"state": "ready", "ready_ms": ms, "services": status_services(&status)});
                link.publish_retained(&status_topic, body.to_string().into_bytes()).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::warn!(broker = %format!("{host_name}:{port}"), "broker not reachable yet; services run and input is taken as soon as it connects");
            }
        }
        shutdown.await;
        tracing::info!("shutdown requested; draining accepted messages");
        set_state(&status, "draining");
        link.state.stop_input.store(true, Ordering::Release);
        stop.store(true, Ordering::Release);
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        link.publish_retained(&status_topic, br#"{"state":"stopped"}"#.to_vec()).await;
        link.close(Duration::from_secs(5)).await;
        tracing::info!("agent stopped");
        Ok(())
    }
}

fn set_state(status: &Mutex<AgentStatus>, state: &'static str) {
    if let Ok(mut s) = status.lock() {
        s.state = state;
    }
}

fn status_services(status: &Mutex<AgentStatus>) -> serde_json::Value {
    status.lock().map(|s| serde_json::to_value(&s.services).unwrap_or_default()).unwrap_or_default()
}

struct NullEgress;
impl crate::dispatch::Egress for NullEgress {
    fn publish(&mut self, _topic: &str, _payload: &[u8]) {}
}

/// Loads every package under `services_dir`. A bad package is reported and
/// skipped; the others still run.
fn load_services(
    cfg: &AgentConfig,
    host: &Arc<HostEngine>,
    state: &Arc<StateStore>,
    metrics: &Arc<Metrics>,
    cache_dir: &std::path::Path,
    dispatcher: &mut Dispatcher,
) -> Result<Vec<(String, String)>, AgentError> {
    let dirs = Package::discover(&cfg.services_dir).map_err(|e| AgentError::ServicesDir {
        path: cfg.services_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut rejected = Vec::new();
    for dir in dirs {
        let label = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let pkg = match Package::load(&dir) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(package = %dir.display(), error = %e, "service not loaded");
                rejected.push((label, e.to_string()));
                continue;
            }
        };
        let name = pkg.manifest.service.name.clone();
        let site = cfg.services.get(&name);
        if site.is_some_and(|s| !s.enabled) {
            tracing::info!(service = %name, "disabled by site config");
            continue;
        }
        let t0 = Instant::now();
        let loaded = match host.load(&pkg.wasm_path, &pkg.wasm, Some(cache_dir)) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = %name, error = %e, "service not loaded");
                rejected.push((name, e.to_string()));
                continue;
            }
        };
        let context = ServiceContext {
            service: name.as_str().into(),
            publish_acl: pkg.manifest.bus.publish.clone().into(),
            state: Some(state.clone()),
            metrics: metrics.service(&name),
        };
        let spec = ServiceSpec {
            config_json: effective_config(&pkg.manifest.config, site.map(|s| &s.config)),
            instances: site.and_then(|s| s.instances).unwrap_or(pkg.manifest.scale.instances),
            manifest: pkg.manifest,
            loaded,
            context,
        };
        let id = spec.manifest.id();
        match dispatcher.add_service(spec) {
            Ok(()) => tracing::info!(service = %id, load_ms = t0.elapsed().as_millis() as u64, "service started"),
            Err(e) => tracing::error!(service = %id, error = %e, "service init failed; retrying with backoff"),
        }
    }
    Ok(rejected)
}

fn dispatch_loop(
    mut d: Dispatcher,
    rx: crossbeam_channel::Receiver<Envelope>,
    stop: &AtomicBool,
    status: Arc<Mutex<AgentStatus>>,
    drain: Duration,
    started: Instant,
) {
    use crossbeam_channel::RecvTimeoutError;
    let mut last_status = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let wait = d.next_wakeup().clamp(Duration::from_millis(1), Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok(env) => {
                d.accept(env);
                for env in rx.try_iter().take(65_536) {
                    d.accept(env);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        d.run_until_idle();
        d.tick_if_due();
        if last_status.elapsed() > Duration::from_millis(200) {
            last_status = Instant::now();
            if let Ok(mut s) = status.lock() {
                s.services = d.status();
                s.uptime_s = started.elapsed().as_secs();
            }
        }
    }
    // Drain: whatever reached the channel before input stopped, then the queues.
    for env in rx.try_iter() {
        d.accept(env);
    }
    let deadline = Instant::now() + drain;
    while d.queued() > 0 && Instant::now() < deadline {
        d.run_until_idle();
        if d.queued() > 0 {
            std::thread::sleep(d.next_wakeup().clamp(Duration::from_millis(1), Duration::from_millis(20)));
        }
    }
    let left = d.queued();
    if left > 0 {
        tracing::error!(messages = left, "drain timeout: messages left unacknowledged; the broker will redeliver them");
    } else {
        tracing::info!("all accepted messages handled");
    }
    if let Ok(mut s) = status.lock() {
        s.services = d.status();
    }
}
