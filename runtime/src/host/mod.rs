//! Hosting service components with wasmtime: one engine for the agent,
//! a checked and pre-linked component per service, and instances that run
//! under a memory limit and a per-call deadline.

mod cache;
mod contract;
mod imports;
mod instance;

pub use contract::{check_component_bytes, check_contract, check_world_matches, ContractInfo, HOSTED_VERSIONS};
pub use imports::{CallOutput, InstanceState, ServiceContext};
pub use instance::{CallError, FaultKind, ServiceInstance};

/// The WIT `message` record as the host passes it to `handle`.
pub use bindings::outpost::service::types::Message as WitMessage;

use crate::manifest::{Manifest, WasiCapability};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Generated from `sdk/wit/service.wit` (`outpost:service@1.2.0`), the
/// single source of truth. The linker holds these imports only: a 1.0.0 or
/// 1.1.0 component's `outpost:service/*` imports resolve to them by semver
/// (1.1.0 added the `migrate` export, 1.2.0 `handle-packed` and the record
/// it takes; neither changed a function a component imports).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "service",
        // Batches are lowered straight from the queued messages, no copies.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// Generated from `sdk/wit-1.1.0/service.wit` (frozen): the exports of a
/// component with `migrate` but without `handle-packed`.
pub(crate) mod bindings_1_1 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit-1.1.0",
        world: "service",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// Generated from `sdk/wit-1.0.0/service.wit` (frozen): the exports of a
/// component without `migrate` (built against 1.0.0, or 1.1.0 without it).
pub(crate) mod bindings_1_0 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit-1.0.0",
        world: "service",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// Epoch tick used for call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Largest linear memory any instance may grow to; manifests are capped to it.
pub const MAX_MEMORY_MIB: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("component {path}: {message}")]
    NotAComponent { path: PathBuf, message: String },
    #[error("component {path} does not fit the contract {world}: {message}")]
    Contract { path: PathBuf, world: String, message: String },
    #[error("component {path} failed to compile: {message}")]
    Compile { path: PathBuf, message: String },
    #[error(
        "component {path} imports {} but its service.toml does not declare {}: add `[capabilities] wasi = [{}]` \
         if the service needs it, or remove the code that uses it",
        imports.join(", "),
        missing.iter().map(|c| format!("'{}'", c.name())).collect::<Vec<_>>().join(" and "),
        missing.iter().map(|c| format!("\"{}\"", c.name())).collect::<Vec<_>>().join(", ")
    )]
    Capabilities { path: PathBuf, imports: Vec<String>, missing: Vec<WasiCapability> },
    #[error(
        "component {path} imports {}: files and sockets are never available to a service; \
         exchange data over the bus and keep it in the service's state",
        imports.join(", ")
    )]
    Forbidden { path: PathBuf, imports: Vec<String> },
    #[error("wasmtime engine: {0}")]
    Engine(String),
}

/// Links what every guest may use: `wasi:io`, `wasi:cli` (stdio, an empty
/// environment, exit) and the capabilities a manifest may declare
/// (`wasi:clocks`, `wasi:random`, granted per component by
/// [`check_capabilities`]). `wasi:filesystem` and `wasi:sockets` are not
/// linked: a component importing them fails to load, naming the import.
fn link_wasi<T: wasmtime_wasi::WasiView>(l: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::sync::io;
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;

    /// `wasi:io` is implemented over the instance's resource table.
    struct HasIo;
    impl wasmtime::component::HasData for HasIo {
        type Data<'a> = &'a mut wasmtime::component::ResourceTable;
    }
    io::error::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)?;
    io::poll::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)?;
    io::streams::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    Ok(())
}

/// WASI packages no manifest can ask for (not linked at all).
const NEVER_LINKED: [&str; 2] = ["wasi:filesystem", "wasi:sockets"];

/// The component's imports of [`NEVER_LINKED`] packages.
fn forbidden_imports(engine: &Engine, component: &Component) -> Vec<String> {
    let mut out: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| NEVER_LINKED.iter().any(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('/'))))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// The component's imports that need a WASI capability, with the capability
