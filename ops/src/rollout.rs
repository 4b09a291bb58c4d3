//! The rollout state machine. Pure: no I/O, no clock of its own, no
//! transport. It is driven by three inputs — [`Rollout::on_report`],
//! [`Rollout::tick`] and the operator's pause / resume / abort — and answers
//! with [`Action`]s for a transport to carry out. Every action is emitted on a
//! state transition and only there, so replaying a report or ticking twice
//! never emits it again.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{
    GateVerdict, Gateway, GatewayId, GatewayProgress, GatewayStatus, Health, Phase, Plan, PlanErrors, Report,
    RolloutState, WaveState,
};

/// Milliseconds since the Unix epoch, injected so tests drive time.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(ms.into())
    }
    pub fn advance_secs(&self, s: u64) {
        self.0.fetch_add(s * 1000, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Something that happened which people should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    WaveStarted { wave: usize, targets: usize },
    WavePassed { wave: usize },
    WaveFailed { wave: usize, reasons: Vec<String> },
    Paused,
    Resumed,
    Succeeded,
    Aborted { reason: String },
    RolledBack,
}

/// What the transport must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Apply {
        rollout: String,
        gateway: GatewayId,
        service: String,
        version: String,
        digest: String,
    },
    /// Go back to `to`; `None` = remove the service (it was not installed).
    Rollback {
        rollout: String,
        gateway: GatewayId,
        service: String,
        to: Option<String>,
    },
    Notify {
        rollout: String,
        notice: Notice,
    },
}

/// Why a report was refused. A refused report changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("report from `{sender}` claims to be from `{claimed}`")]
    Impersonation { sender: GatewayId, claimed: GatewayId },
    #[error("gateway `{0}` is not known to this operations center")]
    UnknownGateway(GatewayId),
    #[error("gateway `{gateway}` is not part of rollout `{rollout}`")]
    NotInRollout { rollout: String, gateway: GatewayId },
    #[error("report is about service `{got}`, rollout `{rollout}` is about `{want}`")]
    WrongService { rollout: String, want: String, got: String },
    #[error("gateway `{gateway}` reports version {got:?}, which nobody asked it to install (it had {previous:?}, rollout `{rollout}` is {asked})")]
    UnexpectedVersion {
        rollout: String,
        gateway: GatewayId,
        got: Option<String>,
        previous: Option<String>,
        asked: String,
    },
    #[error("report for gateway `{gateway}` has a KPI `{kpi}` that is not a finite number")]
    BadKpi { gateway: GatewayId, kpi: String },
}

/// Stable 64-bit FNV-1a, so the order of gateways over the waves is the
/// same in every process and after every restart.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// One rollout: its persisted state plus the actions not yet handed out.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub state: RolloutState,
    outbox: Vec<Action>,
}

impl Rollout {
    /// Validates `plan` against `fleet` and assigns every selected gateway to
    /// its wave: gateways ordered by a stable hash of (plan id, gateway id),
    /// then cut at each wave's cumulative size. Nothing is applied before the
    /// first [`tick`](Self::tick).
    pub fn start(plan: Plan, fleet: &[Gateway], now_ms: u64) -> Result<Rollout, PlanErrors> {
        plan.validate(fleet)?;
        let mut selected: Vec<&Gateway> = plan.select(fleet);
        selected.sort_by_key(|g| (fnv1a(&[&plan.id, &g.id]), g.id.clone()));
        let total = selected.len();
        let mut waves = Vec::with_capacity(plan.waves.len());
        let mut gateways = BTreeMap::new();
        let mut from = 0;
        for (i, w) in plan.waves.iter().enumerate() {
            let to = w.cumulative(total).max(from);
            let targets: Vec<GatewayId> = selected[from..to].iter().map(|g| g.id.clone()).collect();
            for g in &selected[from..to] {
                gateways.insert(
                    g.id.clone(),
                    GatewayProgress {
                        wave: i,
                        status: GatewayStatus::Pending,
                        since_ms: now_ms,
                        previous: g.services.get(&plan.service).cloned(),
                        baseline: g.kpis.get(&plan.service).cloned().unwrap_or_default(),
                        latest: BTreeMap::new(),
                        crash_looped: false,
                        failure: None,
                    },
                );
            }
            waves.push(WaveState { targets, started_ms: None, settled_ms: None, verdict: None });
            from = to;
        }
        Ok(Rollout {
            state: RolloutState {
                plan,
                phase: Phase::Running,
                current_wave: 0,
                waves,
                gateways,
                created_ms: now_ms,
                revision: 0,
            },
            outbox: Vec::new(),
        })
    }

