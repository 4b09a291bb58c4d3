//! One running instance of a service: its own store, memory limit and
//! per-call deadline. A fault poisons only this instance.

use super::bindings::outpost::service::types::{Message, PackedBatch as PackedBatchWit, ServiceError};
use super::bindings_1_0::outpost::service::types as types_1_0;
use super::bindings_1_1::outpost::service::types as types_1_1;
use super::imports::{CallOutput, InstanceState, ServiceContext};
use super::{bindings, bindings_1_0, bindings_1_1, LoadedComponent, ServicePre, EPOCH_TICK};
use crate::manifest::Manifest;
use outpost_sdk::packed::PackedBatch;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Store, StoreLimitsBuilder, Trap};

/// Why a call did not complete normally.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service refused its input or config (`bad-input`, `bad-config`);
    /// the instance is healthy and its outputs and state writes stand.
    #[error("service returned an error: {0}")]
    Service(String),
    /// The service returned `internal`: the call failed. Its outputs and
    /// state writes are discarded and the batch is isolated like a fault,
    /// but the instance is not restarted.
    #[error("service failed: {0}")]
    Internal(String),
    /// The instance trapped, ran past its deadline or out of memory; it must be restarted.
    #[error("instance fault ({kind}): {message}")]
    Fault { kind: FaultKind, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Deadline,
    OutOfMemory,
    Trap,
    /// The agent could not read or commit the service's state: not the
    /// message's fault, so nothing is dead-lettered; the batch waits.
    State,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultKind::Deadline => "deadline exceeded",
            FaultKind::OutOfMemory => "out of memory",
            FaultKind::Trap => "trap",
            FaultKind::State => "state store failure",
        })
    }
}

fn describe(e: &ServiceError) -> String {
    match e {
        ServiceError::BadInput(m) => format!("bad input: {m}"),
        ServiceError::BadConfig(m) => format!("bad config: {m}"),
        ServiceError::Internal(m) => format!("internal: {m}"),
    }
}

/// Batches larger than this (topics and payloads) go to `handle`, not
/// `handle-packed`. The guest holds a packed batch and its unpacked copy at
/// once while it unpacks, so its memory may grow by this much once; and
/// packing copies every byte once more on the host, which costs more than
/// the two calls into the guest it saves per message once messages reach a
/// few KiB.
pub const PACK_MAX_BYTES: usize = 256 << 10;

/// The instantiated exports, by world.
enum Service {
    V1_0(bindings_1_0::Service),
    V1_1(bindings_1_1::Service),
    V1_2(bindings::Service),
}

/// The frozen worlds' `service-error` is the same variant as today's.
macro_rules! from_frozen {
    ($name:ident, $types:ident) => {
        fn $name(e: $types::ServiceError) -> ServiceError {
            match e {
                $types::ServiceError::BadInput(m) => ServiceError::BadInput(m),
                $types::ServiceError::BadConfig(m) => ServiceError::BadConfig(m),
                $types::ServiceError::Internal(m) => ServiceError::Internal(m),
            }
        }
    };
}
from_frozen!(from_1_0, types_1_0);
from_frozen!(from_1_1, types_1_1);

/// The batch as a frozen world's messages (the same fields, borrowed).
macro_rules! frozen_batch {
    ($types:ident, $batch:expr) => {
        $batch
            .iter()
            .map(|m| $types::Message { topic: m.topic, payload: m.payload, received_ms: m.received_ms })
            .collect::<Vec<_>>()
    };
}

type Outcome = wasmtime::Result<Result<(), ServiceError>>;

impl Service {
    fn init(&self, store: &mut Store<InstanceState>, config: &str) -> Outcome {
        match self {
            Service::V1_0(s) => s.call_init(store, config).map(|r| r.map_err(from_1_0)),
            Service::V1_1(s) => s.call_init(store, config).map(|r| r.map_err(from_1_1)),
            Service::V1_2(s) => s.call_init(store, config),
        }
    }