/// each needs (`wasi:clocks/wall-clock@0.2.6` needs clocks).
fn capability_imports(engine: &Engine, component: &Component) -> Vec<(String, WasiCapability)> {
    let mut out: Vec<(String, WasiCapability)> = component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| {
            WasiCapability::ALL
                .into_iter()
                .find(|c| name.strip_prefix(c.wasi_package()).is_some_and(|rest| rest.starts_with('/')))
                .map(|c| (name.to_owned(), c))
        })
        .collect();
    out.sort();
    out
}

/// Refuses a component that imports a WASI capability its manifest does not
/// declare. Clocks and randomness are linked for every component; this is
/// what grants them to one.
pub fn check_capabilities(loaded: &LoadedComponent, manifest: &Manifest, path: &Path) -> Result<(), LoadError> {
    let undeclared: Vec<&(String, WasiCapability)> =
        loaded.capability_imports.iter().filter(|(_, c)| !manifest.capabilities.allows(*c)).collect();
    if undeclared.is_empty() {
        return Ok(());
    }
    let mut missing: Vec<WasiCapability> = undeclared.iter().map(|(_, c)| *c).collect();
    missing.dedup();
    Err(LoadError::Capabilities {
        path: path.to_owned(),
        imports: undeclared.iter().map(|(n, _)| n.clone()).collect(),
        missing,
    })
}

/// Engine settings that differ between the agent and the benchmarks.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Pre-allocated instance slots (copy-on-write memories, fast instantiate).
    pub pooling: bool,
    /// Instance slots when pooling.
    pub max_instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { pooling: true, max_instances: default_max_instances() }
    }
}

/// Fewest and most instance slots the pool gets by default.
pub const MIN_POOL_INSTANCES: u32 = 64;
pub const MAX_POOL_INSTANCES: u32 = 8192;

/// Instance slots for all services together when the config does not say:
/// one per 16 MiB of the machine's memory (a slot costs address space, not
/// memory, until an instance runs in it; an idle instance holds about
/// 75 KiB), from 64 on a 1 GiB gateway to 1,536 on 24 GiB.
pub fn default_max_instances() -> u32 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(4 << 20);
    ((total_kib / (16 << 10)) as u32).clamp(MIN_POOL_INSTANCES, MAX_POOL_INSTANCES)
}

/// Which compiler made a component's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeTier {
    /// Cranelift: the code services run on (and what the cache keeps).
    Optimized,
    /// Winch, a single-pass compiler about 4x faster to compile with and
    /// slower to run: what a service runs on at start until its optimized
    /// code is ready ([`HostEngine::load_for_start`]).
    Baseline,
}

impl CodeTier {
    /// As in `/status` and the management API.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeTier::Optimized => "optimized",
            CodeTier::Baseline => "baseline",
        }
    }
}

/// The agent's wasmtime engine plus a linker with the Outpost and WASI imports.
pub struct HostEngine {
    engine: Engine,
    linker: Linker<InstanceState>,
    /// [`cache::engine_hash`] of `engine`: what its cache entries are keyed by.
    cache_key: String,
    /// The pool settings, for the baseline tier too.
    options: EngineOptions,
    /// The baseline tier, built at the first start-up load that needs it
    /// (`None` inside if Winch cannot run here); the epoch thread ticks it too.
    baseline: Arc<OnceLock<Option<Tier>>>,
    stop_ticker: Arc<AtomicBool>,
    /// Components by digest (and tier), so that the same bytes installed as
    /// several services (or loaded by two at once) are checked, compiled and
    /// held in memory once. An entry no service uses any more is dropped at
    /// the next load.
    loaded: Mutex<HashMap<String, Arc<OnceLock<Option<LoadedComponent>>>>>,
}

/// An engine with its own linker (a linker belongs to one engine).
struct Tier {
    engine: Engine,
    linker: Linker<InstanceState>,
}

/// A component's identity: the hex sha256 of its bytes, as shown in status,
/// keyed in the memo and the cache, and recorded in the package store.
pub fn component_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What every engine of the agent shares: components, epoch deadlines,
/// and perf names for guest functions when asked.
fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // `perf record` then names guest functions (as `wasmtime run --profile perfmap`).
    let profiling = std::env::var_os("OUTPOST_PERFMAP").is_some_and(|v| v == "1");
    if profiling {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // `.eh_frame` for guest code serves only outside unwinders (a profiler
    // walking the stack); wasmtime's own traps and backtraces do not use
    // it, and registering it frame by frame is much of loading cached code.
    config.native_unwind_info(profiling);
    config
}

