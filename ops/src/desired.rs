//! The pure half of the transport: a gateway's wire report turned into the
//! engine's per-service reports, and the engine's actions turned into each
//! gateway's desired state (with its revision bumped once per change). No
//! broker, no clock: everything here is tested without a network.

use std::collections::BTreeMap;

use outpost_fleet::{DesiredService, DesiredState, GatewayReport};

use crate::model::{self, Gateway, PackageRecord, Plan, RolloutState};
use crate::rollout::{Action, Rollout};

/// The engine's view of one wire report: one [`model::Report`] per service.
pub fn to_model_reports(r: &GatewayReport) -> Vec<model::Report> {
    r.services
        .iter()
        .map(|s| model::Report {
            gateway: r.gateway.clone(),
            service: s.service.clone(),
            version: s.version.clone(),
            health: s.health,
            crash_loop: s.crash_loop,
            apply_error: s.apply_error.clone(),
            kpis: s.kpis.clone(),
        })
        .collect()
}

/// As [`to_model_reports`], plus a "not installed" report for every service
/// the gateway's desired state manages but the report leaves out: a report
/// lists what is installed, so a managed service missing from it is gone
/// (that is how a rollback to nothing is confirmed).
pub fn to_model_reports_managed(r: &GatewayReport, desired: Option<&DesiredState>) -> Vec<model::Report> {
    let mut out = to_model_reports(r);
    if let Some(d) = desired {
        for svc in d.services.keys() {
            if !r.services.iter().any(|s| &s.service == svc) {
                out.push(model::Report {
                    gateway: r.gateway.clone(),
                    service: svc.clone(),
                    version: None,
                    health: model::Health::Unknown,
                    crash_loop: false,
                    apply_error: None,
                    kpis: BTreeMap::new(),
                });
            }
        }
    }
    out
}

/// The packages the operations center can name in desired state.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    by_key: BTreeMap<(String, String), PackageRecord>,
}

impl Catalogue {
    pub fn new(records: impl IntoIterator<Item = PackageRecord>) -> Catalogue {
        let mut c = Catalogue::default();
        for r in records {
            c.insert(r);
        }
        c
    }

    pub fn insert(&mut self, r: PackageRecord) {
        self.by_key.insert((r.service.clone(), r.version.clone()), r);
    }

    pub fn get(&self, service: &str, version: &str) -> Option<&PackageRecord> {
        self.by_key.get(&(service.to_string(), version.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &PackageRecord> {
        self.by_key.values()
    }

    /// The desired-state entry for `service` at `version`.
    pub fn desired_service(&self, service: &str, version: &str) -> Option<DesiredService> {
        self.get(service, version).map(|p| DesiredService {
            version: p.version.clone(),
            digest: p.digest.clone(),
            artifact: p.artifact_path(),
            size: p.size,
        })
    }
}

/// What one gateway should run for one service (`None` = not installed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub gateway: String,
    pub service: String,
    pub version: Option<String>,
}

/// The pins the actions ask for (notices carry none).
pub fn pins_of(actions: &[Action]) -> Vec<Pin> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply { gateway, service, version, .. } => {
                Some(Pin { gateway: gateway.clone(), service: service.clone(), version: Some(version.clone()) })
            }
            Action::Rollback { gateway, service, to, .. } => {
                Some(Pin { gateway: gateway.clone(), service: service.clone(), version: to.clone() })
            }
            Action::Notify { .. } => None,
        })
        .collect()
}

/// The pins an active rollout's state implies, so desired state lost between
/// the engine's write and ours (a crash) is made good at start.
pub fn pins_of_rollout(r: &Rollout) -> Vec<Pin> {
    let service = &r.state.plan.service;
    r.desired().into_iter().map(|(gateway, version)| Pin { gateway, service: service.clone(), version }).collect()
}

/// A pin that names a version the catalogue does not hold: it cannot be
/// turned into desired state (the gateway could not download it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway `{gateway}`: {service} {version} is not in the package catalogue (outpost-ops package add)")]
pub struct MissingPackage {
    pub gateway: String,
    pub service: String,
    pub version: String,
}