    /// Carries on from persisted state.
    pub fn resume(state: RolloutState) -> Rollout {
        Rollout { state, outbox: Vec::new() }
    }

    pub fn id(&self) -> &str {
        &self.state.plan.id
    }

    fn notify(&mut self, notice: Notice) {
        let rollout = self.state.plan.id.clone();
        self.outbox.push(Action::Notify { rollout, notice });
    }

    /// Checks a report without changing anything.
    pub fn check_report(&self, report: &Report) -> Result<(), ReportError> {
        let plan = &self.state.plan;
        if report.service != plan.service {
            return Err(ReportError::WrongService {
                rollout: plan.id.clone(),
                want: plan.service.clone(),
                got: report.service.clone(),
            });
        }
        let Some(gp) = self.state.gateways.get(&report.gateway) else {
            return Err(ReportError::NotInRollout { rollout: plan.id.clone(), gateway: report.gateway.clone() });
        };
        if let Some((k, _)) = report.kpis.iter().find(|(_, v)| !v.is_finite()) {
            return Err(ReportError::BadKpi { gateway: report.gateway.clone(), kpi: k.clone() });
        }
        let new = Some(&plan.version);
        let may_run_new = matches!(
            gp.status,
            GatewayStatus::Applying | GatewayStatus::Succeeded | GatewayStatus::Failed(_) | GatewayStatus::RollingBack
        );
        let ok = report.version == gp.previous || (may_run_new && report.version.as_ref() == new);
        if !ok {
            return Err(ReportError::UnexpectedVersion {
                rollout: plan.id.clone(),
                gateway: report.gateway.clone(),
                got: report.version.clone(),
                previous: gp.previous.clone(),
                asked: plan.version.clone(),
            });
        }
        Ok(())
    }

    /// Takes a gateway's report into account. Refused reports change nothing;
    /// an accepted report seen before changes nothing either.
    pub fn on_report(&mut self, report: &Report, now_ms: u64) -> Result<(), ReportError> {
        self.check_report(report)?;
        let version = self.state.plan.version.clone();
        let gp = self.state.gateways.get_mut(&report.gateway).expect("checked");
        let on_new = report.version.as_ref() == Some(&version);
        match gp.status.clone() {
            GatewayStatus::Pending => {
                // Still on its old version: keep its baseline current.
                for (k, v) in &report.kpis {
                    gp.baseline.insert(k.clone(), *v);
                }
            }
            GatewayStatus::Applying => {
                if let Some(err) = &report.apply_error {
                    fail(gp, format!("apply failed: {err}"), now_ms);
                } else if on_new {
                    gp.latest.extend(report.kpis.iter().map(|(k, v)| (k.clone(), *v)));
                    if report.crash_loop {
                        gp.crash_looped = true;
                        fail(gp, "crash loop".to_string(), now_ms);
                    } else if report.health == Health::Unhealthy {
                        fail(gp, "unhealthy".into(), now_ms);
                    } else if report.health == Health::Healthy {
                        gp.status = GatewayStatus::Succeeded;
                        gp.since_ms = now_ms;
                    }
                }
            }
            GatewayStatus::Succeeded => {
                if on_new {
                    gp.latest.extend(report.kpis.iter().map(|(k, v)| (k.clone(), *v)));
                    if report.crash_loop {
                        gp.crash_looped = true;
                        fail(gp, "crash loop after install".into(), now_ms);
                    } else if report.health == Health::Unhealthy {
                        fail(gp, "unhealthy after install".into(), now_ms);
                    }
                } else {
                    // The agent's own probation rolled it back.
                    fail(gp, "went back to the previous version".into(), now_ms);
                }
            }
            GatewayStatus::Failed(_) => {
                if on_new && report.crash_loop {
                    gp.crash_looped = true;
                }
            }
            GatewayStatus::RollingBack => {
                if report.version == gp.previous {
                    gp.status = GatewayStatus::RolledBack;
                    gp.since_ms = now_ms;
                }
            }
            GatewayStatus::RolledBack => {}
        }
        Ok(())
    }