/// A linker with the WASI and `outpost:service` imports on `engine`.
fn service_linker(engine: &Engine) -> Result<Linker<InstanceState>, LoadError> {
    let mut linker = Linker::new(engine);
    link_wasi(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
    bindings::Service::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// The instance pool: `max_instances` slots for all services together, the
/// memory cap per instance, room for a component's core instances.
fn pool_config(options: &EngineOptions) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    let n = options.max_instances.max(1);
    pool.total_component_instances(n);
    pool.total_core_instances(n * 8);
    pool.total_memories(n * 2);
    pool.total_tables(n * 8);
    pool.max_memories_per_component(2);
    pool.max_core_instances_per_component(16);
    pool.max_tables_per_component(16);
    pool.max_memory_size((MAX_MEMORY_MIB as usize) << 20);
    pool.max_component_instance_size(1 << 20);
    pool.max_core_instance_size(1 << 20);
    pool.table_elements(20_000);
    // Fiber stacks serve only async calls, and the agent calls guests
    // synchronously: without this the pool reserves 1,000 of them and
    // protects a guard page on each, a thousand `mprotect`s on every start.
    pool.total_stacks(0);
    pool
}

impl Tier {
    /// Winch, with a pool of the same size as the agent's (so the same
    /// `max_instances` holds for baseline code; it is address space until
    /// used).
    fn baseline(options: &EngineOptions) -> Result<Tier, LoadError> {
        let mut config = base_config();
        config.strategy(wasmtime::Strategy::Winch);
        if options.pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(options)));
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let linker = service_linker(&engine)?;
        Ok(Tier { engine, linker })
    }
}

impl HostEngine {
    pub fn new(options: &EngineOptions) -> Result<HostEngine, LoadError> {
        Self::with_config(options, |_| {})
    }

