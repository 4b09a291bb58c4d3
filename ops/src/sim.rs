//! Simulated gateways that speak the real fleet protocol: each is its own
//! MQTT client with its own credentials (all in one tokio runtime), reads
//! its retained desired state, checks the operations center's signature
//! with [`outpost_fleet::desired::verify`], skips revisions it has already
//! applied, optionally downloads and checks the artifact (HTTP `Range`
//! resume), "applies" it (no wasm: a [`Behaviour`] decides the outcome) and
//! publishes a [`GatewayReport`], as the agent does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_fleet::{topic, DesiredState, GatewayReport, Health, ServiceReport};
use outpost_package::ProviderKey;
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::transport::{self, LinkConfig, TransportError};

/// How applying a version turns out on a simulated gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Not applied; the old version keeps running (nothing half-installed).
    ApplyError(String),
    /// Installed, then crash-looping.
    CrashLoop,
    /// Installed, reporting unhealthy.
    Unhealthy,
}

/// Decides the outcome of (gateway, service, version).
pub type Behaviour = Arc<dyn Fn(&str, &str, &str) -> Outcome + Send + Sync>;

pub fn always_ok() -> Behaviour {
    Arc::new(|_, _, _| Outcome::Ok)
}

/// One simulated gateway's identity and starting point.
#[derive(Debug, Clone)]
pub struct SimGateway {
    pub id: String,
    pub site: String,
    pub password: String,
    /// service -> installed version.
    pub services: BTreeMap<String, String>,
    /// service -> KPIs it reports.
    pub kpis: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Clone)]
pub struct SimConfig {
    pub broker_url: String,
    pub tls_ca: Option<std::path::PathBuf>,
    pub ops_key: ProviderKey,
    /// Base URL artifacts are downloaded from; `None` skips downloading.
    pub artifacts_url: Option<String>,
    /// Periodic reports besides the ones after each change.
    pub report_every: Option<Duration>,
    pub behaviour: Behaviour,
}

