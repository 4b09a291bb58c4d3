//! The control plane: what should run on this gateway (desired state,
//! persisted in the agent's store) and the changes that get it there.
//!
//! Heavy work (verifying and compiling a package) happens here, off the
//! I/O thread; the I/O thread only receives a ready [`Command`] through a
//! channel that wakes it, applies it between two batches and answers. The
//! desired state is written only after the change took effect, in one
//! atomic commit, so a crash at any point leaves either the old or the new
//! state, and a restart converges to it.

use crate::config::AgentConfig;
use crate::dispatch::{Dispatcher, LifecycleError, Notice, ProbationPolicy, ServiceDef, ShadowReport, WasmFactory};
use crate::host::{CodeTier, HostEngine, ServiceContext, MAX_MEMORY_MIB};
use crate::package::{effective_config, Package};
use crate::state::StateStore;
use crate::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const DESIRED_KEY: &str = "desired_state";
const AUDIT_KEY: &str = "approvals";

/// What should run: every service by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub services: BTreeMap<String, DesiredService>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredService {
    pub version: String,
    /// Installed package folder in the agent's package store.
    pub package: PathBuf,
    /// Instance count set by `scale` (else the site config or manifest).
    #[serde(default)]
    pub instances: Option<u32>,
    /// Site config set at run time (else `outpost.toml`).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The version this one replaced, kept for rollback.
    #[serde(default)]
    pub previous: Option<PreviousVersion>,
    /// Retired: not started, and not brought back from `services_dir`.
    #[serde(default)]
    pub removed: bool,
}

impl DesiredService {
    /// The entry after `version` (stored at `package`) replaced this one,
    /// which becomes the version to roll back to; scale and config carry over.
    pub fn replaced_by(&self, version: &str, package: PathBuf) -> DesiredService {
        DesiredService {
            version: version.to_owned(),
            package,
            previous: Some(PreviousVersion { version: self.version.clone(), package: self.package.clone() }),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousVersion {
    pub version: String,
    pub package: PathBuf,
}

/// Why a lifecycle request failed; the API maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error("the agent is stopping; try again after it restarts")]
    Stopping,
}

impl From<LifecycleError> for ControlError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Unknown(_) => ControlError::NotFound(e.to_string()),
            LifecycleError::Exists(_) => ControlError::Conflict(e.to_string()),
            LifecycleError::Refused { .. } => ControlError::Invalid(e.to_string()),
            LifecycleError::Start { .. } => ControlError::Failed(e.to_string()),
        }
    }
}

/// A change for the I/O thread, ready to apply.
pub enum Command {
    Install(ServiceDef),
    Upgrade {
        def: ServiceDef,
        probation: Option<ProbationPolicy>,
    },
    Remove(String),
    Scale {
        name: String,
        instances: u32,
    },
    SetConfig {
        name: String,
        config_json: String,
    },
    Canary {
        def: ServiceDef,
        percent: u8,
    },
    Promote(String),
    AbortCanary(String),
    Shadow(ServiceDef),
    ShadowReport {
        name: String,
        stop: bool,
    },
    /// After a fast start: restart a service on the optimized code of
    /// component `digest`, if it still serves that component's baseline code.
    RestartOnOptimizedCode {
        name: String,
        digest: String,
    },
}

#[derive(Debug)]
pub enum Reply {
    Done,
    Removed {
        unhandled: usize,
    },
    Promoted {
        version: String,
    },
    Report(Box<ShadowReport>),
    /// Whether the instances were restarted.
    Restarted(bool),
}

pub type CommandEnvelope = (Command, oneshot::Sender<Result<Reply, LifecycleError>>);

