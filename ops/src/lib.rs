//! `outpost-ops`: the operations center's core. The fleet model and rollout
//! plans ([`model`]), the rollout state machine with its waves, gates and
//! rollback ([`rollout`]), the engine that binds it to a clock and a store
//! ([`engine`]), and fleet storage behind one trait ([`store`]). No transport
//! here: the engine takes reports in and hands [`rollout::Action`]s out.

pub mod engine;
pub mod model;
pub mod rollout;
pub mod store;

pub use engine::{Engine, EngineError};
pub use model::{Gateway, Plan, Report};
pub use rollout::{Action, Clock, ManualClock, Rollout};
pub use store::{FleetStore, MemStore, RedbStore};
