//! The dispatcher's seams: it drives service instances through these small
//! traits and never touches wasmtime itself, so routing, upgrades, canary
//! splits, shadow runs, probation and backoff are unit-tested with doubles
//! (`dispatch::tests`), the way rumqttc keeps protocol state apart from I/O.

use super::envelope::Envelope;
use crate::host::{
    CallError, CallOutput, CodeTier, HostEngine, LoadedComponent, ServiceContext, ServiceInstance, WitMessage,
};
use crate::manifest::Manifest;
use std::sync::{Arc, Mutex};

/// One running instance of a service.
pub trait Instance: Send {
    /// Hands a batch over; returns what it published.
    fn handle(&mut self, batch: &[Envelope]) -> Result<CallOutput, CallError>;
    fn tick(&mut self, now_ms: u64) -> Result<CallOutput, CallError>;
    /// Called once on the first instance of a new version before it takes
    /// traffic, with the version it replaces, so it can convert that
    /// version's state. Nothing to do by default.
    fn migrate(&mut self, _from_version: &str) -> Result<CallOutput, CallError> {
        Ok(CallOutput::default())
    }
}

/// Starts instances of one version of a service.
pub trait InstanceFactory: Send + Sync {
    /// Instantiates and runs `init` with the effective config.
    fn start(&self, manifest: &Manifest, config_json: &str) -> Result<Box<dyn Instance>, CallError>;
    /// sha256 of the component (shown in status).
    fn digest(&self) -> String;
    /// Which compiler made the code new instances start from.
    fn code_tier(&self) -> CodeTier {
        CodeTier::Optimized
    }
}

/// The real thing: a compiled component on the agent's engine.
pub struct WasmFactory {
    host: Arc<HostEngine>,
    /// The code new instances start from. Baseline code from a fast start
    /// is replaced by the same component's optimized code once compiled.
    code: Mutex<LoadedComponent>,
    /// Shared by every instance of the service.
    context: Arc<ServiceContext>,
}

impl WasmFactory {
    pub fn new(host: Arc<HostEngine>, loaded: LoadedComponent, context: Arc<ServiceContext>) -> Self {
        WasmFactory { host, code: Mutex::new(loaded), context }
    }

    fn with_code<R>(&self, f: impl FnOnce(&LoadedComponent) -> R) -> R {
        f(&self.code.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Instances started from now on run `optimized`, the same component's
    /// optimized code; running instances keep theirs until restarted.
    pub fn set_optimized_code(&self, optimized: LoadedComponent) -> Result<(), String> {
        let mut code = self.code.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if optimized.digest != code.digest || optimized.tier != CodeTier::Optimized {
            return Err(format!(
                "code for {} ({:?}) cannot replace {} ({:?})",
                optimized.digest, optimized.tier, code.digest, code.tier
            ));
        }
        *code = optimized;
        Ok(())
    }
}

impl InstanceFactory for WasmFactory {
    fn start(&self, manifest: &Manifest, config_json: &str) -> Result<Box<dyn Instance>, CallError> {
        let code = self.with_code(LoadedComponent::clone);
        let instance = self.host.instantiate(&code, manifest, self.context.clone(), config_json)?;
        Ok(Box::new(instance))
    }

    fn digest(&self) -> String {
        self.with_code(|c| c.digest.clone())
    }

    fn code_tier(&self) -> CodeTier {
        self.with_code(|c| c.tier)
    }
}

impl Instance for ServiceInstance {
    fn handle(&mut self, batch: &[Envelope]) -> Result<CallOutput, CallError> {
        // Lowered straight from the queued envelopes: no per-message copies.
        let wit: Vec<WitMessage<'_>> = batch
            .iter()
            .map(|e| WitMessage { topic: &e.topic, payload: &e.payload, received_ms: e.received_ms })
            .collect();
        ServiceInstance::handle(self, &wit)
    }

    fn tick(&mut self, now_ms: u64) -> Result<CallOutput, CallError> {
        ServiceInstance::tick(self, now_ms)
    }

    fn migrate(&mut self, from_version: &str) -> Result<CallOutput, CallError> {
        ServiceInstance::migrate(self, from_version)
    }
}