/// Applies one command to the dispatcher (on the I/O thread).
pub fn apply(d: &mut Dispatcher, cmd: Command) -> Result<Reply, LifecycleError> {
    match cmd {
        Command::Install(def) => d.install(def).map(|_| Reply::Done),
        Command::Upgrade { def, probation } => d.upgrade(def, probation).map(|_| Reply::Done),
        Command::Remove(name) => d.remove(&name).map(|unhandled| Reply::Removed { unhandled }),
        Command::Scale { name, instances } => d.scale(&name, instances).map(|_| Reply::Done),
        Command::SetConfig { name, config_json } => d.set_config(&name, config_json).map(|_| Reply::Done),
        Command::Canary { def, percent } => d.start_canary(def, percent).map(|_| Reply::Done),
        Command::Promote(name) => d.promote_canary(&name).map(|version| Reply::Promoted { version }),
        Command::AbortCanary(name) => d.abort_canary(&name).map(|_| Reply::Done),
        Command::Shadow(def) => d.start_shadow(def).map(|_| Reply::Done),
        Command::ShadowReport { name, stop } => d.shadow_report(&name, stop).map(|r| Reply::Report(Box::new(r))),
        Command::RestartOnOptimizedCode { name, digest } => {
            d.restart_on_optimized_code(&name, &digest).map(Reply::Restarted)
        }
    }
}

/// The agent's lifecycle manager: prepares changes, sends them to the I/O
/// thread, and records the desired state once they took effect.
pub struct Lifecycle {
    cfg: Arc<AgentConfig>,
    host: Arc<HostEngine>,
    state: Arc<StateStore>,
    metrics: Arc<Metrics>,
    commands: mpsc::UnboundedSender<CommandEnvelope>,
    desired: tokio::sync::Mutex<DesiredState>,
    /// Package folder of each running canary (not persisted).
    canaries: std::sync::Mutex<BTreeMap<String, PathBuf>>,
    /// Verified packages by digest (opened once: opening clears its temp
    /// folder). Writes are serialised: two uploads at once take turns.
    store: Arc<tokio::sync::Mutex<outpost_package::ContentStore>>,
    events: crate::events::Hub,
}

/// How a service was changed, for the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub service: String,
    pub version: String,
    pub message: String,
}

impl Lifecycle {
    pub fn new(
        cfg: Arc<AgentConfig>,
        host: Arc<HostEngine>,
        state: Arc<StateStore>,
        metrics: Arc<Metrics>,
        commands: mpsc::UnboundedSender<CommandEnvelope>,
        desired: DesiredState,
        events: crate::events::Hub,
    ) -> Result<Lifecycle, ControlError> {
        let store = outpost_package::ContentStore::open(&cfg.state_dir.join("store"))
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        Ok(Lifecycle {
            cfg,
            host,
            state,
            metrics,
            commands,
            desired: tokio::sync::Mutex::new(desired),
            canaries: std::sync::Mutex::new(BTreeMap::new()),
            store: Arc::new(tokio::sync::Mutex::new(store)),
            events,
        })
    }

    /// Accepts an uploaded `.opkg`: verified against the trust store
    /// (signature, digests, trusted provider key), its manifest validated,
    /// then stored by content digest. Returns the stored package folder.
    pub async fn intake(&self, opkg: &[u8]) -> Result<PathBuf, ControlError> {
        let (cfg, store) = (self.cfg.clone(), self.store.clone().lock_owned().await);
        let bytes = opkg.to_vec();
        tokio::task::spawn_blocking(move || intake(&cfg, &store, &bytes))
            .await
            .map_err(|e| ControlError::Failed(format!("package intake stopped: {e}")))?
    }

    /// Records who approved a change, in the agent's store (newest last,
    /// the last 1,000 kept).
    fn record(&self, action: &str, outcome: &Outcome, approved_by: &str) {
        let mut log: Vec<serde_json::Value> = self
            .state
            .get_meta(AUDIT_KEY)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let entry = serde_json::json!({"ts_ms": crate::dispatch::now_ms(), "action": action, "service": outcome.service,
            "version": outcome.version, "approved_by": approved_by});
        self.events.raise(
            &format!("outpost/{}/events", self.cfg.gateway),
            &serde_json::json!({"event": "lifecycle", "detail": entry}).to_string(),
        );
        log.push(entry);
        let excess = log.len().saturating_sub(1000);
        log.drain(..excess);
        let written = serde_json::to_vec(&log)
            .map_err(|e| e.to_string())
            .and_then(|b| self.state.put_meta(AUDIT_KEY, &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot record the approval of a lifecycle change");
        }
    }

    /// Approvals recorded so far (oldest first).
    pub fn approvals(&self) -> Vec<serde_json::Value> {
        self.state.get_meta(AUDIT_KEY).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn packages_dir(cfg: &AgentConfig) -> PathBuf {
        cfg.state_dir.join("packages")
    }

    pub fn load_desired(state: &StateStore) -> Result<Option<DesiredState>, ControlError> {
        match state.get_meta(DESIRED_KEY) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ControlError::Failed(format!("desired state in the agent's store is unreadable: {e}"))),
            Err(e) => Err(ControlError::Failed(format!("cannot read desired state: {e}"))),
        }
    }