    /// As [`HostEngine::new`], with wasmtime's config changed last by
    /// `adjust`: for benchmarks that measure what one setting costs (epoch
    /// checks, bounds checks). Code compiled here must not go to the agent's
    /// cache: the cache is keyed by the agent's settings.
    pub fn with_config(options: &EngineOptions, adjust: impl FnOnce(&mut Config)) -> Result<HostEngine, LoadError> {
        let mut config = base_config();
        // wasmtime's default 4 GiB reservation plus guard region lets
        // Cranelift drop bounds checks on memory accesses; it is address
        // space only (hundreds of instances fit in 47 bits), and the real
        // cap is the per-service limit enforced by the store's limiter.
        if options.pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(options)));
        }
        adjust(&mut config);
        let t0 = std::time::Instant::now();
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let t_engine = t0.elapsed();
        let linker = service_linker(&engine)?;
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        tracing::debug!(engine_ms = ms(t_engine), linker_ms = ms(t0.elapsed() - t_engine), "engine built");

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let baseline: Arc<OnceLock<Option<Tier>>> = Arc::default();
        let weak = engine.weak();
        let (stop, tick_baseline) = (stop_ticker.clone(), baseline.clone());
        std::thread::Builder::new()
            .name("outpost-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    if let Some(Some(tier)) = tick_baseline.get() {
                        tier.engine.increment_epoch();
                    }
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(HostEngine {
            cache_key: cache::engine_hash(&engine),
            engine,
            linker,
            options: options.clone(),
            baseline,
            stop_ticker,
            loaded: Mutex::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads from `cache_dir`) a component, checks it against the
    /// contract and pre-links it. The code is always optimized.
    pub fn load(&self, wasm_path: &Path, bytes: &[u8], cache_dir: Option<&Path>) -> Result<LoadedComponent, LoadError> {
        self.load_as(wasm_path, bytes, cache_dir, Wanted::Optimized)
    }

    /// The optimized code of a stored component whose sha256 is `digest`
    /// (recorded when its package entered the agent's store), from the
    /// engine's memo or the cache, without reading the component at all.
    /// None when neither has it: the caller then loads from the bytes.
    pub fn load_stored(&self, wasm_path: &Path, digest: &str, cache_dir: &Path) -> Option<LoadedComponent> {
        let t0 = std::time::Instant::now();
        let cell = match self.memo_cell(digest, digest.to_owned()) {
            Ok(loaded) => return Some(loaded),
            Err(cell) => cell,
        };
        // Services installing the same component wait for one load. A miss
        // leaves an empty cell, which the next load replaces (`memo_cell`).
        let shared = cell.get_or_init(|| {
            let component = self.read_cache(digest, cache_dir)?;
            self.finish_load(wasm_path, component, CodeTier::Optimized, digest.to_owned(), t0, Duration::ZERO)
                .inspect_err(|e| tracing::warn!(component = %wasm_path.display(), error = %e, "cached code refused"))
                .ok()
        });
        shared.clone()
    }

    /// The optimized code of `digest` if already loaded (it serves a fast
    /// start too); else the memo's cell for `key`, where a load of the same
    /// bytes is shared. Entries nobody runs any more, and failed loads, go.
    fn memo_cell(&self, digest: &str, key: String) -> Result<LoadedComponent, Arc<OnceLock<Option<LoadedComponent>>>> {
        let mut memo = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        memo.retain(|_, cell| cell.get().is_none_or(|l| l.as_ref().is_some_and(|l| Arc::strong_count(&l.users) > 1)));
        if let Some(Some(l)) = memo.get(digest).and_then(|cell| cell.get()) {
            return Ok(l.clone());
        }
        Err(memo.entry(key).or_default().clone())
    }

    /// As [`HostEngine::load`] for the agent's start: the cached optimized
    /// code when `cache_dir` has it, else the component compiled by the
    /// baseline compiler (several times faster), so services serve sooner.
    /// The caller replaces baseline code with [`HostEngine::load`]'s later
    /// (which also fills the cache). Falls back to optimized code where the
    /// baseline compiler cannot run.
    pub fn load_for_start(
        &self,
        wasm_path: &Path,
        bytes: &[u8],
        cache_dir: &Path,
    ) -> Result<LoadedComponent, LoadError> {
        self.load_as(wasm_path, bytes, Some(cache_dir), Wanted::Fast)
    }

    fn load_as(
        &self,
        wasm_path: &Path,
        bytes: &[u8],
        cache_dir: Option<&Path>,
        wanted: Wanted,
    ) -> Result<LoadedComponent, LoadError> {
        let t0 = std::time::Instant::now();
        check_component_bytes(bytes)
            .map_err(|message| LoadError::NotAComponent { path: wasm_path.to_owned(), message })?;
        let digest = component_digest(bytes);
        let t_digest = t0.elapsed();
        let key = match wanted {
            Wanted::Optimized => digest.clone(),
            Wanted::Fast => format!("{digest}+fast"),
        };
        let cell = match self.memo_cell(&digest, key) {
            Ok(loaded) => return Ok(loaded),
            Err(cell) => cell,
        };
        let mut error = None;
        let new = || self.load_new(wasm_path, bytes, digest.clone(), cache_dir, wanted, t0, t_digest);
        // A second load of the same bytes waits for the first, then shares it.
        let shared = cell.get_or_init(|| match new() {
            Ok(l) => Some(l),
            Err(e) => {
                error = Some(e);
                None
            }
        });
        match (shared, error) {
            (Some(l), _) => Ok(l.clone()),
            (None, Some(e)) => Err(e),
            // Another load of these bytes failed: fail with this one's own error.
            (None, None) => new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn load_new(
        &self,
        wasm_path: &Path,
        bytes: &[u8],
        digest: String,
        cache_dir: Option<&Path>,
        wanted: Wanted,
        t0: std::time::Instant,
        t_digest: Duration,
    ) -> Result<LoadedComponent, LoadError> {
        let (component, tier) = match (cache_dir, wanted) {
            (Some(dir), Wanted::Fast) => match self.read_cache(&digest, dir) {
                Some(c) => (c, CodeTier::Optimized),
                None => self.compile_baseline(wasm_path, bytes, &digest, dir)?,
            },
            (Some(dir), Wanted::Optimized) => {
                (self.compile_cached(wasm_path, bytes, &digest, dir)?, CodeTier::Optimized)
            }
            (None, _) => (self.compile(wasm_path, bytes)?, CodeTier::Optimized),
        };
        self.finish_load(wasm_path, component, tier, digest, t0, t_digest)
    }

    /// The checks and pre-linking every loaded component goes through.
    fn finish_load(
        &self,
        wasm_path: &Path,
        component: Component,
        tier: CodeTier,
        digest: String,
        t0: std::time::Instant,
        t_digest: Duration,
    ) -> Result<LoadedComponent, LoadError> {
        let linker = match tier {
            CodeTier::Optimized => &self.linker,
            CodeTier::Baseline => match self.baseline.get() {
                Some(Some(t)) => &t.linker,
                _ => return Err(LoadError::Engine("baseline code without a baseline engine".into())),
            },
        };
        let t_code = t0.elapsed();
        let engine = component.engine();
        let contract_error = |e: wasmtime::Error| LoadError::Contract {
            path: wasm_path.to_owned(),
            world: crate::manifest::SUPPORTED_WORLD.into(),
            message: format!("{e:#}"),
        };
        let info = check_contract(engine, &component).map_err(|message| LoadError::Contract {
            path: wasm_path.to_owned(),
            world: crate::manifest::SUPPORTED_WORLD.into(),
            message,
        })?;
        let forbidden = forbidden_imports(engine, &component);
        if !forbidden.is_empty() {
            return Err(LoadError::Forbidden { path: wasm_path.to_owned(), imports: forbidden });
        }
        let capability_imports = capability_imports(engine, &component);
        let pre = linker.instantiate_pre(&component).map_err(contract_error)?;
        // The exports decide the bindings: `handle-packed` means the 1.2.0
        // world, `migrate` without it 1.1.0.
        let pre = if info.packed {
            ServicePre::V1_2(bindings::ServicePre::new(pre).map_err(contract_error)?)
        } else if info.migrate {
            ServicePre::V1_1(bindings_1_1::ServicePre::new(pre).map_err(contract_error)?)
        } else {
            ServicePre::V1_0(bindings_1_0::ServicePre::new(pre).map_err(contract_error)?)
        };
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        tracing::debug!(
            component = %wasm_path.display(),
            ?tier,
            digest_ms = ms(t_digest),
            code_ms = ms(t_code - t_digest),
            checks_and_link_ms = ms(t0.elapsed() - t_code),
            "component loaded"
        );
        Ok(LoadedComponent {
            pre,
            digest,
            tier,
            capability_imports,
            wit_version: info.wit_version,
            users: Arc::new(()),
        })
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component, LoadError> {
        Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile { path: path.to_owned(), message: format!("{e:#}") })
    }

    /// Compiles with Winch; where it cannot (no baseline engine on this
    /// machine, or a feature Winch lacks), with Cranelift into the cache
    /// (no optimization follows optimized code, so the cache is filled now).
    fn compile_baseline(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &str,
        dir: &Path,
    ) -> Result<(Component, CodeTier), LoadError> {
        let tier = self.baseline.get_or_init(|| {
            Tier::baseline(&self.options)
                .inspect_err(
                    |e| tracing::info!(error = %e, "no baseline compiler here; services start on optimized code"),
                )
                .ok()
        });
        let t0 = std::time::Instant::now();
        if let Some(tier) = tier {
            // Winch is the younger compiler: should it panic on this input,
            // the optimizing compiler gets its turn instead of the agent dying.
            let compiled =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Component::new(&tier.engine, bytes)))
                    .unwrap_or_else(|_| Err(wasmtime::Error::msg("the baseline compiler panicked")));
            match compiled {
                Ok(c) => {
                    let ms = format!("{:.2}", t0.elapsed().as_secs_f64() * 1e3);
                    tracing::debug!(component = %path.display(), compile_ms = ms, "baseline code compiled");
                    return Ok((c, CodeTier::Baseline));
                }
                Err(e) => tracing::info!(
                    component = %path.display(),
                    error = %format!("{e:#}"),
                    "the baseline compiler refused it; compiling optimized code"
                ),
            }
        }
        Ok((self.compile_into_cache(path, bytes, digest, dir)?, CodeTier::Optimized))
    }

    /// Compiles `bytes`, or loads the agent's own earlier compilation of them
    /// from `dir` when its record matches (see [`cache`]); anything else is
    /// compiled again from the component and the entry rewritten.
    fn compile_cached(&self, path: &Path, bytes: &[u8], digest: &str, dir: &Path) -> Result<Component, LoadError> {
        match self.read_cache(digest, dir) {
            Some(c) => Ok(c),
            None => self.compile_into_cache(path, bytes, digest, dir),
        }
    }

    /// The cached optimized code of `digest`, if `dir` holds a usable entry.
    fn read_cache(&self, digest: &str, dir: &Path) -> Option<Component> {
        if let Err(e) = outpost_package::store::private_dir(dir) {
            tracing::warn!(cache = %dir.display(), error = %e, "precompiled cache unusable; compiling without it");
            return None;
        }
        let engine = &self.cache_key;
        let file = cache::entry_path(dir, digest, engine);
        let t0 = std::time::Instant::now();
        match cache::verify(&file, digest, engine) {
            Ok(Some(verified)) => {
                let checked = t0.elapsed();
                // SAFETY: wasmtime maps and runs this file as native code. It
                // is the file whose BLAKE3 hash matched the agent's record of
                // compiling `digest` with this engine configuration, in a
                // folder only the agent's user can write (checked above),
                // where entries are replaced by rename, never changed in
                // place; `is_still` below refuses a file replaced meanwhile.
                match unsafe { Component::deserialize_file(&self.engine, &file) } {
                    Ok(c) if verified.is_still(&file) => {
                        tracing::debug!(
                            bytes = verified.len,
                            verify_ms = format!("{:.2}", checked.as_secs_f64() * 1e3),
                            map_ms = format!("{:.2}", (t0.elapsed() - checked).as_secs_f64() * 1e3),
                            "precompiled code loaded"
                        );
                        return Some(c);
                    }
                    Ok(_) => {
                        tracing::warn!(cache = %file.display(), "precompiled cache entry replaced while loading; recompiling")
                    }
                    Err(e) => {
                        tracing::warn!(cache = %file.display(), error = %e, "precompiled cache entry unusable; recompiling")
                    }
                }
            }
            Ok(None) => {}
            Err(reason) => tracing::warn!(
                cache = %file.display(),
                reason = %reason,
                "precompiled cache entry not loaded; recompiling from the component"
            ),
        }
        None
    }

    /// Compiles optimized code and writes it to the cache (a cache that
    /// cannot be written is logged, not fatal: the code is still good).
    fn compile_into_cache(&self, path: &Path, bytes: &[u8], digest: &str, dir: &Path) -> Result<Component, LoadError> {
        let t0 = std::time::Instant::now();
        let component = self.compile(path, bytes)?;
        let compiled = t0.elapsed();
        if outpost_package::store::private_dir(dir).is_ok() {
            let file = cache::entry_path(dir, digest, &self.cache_key);
            match component.serialize() {
                Ok(data) => {
                    if let Err(e) = cache::write(&file, &data, digest, &self.cache_key) {
                        tracing::warn!(cache = %file.display(), error = %e, "cannot write precompiled cache");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot serialize compiled component"),
            }
        }
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        tracing::debug!(compile_ms = ms(compiled), cache_write_ms = ms(t0.elapsed() - compiled), "component compiled");
        Ok(component)
    }

    /// Removes cache entries this engine can never load (compiled by another
    /// configuration or wasmtime version); returns how many.
    pub fn prune_cache(&self, dir: &Path) -> std::io::Result<usize> {
        cache::remove_other_engines(dir, &self.cache_key)
    }

    /// Starts a new instance of a loaded component and runs its `init`.
    pub fn instantiate(
        &self,
        loaded: &LoadedComponent,
        manifest: &Manifest,
        context: impl Into<Arc<ServiceContext>>,
        config_json: &str,
    ) -> Result<ServiceInstance, CallError> {
        Self::admit(loaded, manifest)?;
        ServiceInstance::start(loaded, manifest, context.into(), config_json)
    }

    /// A new instance without its `init`: what instantiation itself costs
    /// (checks, store, limits, WASI context, linking), for the benchmarks to
    /// set beside raw wasmtime. The agent never runs an instance that skipped `init`.
    #[doc(hidden)]
    pub fn instantiate_without_init(
        &self,
        loaded: &LoadedComponent,
        manifest: &Manifest,
        context: impl Into<Arc<ServiceContext>>,
    ) -> Result<ServiceInstance, CallError> {
        Self::admit(loaded, manifest)?;
        ServiceInstance::create(loaded, manifest, context.into())
    }

    /// What every new instance is checked for: the WASI capabilities its
    /// manifest declares, and the manifest's world.
    fn admit(loaded: &LoadedComponent, manifest: &Manifest) -> Result<(), CallError> {
        // Only a refusal needs the manifest's id (an allocation) for its message.
        if loaded.capability_imports.iter().any(|(_, c)| !manifest.capabilities.allows(*c)) {
            // The component's path is not known here; the manifest's id names it.
            check_capabilities(loaded, manifest, Path::new(&manifest.id()))
                .map_err(|e| CallError::Service(format!("refused by the host: {e}")))?;
        }
        check_world_matches(&manifest.service.world, &loaded.wit_version)
            .map_err(|e| CallError::Service(format!("refused by the host: {}: {e}", manifest.id())))
    }
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// What a load asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Optimized,
    /// Whatever serves soonest: cached optimized code, else baseline code.
    Fast,
}

/// Pre-linked exports, by the world the component implements.
#[derive(Clone)]
pub(crate) enum ServicePre {
    /// `init`, `handle`, `tick` (built against 1.0.0, or 1.1.0 without `migrate`).
    V1_0(bindings_1_0::ServicePre<InstanceState>),
    /// 1.1.0 with `migrate`.
    V1_1(bindings_1_1::ServicePre<InstanceState>),
    /// 1.2.0: `migrate` and `handle-packed`.
    V1_2(bindings::ServicePre<InstanceState>),
}

/// A compiled, contract-checked component ready to instantiate.
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) pre: ServicePre,
    /// The newest `outpost:service` version the component imports.
    pub wit_version: semver::Version,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Which compiler made its code.
    pub tier: CodeTier,
    /// Imports that need a declared WASI capability (see [`check_capabilities`]).
    capability_imports: Vec<(String, WasiCapability)>,
    /// One count per copy: the engine's memo holds one, every user another.
    users: Arc<()>,
}