/// Applies `pins` to the gateways' desired states. A gateway whose services
/// changed gets `revision + 1` (once, however many pins touched it) and
/// `issued_ms = now_ms`; the changed states are returned, in gateway order,
/// to be stored and then published. Pins naming an unknown package change
/// nothing and are returned as problems.
pub fn apply_pins(
    desired: &mut BTreeMap<String, DesiredState>,
    pins: &[Pin],
    catalogue: &Catalogue,
    now_ms: u64,
) -> (Vec<DesiredState>, Vec<MissingPackage>) {
    let mut problems = Vec::new();
    let mut next: BTreeMap<String, DesiredState> = BTreeMap::new();
    for pin in pins {
        let entry = match &pin.version {
            None => None,
            Some(v) => match catalogue.desired_service(&pin.service, v) {
                Some(s) => Some(s),
                None => {
                    problems.push(MissingPackage {
                        gateway: pin.gateway.clone(),
                        service: pin.service.clone(),
                        version: v.clone(),
                    });
                    continue;
                }
            },
        };
        let state = next.entry(pin.gateway.clone()).or_insert_with(|| {
            desired.get(&pin.gateway).cloned().unwrap_or_else(|| DesiredState {
                gateway: pin.gateway.clone(),
                revision: 0,
                issued_ms: 0,
                services: BTreeMap::new(),
            })
        });
        state.services.insert(pin.service.clone(), entry);
    }
    let mut changed = Vec::new();
    for (gw, mut state) in next {
        let before = desired.get(&gw);
        if before.map(|b| &b.services) == Some(&state.services) {
            continue;
        }
        state.revision = before.map(|b| b.revision).unwrap_or(0) + 1;
        state.issued_ms = now_ms;
        desired.insert(gw, state.clone());
        changed.push(state);
    }
    (changed, problems)
}

/// Checks a plan against the catalogue before it starts, listing every
/// problem: the new version must be a catalogued package with the plan's
/// digest, and every version a selected gateway runs now must be catalogued
/// too, or a rollback could not name it.
pub fn check_plan(plan: &Plan, fleet: &[Gateway], catalogue: &Catalogue) -> Result<(), Vec<String>> {
    let mut p = Vec::new();
    match catalogue.get(&plan.service, &plan.version) {
        None => p.push(format!(
            "{} {} is not in the package catalogue: add it with `outpost-ops package add`",
            plan.service, plan.version
        )),
        Some(pkg) => {
            let want = format!("sha256:{}", pkg.digest);
            if plan.digest != want {
                p.push(format!(
                    "digest {} does not match the catalogued {} {} ({want})",
                    plan.digest, plan.service, plan.version
                ));
            }
        }
    }
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for g in plan.select(fleet) {
        if let Some(v) = g.services.get(&plan.service) {
            if v != &plan.version && catalogue.get(&plan.service, v).is_none() {
                missing.entry(v.as_str()).or_default().push(g.id.as_str());
            }
        }
    }
    for (v, gws) in missing {
        let shown: Vec<&str> = gws.iter().take(5).copied().collect();
        let more = if gws.len() > 5 { format!(" and {} more", gws.len() - 5) } else { String::new() };
        p.push(format!(
            "{} {v} (running on {}{more}) is not in the package catalogue: a rollback could not name it",
            plan.service,
            shown.join(", ")
        ));
    }
    if p.is_empty() {
        Ok(())
    } else {
        Err(p)
    }
}

/// Per-wave progress of a rollout, for `watch` and the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaveProgress {
    pub wave: usize,
    pub targets: usize,
    pub started: bool,
    pub verdict: Option<String>,
    pub counts: BTreeMap<String, usize>,
}

