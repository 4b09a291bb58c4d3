//! Building what the gateway tells its operations center, from the status
//! board and the KPI metrics: pure functions, tested without a broker.

use crate::events::KpiValue;
use crate::status::AgentStatus;
use outpost_fleet::{GatewayReport, Health, ServiceReport};
use std::collections::{BTreeMap, BTreeSet};

/// Restarts at which a service that is not running counts as crash-looping.
const CRASH_LOOP_RESTARTS: u64 = 3;

/// Everything a report is made of.
pub struct ReportInput<'a> {
    pub status: &'a AgentStatus,
    pub kpis: &'a [KpiValue],
    /// Services the last desired state named (reported even when absent,
    /// so a "remove" is confirmed).
    pub managed: &'a BTreeSet<String>,
    pub apply_errors: &'a BTreeMap<String, String>,
    pub applied_revision: Option<u64>,
    pub outbox_dropped: u64,
    pub seq: u64,
    pub at_ms: u64,
}

/// The report; `kpi_allowed(service, kpi)` is the customer's policy: a KPI
/// it does not allow is left out (and the caller counts it).
pub fn build(input: &ReportInput<'_>, kpi_allowed: &mut dyn FnMut(&str, &str) -> bool) -> GatewayReport {
    let s = input.status;
    let mut services = Vec::new();
    let mut seen = BTreeSet::new();
    for svc in &s.services {
        seen.insert(svc.name.clone());
        let health = if svc.instances > 0 && svc.running == svc.instances {
            Health::Healthy
        } else if svc.running > 0 {
            Health::Degraded
        } else {
            Health::Unhealthy
        };
        let crash_loop = svc.running < svc.instances && svc.restarts >= CRASH_LOOP_RESTARTS;
        let mut kpis = BTreeMap::new();
        for k in input.kpis.iter().filter(|k| k.service == svc.name) {
            if !kpi_allowed(&svc.name, &k.name) {
                continue;
            }
            // The site-wide value keeps the KPI's own name; per-subject
            // values (one truck, one zone) carry the subject after '@'.
            let key = if k.subject.is_empty() { k.name.clone() } else { format!("{}@{}", k.name, k.subject) };
            kpis.insert(key, k.value);
        }
        services.push(ServiceReport {
            service: svc.name.clone(),
            version: Some(svc.version.clone()),
            health,
            crash_loop,
            apply_error: input.apply_errors.get(&svc.name).cloned(),
            kpis,
        });
    }
    for (name, why) in &s.rejected {
        if seen.insert(name.clone()) {
            services.push(ServiceReport {
                service: name.clone(),
                version: None,
                health: Health::Unhealthy,
                crash_loop: false,
                apply_error: Some(input.apply_errors.get(name).cloned().unwrap_or_else(|| why.clone())),
                kpis: BTreeMap::new(),
            });
        }
    }
    for name in input.managed.iter().chain(input.apply_errors.keys()) {
        if seen.insert(name.clone()) {
            services.push(ServiceReport {
                service: name.clone(),
                version: None,
                health: Health::Unknown,
                crash_loop: false,
                apply_error: input.apply_errors.get(name).cloned(),
                kpis: BTreeMap::new(),
            });
        }
    }
    GatewayReport {
        gateway: s.gateway.clone(),
        site: s.site.clone(),
        seq: input.seq,
        at_ms: input.at_ms,
        applied_revision: input.applied_revision,
        services,
        outbox_dropped: input.outbox_dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ServiceStatus;

    fn svc(name: &str, running: usize, restarts: u64) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            version: "1.0.0".into(),
            digest: String::new(),
            code: crate::host::CodeTier::Optimized,
            instances: 2,
            running,
            queued: 0,
            restarts,
            uptime_s: 1,
            canary: None,
            shadow: None,
            probation: false,
            kpis: Vec::new(),
        }
    }

    #[test]
    fn health_crash_loops_absent_services_and_the_kpi_policy() {
        let status = AgentStatus {
            gateway: "gw".into(),
            site: "mine".into(),
            state: "ready",
            broker: String::new(),
            mqtt_connected: true,
            refused_subscriptions: Vec::new(),
            services: vec![svc("a", 2, 0), svc("b", 0, 5), svc("c", 1, 1)],
            rejected: Vec::new(),
            uptime_s: 1,
            ready_ms: None,
        };
        let kv = |service: &str, name: &str, subject: &str, value| KpiValue {
            service: service.into(),
            name: name.into(),
            subject: subject.into(),
            value,
        };
        let kpis = vec![kv("a", "rate", "", 0.9), kv("a", "secret", "", 1.0), kv("a", "rate", "truck-1", 0.5)];
        let managed = BTreeSet::from(["gone".to_string()]);
        let errors = BTreeMap::from([("new".to_string(), "download failed".to_string())]);
        let input = ReportInput {
            status: &status,
            kpis: &kpis,
            managed: &managed,
            apply_errors: &errors,
            applied_revision: Some(4),
            outbox_dropped: 2,
            seq: 9,
            at_ms: 5,
        };
        let r = build(&input, &mut |_, k| k != "secret");
        let by: BTreeMap<_, _> = r.services.iter().map(|s| (s.service.as_str(), s)).collect();
        assert_eq!(by["a"].health, Health::Healthy);
        assert_eq!(by["a"].kpis, BTreeMap::from([("rate".into(), 0.9), ("rate@truck-1".into(), 0.5)]));
        assert!(by["b"].crash_loop && by["b"].health == Health::Unhealthy);
        assert_eq!(by["c"].health, Health::Degraded);
        assert!(!by["c"].crash_loop);
        assert_eq!(by["gone"].version, None);
        assert_eq!(by["new"].apply_error.as_deref(), Some("download failed"));
        assert_eq!((r.seq, r.applied_revision, r.outbox_dropped), (9, Some(4), 2));
    }
}