    fn handle(&self, store: &mut Store<InstanceState>, batch: &[Message<'_>]) -> Outcome {
        match self {
            Service::V1_0(s) => s.call_handle(store, &frozen_batch!(types_1_0, batch)).map(|r| r.map_err(from_1_0)),
            Service::V1_1(s) => s.call_handle(store, &frozen_batch!(types_1_1, batch)).map(|r| r.map_err(from_1_1)),
            Service::V1_2(s) => s.call_handle(store, batch),
        }
    }

    /// Only a 1.2.0 component takes a packed batch (see [`Service::packs`]).
    fn handle_packed(&self, store: &mut Store<InstanceState>, batch: &PackedBatch) -> Outcome {
        let wit = PackedBatchWit { bytes: &batch.bytes, lengths: &batch.lengths, received_ms: &batch.received_ms };
        match self {
            Service::V1_2(s) => s.call_handle_packed(store, wit),
            Service::V1_0(_) | Service::V1_1(_) => {
                Err(wasmtime::format_err!("handle-packed needs outpost:service@1.2.0"))
            }
        }
    }

    /// Whether `batch` goes to `handle-packed`: a 1.2.0 component, more than
    /// one message (for one, both exports allocate as often), at most
    /// [`PACK_MAX_BYTES`] in all.
    fn packs(&self, batch: &[Message<'_>]) -> bool {
        matches!(self, Service::V1_2(_))
            && batch.len() > 1
            && batch.iter().map(|m| m.topic.len() + m.payload.len()).sum::<usize>() <= PACK_MAX_BYTES
    }

    fn tick(&self, store: &mut Store<InstanceState>, now_ms: u64) -> Outcome {
        match self {
            Service::V1_0(s) => s.call_tick(store, now_ms).map(|r| r.map_err(from_1_0)),
            Service::V1_1(s) => s.call_tick(store, now_ms).map(|r| r.map_err(from_1_1)),
            Service::V1_2(s) => s.call_tick(store, now_ms),
        }
    }

    /// A component without `migrate` takes the state over as it is.
    fn migrate(&self, store: &mut Store<InstanceState>, from_version: &str) -> Outcome {
        match self {
            Service::V1_0(_) => Ok(Ok(())),
            Service::V1_1(s) => s.call_migrate(store, from_version).map(|r| r.map_err(from_1_1)),
            Service::V1_2(s) => s.call_migrate(store, from_version),
        }
    }
}

pub struct ServiceInstance {
    store: Store<InstanceState>,
    service: Service,
    deadline_ticks: u64,
    /// Refilled for each packed call: allocated once per instance.
    packed: PackedBatch,
}

impl ServiceInstance {
    pub(crate) fn start(
        loaded: &LoadedComponent,
        manifest: &Manifest,
        ctx: Arc<ServiceContext>,
        config_json: &str,
    ) -> Result<ServiceInstance, CallError> {
        let mut instance = Self::create(loaded, manifest, ctx)?;
        instance.call(|s, store| s.init(store, config_json))?;
        instance.store.data_mut().output = CallOutput::default();
        Ok(instance)
    }

    /// The instance before its `init`, on the engine that compiled its code.
    pub(crate) fn create(
        loaded: &LoadedComponent,
        manifest: &Manifest,
        ctx: Arc<ServiceContext>,
    ) -> Result<ServiceInstance, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size((manifest.limits.memory_mib as usize) << 20)
            .trap_on_grow_failure(true)
            .instances(64)
            .tables(64)
            .memories(4)
            .build();
        let mut store = Store::new(loaded.component().engine(), InstanceState::new(ctx, limits));
        store.limiter(|s| &mut s.limits);
        let tick = EPOCH_TICK.as_millis().max(1) as u64;
        let deadline_ticks = manifest.limits.call_deadline_ms.div_ceil(tick) + 1;
        store.set_epoch_deadline(deadline_ticks);
        store.epoch_deadline_trap();
        let service = match &loaded.pre {
            ServicePre::V1_0(pre) => Service::V1_0(pre.instantiate(&mut store).map_err(fault)?),
            ServicePre::V1_1(pre) => Service::V1_1(pre.instantiate(&mut store).map_err(fault)?),
            ServicePre::V1_2(pre) => Service::V1_2(pre.instantiate(&mut store).map_err(fault)?),
        };
        Ok(ServiceInstance { store, service, deadline_ticks, packed: PackedBatch::default() })
    }

    /// Hands a batch to the service; returns what it published.
    pub fn handle(&mut self, batch: &[Message]) -> Result<CallOutput, CallError> {
        // Most services publish about once per input: room for that up front.
        self.store.data_mut().output.published.reserve(batch.len());
        if self.service.packs(batch) {
            let mut packed = std::mem::take(&mut self.packed);
            packed.clear();
            let fits = batch.iter().all(|m| packed.push(m.topic, m.payload, m.received_ms).is_ok());
            if fits {
                let result = self.call(|s, store| s.handle_packed(store, &packed));
                self.packed = packed;
                return result;
            }
        }
        self.call(|s, store| s.handle(store, batch))
    }

    pub fn tick(&mut self, now_ms: u64) -> Result<CallOutput, CallError> {
        self.call(|s, store| s.tick(store, now_ms))
    }

    /// Lets a new version convert the state `from_version` left (1.1.0
    /// `migrate`; a no-op for a component without it). Its writes commit
    /// only if it returns ok; any error (bad-input and bad-config too) is
    /// returned as a failed call.
    pub fn migrate(&mut self, from_version: &str) -> Result<CallOutput, CallError> {
        self.call(|s, store| {
            s.migrate(store, from_version).map(|r| r.map_err(|e| ServiceError::Internal(describe(&e))))
        })
    }

    /// The component exports `migrate` (built against 1.1.0 with it, or 1.2.0).
    pub fn has_migrate(&self) -> bool {
        matches!(self.service, Service::V1_1(_) | Service::V1_2(_))
    }

    /// Runs one export under the deadline; commits state writes only if the
    /// call returned normally, so a fault leaves state as it was.
    fn call(
        &mut self,
        f: impl FnOnce(&Service, &mut Store<InstanceState>) -> Outcome,
    ) -> Result<CallOutput, CallError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = f(&self.service, &mut self.store);
        let data = self.store.data_mut();
        let output = std::mem::take(&mut data.output);
        let txn = std::mem::take(&mut data.txn);
        let state_error = data.state_error.take();
        match result {
            Err(e) => Err(fault(e)),
            Ok(_) if state_error.is_some() => Err(CallError::Fault {
                kind: FaultKind::State,
                message: format!("state read failed: {}", state_error.unwrap_or_default()),
            }),
            Ok(Err(ServiceError::Internal(m))) => Err(CallError::Internal(m)),
            Ok(service_result) => {
                if let Some(store) = data.context().state.clone() {
                    if let Err(e) = store.commit(&data.context().service, txn) {
                        // A write that did not land is a failed call: the
                        // outputs must not go out and the input must not be acked.
                        return Err(CallError::Fault {
                            kind: FaultKind::State,
                            message: format!("state commit failed: {e}"),
                        });
                    }
                }
                match service_result {
                    Ok(()) => Ok(output),
                    // Outputs published before the error still stand: the
                    // service chose to report, not to crash.
                    Err(e) => {
                        data.output = output;
                        Err(CallError::Service(describe(&e)))
                    }
                }
            }
        }
    }

