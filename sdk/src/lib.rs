//! Outpost guest SDK: a service is a [`Service`] impl plus [`export_service!`].
//!
//! The same service code runs two ways:
//! - compiled to `wasm32-wasip2`, the macro exports it as a component of the
//!   world `outpost:service@1.2.0` (see `sdk/wit/`), and the free functions in
//!   [`host`] call the agent's imports;
//! - compiled natively, [`testing::Harness`] drives it in plain `cargo test`,
//!   and [`host`] records into an in-memory fake of the agent.

pub mod civil;
pub mod host;
#[cfg(not(target_family = "wasm"))]
pub mod testing;

#[doc(hidden)]
pub mod guest;
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))] // only the guest links it
mod mem;
pub mod packed;

/// The WIT world version this SDK builds against.
pub const WORLD: &str = "outpost:service@1.2.0";

/// One message from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch when the agent accepted it.
    pub received_ms: u64,
}

impl Message {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message { topic: topic.into(), payload: payload.into(), received_ms: 0 }
    }

    /// Topic segment `index` (0-based), e.g. `site/{site}/{asset}/...` has the asset at 2.
    pub fn topic_segment(&self, index: usize) -> Option<&str> {
        self.topic.split('/').nth(index)
    }
}

/// Errors a service returns to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    BadInput(String),
    BadConfig(String),
    Internal(String),
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::BadInput(m) => write!(f, "bad input: {m}"),
            ServiceError::BadConfig(m) => write!(f, "bad config: {m}"),
            ServiceError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// A service's logic. One value lives per instance, from `init` until the
/// instance is stopped.
pub trait Service: Sized + 'static {
    /// Builds the service from its effective config (JSON: manifest defaults
    /// overridden by the site's calibration).
    fn init(config: &str) -> Result<Self, ServiceError>;

    /// Handles one batch of messages, in order per shard key.
    ///
    /// Handle every message of the batch: the host counts the batch as
    /// handled whatever is returned (a returned error is logged and counted,
    /// nothing is redelivered), so report a bad message after the rest.
    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError>;

    /// Called periodically with the agent's wall-clock time.
    fn tick(&mut self, _now_ms: u64) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Takes over the state of the version this one replaces (since
    /// `outpost:service@1.1.0`). Called once on an upgrade, on the new
    /// version's first instance after `init` and before any message, with
    /// the old version's number (its service.toml `version`). Read the old
    /// keys with [`host::state_get`] and write the new ones: the writes
    /// commit only if this returns `Ok`, and an error refuses the upgrade
    /// (the old version keeps serving). Not called on a first install.
    fn migrate(&mut self, _from_version: &str) -> Result<(), ServiceError> {
        Ok(())
    }
}

/// Exports a [`Service`] implementation as the component's `init`, `handle`,
/// `tick`, `migrate` and `handle-packed`. Compiles to nothing on native targets, so the same crate is
/// testable with [`testing::Harness`].
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct OutpostExport;
            impl $crate::guest::bindings::Guest for OutpostExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), $crate::guest::bindings::ServiceErrorWit> {
                    $crate::guest::init::<$service>(&config)
                }
                fn handle(
                    batch: ::std::vec::Vec<$crate::guest::bindings::MessageWit>,
                ) -> ::std::result::Result<(), $crate::guest::bindings::ServiceErrorWit> {
                    $crate::guest::handle::<$service>(batch)
                }
                fn tick(now_ms: u64) -> ::std::result::Result<(), $crate::guest::bindings::ServiceErrorWit> {
                    $crate::guest::tick::<$service>(now_ms)
                }
                fn migrate(
                    from_version: ::std::string::String,
                ) -> ::std::result::Result<(), $crate::guest::bindings::ServiceErrorWit> {
                    $crate::guest::migrate::<$service>(&from_version)
                }
                fn handle_packed(
                    batch: $crate::guest::bindings::PackedBatchWit,
                ) -> ::std::result::Result<(), $crate::guest::bindings::ServiceErrorWit> {
                    $crate::guest::handle_packed::<$service>(batch)
                }
            }
    $crate::guest::bindings::__export_outpost_world!(OutpostExport with_types_in $crate::guest::bindings);
        };
    };
}