    pub fn pause(&mut self) -> bool {
        if self.state.phase == Phase::Running {
            self.state.phase = Phase::Paused;
            self.notify(Notice::Paused);
            true
        } else {
            false
        }
    }

    pub fn resume_running(&mut self) -> bool {
        if self.state.phase == Phase::Paused {
            self.state.phase = Phase::Running;
            self.notify(Notice::Resumed);
            true
        } else {
            false
        }
    }

    /// Stops the rollout: no gateway is asked to install the new version any
    /// more, and every gateway already asked is rolled back.
    pub fn abort(&mut self, reason: &str, now_ms: u64) -> bool {
        if !matches!(self.state.phase, Phase::Running | Phase::Paused) {
            return false;
        }
        self.state.phase = Phase::Aborted(reason.to_string());
        let plan = self.state.plan.clone();
        let mut actions = Vec::new();
        for wave in &self.state.waves {
            for id in &wave.targets {
                let gp = self.state.gateways.get_mut(id).expect("target has progress");
                if matches!(gp.status, GatewayStatus::Applying | GatewayStatus::Succeeded | GatewayStatus::Failed(_)) {
                    gp.status = GatewayStatus::RollingBack;
                    gp.since_ms = now_ms;
                    actions.push(Action::Rollback {
                        rollout: plan.id.clone(),
                        gateway: id.clone(),
                        service: plan.service.clone(),
                        to: gp.previous.clone(),
                    });
                }
            }
        }
        self.notify(Notice::Aborted { reason: reason.to_string() });
        self.outbox.extend(actions);
        self.finish_rollback_if_done();
        true
    }

    fn finish_rollback_if_done(&mut self) {
        if let Phase::Aborted(reason) = &self.state.phase {
            let pending = self.state.gateways.values().any(|g| g.status == GatewayStatus::RollingBack);
            if !pending {
                self.state.phase = Phase::RolledBack(reason.clone());
                self.notify(Notice::RolledBack);
            }
        }
    }