    fn save(&self, desired: &DesiredState) -> Result<(), ControlError> {
        save_desired(&self.state, desired)
    }

    /// The current desired state (for listing).
    pub async fn desired(&self) -> DesiredState {
        self.desired.lock().await.clone()
    }

    async fn send(&self, cmd: Command) -> Result<Reply, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send((cmd, tx)).map_err(|_| ControlError::Stopping)?;
        match rx.await {
            Ok(r) => r.map_err(ControlError::from),
            Err(_) => Err(ControlError::Stopping),
        }
    }

    async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, DesiredState>, ControlError> {
        self.desired.try_lock().map_err(|_| {
            ControlError::Conflict("another lifecycle change is in progress; retry when it has finished".into())
        })
    }

    /// Builds a ready-to-run definition from an installed package folder.
    pub async fn prepare(&self, package: &Path, overrides: &DesiredOverrides) -> Result<ServiceDef, ControlError> {
        let (cfg, host, state, metrics) =
            (self.cfg.clone(), self.host.clone(), self.state.clone(), self.metrics.clone());
        let package = package.to_owned();
        let overrides = overrides.clone();
        tokio::task::spawn_blocking(move || {
            build_def(&cfg, &host, &state, &metrics, &package, &overrides, CodeWanted::Optimized).map(|(def, _)| def)
        })
        .await
        .map_err(|e| ControlError::Failed(format!("package preparation stopped: {e}")))?
    }

    /// After a fast start: compiles the optimized code of each service that
    /// started on baseline code (filling the precompiled cache), one after
    /// another in the background, and restarts its instances on it.
    pub async fn optimize(&self, pending: Vec<PendingOptimization>) {
        for p in pending {
            let (host, dir) = (self.host.clone(), self.cfg.state_dir.join("cache"));
            let t0 = std::time::Instant::now();
            let compiled =
                tokio::task::spawn_blocking(move || host.load(&p.wasm_path, &p.wasm, Some(&dir)).map(|l| (l, p))).await;
            let (loaded, p) = match compiled {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "optimized code failed to compile; the service stays on baseline code");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "optimizing compile stopped");
                    continue;
                }
            };
            let digest = loaded.digest.clone();
            if let Err(e) = p.factory.set_optimized_code(loaded) {
                tracing::error!(service = %p.service, error = %e, "optimized code not taken");
                continue;
            }
            let compile_ms = t0.elapsed().as_millis() as u64;
            match self.send(Command::RestartOnOptimizedCode { name: p.service.clone(), digest }).await {
                Ok(Reply::Restarted(true)) => {
                    tracing::info!(service = %p.service, compile_ms, "service restarted on optimized code")
                }
                Ok(_) => tracing::debug!(service = %p.service, "changed meanwhile; no restart for optimized code"),
                Err(e) => tracing::warn!(
                    service = %p.service,
                    error = %e,
                    "could not restart on optimized code; instances keep baseline code until they restart"
                ),
            }
        }
    }

    /// Installs a service that is not running yet.
    pub async fn install(&self, source: &Path, approved_by: &str) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let dir = import_package(&self.cfg, source)?;
        self.check_contracts(&desired, &dir)?;
        let def = self.prepare(&dir, &DesiredOverrides::default()).await?;
        let (name, version) = (def.name().to_owned(), def.version().to_owned());
        if desired.services.get(&name).is_some_and(|s| !s.removed) {
            return Err(ControlError::Conflict(format!(
                "service '{name}' is already installed (version {}); use upgrade",
                desired.services[&name].version
            )));
        }
        self.send(Command::Install(def)).await?;
        desired.services.insert(
            name.clone(),
            DesiredService {
                version: version.clone(),
                package: dir,
                instances: None,
                config: None,
                previous: None,
                removed: false,
            },
        );
        self.save(&desired)?;
        let outcome = Outcome { service: name, version, message: "installed".into() };
        self.record("install", &outcome, approved_by);
        Ok(outcome)
    }

    /// Replaces a running service with the package's version, with
    /// probation (automatic rollback on a crash loop, more errors or worse
    /// health KPIs than the version it replaced).
    pub async fn upgrade(&self, source: &Path, approved_by: &str) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let dir = import_package(&self.cfg, source)?;
        self.check_contracts(&desired, &dir)?;
        let name = Package::load(&dir).map_err(|e| ControlError::Invalid(e.to_string()))?.manifest.service.name;
        let current = desired
            .services
            .get(&name)
            .filter(|s| !s.removed)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("service '{name}' is not installed; use deploy")))?;
        let def = self.prepare(&dir, &DesiredOverrides::of(&current)).await?;
        let version = def.version().to_owned();
        if version == current.version && dir == current.package {
            return Err(ControlError::Conflict(format!("{name}@{version} is already running")));
        }
        let probation = self.probation();
        self.send(Command::Upgrade { def, probation }).await?;
        desired.services.insert(name.clone(), current.replaced_by(&version, dir));
        self.save(&desired)?;
        let outcome = Outcome { service: name, version, message: format!("upgraded from {}", current.version) };
        self.record("upgrade", &outcome, approved_by);
        Ok(outcome)
    }

    fn probation(&self) -> Option<ProbationPolicy> {
        let l = &self.cfg.lifecycle;
        (l.probation_s > 0).then(|| ProbationPolicy {
            window: Duration::from_secs(l.probation_s),
            max_faults: l.probation_max_faults,
            error_margin: l.probation_error_margin,
            min_messages: l.probation_min_messages,
        })
    }

    /// Goes back to the version the last upgrade replaced.
    pub async fn rollback(&self, name: &str) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let current = self.installed(&desired, name)?;
        let previous = current.previous.clone().ok_or_else(|| {
            ControlError::Conflict(format!("{name}@{} has no previous version to roll back to", current.version))
        })?;
        // A consumer deployed since may rely on what only the newer version publishes.
        self.check_contracts(&desired, &previous.package)?;
        let def = self.prepare(&previous.package, &DesiredOverrides::of(&current)).await?;
        self.send(Command::Upgrade { def, probation: None }).await?;
        desired.services.insert(name.to_owned(), current.replaced_by(&previous.version, previous.package.clone()));
        self.save(&desired)?;
        Ok(Outcome {
            service: name.into(),
            version: previous.version,
            message: format!("rolled back from {}", current.version),
        })
    }

    /// Retires a service (its package stays in the store).
    pub async fn remove(&self, name: &str) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let current = self.installed(&desired, name)?;
        let unhandled = match self.send(Command::Remove(name.into())).await? {
            Reply::Removed { unhandled } => unhandled,
            _ => 0,
        };
        desired.services.insert(name.into(), DesiredService { removed: true, ..current.clone() });
        self.save(&desired)?;
        let message = if unhandled > 0 {
            format!("removed; {unhandled} queued messages were left unhandled")
        } else {
            "removed; every queued message was handled first".into()
        };
        Ok(Outcome { service: name.into(), version: current.version, message })
    }

    pub async fn scale(&self, name: &str, instances: u32) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let current = self.installed(&desired, name)?;
        self.send(Command::Scale { name: name.into(), instances }).await?;
        desired.services.insert(name.into(), DesiredService { instances: Some(instances), ..current.clone() });
        self.save(&desired)?;
        Ok(Outcome {
            service: name.into(),
            version: current.version,
            message: format!("scaled to {instances} instances"),
        })
    }

    /// New site config for a service (validated by the service's own `init`
    /// before it replaces the running one).
    pub async fn set_config(&self, name: &str, config: toml::Table) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let current = self.installed(&desired, name)?;
        let pkg = Package::load(&current.package).map_err(|e| ControlError::Failed(e.to_string()))?;
        let json = effective_config(&pkg.manifest.config, Some(&config));
        self.send(Command::SetConfig { name: name.into(), config_json: json }).await?;
        desired.services.insert(name.into(), DesiredService { config: Some(config), ..current.clone() });
        self.save(&desired)?;
        Ok(Outcome { service: name.into(), version: current.version, message: "config applied".into() })
    }

    /// Routes `percent` of the shard keys to the package's version.
    pub async fn canary(&self, source: &Path, percent: u8) -> Result<Outcome, ControlError> {
        let desired = self.lock().await?;
        let dir = import_package(&self.cfg, source)?;
        self.check_contracts(&desired, &dir)?;
        let name = Package::load(&dir).map_err(|e| ControlError::Invalid(e.to_string()))?.manifest.service.name;
        let current = self.installed(&desired, &name)?;
        let def = self.prepare(&dir, &DesiredOverrides::of(&current)).await?;
        let version = def.version().to_owned();
        self.send(Command::Canary { def, percent }).await?;
        if let Ok(mut c) = self.canaries.lock() {
            c.insert(name.clone(), dir.clone());
        }
        // Not persisted: after a restart the serving version runs alone
        // until the canary is started again.
        Ok(Outcome { service: name, version, message: format!("canary on {percent}% of keys") })
    }

    /// Makes a canary the serving version.
    pub async fn promote(&self, name: &str) -> Result<Outcome, ControlError> {
        let mut desired = self.lock().await?;
        let current = self.installed(&desired, name)?;
        let Reply::Promoted { version } = self.send(Command::Promote(name.into())).await? else {
            return Err(ControlError::Failed("unexpected reply".into()));
        };
        let package = self
            .canaries
            .lock()
            .ok()
            .and_then(|mut c| c.remove(name))
            .ok_or_else(|| ControlError::Failed(format!("the canary of {name} has no recorded package")))?;
        desired.services.insert(name.into(), current.replaced_by(&version, package));
        self.save(&desired)?;
        Ok(Outcome { service: name.into(), version, message: format!("promoted over {}", current.version) })
    }

    pub async fn abort_canary(&self, name: &str) -> Result<Outcome, ControlError> {
        let desired = self.lock().await?;
        let current = self.installed(&desired, name)?;
        self.send(Command::AbortCanary(name.into())).await?;
        if let Ok(mut c) = self.canaries.lock() {
            c.remove(name);
        }
        Ok(Outcome { service: name.into(), version: current.version, message: "canary aborted".into() })
    }

    /// Runs the package's version on a copy of live traffic.
    pub async fn shadow(&self, source: &Path) -> Result<Outcome, ControlError> {
        let desired = self.lock().await?;
        let dir = import_package(&self.cfg, source)?;
        self.check_contracts(&desired, &dir)?;
        let name = Package::load(&dir).map_err(|e| ControlError::Invalid(e.to_string()))?.manifest.service.name;
        let current = self.installed(&desired, &name)?;
        let def = self.prepare(&dir, &DesiredOverrides::of(&current)).await?;
        let version = def.version().to_owned();
        self.send(Command::Shadow(def)).await?;
        Ok(Outcome { service: name, version, message: "shadow run started".into() })
    }

    pub async fn shadow_report(&self, name: &str, stop: bool) -> Result<ShadowReport, ControlError> {
        match self.send(Command::ShadowReport { name: name.into(), stop }).await? {
            Reply::Report(r) => Ok(*r),
            _ => Err(ControlError::Failed("unexpected reply".into())),
        }
    }

    fn installed(&self, desired: &DesiredState, name: &str) -> Result<DesiredService, ControlError> {
        desired
            .services
            .get(name)
            .filter(|s| !s.removed)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("service '{name}' is not installed")))
    }

    /// Refuses a package whose contracts break those of the services
    /// running beside it (its publishes against their `requires`, its
    /// `requires` against their publishes), naming every mismatch.
    fn check_contracts(&self, desired: &DesiredState, dir: &Path) -> Result<(), ControlError> {
        let new = Package::load(dir).map_err(|e| ControlError::Invalid(e.to_string()))?.manifest;
        let mut running: Vec<PathBuf> =
            desired.services.values().filter(|s| !s.removed).map(|s| s.package.clone()).collect();
        if let Ok(c) = self.canaries.lock() {
            running.extend(c.values().cloned());
        }
        let running: Vec<crate::manifest::Manifest> = running
            .iter()
            .filter_map(|d| match Package::load(d) {
                Ok(p) => Some(p.manifest),
                Err(e) => {
                    tracing::warn!(package = %d.display(), error = %e, "contracts not checked against this package");
                    None
                }
            })
            .collect();
        let broken = crate::contract::check_deploy(&new, &running);
        if broken.is_empty() {
            return Ok(());
        }
        Err(ControlError::Conflict(format!(
            "{} would break a contract between services:\n  - {}",
            new.id(),
            broken.join("\n  - ")
        )))
    }

    /// Records what the dispatcher changed by itself (automatic rollback).
    pub async fn observe(&self, notice: Notice) {
        let Notice::RolledBack { service, to, .. } = notice else { return };
        let mut desired = self.desired.lock().await;
        let Some(current) = desired.services.get(&service).cloned() else { return };
        let Some(previous) = current.previous.clone().filter(|p| p.version == to) else { return };
        desired.services.insert(service.clone(), current.replaced_by(&previous.version, previous.package));
        if let Err(e) = self.save(&desired) {
            tracing::error!(%service, error = %e, "cannot record the automatic rollback; the agent would start the failed version again");
        }
    }
}

