//! The dispatcher's seams: it drives service instances through these small
//! traits and never touches wasmtime itself, so routing, upgrades, canary
//! splits, shadow runs, probation and backoff are unit-tested with doubles
//! (`dispatch::tests`), the way rumqttc keeps protocol state apart from I/O.

use super::envelope::Envelope;
use crate::host::{CallError, CallOutput, HostEngine, LoadedComponent, ServiceContext, ServiceInstance, WitMessage};
use crate::manifest::Manifest;
use std::sync::Arc;

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
}

/// The real thing: a compiled component on the agent's engine.
pub struct WasmFactory {
    pub host: Arc<HostEngine>,
    pub loaded: LoadedComponent,
    /// Shared by every instance of the service.
    pub context: Arc<ServiceContext>,
}

impl InstanceFactory for WasmFactory {
    fn start(&self, manifest: &Manifest, config_json: &str) -> Result<Box<dyn Instance>, CallError> {
        let instance = self.host.instantiate(&self.loaded, manifest, self.context.clone(), config_json)?;
        Ok(Box::new(instance))
    }

    fn digest(&self) -> String {
        self.loaded.digest.clone()
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
