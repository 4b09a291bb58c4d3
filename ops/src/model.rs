//! The fleet model: gateways, rollout plans with their waves and gates, the
//! state of a rollout, and the audit trail. Plans are read with
//! `deny_unknown_fields` and validated all at once: [`Plan::validate`]
//! returns every problem, not the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub type GatewayId = String;

/// Health a gateway reports for a service (the agent's own verdict): the
/// fleet protocol's type, so the wire and the model cannot drift apart.
pub use outpost_fleet::Health;

/// One gateway as the operations center knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub id: GatewayId,
    pub site: String,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Installed services: name -> version.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Health,
    /// Latest KPI values reported, per service then KPI name.
    #[serde(default)]
    pub kpis: BTreeMap<String, BTreeMap<String, f64>>,
    /// Milliseconds since the Unix epoch; 0 = never.
    #[serde(default)]
    pub last_seen_ms: u64,
}

impl Gateway {
    pub fn new(id: impl Into<String>, site: impl Into<String>) -> Self {
        Gateway {
            id: id.into(),
            site: site.into(),
            tags: BTreeSet::new(),
            services: BTreeMap::new(),
            health: Health::Unknown,
            kpis: BTreeMap::new(),
            last_seen_ms: 0,
        }
    }
}

/// Which gateways a plan addresses. Empty lists match everything; a gateway
/// must be on one of `sites` and carry every one of `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub sites: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Selector {
    pub fn matches(&self, gw: &Gateway) -> bool {
        (self.sites.is_empty() || self.sites.contains(&gw.site)) && self.tags.iter().all(|t| gw.tags.contains(t))
    }
}

/// The cumulative size a wave brings the rollout to: a count of gateways
/// (`1`) or a share of the selected ones (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaveSize {
    Count(u64),
    Percent(f64),
}

impl WaveSize {
    /// Cumulative number of gateways after this wave, out of `total`.
    pub fn cumulative(&self, total: usize) -> usize {
        match *self {
            WaveSize::Count(n) => (n as usize).min(total),
            WaveSize::Percent(p) => (((total as f64) * p / 100.0).ceil() as usize).min(total),
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Count(n) => s.serialize_u64(*n),
            WaveSize::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(WaveSize::Count(n)),
            Raw::S(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    p.trim()
                        .parse::<f64>()
                        .map(WaveSize::Percent)
                        .map_err(|_| serde::de::Error::custom(format!("wave `{s}`: not a percentage like \"10%\"")))
                } else {
                    t.parse::<u64>().map(WaveSize::Count).map_err(|_| {
                        serde::de::Error::custom(format!(
                            "wave `{s}`: expected a gateway count (1) or a percentage (\"10%\")"
                        ))
                    })
                }
            }
        }
    }
}

/// Which direction of a KPI is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// A KPI must not get worse than the gateway's own pre-rollout baseline by
/// more than `margin` (a fraction of the baseline: 0.05 = 5 %; when the
/// baseline is 0, an absolute amount).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiGate {
    pub name: String,
    pub better: Better,
    pub margin: f64,
    /// Share of the wave's gateways allowed to regress (default 0: none).
    #[serde(default)]
    pub max_regressed_ratio: f64,
}

impl KpiGate {
    /// True when `now` is worse than `baseline` beyond the margin.
    pub fn regressed(&self, baseline: f64, now: f64) -> bool {
        let allowed = if baseline == 0.0 { self.margin } else { baseline.abs() * self.margin };
        match self.better {
            Better::Higher => now < baseline - allowed,
            Better::Lower => now > baseline + allowed,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_apply_timeout() -> u64 {
    600
}

/// What a wave must show before the next one starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Share of the wave's gateways that must run the new version healthily.
    #[serde(default = "one")]
    pub min_success_ratio: f64,
    /// Any crash loop in the wave fails it at once.
    #[serde(default = "yes")]
    pub no_crash_loop: bool,
    #[serde(default)]
    pub kpis: Vec<KpiGate>,
    /// Seconds to watch the wave once every gateway has answered.
    #[serde(default)]
    pub bake_secs: u64,
    /// A gateway that has not reported the new version after this many
    /// seconds counts as failed.
    #[serde(default = "default_apply_timeout")]
    pub apply_timeout_secs: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_success_ratio: 1.0,
            no_crash_loop: true,
            kpis: Vec::new(),
            bake_secs: 0,
            apply_timeout_secs: default_apply_timeout(),
        }
    }
}

/// A rollout plan as an operator writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    pub service: String,
    pub version: String,
    /// `sha256:<64 hex>` of the signed package.
    pub digest: String,
    #[serde(default)]
    pub selector: Selector,
    /// Cumulative sizes, e.g. `[1, "10%", "50%", "100%"]`.
    pub waves: Vec<WaveSize>,
    /// One entry for every wave, or a single entry applying to all.
    #[serde(default)]
    pub gates: Vec<Gates>,
}

/// Everything wrong with a plan, each problem on its own line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rollout plan refused:\n  - {}", .0.join("\n  - "))]
pub struct PlanErrors(pub Vec<String>);