pub fn save_desired(state: &StateStore, desired: &DesiredState) -> Result<(), ControlError> {
    let bytes = serde_json::to_vec(desired).map_err(|e| ControlError::Failed(e.to_string()))?;
    state.put_meta(DESIRED_KEY, &bytes).map_err(|e| ControlError::Failed(format!("cannot record desired state: {e}")))
}

/// What a service's desired entry overrides in its package's defaults.
#[derive(Debug, Clone, Default)]
pub struct DesiredOverrides {
    pub instances: Option<u32>,
    pub config: Option<toml::Table>,
}

impl DesiredOverrides {
    pub fn of(s: &DesiredService) -> DesiredOverrides {
        DesiredOverrides { instances: s.instances, config: s.config.clone() }
    }
}

/// Which code a definition's component gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeWanted {
    /// Cranelift's, from the cache or compiled now.
    Optimized,
    /// At the agent's start: the cached optimized code, or else baseline
    /// code ([`HostEngine::load_for_start`]), returned with what
    /// [`Lifecycle::optimize`] needs to replace it.
    FastStart,
}

/// A service that started on baseline code, for [`Lifecycle::optimize`].
pub struct PendingOptimization {
    pub service: String,
    factory: Arc<WasmFactory>,
    wasm_path: PathBuf,
    wasm: Vec<u8>,
}

