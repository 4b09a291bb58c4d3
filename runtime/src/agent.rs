//! The agent: reads its config, starts the broker (embedded) or connects to
//! one, loads every installed service, and runs the dispatcher until told
//! to stop; then it drains what it accepted before exiting.

use crate::bus::{Link, LinkOptions};
use crate::config::{AgentConfig, BrokerMode};
use crate::dispatch::{Dispatcher, ServiceSpec, ServiceStatus};
use crate::host::{EngineOptions, HostEngine, ServiceContext};
use crate::package::{effective_config, Package};
use crate::state::StateStore;
use crate::telemetry::Metrics;
use std::sync::atomic::Ordering;
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

impl AgentStatus {
    /// A copy for readers (status page, gRPC), with the link state as the
    /// metrics see it now rather than at the last refresh.
    pub fn snapshot(status: &Mutex<AgentStatus>, metrics: &Metrics) -> Option<AgentStatus> {
        status.lock().ok().map(|st| AgentStatus { mqtt_connected: metrics.mqtt_connected.get() == 1, ..st.clone() })
    }
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
        let status_topic = format!("outpost/{}/status", cfg.gateway);

        // Load services before connecting, so subscriptions are known.
        // The link needs the services' subscriptions, so it comes second;
        // nothing is published before it exists (init outputs are discarded).
        let unconnected: Box<dyn crate::dispatch::Egress> = Box::new(NullEgress);
        let mut dispatcher = Dispatcher::new(host.clone(), cfg.dispatch.clone(), &cfg.gateway, unconnected);
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
            Arc::new(move |t: &str| local.iter().any(|f| crate::topic::matches(f, t)))
                as Arc<dyn Fn(&str) -> bool + Send + Sync>
        };
        let link = Link::new(
            LinkOptions {
                host: host_name.clone(),
                port,
                client_id: format!("outpost-{}", cfg.gateway),
                keep_alive: Duration::from_secs(cfg.broker.keep_alive_s),
                subscriptions: subscriptions.clone(),
                last_will: Some((status_topic.clone(), br#"{"state":"offline"}"#.to_vec())),
            },
            metrics.clone(),
        );
        dispatcher.set_egress(Box::new(link.egress()));
        let link_state = link.state.clone();

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
            crate::http::serve(addr, metrics.clone(), status.clone())
                .await
                .map_err(|e| AgentError::Metrics { addr: addr.to_string(), message: e.to_string() })?;
        }
        if let Some(addr) = cfg.api.listen {
            crate::api::serve(addr, status.clone(), metrics.clone())
                .await
                .map_err(|e| AgentError::Api { addr: addr.to_string(), message: e.to_string() })?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let io = {
            let io = IoLoop {
                link,
                dispatcher,
                ignore: echo_filter,
                stop: stop_rx,
                status: status.clone(),
                drain: Duration::from_millis(cfg.dispatch.drain_timeout_ms),
                started,
                status_topic,
            };
            std::thread::Builder::new()
                .name("outpost-io".into())
                .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => io.run(&rt),
                    Err(e) => tracing::error!(error = %e, "cannot start the I/O thread's runtime"),
                })
                .map_err(|e| AgentError::Thread(e.to_string()))?
        };
        tokio::select! {
            _ = link_state.wait_ready() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::warn!(broker = %format!("{host_name}:{port}"), "broker not reachable yet; services run and input is taken as soon as it connects");
            }
        }
        shutdown.await;
        tracing::info!("shutdown requested; draining accepted messages");
        set_state(&status, "draining");
        let _ = stop_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || io.join()).await;
        tracing::info!("agent stopped");
        Ok(())
    }
}

fn set_state(status: &Mutex<AgentStatus>, state: &'static str) {
    if let Ok(mut s) = status.lock() {
        s.state = state;
    }
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

/// The I/O thread: the MQTT link and the dispatcher, run to completion
/// together (see `bus`).
struct IoLoop {
    link: Link,
    dispatcher: Dispatcher,
    ignore: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    stop: tokio::sync::watch::Receiver<bool>,
    status: Arc<Mutex<AgentStatus>>,
    drain: Duration,
    started: Instant,
    status_topic: String,
}

impl IoLoop {
    /// Network waits run inside `rt`; service calls run outside it, because
    /// WASI's synchronous bindings start their own runtime for host I/O
    /// (a guest writing to stderr) and must not be nested in ours.
    fn run(mut self, rt: &tokio::runtime::Runtime) {
        let d = &mut self.dispatcher;
        let link = &mut self.link;
        let mut announced = false;
        let mut last_status = Instant::now();
        let mut draining_since: Option<Instant> = None;
        loop {
            link.flush_outbox();
            if draining_since.is_none() && *self.stop.borrow() {
                draining_since = Some(Instant::now());
                link.state.stop_input.store(true, Ordering::Release);
            }
            let wait = d.next_wakeup().clamp(Duration::from_millis(1), Duration::from_millis(100));
            if let Some(msg) = rt.block_on(link.next(wait, &*self.ignore)) {
                d.accept(Arc::new(msg));
            }
            // Hand over whole batches: run the services once the socket's
            // buffered packets are taken.
            if !link.has_buffered() {
                d.run_until_idle();
                d.tick_if_due();
            }
            if !announced && link.state.is_ready.load(Ordering::Acquire) {
                announced = true;
                let ms = self.started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(ready_ms = format!("{ms:.1}"), "agent ready");
                if let Ok(mut s) = self.status.lock() {
                    s.state = "ready";
                    s.ready_ms = Some(ms);
                }
                let body = serde_json::json!({"state": "ready", "ready_ms": ms, "services": d.status()});
                link.publish_retained(&self.status_topic, body.to_string().into_bytes());
            }
            if last_status.elapsed() > Duration::from_millis(200) {
                last_status = Instant::now();
                if let Ok(mut s) = self.status.lock() {
                    s.services = d.status();
                    s.uptime_s = self.started.elapsed().as_secs();
                }
            }
            if let Some(since) = draining_since {
                if d.queued() == 0 || since.elapsed() > self.drain {
                    break;
                }
            }
        }
        let left = d.queued();
        if left > 0 {
            tracing::error!(
                messages = left,
                "drain timeout: messages left unacknowledged; the broker will redeliver them"
            );
        } else {
            tracing::info!("all accepted messages handled");
        }
        if let Ok(mut s) = self.status.lock() {
            s.services = d.status();
        }
        link.publish_retained(&self.status_topic, br#"{"state":"stopped"}"#.to_vec());
        rt.block_on(self.link.close(Duration::from_secs(5)));
    }
}