pub fn wave_progress(state: &RolloutState) -> Vec<WaveProgress> {
    state
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut counts = BTreeMap::new();
            for id in &w.targets {
                if let Some(g) = state.gateways.get(id) {
                    let k = match g.status {
                        model::GatewayStatus::Pending => "pending",
                        model::GatewayStatus::Applying => "applying",
                        model::GatewayStatus::Succeeded => "succeeded",
                        model::GatewayStatus::Failed(_) => "failed",
                        model::GatewayStatus::RollingBack => "rolling_back",
                        model::GatewayStatus::RolledBack => "rolled_back",
                    };
                    *counts.entry(k.to_string()).or_default() += 1;
                }
            }
            WaveProgress {
                wave: i + 1,
                targets: w.targets.len(),
                started: w.started_ms.is_some(),
                verdict: w.verdict.as_ref().map(|v| match v {
                    model::GateVerdict::Passed => "passed".to_string(),
                    model::GateVerdict::Failed(r) => format!("failed: {}", r.join("; ")),
                }),
                counts,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gates, Selector, WaveSize};
    use outpost_fleet::{Health, ServiceReport};

    fn pkg(version: &str, d: char) -> PackageRecord {
        PackageRecord {
            service: "svc".into(),
            version: version.into(),
            digest: d.to_string().repeat(64),
            size: 10,
            signer: "acme".into(),
            added_ms: 0,
        }
    }

    fn cat() -> Catalogue {
        Catalogue::new([pkg("1", 'a'), pkg("2", 'b')])
    }

    fn apply(gw: &str, v: &str) -> Action {
        Action::Apply {
            rollout: "r".into(),
            gateway: gw.into(),
            service: "svc".into(),
            version: v.into(),
            digest: String::new(),
        }
    }

    #[test]
    fn a_wire_report_becomes_one_engine_report_per_service() {
        let r = GatewayReport {
            gateway: "gw-1".into(),
            site: "s".into(),
            seq: 1,
            at_ms: 5,
            applied_revision: None,
            services: vec![
                ServiceReport {
                    service: "svc".into(),
                    version: Some("2".into()),
                    health: Health::Unhealthy,
                    crash_loop: true,
                    apply_error: Some("x".into()),
                    kpis: BTreeMap::from([("k".to_string(), 1.5)]),
                },
                ServiceReport {
                    service: "other".into(),
                    version: None,
                    health: Health::Unknown,
                    crash_loop: false,
                    apply_error: None,
                    kpis: BTreeMap::new(),
                },
            ],
            outbox_dropped: 0,
        };
        let m = to_model_reports(&r);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].gateway, "gw-1");
        assert_eq!(m[0].version.as_deref(), Some("2"));
        assert_eq!(m[0].health, model::Health::Unhealthy);
        assert!(m[0].crash_loop);
        assert_eq!(m[0].apply_error.as_deref(), Some("x"));
        assert_eq!(m[0].kpis["k"], 1.5);
        assert_eq!(m[1].service, "other");
        assert_eq!(m[1].version, None);
    }

    #[test]
    fn a_managed_service_left_out_of_a_report_is_not_installed() {
        let r = GatewayReport {
            gateway: "gw".into(),
            site: "s".into(),
            seq: 1,
            at_ms: 1,
            applied_revision: Some(2),
            services: vec![],
            outbox_dropped: 0,
        };
        assert!(to_model_reports_managed(&r, None).is_empty());
        let d = DesiredState {
            gateway: "gw".into(),
            revision: 2,
            issued_ms: 1,
            services: BTreeMap::from([("svc".to_string(), None)]),
        };
        let m = to_model_reports_managed(&r, Some(&d));
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].service.as_str(), m[0].version.as_ref()), ("svc", None));
    }

    #[test]
    fn revisions_grow_once_per_change_and_not_for_a_repeat() {
        let mut d = BTreeMap::new();
        let (changed, problems) = apply_pins(&mut d, &pins_of(&[apply("gw-1", "2"), apply("gw-2", "2")]), &cat(), 7);
        assert!(problems.is_empty());
        assert_eq!(changed.len(), 2);
        assert_eq!(d["gw-1"].revision, 1);
        assert_eq!(d["gw-1"].issued_ms, 7);
        let s = d["gw-1"].services["svc"].clone().unwrap();
        assert_eq!((s.version.as_str(), s.artifact.as_str()), ("2", &*format!("/artifacts/sha256/{}", "b".repeat(64))));
        // The same pin again changes nothing, and the revision stays.
        let (changed, _) = apply_pins(&mut d, &pins_of(&[apply("gw-1", "2")]), &cat(), 9);
        assert!(changed.is_empty());
        assert_eq!(d["gw-1"].revision, 1);
        // Rollback to the version before: revision 2, that version's digest.
        let back = Action::Rollback {
            rollout: "r".into(),
            gateway: "gw-1".into(),
            service: "svc".into(),
            to: Some("1".into()),
        };
        let (changed, _) = apply_pins(&mut d, &pins_of(&[back]), &cat(), 10);
        assert_eq!(changed.len(), 1);
        assert_eq!(d["gw-1"].revision, 2);
        assert_eq!(d["gw-1"].services["svc"].as_ref().unwrap().digest, "a".repeat(64));
        // Rollback to nothing: the service must not be installed.
        let gone = Action::Rollback { rollout: "r".into(), gateway: "gw-2".into(), service: "svc".into(), to: None };
        apply_pins(&mut d, &pins_of(&[gone]), &cat(), 11);
        assert_eq!(d["gw-2"].services["svc"], None);
        assert_eq!(d["gw-2"].revision, 2);
    }

    #[test]
    fn two_pins_for_one_gateway_in_one_batch_bump_once() {
        let mut d = BTreeMap::new();
        let pins = vec![
            Pin { gateway: "gw".into(), service: "svc".into(), version: Some("2".into()) },
            Pin { gateway: "gw".into(), service: "svc".into(), version: Some("1".into()) },
        ];
        let (changed, _) = apply_pins(&mut d, &pins, &cat(), 1);
        assert_eq!(changed.len(), 1);
        assert_eq!(d["gw"].revision, 1);
        assert_eq!(d["gw"].services["svc"].as_ref().unwrap().version, "1", "the last pin wins");
    }

    #[test]
    fn an_unknown_package_is_named_and_changes_nothing() {
        let mut d = BTreeMap::new();
        let (changed, problems) = apply_pins(&mut d, &pins_of(&[apply("gw-1", "9")]), &cat(), 1);
        assert!(changed.is_empty());
        assert!(d.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("svc 9 is not in the package catalogue"), "{}", problems[0]);
    }

    fn plan(version: &str, digest: &str) -> Plan {
        Plan {
            id: "r".into(),
            service: "svc".into(),
            version: version.into(),
            digest: digest.into(),
            selector: Selector::default(),
            waves: vec![WaveSize::Percent(100.0)],
            gates: vec![Gates::default()],
        }
    }

    #[test]
    fn a_plan_needs_its_package_and_every_rollback_target_catalogued() {
        let mut fleet = Vec::new();
        for (id, v) in [("gw-1", Some("1")), ("gw-2", Some("0.9")), ("gw-3", None)] {
            let mut g = Gateway::new(id, "s");
            if let Some(v) = v {
                g.services.insert("svc".into(), v.into());
            }
            fleet.push(g);
        }
        let ok = format!("sha256:{}", "b".repeat(64));
        let errs = check_plan(&plan("2", &ok), &fleet, &cat()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("svc 0.9 (running on gw-2)"), "{errs:?}");
        let errs = check_plan(&plan("3", &ok), &fleet, &cat()).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("svc 3 is not in the package catalogue")), "{errs:?}");
        let errs = check_plan(&plan("2", &format!("sha256:{}", "c".repeat(64))), &fleet[..1], &cat()).unwrap_err();
        assert!(errs[0].contains("does not match"), "{errs:?}");
        assert_eq!(check_plan(&plan("2", &ok), &[fleet[0].clone(), fleet[2].clone()], &cat()), Ok(()));
    }
}