/// Loads, checks and compiles a package folder into a ready-to-run
/// definition (with what to optimize later, after a fast start).
pub fn build_def(
    cfg: &AgentConfig,
    host: &Arc<HostEngine>,
    state: &Arc<StateStore>,
    metrics: &Arc<Metrics>,
    dir: &Path,
    overrides: &DesiredOverrides,
    code: CodeWanted,
) -> Result<(ServiceDef, Option<PendingOptimization>), ControlError> {
    let invalid = |e: &dyn std::fmt::Display| ControlError::Invalid(e.to_string());
    let (manifest, wasm_path) = Package::load_manifest(dir).map_err(|e| invalid(&e))?;
    check_fits(cfg, &manifest)?;
    let name = manifest.service.name.clone();
    let cache = cfg.state_dir.join("cache");
    // A stored package whose code is cached (or already loaded) is not read
    // again; anything else loads from the component's bytes.
    let stored = Package::recorded_digest(dir).and_then(|digest| host.load_stored(&wasm_path, &digest, &cache));
    let (loaded, wasm) = match stored {
        Some(loaded) => (loaded, None),
        None => {
            let wasm = std::fs::read(&wasm_path)
                .map_err(|source| invalid(&crate::package::PackageError::Read { path: wasm_path.clone(), source }))?;
            let loaded = match code {
                CodeWanted::FastStart => host.load_for_start(&wasm_path, &wasm, &cache),
                CodeWanted::Optimized => host.load(&wasm_path, &wasm, Some(&cache)),
            }
            .map_err(|e| invalid(&e))?;
            record_digest(cfg, dir, &loaded.digest);
            (loaded, Some(wasm))
        }
    };
    // WASI the component imports but the manifest does not declare: refused
    // here, before anything starts, with the line to add.
    crate::host::check_capabilities(&loaded, &manifest, &wasm_path).map_err(|e| invalid(&e))?;
    let site = cfg.services.get(&name);
    let config = overrides.config.as_ref().or(site.map(|s| &s.config));
    let instances = overrides.instances.or(site.and_then(|s| s.instances)).unwrap_or(manifest.scale.instances);
    let context = ServiceContext {
        service: name.as_str().into(),
        publish_acl: manifest.bus.publish.clone().into(),
        state: Some(state.clone()),
        metrics: metrics.service_version(&name, &manifest.service.version),
    };
    let baseline = loaded.tier == CodeTier::Baseline;
    let service_metrics = context.metrics.clone();
    let factory = Arc::new(WasmFactory::new(host.clone(), loaded, Arc::new(context)));
    let def = ServiceDef {
        config_json: effective_config(&manifest.config, config),
        instances,
        metrics: service_metrics,
        factory: factory.clone(),
        manifest,
    };
    // Baseline code comes only from the bytes.
    let pending = match wasm {
        Some(wasm) if baseline => Some(PendingOptimization { service: name, factory, wasm_path, wasm }),
        _ => None,
    };
    Ok((def, pending))
}