impl Plan {
    pub fn from_json(text: &str) -> Result<Plan, PlanErrors> {
        serde_json::from_str(text).map_err(|e| PlanErrors(vec![e.to_string()]))
    }

    /// The gates of wave `i`.
    pub fn gates_for(&self, i: usize) -> Gates {
        match self.gates.len() {
            0 => Gates::default(),
            1 => self.gates[0].clone(),
            _ => self.gates.get(i).cloned().unwrap_or_default(),
        }
    }

    /// The gateways this plan addresses, in `fleet`.
    pub fn select<'a>(&self, fleet: &'a [Gateway]) -> Vec<&'a Gateway> {
        fleet.iter().filter(|g| self.selector.matches(g)).collect()
    }

    /// Checks the plan against the fleet; lists every problem found.
    pub fn validate(&self, fleet: &[Gateway]) -> Result<(), PlanErrors> {
        let mut p = Vec::new();
        if self.id.trim().is_empty() {
            p.push("id is empty".to_string());
        }
        if self.service.trim().is_empty() {
            p.push("service is empty".to_string());
        }
        if self.version.trim().is_empty() {
            p.push("version is empty".to_string());
        }
        match self.digest.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            _ => p.push(format!("digest `{}` is not `sha256:` and 64 hex digits", self.digest)),
        }
        let selected = self.select(fleet).len();
        if selected == 0 {
            p.push(format!(
                "selector (sites {:?}, tags {:?}) matches no gateway of the {} known",
                self.selector.sites,
                self.selector.tags,
                fleet.len()
            ));
        }
        if self.waves.is_empty() {
            p.push("waves is empty: give at least one, e.g. [1, \"10%\", \"100%\"]".to_string());
        }
        let mut prev: Option<(usize, WaveSize)> = None;
        for (i, w) in self.waves.iter().enumerate() {
            let n = i + 1;
            match *w {
                WaveSize::Count(0) => p.push(format!("wave {n}: size 0")),
                WaveSize::Percent(x) if !(x > 0.0 && x <= 100.0) => {
                    p.push(format!("wave {n}: {x}% is outside (0, 100]"))
                }
                _ => {}
            }
            if let Some((pc, pw)) = prev {
                let comparable = match (pw, *w) {
                    (WaveSize::Count(a), WaveSize::Count(b)) => Some(b <= a),
                    (WaveSize::Percent(a), WaveSize::Percent(b)) => Some(b <= a),
                    _ => None,
                };
                let shrinks = comparable.unwrap_or_else(|| selected > 0 && w.cumulative(selected) < pc);
                if shrinks {
                    p.push(format!("wave {n} ({w}) does not grow past wave {i} ({pw}): sizes are cumulative"));
                }
            }
            prev = Some((w.cumulative(selected), *w));
        }
        if self.gates.len() > 1 && self.gates.len() != self.waves.len() {
            p.push(format!(
                "gates has {} entries for {} waves: give one for all or one per wave",
                self.gates.len(),
                self.waves.len()
            ));
        }
        for (i, g) in self.gates.iter().enumerate() {
            let n = i + 1;
            if !(0.0..=1.0).contains(&g.min_success_ratio) {
                p.push(format!("gates {n}: min_success_ratio {} is outside [0, 1]", g.min_success_ratio));
            }
            if g.apply_timeout_secs == 0 {
                p.push(format!("gates {n}: apply_timeout_secs is 0"));
            }
            let mut seen = BTreeSet::new();
            for k in &g.kpis {
                if k.name.trim().is_empty() {
                    p.push(format!("gates {n}: a KPI gate has no name"));
                }
                if !seen.insert(k.name.as_str()) {
                    p.push(format!("gates {n}: KPI `{}` is gated twice", k.name));
                }
                if !(k.margin >= 0.0 && k.margin.is_finite()) {
                    p.push(format!("gates {n}: KPI `{}` margin {} must be a number >= 0", k.name, k.margin));
                }
                if !(0.0..=1.0).contains(&k.max_regressed_ratio) {
                    p.push(format!(
                        "gates {n}: KPI `{}` max_regressed_ratio {} is outside [0, 1]",
                        k.name, k.max_regressed_ratio
                    ));
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(PlanErrors(p))
        }
    }
}

/// Where one gateway stands in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum GatewayStatus {
    /// Not asked yet.
    Pending,
    /// Asked to install the new version; no verdict yet.
    Applying,
    /// Runs the new version, healthy.
    Succeeded,
    /// Could not install or run the new version.
    Failed(String),
    /// Asked to go back to the version it had.
    RollingBack,
    /// Confirmed back on the version it had.
    RolledBack,
}

impl GatewayStatus {
    /// Was this gateway ever asked to install the new version?
    pub fn touched(&self) -> bool {
        !matches!(self, GatewayStatus::Pending)
    }
}

