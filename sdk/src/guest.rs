//! Glue between the wit-bindgen exports and a [`Service`] value. Used by
//! [`export_service!`](crate::export_service); not part of the public API.

#[cfg(target_family = "wasm")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "service",
        pub_export_macro: true,
        export_macro_name: "__export_outpost_world",
        default_bindings_module: "outpost_sdk::guest::bindings",
    });
    pub use self::outpost::service::types::{
        Message as MessageWit, PackedBatch as PackedBatchWit, ServiceError as ServiceErrorWit,
    };
}

#[cfg(target_family = "wasm")]
mod exports {
    use super::bindings::{MessageWit, PackedBatchWit, ServiceErrorWit};
    use crate::{Message, Service, ServiceError};
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        // One service value per component instance (guests are single-threaded).
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn to_wit(e: ServiceError) -> ServiceErrorWit {
        match e {
            ServiceError::BadInput(m) => ServiceErrorWit::BadInput(m),
            ServiceError::BadConfig(m) => ServiceErrorWit::BadConfig(m),
            ServiceError::Internal(m) => ServiceErrorWit::Internal(m),
        }
    }

    fn with_service<S: Service>(f: impl FnOnce(&mut S) -> Result<(), ServiceError>) -> Result<(), ServiceErrorWit> {
        INSTANCE.with(|cell| {
            let mut slot = cell.borrow_mut();
            match slot.as_mut().and_then(|b| b.downcast_mut::<S>()) {
                Some(service) => f(service).map_err(to_wit),
                None => Err(ServiceErrorWit::Internal("called before a successful init".into())),
            }
        })
    }

    pub fn init<S: Service>(config: &str) -> Result<(), ServiceErrorWit> {
        let service = S::init(config).map_err(to_wit)?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(service)));
        Ok(())
    }

    pub fn handle<S: Service>(batch: Vec<MessageWit>) -> Result<(), ServiceErrorWit> {
        let batch = batch
            .into_iter()
            .map(|m| Message { topic: m.topic, payload: m.payload, received_ms: m.received_ms })
            .collect();
        with_service::<S>(|s| s.handle(batch))
    }

    /// The agent packed the batch (1.2.0); a batch that does not unpack is
    /// the agent's fault, not the messages', so it is an internal error.
    pub fn handle_packed<S: Service>(batch: PackedBatchWit) -> Result<(), ServiceErrorWit> {
        let messages = crate::packed::unpack(&batch.bytes, &batch.lengths, &batch.received_ms)
            .map_err(ServiceErrorWit::Internal)?;
        // Freed before the service runs, so its allocations can reuse the space.
        drop(batch);
        with_service::<S>(|s| s.handle(messages))
    }

    pub fn tick<S: Service>(now_ms: u64) -> Result<(), ServiceErrorWit> {
        with_service::<S>(|s| s.tick(now_ms))
    }

    pub fn migrate<S: Service>(from_version: &str) -> Result<(), ServiceErrorWit> {
        with_service::<S>(|s| s.migrate(from_version))
    }
}

#[cfg(target_family = "wasm")]
pub use exports::{handle, handle_packed, init, migrate, tick};