/// Records the component's digest in a stored package that lacks it (one
/// stored by an earlier agent version), for the next start. The store's
/// folders are otherwise immutable; a record that cannot be written only
/// costs that start a read.
fn record_digest(cfg: &AgentConfig, dir: &Path, digest: &str) {
    let record = dir.join(crate::package::DIGEST_FILE);
    // Both package stores (local imports, verified uploads) live in the state folder.
    if dir.starts_with(&cfg.state_dir) && !record.exists() {
        if let Err(e) = outpost_package::store::write_atomic(&record, digest.as_bytes(), 0o644) {
            tracing::debug!(record = %record.display(), error = %e, "cannot record the component's digest");
        }
    }
}

/// Limits a manifest may ask for that this agent cannot give.
fn check_fits(cfg: &AgentConfig, m: &crate::manifest::Manifest) -> Result<(), ControlError> {
    let mut problems = Vec::new();
    if m.limits.memory_mib > MAX_MEMORY_MIB {
        problems.push(format!(
            "limits.memory_mib = {} but this agent's instance pool allows at most {MAX_MEMORY_MIB} MiB",
            m.limits.memory_mib
        ));
    }
    let keep_alive_ms = cfg.broker.keep_alive_s.saturating_mul(1000);
    if m.limits.call_deadline_ms >= keep_alive_ms / 2 {
        problems.push(format!(
            "limits.call_deadline_ms = {} is not below half the MQTT keep-alive ({} s): one call could starve the broker link",
            m.limits.call_deadline_ms, cfg.broker.keep_alive_s
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!("{}: {}", m.id(), problems.join("; "))))
    }
}