impl LoadedComponent {
    /// The compiled component (benchmarks compare against raw wasmtime with it).
    pub fn component(&self) -> &Component {
        match &self.pre {
            ServicePre::V1_0(p) => p.instance_pre().component(),
            ServicePre::V1_1(p) => p.instance_pre().component(),
            ServicePre::V1_2(p) => p.instance_pre().component(),
        }
    }

    /// The component exports `migrate` (1.1.0 and later).
    pub fn has_migrate(&self) -> bool {
        matches!(self.pre, ServicePre::V1_1(_) | ServicePre::V1_2(_))
    }

    /// The component exports `handle-packed` (1.2.0): batches of up to
    /// `instance::PACK_MAX_BYTES` go there.
    pub fn takes_packed_batches(&self) -> bool {
        matches!(self.pre, ServicePre::V1_2(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component, but not a service (no exports): refused by the contract.
    const NOT_A_SERVICE: &str = "(component (core module (func (export \"f\") (result i32) i32.const 1)))";

    #[test]
    fn a_refused_component_is_refused_again_not_remembered() {
        let host = HostEngine::new(&EngineOptions { pooling: false, max_instances: 1 }).expect("engine");
        let bytes = wat::parse_str(NOT_A_SERVICE).expect("wat");
        let path = Path::new("svc/service.wasm");
        // Two loads at once (one waits for the other's verdict), then one more.
        let errors: Vec<String> = std::thread::scope(|s| {
            let a = s.spawn(|| host.load(path, &bytes, None).err().map(|e| e.to_string()));
            let b = s.spawn(|| host.load(path, &bytes, None).err().map(|e| e.to_string()));
            [a.join().expect("a"), b.join().expect("b")]
        })
        .into_iter()
        .chain([host.load(path, &bytes, None).err().map(|e| e.to_string())])
        .map(|e| e.expect("refused"))
        .collect();
        for e in &errors {
            assert!(e.contains("does not fit the contract") && e.contains("svc/service.wasm"), "{e}");
        }
        // The failed entry is dropped at the next load; only the last one's is left.
        assert_eq!(host.loaded.lock().expect("memo").len(), 1);
    }
}
