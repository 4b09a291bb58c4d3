//! How an upgrade is judged on the gateway, with no one asked: during its
//! probation window a crash loop (faults) rolls it back at once; at the end
//! of the window the new version's error share and its declared health KPIs
//! are compared with the version it replaced, and a worse one is rolled
//! back too. Pure logic: the dispatcher takes the snapshots.

use super::ServiceDef;
use crate::manifest::Better;
use std::time::Duration;

/// The gateway's probation rules (`[lifecycle]` in `outpost.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbationPolicy {
    pub window: Duration,
    /// Faults (traps, deadline hits, failed starts) that end it at once.
    pub max_faults: u64,
    /// Error share the new version may have above the previous one's.
    pub error_margin: f64,
    /// Fewest messages, for either version, for error shares to be judged.
    pub min_messages: u64,
}

/// Messages handled and answered with an error, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub messages: u64,
    pub errors: u64,
}

impl Counts {
    pub fn of(def: &ServiceDef) -> Self {
        Counts { messages: def.metrics.messages_in.get(), errors: def.metrics.service_errors.get() }
    }

    fn since(self, start: Counts) -> Counts {
        Counts {
            messages: self.messages.saturating_sub(start.messages),
            errors: self.errors.saturating_sub(start.errors),
        }
    }

    fn share(self) -> f64 {
        self.errors as f64 / self.messages.max(1) as f64
    }
}

/// A health KPI as the previous version left it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthKpi {
    pub name: String,
    pub better: Better,
    pub margin: f64,
    pub previous: f64,
}

/// What the new version is measured against, taken at the upgrade.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub previous_version: String,
    pub previous: Counts,
    /// The new version's counters when it started (a version that ran
    /// before in this process has counts already).
    pub new_start: Counts,
    /// The new manifest's health KPIs that the previous version reported.
    pub kpis: Vec<HealthKpi>,
}

impl Baseline {
    pub fn take(previous: &ServiceDef, new: &ServiceDef) -> Self {
        let kpis = new
            .manifest
            .kpis
            .iter()
            .filter_map(|(name, spec)| {
                let margin = spec.health_margin?;
                let previous = previous.metrics.site_kpi(name)?;
                Some(HealthKpi { name: name.clone(), better: spec.better, margin, previous })
            })
            .collect();
        Baseline {
            previous_version: previous.version().to_owned(),
            previous: Counts::of(previous),
            new_start: Counts::of(new),
            kpis,
        }
    }
}

/// Judges the new version at the end of its window: `Err(reason)` when it
/// is worse than the previous one. `site_kpi` reads its last values.
pub fn judge(
    policy: &ProbationPolicy,
    baseline: &Baseline,
    now: Counts,
    site_kpi: impl Fn(&str) -> Option<f64>,
) -> Result<(), String> {
    let mut reasons = Vec::new();
    let new = now.since(baseline.new_start);
    let old = baseline.previous;
    // A share needs enough messages on both sides to mean anything.
    if new.messages >= policy.min_messages && old.messages >= policy.min_messages {
        let (was, is) = (old.share(), new.share());
        if is > was + policy.error_margin {
            reasons.push(format!(
                "{:.1} % of {} messages answered with an error, against {:.1} % for {} (margin {:.1} points)",
                is * 100.0,
                new.messages,
                was * 100.0,
                baseline.previous_version,
                policy.error_margin * 100.0
            ));
        }
    }
    for k in &baseline.kpis {
        let Some(value) = site_kpi(&k.name) else {
            reasons.push(format!(
                "health KPI {} was not reported in the window ({} reported {})",
                k.name, baseline.previous_version, k.previous
            ));
            continue;
        };
        // How much worse, as a share of the previous value (its size, so a
        // negative KPI reads the right way round).
        let worse = match k.better {
            Better::Higher => k.previous - value,
            Better::Lower => value - k.previous,
        };
        let scale = k.previous.abs().max(f64::EPSILON);
        if !value.is_finite() || worse / scale > k.margin {
            reasons.push(format!(
                "health KPI {} is {value} against {} for {} ({} is better; margin {:.0} %)",
                k.name,
                k.previous,
                baseline.previous_version,
                match k.better {
                    Better::Higher => "higher",
                    Better::Lower => "lower",
                },
                k.margin * 100.0
            ));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ProbationPolicy {
        ProbationPolicy { window: Duration::from_secs(60), max_faults: 3, error_margin: 0.05, min_messages: 50 }
    }

    fn baseline(kpis: Vec<HealthKpi>) -> Baseline {
        Baseline {
            previous_version: "1.0.0".into(),
            previous: Counts { messages: 1000, errors: 10 },
            new_start: Counts { messages: 100, errors: 0 },
            kpis,
        }
    }

    fn kpi(better: Better, previous: f64) -> HealthKpi {
        HealthKpi { name: "k".into(), better, margin: 0.2, previous }
    }

    #[test]
    fn the_error_share_is_compared_with_the_previous_version() {
        let b = baseline(vec![]);
        // 1 % before; 5 % + 1 % allowed: 6/100 since the start passes, 7/100 fails.
        assert!(judge(&policy(), &b, Counts { messages: 200, errors: 6 }, |_| None).is_ok());
        let err = judge(&policy(), &b, Counts { messages: 200, errors: 7 }, |_| None).unwrap_err();
        assert!(err.contains("7.0 % of 100 messages") && err.contains("1.0 % for 1.0.0"), "{err}");
        // Too few messages say nothing.
        assert!(judge(&policy(), &b, Counts { messages: 120, errors: 20 }, |_| None).is_ok());
    }

    #[test]
    fn health_kpis_may_be_worse_by_the_margin_only() {
        let higher = baseline(vec![kpi(Better::Higher, 100.0)]);
        assert!(judge(&policy(), &higher, Counts::default(), |_| Some(81.0)).is_ok());
        assert!(judge(&policy(), &higher, Counts::default(), |_| Some(79.0)).is_err());
        assert!(judge(&policy(), &higher, Counts::default(), |_| Some(500.0)).is_ok(), "better is fine");
        let lower = baseline(vec![kpi(Better::Lower, 10.0)]);
        assert!(judge(&policy(), &lower, Counts::default(), |_| Some(11.9)).is_ok());
        let err = judge(&policy(), &lower, Counts::default(), |_| Some(12.5)).unwrap_err();
        assert!(err.contains("health KPI k is 12.5 against 10 for 1.0.0 (lower is better; margin 20 %)"), "{err}");
        assert!(judge(&policy(), &lower, Counts::default(), |_| Some(f64::NAN)).is_err());
        let missing = judge(&policy(), &lower, Counts::default(), |_| None).unwrap_err();
        assert!(missing.contains("was not reported"), "{missing}");
    }
}
