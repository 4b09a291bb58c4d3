//! The Outpost agent library: hosts WebAssembly service components on one
//! MQTT integration layer (bus, state, config, metrics).
//!
//! - [`config`]: the agent's `outpost.toml`.
//! - [`manifest`], [`package`]: what a service is and how it is installed.
//! - [`host`]: wasmtime engine, contract checks, instances with limits.
//! - [`dispatch`]: queues, batching, in-agent routing, faults and restarts.
//! - [`bus`], [`broker`]: the MQTT link and the embedded broker.
//! - [`state`]: per-service persistent key-value state.
//! - [`telemetry`], [`http`]: metrics, logs, status page ([`history`]: what it keeps); [`api`]: gRPC management API.
//! - [`control`]: desired state and lifecycle changes on a running agent
//!   ([`contract`]: payload contracts between services, checked before a deploy);
//!   [`status`]: the one status model every reader shares.
//! - [`uplink`]: the operations center's link (signed desired state applied
//!   through [`control`], reports, the customer's sharing policy and its
//!   audit, the store-and-forward outbox).
//! - [`agent`]: ties it together.
//!
//! The tools for people (`outpostctl`, `outpost-sim`, replay, pretty-printers)
//! are the `outpost-devtools` crate, so the gateway's binary carries none of them.

pub mod allocator;
pub mod agent;
pub mod api;
pub mod broker;
pub mod bus;
pub mod client;
pub mod config;
pub mod contract;
pub mod control;
pub mod dispatch;
pub mod events;
pub mod history;
pub mod host;
pub mod http;
pub mod manifest;
pub mod package;
pub mod residency;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod topic;
pub mod uplink;
