//! The agent side of the `outpost:service` imports: publish (through the
//! ACL), state (buffered, committed per call), logs and metrics.

use super::bindings::outpost::service::{bus, log, metrics, state, types};
use crate::state::{StateStore, StateTxn};
use crate::telemetry::ServiceMetrics;
use crate::topic;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most messages one call may publish; protects the agent from a runaway guest.
const MAX_OUTBOX: usize = 100_000;
/// Largest payload a service may publish.
const MAX_PUBLISH_BYTES: usize = 1 << 20;
/// Longest log line kept from a guest.
const MAX_LOG_CHARS: usize = 4096;

/// What an instance needs from the agent; shared by all instances of a service.
#[derive(Clone)]
pub struct ServiceContext {
    pub service: Arc<str>,
    pub publish_acl: Arc<[String]>,
    pub state: Option<Arc<StateStore>>,
    pub metrics: ServiceMetrics,
}

/// What one call produced, taken by the dispatcher at the batch boundary.
#[derive(Debug, Default)]
pub struct CallOutput {
    pub published: Vec<(String, Vec<u8>)>,
    pub acl_denied: u64,
}

/// The store's limits, remembering how much linear memory the guest holds
/// (reported by `ServiceInstance::memory_bytes`).
pub(crate) struct TrackedLimits {
    inner: StoreLimits,
    pub(crate) memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for TrackedLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = self.memory_bytes - current.min(self.memory_bytes) + desired;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The `T` of each instance's `Store<T>`.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: TrackedLimits,
    /// Shared by every instance of the service: a new instance takes a
    /// reference, not a copy of each of its handles.
    ctx: Arc<ServiceContext>,
    pub(crate) output: CallOutput,
    pub(crate) txn: StateTxn,
    /// A state read that failed during this call: the call fails with it
    /// (the guest was told "no value", which would be a lie to act on).
    pub(crate) state_error: Option<String>,
}

impl InstanceState {
    pub(crate) fn new(ctx: Arc<ServiceContext>, limits: StoreLimits) -> Self {
        let limits = TrackedLimits { inner: limits, memory_bytes: 0 };
        let wasi = wasi_context();
        InstanceState {
            wasi,
            table: ResourceTable::new(),
            limits,
            ctx,
            output: CallOutput::default(),
            txn: StateTxn::default(),
            state_error: None,
        }
    }

    pub(crate) fn context(&self) -> &ServiceContext {
        &self.ctx
    }
}

/// Every instance's WASI context: stderr reaches the agent's stderr (guest
/// panics), stdin is closed, stdout discarded, no environment or arguments,
/// no preopened folders and no network. Files and sockets are not even
/// linked (see `super::link_wasi`); clocks and randomness are real, and only
/// components whose manifest declares them may import them
/// (`super::check_capabilities`).
fn wasi_context() -> WasiCtx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .inherit_stderr()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for InstanceState {}

impl bus::Host for InstanceState {
    fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        topic::validate_topic(&topic)?;
        if !self.ctx.publish_acl.iter().any(|f| topic::matches(f, &topic)) {
            self.output.acl_denied += 1;
            self.ctx.metrics.acl_denied.inc();
            tracing::warn!(service = %self.ctx.service, topic = %topic.escape_debug(), "publish denied: topic not in the manifest's bus.publish list");
            return Err(format!("publish to '{topic}' denied: not in the manifest's bus.publish list"));
        }
        if payload.len() > MAX_PUBLISH_BYTES {
            return Err(format!("payload of {} bytes exceeds the {MAX_PUBLISH_BYTES}-byte limit", payload.len()));
        }
        if self.output.published.len() >= MAX_OUTBOX {
            return Err(format!("more than {MAX_OUTBOX} publishes in one call"));
        }
        self.output.published.push((topic, payload));
        Ok(())
    }
}

impl state::Host for InstanceState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.txn.get(&key) {
            Some(pending) => pending,
            None => self.ctx.state.as_ref().and_then(|s| match s.get(&self.ctx.service, &key) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(service = %self.ctx.service, key, error = %e, "state read failed; the call will fail");
                    self.state_error.get_or_insert_with(|| format!("key '{key}': {e}"));
                    None
                }
            }),
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) {
        self.txn.set(key, value);
    }

    fn delete(&mut self, key: String) {
        self.txn.delete(key);
    }
}

impl log::Host for InstanceState {
    fn log(&mut self, level: log::Level, msg: String) {
        let service = &*self.ctx.service;
        if !self.ctx.metrics.admit_log() {
            return;
        }
        let msg: String = msg.chars().take(MAX_LOG_CHARS).collect();
        match level {
            log::Level::Trace => tracing::trace!(service, "{msg}"),
            log::Level::Debug => tracing::debug!(service, "{msg}"),
            log::Level::Info => tracing::info!(service, "{msg}"),
            log::Level::Warn => tracing::warn!(service, "{msg}"),
            log::Level::Error => tracing::error!(service, "{msg}"),
        }
    }
}

impl metrics::Host for InstanceState {
    fn kpi(&mut self, name: String, value: f64) {
        self.ctx.metrics.set_kpi(&name, value);
    }

    fn counter(&mut self, name: String, delta: u64) {
        self.ctx.metrics.add_counter(&name, delta);
    }
}