/// Copies a package folder into the agent's package store, named by
/// service, version and component digest; written to a temporary folder
/// and renamed, so a crash never leaves a half-written package.
pub fn import_package(cfg: &AgentConfig, source: &Path) -> Result<PathBuf, ControlError> {
    let pkg = Package::load(source).map_err(|e| ControlError::Invalid(e.to_string()))?;
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(std::fs::read(source.join(crate::package::MANIFEST_FILE)).unwrap_or_default());
        h.update(&pkg.wasm);
        hex::encode(h.finalize())
    };
    let root = Lifecycle::packages_dir(cfg).join(&pkg.manifest.service.name);
    let dest = root.join(format!("{}-{}", pkg.manifest.service.version, &digest[..16]));
    if dest.join(crate::package::COMPONENT_FILE).is_file() {
        return Ok(dest);
    }
    let io = |e: std::io::Error| ControlError::Failed(format!("cannot store package in {}: {e}", root.display()));
    std::fs::create_dir_all(&root).map_err(io)?;
    let tmp = root.join(format!(".tmp-{}-{}", std::process::id(), crate::dispatch::now_ms()));
    std::fs::create_dir_all(&tmp).map_err(io)?;
    for f in [crate::package::MANIFEST_FILE, crate::package::COMPONENT_FILE] {
        std::fs::copy(source.join(f), tmp.join(f)).map_err(io)?;
    }
    let component_digest = crate::host::component_digest(&pkg.wasm);
    std::fs::write(tmp.join(crate::package::DIGEST_FILE), component_digest).map_err(io)?;
    sync_dir(&tmp);
    std::fs::rename(&tmp, &dest).map_err(io)?;
    sync_dir(&root);
    Ok(dest)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Verifies and stores an uploaded package (see [`Lifecycle::intake`]).
