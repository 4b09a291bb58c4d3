//! `outpost-ops`: the operations center. The fleet model and rollout plans
//! ([`model`]), the rollout state machine with its waves, gates and rollback
//! ([`rollout`]), the engine that binds it to a clock and a store
//! ([`engine`]), fleet storage behind one trait ([`store`], with PostgreSQL in
//! [`pg_store`] for replicas sharing a fleet); the pure
//! report/desired-state conversions ([`desired`]), the MQTT link
//! ([`transport`]) and the running core that drives the engine over it
//! ([`center`]); package intake and artifact serving ([`artifacts`]), the
//! HTTP API, page and CLI client ([`http`], [`client`], [`config`]); and a
//! fleet of simulated gateways speaking the real protocol ([`sim`]).

pub mod artifacts;
pub mod center;
pub mod client;
pub mod config;
pub mod desired;
pub mod engine;
pub mod http;
pub mod model;
pub mod pg_store;
pub mod rollout;
pub mod sim;
pub mod store;
pub mod transport;

pub use engine::{Engine, EngineError};
pub use model::{Gateway, PackageRecord, Plan, Report};
pub use pg_store::PgStore;
pub use rollout::{Action, Clock, ManualClock, Rollout};
pub use store::{FleetStore, Lease, MemStore, RedbStore};