    /// Outputs left over from a call that returned a service error.
    pub fn take_output(&mut self) -> CallOutput {
        std::mem::take(&mut self.store.data_mut().output)
    }

    /// Linear memory the guest holds now, bytes (all its memories).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.memory_bytes
    }

    /// The per-call deadline (rounded to the epoch tick).
    pub fn deadline(&self) -> Duration {
        EPOCH_TICK * self.deadline_ticks as u32
    }
}

fn fault(e: wasmtime::Error) -> CallError {
    let kind = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FaultKind::Deadline,
        Some(Trap::MemoryOutOfBounds) | Some(Trap::HeapMisaligned) => FaultKind::Trap,
        _ => {
            let text = format!("{e:#}");
            if text.contains("memory") && (text.contains("grow") || text.contains("limit") || text.contains("alloc")) {
                FaultKind::OutOfMemory
            } else {
                FaultKind::Trap
            }
        }
    };
    // The root cause ("wasm `unreachable` instruction executed", "forcing
    // trap when growing memory ...") is what an operator needs; the guest
    // backtrace goes to debug logs.
    tracing::debug!(error = ?e, "instance fault details");
    let mut message = e.root_cause().to_string();
    if message.contains("concurrent") && message.contains("limit") {
        // Every slot of the pooling allocator is taken: a config matter, not the guest's.
        message
            .push_str(" (the agent's instance pool is full: raise [dispatch] max_instances, or run fewer instances)");
    }
    CallError::Fault { kind, message }
}