pub fn intake(cfg: &AgentConfig, store: &outpost_package::ContentStore, opkg: &[u8]) -> Result<PathBuf, ControlError> {
    let trust_dir = cfg.trust_dir();
    let trust = outpost_package::TrustStore::load(&trust_dir).map_err(|e| {
        ControlError::Invalid(format!(
            "cannot read the trust store {}: {e} (put the provider's .pub key there; `outpostctl keygen` makes one)",
            trust_dir.display()
        ))
    })?;
    let pkg =
        outpost_package::verify("uploaded package", opkg, &trust).map_err(|e| ControlError::Invalid(e.to_string()))?;
    crate::manifest::Manifest::parse(&pkg.manifest_toml, Path::new(&pkg.label))
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let digest = store.put(&pkg).map_err(|e| ControlError::Failed(e.to_string()))?;
    let dir = store.path_of(&digest).map_err(|e| ControlError::Failed(e.to_string()))?;
    tracing::info!(package = %pkg.label, signer = %pkg.signer, %digest, "package verified and stored");
    Ok(dir)
}

/// At start: the desired state from the store, with packages found in
/// `services_dir` added for services it does not know yet (first boot, or
/// a technician's local install). Removed services stay removed.
pub fn boot_desired(
    cfg: &AgentConfig,
    state: &StateStore,
) -> Result<(DesiredState, Vec<(String, String)>), ControlError> {
    let mut desired = Lifecycle::load_desired(state)?.unwrap_or_default();
    let mut rejected = Vec::new();
    let dirs = Package::discover(&cfg.services_dir)
        .map_err(|e| ControlError::Invalid(format!("services_dir {}: {e}", cfg.services_dir.display())))?;
    let mut changed = false;
    let mut seeded = std::collections::BTreeSet::new();
    for dir in dirs {
        let label = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The component is read only for a service to seed: on later
        // starts every folder is already in the desired state.
        let name = match Package::load_manifest(&dir) {
            Ok((manifest, _)) => manifest.service.name,
            Err(e) => {
                tracing::error!(package = %dir.display(), error = %e, "service not loaded");
                rejected.push((label, e.to_string()));
                continue;
            }
        };
        if desired.services.contains_key(&name) {
            if seeded.contains(&name) {
                rejected
                    .push((label, format!("another folder already installs service '{name}'; this one is ignored")));
            }
            continue;
        }
        let pkg = match Package::load(&dir) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(package = %dir.display(), error = %e, "service not loaded");
                rejected.push((label, e.to_string()));
                continue;
            }
        };
        // A folder whose component is not one must not claim the name.
        if let Err(e) = crate::host::check_component_bytes(&pkg.wasm) {
            tracing::error!(package = %dir.display(), error = %e, "service not loaded");
            rejected.push((label, format!("{}: {e}", pkg.wasm_path.display())));
            continue;
        }
        match import_package(cfg, &dir) {
            Ok(stored) => {
                seeded.insert(name.clone());
                desired.services.insert(
                    name,
                    DesiredService {
                        version: pkg.manifest.service.version.clone(),
                        package: stored,
                        instances: None,
                        config: None,
                        previous: None,
                        removed: false,
                    },
                );
                changed = true;
            }
            Err(e) => rejected.push((name, e.to_string())),
        }
    }
    if changed {
        save_desired(state, &desired)?;
    }
    Ok((desired, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_state_round_trips_and_refuses_unknown_fields() {
        let mut d = DesiredState::default();
        d.services.insert(
            "a".into(),
            DesiredService {
                version: "1.0.0".into(),
                package: "/x".into(),
                instances: Some(2),
                config: None,
                previous: Some(PreviousVersion { version: "0.9.0".into(), package: "/y".into() }),
                removed: false,
            },
        );
        let text = serde_json::to_string(&d).expect("json");
        assert_eq!(serde_json::from_str::<DesiredState>(&text).expect("parse"), d);
        assert!(serde_json::from_str::<DesiredState>(r#"{"services":{},"extra":1}"#).is_err());
    }
}
