//! What leaves the site, decided by the customer.
//!
//! `outpost-sharing` is the pure logic behind the agent's uplink to a provider's operations
//! center (no MQTT, no async, no clock reads):
//!
//! - [`Policy`]: the customer's TOML policy, parsed and validated with every problem listed
//!   at once. The default (no file, or a file without rules) is [`Policy::deny_all`].
//! - [`Exporter`]: per message, [`Decision::Export`] (after dropping fields and rounding
//!   positions), [`Decision::Aggregated`] (summarised per period and released by
//!   [`Exporter::flush_due`]), or [`Decision::Held`] on site, with [`Counters`].
//! - [`AuditLog`]: an append-only, hash-chained JSON Lines record of every batch sent,
//!   with [`verify`], [`verify_with_head`] and [`query`] for `outpostctl audit`.
//!
//! ```
//! use outpost_sharing::{AuditMessage, Decision, Exporter, Policy};
//! use std::path::Path;
//!
//! let policy = Policy::parse(r#"
//! version = 1
//! [[export]]
//! provider = "acme"
//! topics = ["svc/leak-detection/+/alarm"]
//! purpose = "leak alarms for the on-call service team"
//! drop = ["operator"]
//! "#, Path::new("sharing.toml")).unwrap();
//! let mut exporter = Exporter::new(policy);
//!
//! let d = exporter.offer("acme", "svc/leak-detection/n1/alarm", br#"{"operator":"jo","m3h":4.5}"#, 0);
//! let Decision::Export(e) = d else { panic!("{d:?}") };
//! assert_eq!(e.payload, br#"{"m3h":4.5}"#);
//! let _record = AuditMessage::from(&e); // append a batch of these before sending
//!
//! assert!(matches!(exporter.offer("acme", "svc/positioning/t1/fix", b"{}", 0), Decision::Held(_)));
//! ```

#![warn(missing_docs)]

mod audit;
mod exporter;
mod fields;
mod policy;
mod topic;

pub use audit::{
    entry_hash, query, verify, verify_with_head, AuditEntry, AuditError, AuditLog, AuditMessage, Corruption,
    PayloadEncoding, VerifySummary, MAX_LINE_BYTES, ZERO_HASH,
};
pub use exporter::{
    Counters, Decision, Export, Exporter, HeldReason, INVALID_TOPIC, MAX_COUNTED_TOPICS, MAX_COUNTED_TOPIC_LEN,
    MAX_OPEN_WINDOWS, OTHER_TOPICS,
};
pub use fields::{round_position, FieldPath, METRES_PER_DEGREE};
pub use policy::{
    Aggregate, ExportRule, KpiRule, Policy, PolicyError, Problem, RoundPosition, MAX_PERIOD_S, MAX_ROUND_METRES,
    POLICY_VERSION,
};
pub use topic::TopicFilter;