/// One gateway's progress in one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayProgress {
    pub wave: usize,
    pub status: GatewayStatus,
    pub since_ms: u64,
    /// Version installed before the rollout; `None` = not installed.
    pub previous: Option<String>,
    /// KPIs before the new version was applied.
    pub baseline: BTreeMap<String, f64>,
    /// Latest KPIs on the new version.
    pub latest: BTreeMap<String, f64>,
    pub crash_looped: bool,
    /// Why it failed, kept after it is rolled back.
    #[serde(default)]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateVerdict {
    Passed,
    Failed(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveState {
    pub targets: Vec<GatewayId>,
    pub started_ms: Option<u64>,
    /// When the last target answered: bake time counts from here.
    pub settled_ms: Option<u64>,
    pub verdict: Option<GateVerdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase", content = "reason")]
pub enum Phase {
    Running,
    Paused,
    Succeeded,
    /// Stopped; touched gateways are being rolled back.
    Aborted(String),
    /// Stopped and every touched gateway confirmed back.
    RolledBack(String),
}

impl Phase {
    pub fn is_active(&self) -> bool {
        matches!(self, Phase::Running | Phase::Paused | Phase::Aborted(_))
    }
}

/// A rollout and everything needed to carry it on after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub plan: Plan,
    pub phase: Phase,
    pub current_wave: usize,
    pub waves: Vec<WaveState>,
    pub gateways: BTreeMap<GatewayId, GatewayProgress>,
    pub created_ms: u64,
    /// Bumped on every persisted transition (optimistic concurrency).
    pub revision: u64,
}

/// Who did what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// An operator's name, or `"outpost-ops"` for automatic decisions.
    pub actor: String,
    pub rollout: Option<String>,
    pub action: String,
    pub detail: String,
}

/// A package in the operations center's catalogue: verified at intake and
/// stored content-addressed, so desired state can name it (and a rollback can
/// name the version before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecord {
    pub service: String,
    pub version: String,
    /// sha256 (hex) of the `.opkg` file as served under `/artifacts/sha256/`.
    pub digest: String,
    pub size: u64,
    /// The provider whose key signed it.
    pub signer: String,
    pub added_ms: u64,
}

impl PackageRecord {
    /// The catalogue key: `service/version`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.service, self.version)
    }

    /// Where gateways download it, relative to the artifacts base URL.
    pub fn artifact_path(&self) -> String {
        format!("/artifacts/sha256/{}", self.digest)
    }
}

/// What a gateway reports about one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The gateway the report claims to come from.
    pub gateway: GatewayId,
    pub service: String,
    /// Installed version; `None` = not installed.
    pub version: Option<String>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub crash_loop: bool,
    /// The agent refused or failed to apply the desired version.
    #[serde(default)]
    pub apply_error: Option<String>,
    #[serde(default)]
    pub kpis: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_sizes_are_cumulative_and_round_up() {
        assert_eq!(WaveSize::Count(1).cumulative(1000), 1);
        assert_eq!(WaveSize::Count(5000).cumulative(1000), 1000);
        assert_eq!(WaveSize::Percent(10.0).cumulative(1000), 100);
        assert_eq!(WaveSize::Percent(10.0).cumulative(5), 1, "a share of a small fleet is at least one");
        assert_eq!(WaveSize::Percent(100.0).cumulative(7), 7);
        let w: Vec<WaveSize> = serde_json::from_str(r#"[1, "10%", " 50 % ", "3"]"#).unwrap();
        assert_eq!(w, vec![WaveSize::Count(1), WaveSize::Percent(10.0), WaveSize::Percent(50.0), WaveSize::Count(3)]);
        assert_eq!(serde_json::to_string(&w).unwrap(), r#"[1,"10%","50%",3]"#);
    }

    #[test]
    fn kpi_regression_follows_direction_and_margin() {
        let lower = KpiGate { name: "latency".into(), better: Better::Lower, margin: 0.1, max_regressed_ratio: 0.0 };
        assert!(!lower.regressed(100.0, 110.0));
        assert!(lower.regressed(100.0, 110.5));
        assert!(!lower.regressed(100.0, 50.0), "better is never a regression");
        let higher = KpiGate { better: Better::Higher, ..lower.clone() };
        assert!(!higher.regressed(100.0, 90.0));
        assert!(higher.regressed(100.0, 89.0));
        // A zero baseline makes the margin absolute.
        assert!(!lower.regressed(0.0, 0.1));
        assert!(lower.regressed(0.0, 0.2));
    }

    #[test]
    fn selector_needs_a_listed_site_and_every_tag() {
        let mut g = Gateway::new("gw", "mine-a");
        g.tags.extend(["loader".to_string(), "beta".to_string()]);
        let s = |sites: &[&str], tags: &[&str]| Selector {
            sites: sites.iter().map(|x| x.to_string()).collect(),
            tags: tags.iter().map(|x| x.to_string()).collect(),
        };
        assert!(s(&[], &[]).matches(&g));
        assert!(s(&["mine-b", "mine-a"], &["loader"]).matches(&g));
        assert!(!s(&["mine-b"], &[]).matches(&g));
        assert!(!s(&[], &["loader", "truck"]).matches(&g));
    }
}