    /// Advances time: starts waves, times out silent gateways, evaluates
    /// gates after bake time, aborts on a failed gate. Returns the actions
    /// produced since the last call (including those of reports and operator
    /// commands).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        loop {
            match self.state.phase {
                Phase::Running | Phase::Paused => {}
                Phase::Aborted(_) => {
                    self.finish_rollback_if_done();
                    break;
                }
                _ => break,
            }
            let w = self.state.current_wave;
            if w >= self.state.waves.len() {
                self.state.phase = Phase::Succeeded;
                self.notify(Notice::Succeeded);
                break;
            }
            let gates = self.state.plan.gates_for(w);
            if self.state.waves[w].started_ms.is_none() {
                if self.state.phase == Phase::Paused {
                    break;
                }
                self.start_wave(w, now_ms);
            }
            // Silent gateways time out.
            let timeout = gates.apply_timeout_secs * 1000;
            for id in self.state.waves[w].targets.clone() {
                let gp = self.state.gateways.get_mut(&id).expect("target");
                if gp.status == GatewayStatus::Applying && now_ms.saturating_sub(gp.since_ms) >= timeout {
                    fail(
                        gp,
                        format!("no healthy report of the new version within {} s", gates.apply_timeout_secs),
                        now_ms,
                    );
                }
            }
            // Fail early: the wave can no longer pass.
            let early = self.early_failure(w);
            if !early.is_empty() {
                self.fail_wave(w, early, now_ms);
                continue;
            }
            let wave = &self.state.waves[w];
            let settled =
                wave.targets.iter().all(|id| !matches!(self.state.gateways[id].status, GatewayStatus::Applying));
            if !settled {
                break;
            }
            let settled_ms = *self.state.waves[w].settled_ms.get_or_insert(now_ms);
            if now_ms < settled_ms + gates.bake_secs * 1000 || self.state.phase == Phase::Paused {
                break;
            }
            let reasons = self.gate_failures(w);
            if reasons.is_empty() {
                self.state.waves[w].verdict = Some(GateVerdict::Passed);
                self.notify(Notice::WavePassed { wave: w + 1 });
                self.state.current_wave += 1;
            } else {
                self.fail_wave(w, reasons, now_ms);
            }
        }
        std::mem::take(&mut self.outbox)
    }

    fn start_wave(&mut self, w: usize, now_ms: u64) {
        let plan = self.state.plan.clone();
        self.state.waves[w].started_ms = Some(now_ms);
        let targets = self.state.waves[w].targets.clone();
        self.notify(Notice::WaveStarted { wave: w + 1, targets: targets.len() });
        for id in targets {
            let gp = self.state.gateways.get_mut(&id).expect("target");
            if gp.status == GatewayStatus::Pending {
                gp.status = GatewayStatus::Applying;
                gp.since_ms = now_ms;
                self.outbox.push(Action::Apply {
                    rollout: plan.id.clone(),
                    gateway: id,
                    service: plan.service.clone(),
                    version: plan.version.clone(),
                    digest: plan.digest.clone(),
                });
            }
        }
    }

    fn fail_wave(&mut self, w: usize, reasons: Vec<String>, now_ms: u64) {
        self.state.waves[w].verdict = Some(GateVerdict::Failed(reasons.clone()));
        self.notify(Notice::WaveFailed { wave: w + 1, reasons: reasons.clone() });
        self.abort(&format!("wave {} failed its gate: {}", w + 1, reasons.join("; ")), now_ms);
    }

    /// Failures that already decide the wave, before everyone answered.
    fn early_failure(&self, w: usize) -> Vec<String> {
        let gates = self.state.plan.gates_for(w);
        let targets = &self.state.waves[w].targets;
        let mut reasons = Vec::new();
        if gates.no_crash_loop {
            let looping: Vec<&str> =
                targets.iter().filter(|id| self.state.gateways[*id].crash_looped).map(|s| s.as_str()).collect();
            if !looping.is_empty() {
                reasons.push(format!("crash loop on {}", list(&looping)));
            }
        }
        let failed: Vec<String> = targets
            .iter()
            .filter_map(|id| match &self.state.gateways[id].status {
                GatewayStatus::Failed(why) => Some(format!("{id}: {why}")),
                _ => None,
            })
            .collect();
        let n = targets.len();
        if n > 0 && ((n - failed.len()) as f64) / (n as f64) < gates.min_success_ratio {
            let shown: Vec<&str> = failed.iter().map(|s| s.as_str()).collect();
            reasons.push(format!(
                "{} of {n} gateways failed, success ratio can no longer reach {} ({})",
                failed.len(),
                gates.min_success_ratio,
                list(&shown)
            ));
        }
        reasons
    }

    /// The gate, evaluated once the wave has baked.
    fn gate_failures(&self, w: usize) -> Vec<String> {
        let gates = self.state.plan.gates_for(w);
        let targets = &self.state.waves[w].targets;
        let mut reasons = self.early_failure(w);
        let n = targets.len();
        if n == 0 {
            return reasons;
        }
        for k in &gates.kpis {
            let mut regressed = Vec::new();
            for id in targets {
                let gp = &self.state.gateways[id];
                if gp.status != GatewayStatus::Succeeded {
                    continue;
                }
                let Some(base) = gp.baseline.get(&k.name) else { continue };
                match gp.latest.get(&k.name) {
                    Some(now) if !k.regressed(*base, *now) => {}
                    Some(now) => regressed.push(format!("{id} ({base} -> {now})")),
                    None => regressed.push(format!("{id} (no longer reported)")),
                }
            }
            if (regressed.len() as f64) / (n as f64) > k.max_regressed_ratio {
                let shown: Vec<&str> = regressed.iter().map(|s| s.as_str()).collect();
                reasons.push(format!(
                    "KPI `{}` worse than baseline by more than {} on {}",
                    k.name,
                    k.margin,
                    list(&shown)
                ));
            }
        }
        reasons
    }

    /// The version each gateway touched by this rollout should run now
    /// (`None` = the service removed), derived from state alone. A transport
    /// publishes this as retained desired state, so an action lost between
    /// `tick` and the broker (a crash) is made good by republishing it.
    pub fn desired(&self) -> BTreeMap<GatewayId, Option<String>> {
        self.state
            .gateways
            .iter()
            .filter_map(|(id, g)| match g.status {
                GatewayStatus::Pending => None,
                GatewayStatus::Applying | GatewayStatus::Succeeded | GatewayStatus::Failed(_) => {
                    Some((id.clone(), Some(self.state.plan.version.clone())))
                }
                GatewayStatus::RollingBack | GatewayStatus::RolledBack => Some((id.clone(), g.previous.clone())),
            })
            .collect()
    }

    /// Counts per status, for progress displays and tests.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for g in self.state.gateways.values() {
            let k = match g.status {
                GatewayStatus::Pending => "pending",
                GatewayStatus::Applying => "applying",
                GatewayStatus::Succeeded => "succeeded",
                GatewayStatus::Failed(_) => "failed",
                GatewayStatus::RollingBack => "rolling_back",
                GatewayStatus::RolledBack => "rolled_back",
            };
            *m.entry(k).or_default() += 1;
        }
        m
    }
}