/// What the simulated fleet did, for tests and the bench.
#[derive(Debug, Default)]
pub struct SimStats {
    pub connected: AtomicU64,
    pub desired_received: AtomicU64,
    pub desired_refused: AtomicU64,
    pub desired_stale: AtomicU64,
    pub applied: AtomicU64,
    pub apply_failed: AtomicU64,
    pub downloads: AtomicU64,
    pub download_failed: AtomicU64,
    pub reports_sent: AtomicU64,
    /// gateway -> service -> installed version, as the gateways see it.
    pub installed: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// gateway -> last applied desired revision.
    pub revisions: Mutex<BTreeMap<String, u64>>,
    /// gateway -> every desired revision it acted on, in order (a double
    /// action shows as a revision too many).
    pub revisions_applied: Mutex<BTreeMap<String, Vec<u64>>>,
    /// gateway -> "service version" -> times installed (ok or not).
    pub applies: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

impl SimStats {
    pub fn get(&self, a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
    pub fn installed(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.installed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The running fleet; dropping it stops every gateway.
pub struct SimFleet {
    pub stats: Arc<SimStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SimFleet {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Starts every gateway (connections spread over `ramp`, so a large fleet
/// does not hit the broker's accept backlog at once).
pub fn spawn_fleet(cfg: &SimConfig, gateways: Vec<SimGateway>, ramp: Duration) -> Result<SimFleet, TransportError> {
    let stats = Arc::new(SimStats::default());
    let n = gateways.len().max(1) as u32;
    let mut tasks = Vec::with_capacity(gateways.len());
    for (i, g) in gateways.into_iter().enumerate() {
        let mut link = LinkConfig::new(&cfg.broker_url, &g.id, &g.id, &g.password);
        link.tls_ca = cfg.tls_ca.clone();
        link.channel_capacity = 16;
        link.inflight = 16;
        link.keep_alive = Duration::from_secs(60);
        let opts = transport::mqtt_options(&link)?;
        let delay = ramp * (i as u32) / n;
        let cfg = cfg.clone();
        let stats = stats.clone();
        stats.installed.lock().unwrap_or_else(|e| e.into_inner()).insert(g.id.clone(), g.services.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_gateway(cfg, g, opts, stats).await;
        }));
    }
    Ok(SimFleet { stats, tasks })
}

struct Gw {
    g: SimGateway,
    cfg: SimConfig,
    stats: Arc<SimStats>,
    client: AsyncClient,
    seq: u64,
    applied_revision: Option<u64>,
    /// service -> (apply error, crash loop, unhealthy) of the last attempt.
    trouble: BTreeMap<String, Outcome>,
}

async fn run_gateway(cfg: SimConfig, g: SimGateway, opts: rumqttc::MqttOptions, stats: Arc<SimStats>) {
    let (client, mut el) = AsyncClient::new(opts, 16);
    let mut gw = Gw { g, cfg, stats, client, seq: 0, applied_revision: None, trouble: BTreeMap::new() };
    let mut periodic = gw.cfg.report_every.map(|d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        let event = match periodic.as_mut() {
            Some(p) => tokio::select! {
                e = el.poll() => e,
                _ = p.tick() => { gw.report(); continue; }
            },
            None => el.poll().await,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                gw.stats.connected.fetch_add(1, Ordering::Relaxed);
                let _ = gw.client.try_subscribe(topic::desired(&gw.g.id), QoS::AtLeastOnce);
                gw.report();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                gw.on_desired(&p.payload).await;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Gw {
    async fn on_desired(&mut self, bytes: &[u8]) {
        self.stats.desired_received.fetch_add(1, Ordering::Relaxed);
        let state = match outpost_fleet::desired::verify(bytes, &self.g.id, &self.cfg.ops_key) {
            Ok(s) => s,
            Err(e) => {
                self.stats.desired_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(gateway = %self.g.id, error = %e, "desired state refused");
                return;
            }
        };
        if self.applied_revision.is_some_and(|r| state.revision <= r) {
            // A replay or the retained copy of what we already applied.
            self.stats.desired_stale.fetch_add(1, Ordering::Relaxed);
            self.report();
            return;
        }
        self.apply(&state).await;
        self.applied_revision = Some(state.revision);
        self.stats
            .revisions_applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.g.id.clone())
            .or_default()
            .push(state.revision);
        self.stats.revisions.lock().unwrap_or_else(|e| e.into_inner()).insert(self.g.id.clone(), state.revision);
        self.stats
            .installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.g.id.clone(), self.g.services.clone());
        self.report();
    }

    async fn apply(&mut self, state: &DesiredState) {
        for (svc, want) in &state.services {
            match want {
                None => {
                    self.g.services.remove(svc);
                    self.trouble.remove(svc);
                }
                Some(d) if self.g.services.get(svc) == Some(&d.version) && !self.trouble.contains_key(svc) => {}
                Some(d) => {
                    if let Some(base) = &self.cfg.artifacts_url {
                        if let Err(why) = download(base, &d.artifact, &d.digest, d.size).await {
                            self.stats.download_failed.fetch_add(1, Ordering::Relaxed);
                            self.trouble.insert(svc.clone(), Outcome::ApplyError(why));
                            continue;
                        }
                        self.stats.downloads.fetch_add(1, Ordering::Relaxed);
                    }
                    let outcome = (self.cfg.behaviour)(&self.g.id, svc, &d.version);
                    *self
                        .stats
                        .applies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(self.g.id.clone())
                        .or_default()
                        .entry(format!("{svc} {}", d.version))
                        .or_default() += 1;
                    match outcome {
                        Outcome::ApplyError(_) => {
                            self.stats.apply_failed.fetch_add(1, Ordering::Relaxed);
                            self.trouble.insert(svc.clone(), outcome);
                        }
                        Outcome::Ok => {
                            self.stats.applied.fetch_add(1, Ordering::Relaxed);
                            self.g.services.insert(svc.clone(), d.version.clone());
                            self.trouble.remove(svc);
                        }
                        Outcome::CrashLoop | Outcome::Unhealthy => {
                            self.stats.applied.fetch_add(1, Ordering::Relaxed);
                            self.g.services.insert(svc.clone(), d.version.clone());
                            self.trouble.insert(svc.clone(), outcome);
                        }
                    }
                }
            }
        }
    }

    fn report(&mut self) {
        self.seq += 1;
        let mut services: Vec<ServiceReport> = self
            .g
            .services
            .iter()
            .map(|(svc, v)| {
                let t = self.trouble.get(svc);
                ServiceReport {
                    service: svc.clone(),
                    version: Some(v.clone()),
                    health: match t {
                        Some(Outcome::Unhealthy | Outcome::CrashLoop) => Health::Unhealthy,
                        _ => Health::Healthy,
                    },
                    crash_loop: t == Some(&Outcome::CrashLoop),
                    apply_error: match t {
                        Some(Outcome::ApplyError(e)) => Some(e.clone()),
                        _ => None,
                    },
                    kpis: self.g.kpis.get(svc).cloned().unwrap_or_default(),
                }
            })
            .collect();
        // A failed first install has no version to report, only the error.
        for (svc, t) in &self.trouble {
            if !self.g.services.contains_key(svc) {
                if let Outcome::ApplyError(e) = t {
                    services.push(ServiceReport {
                        service: svc.clone(),
                        version: None,
                        health: Health::Unknown,
                        crash_loop: false,
                        apply_error: Some(e.clone()),
                        kpis: BTreeMap::new(),
                    });
                }
            }
        }
        let r = GatewayReport {
            gateway: self.g.id.clone(),
            site: self.g.site.clone(),
            seq: self.seq,
            at_ms: crate::rollout::Clock::now_ms(&crate::rollout::SystemClock),
            applied_revision: self.applied_revision,
            services,
            outbox_dropped: 0,
        };
        let payload = serde_json::to_vec(&r).unwrap_or_default();
        // try_: we are inside the loop that drains the request channel.
        if self.client.try_publish(topic::reported(&self.g.id), QoS::AtLeastOnce, false, payload).is_ok() {
            self.stats.reports_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Downloads an artifact in two ranged halves (what a resumed download
/// does) and checks its size and sha256.
pub async fn download(base: &str, artifact: &str, digest: &str, size: u64) -> Result<Vec<u8>, String> {
    let url = if artifact.starts_with("http://") {
        artifact.to_string()
    } else {
        format!("{}{artifact}", base.trim_end_matches('/'))
    };
    let t = Duration::from_secs(30);
    let half = size / 2;
    let mut bytes = Vec::with_capacity(size as usize);
    for range in [format!("bytes=0-{}", half.saturating_sub(1)), format!("bytes={half}-")] {
        if size == 0 {
            break;
        }
        let r = crate::client::request("GET", &url, &[("Range", &range)], b"", t).await.map_err(|e| e.to_string())?;
        match r.status {
            206 => bytes.extend_from_slice(&r.body),
            200 => {
                bytes = r.body;
                break;
            }
            s => return Err(format!("GET {url} ({range}): HTTP {s}")),
        }
    }
    if bytes.len() as u64 != size {
        return Err(format!("{url}: {} bytes, desired state says {size}", bytes.len()));
    }
    let got = outpost_package::format::sha256_hex(&bytes);
    if got != digest {
        return Err(format!("{url}: sha256 {got}, desired state says {digest}"));
    }
    Ok(bytes)
}
