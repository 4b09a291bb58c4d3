//! What a gateway reports: its services (version, health, crash loops,
//! apply errors, KPIs the customer lets out) and its lifecycle events.
//! The operations center reads both as hostile input.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A report or event larger than this is refused before parsing.
pub const MAX_REPORT_BYTES: usize = 512 * 1024;

/// A service's health as the agent judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceReport {
    pub service: String,
    /// Serving version; `None` = not installed.
    pub version: Option<String>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub crash_loop: bool,
    /// Why the desired version could not be applied, if it could not.
    #[serde(default)]
    pub apply_error: Option<String>,
    /// KPIs the site's sharing policy lets this operations center see.
    #[serde(default)]
    pub kpis: BTreeMap<String, f64>,
}

/// The message on `outpost/fleet/{gw}/reported`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayReport {
    pub gateway: String,
    pub site: String,
    /// Grows by one per report this gateway queues (gaps = reports lost).
    pub seq: u64,
    pub at_ms: u64,
    /// The last desired-state revision the agent applied.
    #[serde(default)]
    pub applied_revision: Option<u64>,
    pub services: Vec<ServiceReport>,
    /// Uplink messages dropped by the outbox's bound since the agent started.
    #[serde(default)]
    pub outbox_dropped: u64,
}

/// The message on `outpost/fleet/{gw}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetEvent {
    pub gateway: String,
    pub seq: u64,
    pub at_ms: u64,
    /// `installed`, `upgraded`, `rolled_back`, `apply_failed`, `desired_refused`, ...
    pub kind: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("report is {0} bytes, above the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("report is malformed: {0}")]
    Malformed(String),
    #[error("report sent by `{sender}` claims to be from `{claimed}`")]
    Impersonation { sender: String, claimed: String },
}

fn read<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ReportError> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))
}

fn same_sender(sender: &str, claimed: &str) -> Result<(), ReportError> {
    if sender == claimed {
        Ok(())
    } else {
        Err(ReportError::Impersonation { sender: sender.to_owned(), claimed: claimed.to_owned() })
    }
}

impl GatewayReport {
    /// Parses a report that arrived on `sender`'s topic (the broker's ACL
    /// authenticates the topic) and checks it claims that gateway.
    pub fn parse(sender: &str, bytes: &[u8]) -> Result<GatewayReport, ReportError> {
        let r: GatewayReport = read(bytes)?;
        same_sender(sender, &r.gateway)?;
        Ok(r)
    }
}

impl FleetEvent {
    pub fn parse(sender: &str, bytes: &[u8]) -> Result<FleetEvent, ReportError> {
        let e: FleetEvent = read(bytes)?;
        same_sender(sender, &e.gateway)?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_must_come_from_the_gateway_it_names() {
        let r = GatewayReport {
            gateway: "gw-1".into(),
            site: "mine-a".into(),
            seq: 4,
            at_ms: 10,
            applied_revision: Some(2),
            services: vec![ServiceReport {
                service: "positioning".into(),
                version: Some("1.0.0".into()),
                health: Health::Healthy,
                crash_loop: false,
                apply_error: None,
                kpis: BTreeMap::from([("fix_rate".to_string(), 0.99)]),
            }],
            outbox_dropped: 0,
        };
        let bytes = serde_json::to_vec(&r).expect("serialisable");
        assert_eq!(GatewayReport::parse("gw-1", &bytes), Ok(r));
        assert!(matches!(GatewayReport::parse("gw-2", &bytes), Err(ReportError::Impersonation { .. })));
        assert!(matches!(GatewayReport::parse("gw-1", b"[]"), Err(ReportError::Malformed(_))));
        assert!(matches!(FleetEvent::parse("gw-1", b"{\"gateway\":\"gw-1\"}"), Err(ReportError::Malformed(_))));
    }
}