fn fail(gp: &mut GatewayProgress, reason: String, now_ms: u64) {
    gp.status = GatewayStatus::Failed(reason.clone());
    gp.failure = Some(reason);
    gp.since_ms = now_ms;
}

fn list(items: &[&str]) -> String {
    const SHOWN: usize = 5;
    if items.len() <= SHOWN {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..SHOWN].join(", "), items.len() - SHOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gates, Selector, WaveSize};

    fn fleet(n: usize) -> Vec<Gateway> {
        (0..n)
            .map(|i| {
                let mut g = Gateway::new(format!("gw-{i}"), "site");
                g.services.insert("svc".into(), "1".into());
                g
            })
            .collect()
    }

    fn rollout(n: usize, waves: Vec<WaveSize>, gates: Gates) -> Rollout {
        let plan = Plan {
            id: "r".into(),
            service: "svc".into(),
            version: "2".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            selector: Selector::default(),
            waves,
            gates: vec![gates],
        };
        Rollout::start(plan, &fleet(n), 0).unwrap()
    }

    fn report(gw: &str, version: &str) -> Report {
        Report {
            gateway: gw.into(),
            service: "svc".into(),
            version: Some(version.into()),
            health: Health::Healthy,
            crash_loop: false,
            apply_error: None,
            kpis: BTreeMap::new(),
        }
    }

    fn applies(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Apply { gateway, .. } => Some(gateway.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_silent_gateway_times_out_and_fails_the_wave() {
        let gates = Gates { apply_timeout_secs: 30, ..Gates::default() };
        let mut r = rollout(4, vec![WaveSize::Count(2), WaveSize::Percent(100.0)], gates);
        let first = applies(&r.tick(0));
        r.on_report(&report(&first[0], "2"), 1000).unwrap();
        assert!(applies(&r.tick(29_000)).is_empty());
        assert_eq!(r.state.phase, Phase::Running);
        let out = r.tick(30_000);
        assert!(
            matches!(r.state.phase, Phase::Aborted(ref why) if why.contains("no healthy report")),
            "{:?}",
            r.state.phase
        );
        let rollbacks = out.iter().filter(|a| matches!(a, Action::Rollback { .. })).count();
        assert_eq!(rollbacks, 2, "the silent one may have half-installed: it is rolled back too");
    }

    #[test]
    fn an_apply_error_fails_the_gateway_and_the_wave_at_once() {
        let mut r = rollout(10, vec![WaveSize::Percent(50.0), WaveSize::Percent(100.0)], Gates::default());
        let first = applies(&r.tick(0));
        let mut rep = report(&first[0], "1");
        rep.apply_error = Some("signature refused".into());
        r.on_report(&rep, 10).unwrap();
        // The other four have not answered, but the wave can no longer pass.
        r.tick(20);
        assert!(matches!(r.state.phase, Phase::Aborted(ref why) if why.contains("1 of 5")), "{:?}", r.state.phase);
        assert!(r.state.gateways[&first[0]].failure.as_deref().unwrap().contains("signature refused"));
        assert_eq!(r.state.gateways[&first[0]].status, GatewayStatus::RollingBack);
    }

    #[test]
    fn a_gateway_that_goes_back_by_itself_counts_as_failed() {
        let gates = Gates { bake_secs: 60, ..Gates::default() };
        let mut r = rollout(2, vec![WaveSize::Percent(100.0)], gates);
        let gws = applies(&r.tick(0));
        for g in &gws {
            r.on_report(&report(g, "2"), 1).unwrap();
        }
        r.tick(2);
        // During bake, the agent's probation rolls one back.
        r.on_report(&report(&gws[1], "1"), 30_000).unwrap();
        r.tick(30_001);
        assert!(matches!(r.state.phase, Phase::Aborted(_)));
        // Rollback confirmed by both.
        for g in &gws {
            r.on_report(&report(g, "1"), 31_000).unwrap();
        }
        let out = r.tick(31_001);
        assert!(matches!(r.state.phase, Phase::RolledBack(_)));
        assert!(out.contains(&Action::Notify { rollout: "r".into(), notice: Notice::RolledBack }));
    }

    #[test]
    fn desired_state_follows_the_actions() {
        let mut r = rollout(4, vec![WaveSize::Count(2), WaveSize::Percent(100.0)], Gates::default());
        assert!(r.desired().is_empty(), "nothing asked before the first tick");
        let first = applies(&r.tick(0));
        let want: BTreeMap<_, _> = first.iter().map(|g| (g.clone(), Some("2".to_string()))).collect();
        assert_eq!(r.desired(), want);
        r.abort("test", 1);
        let back: BTreeMap<_, _> = first.iter().map(|g| (g.clone(), Some("1".to_string()))).collect();
        assert_eq!(r.desired(), back);
    }

    #[test]
    fn a_wave_fails_while_paused_too() {
        let mut r = rollout(4, vec![WaveSize::Count(2), WaveSize::Percent(100.0)], Gates::default());
        let first = applies(&r.tick(0));
        assert!(r.pause());
        let mut rep = report(&first[0], "2");
        rep.crash_loop = true;
        r.on_report(&rep, 5).unwrap();
        r.tick(6);
        assert!(matches!(r.state.phase, Phase::Aborted(ref why) if why.contains("crash loop")));
        assert!(!r.resume_running(), "an aborted rollout does not resume");
    }

    #[test]
    fn a_service_new_to_the_gateway_is_removed_on_rollback() {
        let mut gws = fleet(1);
        gws[0].services.clear();
        let plan = Plan {
            id: "r".into(),
            service: "svc".into(),
            version: "2".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            selector: Selector::default(),
            waves: vec![WaveSize::Count(1)],
            gates: vec![],
        };
        let mut r = Rollout::start(plan, &gws, 0).unwrap();
        r.tick(0);
        assert!(r.abort("test", 1));
        let out = r.tick(2);
        assert!(out.iter().any(|a| matches!(a, Action::Rollback { to: None, .. })), "{out:?}");
        let mut gone = report("gw-0", "x");
        gone.version = None;
        r.on_report(&gone, 3).unwrap();
        r.tick(4);
        assert!(matches!(r.state.phase, Phase::RolledBack(_)));
    }
}
