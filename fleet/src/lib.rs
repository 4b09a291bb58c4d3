//! The fleet protocol: what an Outpost agent and its operations center say
//! to each other over MQTT. Both sides link this crate, so the topic names,
//! the payloads and the signature rules exist once.
//!
//! ```text
//!  outpost-ops ── outpost/fleet/{gw}/desired  (retained, signed) ──► agent
//!  outpost-ops ◄─ outpost/fleet/{gw}/reported (GatewayReport)     ── agent
//!  outpost-ops ◄─ outpost/fleet/{gw}/events   (FleetEvent)        ── agent
//!  outpost-ops ◄─ outpost/fleet/{gw}/data/... (customer policy)   ── agent
//! ```
//!
//! Every topic carries the gateway id, so a broker ACL keyed on the MQTT
//! user name (Mosquitto's `pattern ... %u`) lets a gateway read and write
//! only its own topics ([`acl`]). The desired state is also signed by the
//! operations center's ed25519 key ([`desired`]): a gateway obeys only its
//! own operations center, even through a broker someone else runs.

pub mod acl;
pub mod desired;
pub mod report;
pub mod topic;

pub use desired::{DesiredError, DesiredService, DesiredState, SignedDesired};
pub use report::{FleetEvent, GatewayReport, Health, ReportError, ServiceReport};
