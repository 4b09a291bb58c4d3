//! The engine: rollouts ([`Rollout`]) bound to a [`FleetStore`] and a
//! [`Clock`]. Every transition is persisted before its actions are handed
//! out, so an engine rebuilt with [`Engine::resume`] after a restart carries
//! on exactly where the last one stopped and never repeats an action.

use std::collections::BTreeMap;

use crate::model::{AuditEntry, Plan, PlanErrors, Report, RolloutState};
use crate::rollout::{Action, Clock, Notice, ReportError, Rollout};
use crate::store::{FleetStore, StoreError};

/// The actor named in the audit for decisions the engine takes itself.
pub const SYSTEM: &str = "outpost-ops";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Plan(#[from] PlanErrors),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rollout `{0}` already exists")]
    Exists(String),
    #[error("rollout `{running}` is still in progress for service `{service}`")]
    Busy { running: String, service: String },
    #[error("no active rollout `{0}`")]
    NoSuchRollout(String),
    #[error("rollout `{id}` cannot {verb} now (it is {phase})")]
    WrongPhase { id: String, verb: &'static str, phase: String },
}

pub struct Engine<S: FleetStore, C: Clock> {
    store: S,
    clock: C,
    active: BTreeMap<String, Rollout>,
}

impl<S: FleetStore, C: Clock> Engine<S, C> {
    /// An engine over `store`, picking up every rollout still in progress.
    pub fn resume(store: S, clock: C) -> Result<Self, StoreError> {
        let active = store
            .rollouts()?
            .into_iter()
            .filter(|r| r.phase.is_active())
            .map(|r| (r.plan.id.clone(), Rollout::resume(r)))
            .collect();
        Ok(Engine { store, clock, active })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn rollout(&self, id: &str) -> Option<&Rollout> {
        self.active.get(id)
    }

    /// The rollouts still in progress.
    pub fn active(&self) -> impl Iterator<Item = &Rollout> {
        self.active.values()
    }

    /// Validates and records a plan; the first wave starts at the next tick.
    pub fn start(&mut self, plan: Plan, actor: &str) -> Result<(), EngineError> {
        if self.active.contains_key(&plan.id) || self.store.rollout(&plan.id)?.is_some() {
            return Err(EngineError::Exists(plan.id));
        }
        if let Some(r) = self.active.values().find(|r| r.state.plan.service == plan.service) {
            return Err(EngineError::Busy { running: r.id().to_string(), service: plan.service });
        }
        let fleet = self.store.gateways()?;
        let now = self.clock.now_ms();
        let mut r = Rollout::start(plan, &fleet, now)?;
        let detail = format!(
            "{} {} to {} gateways in waves of {:?}",
            r.state.plan.service,
            r.state.plan.version,
            r.state.gateways.len(),
            r.state.waves.iter().map(|w| w.targets.len()).collect::<Vec<_>>()
        );
        let audit = vec![self.entry(actor, r.id(), "start", detail)];
        Self::persist(&self.store, &mut r, audit)?;
        self.active.insert(r.id().to_string(), r);
        Ok(())
    }

    fn entry(&self, actor: &str, rollout: &str, action: &str, detail: String) -> AuditEntry {
        AuditEntry {
            at_ms: self.clock.now_ms(),
            actor: actor.to_string(),
            rollout: Some(rollout.to_string()),
            action: action.to_string(),
            detail,
        }
    }

    /// Bumps the revision and writes; on failure the in-memory rollout goes
    /// back to what the store holds, so the transition is retried later.
    fn persist(store: &S, r: &mut Rollout, audit: Vec<AuditEntry>) -> Result<(), StoreError> {
        r.state.revision += 1;
        if let Err(e) = store.put_rollout(&r.state, &audit) {
            r.state.revision -= 1;
            if let Ok(Some(stored)) = store.rollout(r.id()) {
                *r = Rollout::resume(stored);
            }
            return Err(e);
        }
        Ok(())
    }

    /// A report from `sender` (the identity the transport authenticated).
    pub fn on_report(&mut self, sender: &str, report: &Report) -> Result<(), EngineError> {
        let mut errs = self.on_reports(sender, std::slice::from_ref(report))?;
        match errs.pop() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// A batch of reports from one sender, persisted in one write. Each report
    /// gets its own verdict; refused ones change nothing.
    pub fn on_reports(&mut self, sender: &str, reports: &[Report]) -> Result<Vec<Result<(), ReportError>>, StoreError> {
        self.on_reports_from(reports.iter().map(|r| (sender, r)))
    }

    /// Reports from many senders, persisted once per rollout touched.
    pub fn on_reports_from<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a Report)>,
    ) -> Result<Vec<Result<(), ReportError>>, StoreError> {
        let now = self.clock.now_ms();
        let mut verdicts = Vec::new();
        let mut touched_gateways = BTreeMap::new();
        let mut touched_rollouts = std::collections::BTreeSet::new();
        for (sender, report) in reports {
            let v = self.one_report(sender, report, now, &mut touched_gateways, &mut touched_rollouts);
            verdicts.push(v);
        }
        let gws: Vec<_> = touched_gateways.into_values().collect();
        if !gws.is_empty() {
            self.store.put_gateways(&gws)?;
        }
        for id in touched_rollouts {
            if let Some(r) = self.active.get_mut(&id) {
                Self::persist(&self.store, r, Vec::new())?;
            }
        }
        Ok(verdicts)
    }

    fn one_report(
        &mut self,
        sender: &str,
        report: &Report,
        now: u64,
        gateways: &mut BTreeMap<String, crate::model::Gateway>,
        rollouts: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), ReportError> {
        if report.gateway != sender {
            return Err(ReportError::Impersonation { sender: sender.to_string(), claimed: report.gateway.clone() });
        }
        let mut gw = match gateways.remove(sender) {
            Some(g) => g,
            None => self
                .store
                .gateway(sender)
                .ok()
                .flatten()
                .ok_or_else(|| ReportError::UnknownGateway(sender.to_string()))?,
        };
        let rollout = self.active.values_mut().find(|r| r.state.plan.service == report.service);
        if let Some(r) = rollout {
            match r.check_report(report) {
                Ok(()) => {
                    let before = r.state.gateways.get(sender).cloned();
                    r.on_report(report, now)?;
                    if r.state.gateways.get(sender) != before.as_ref() {
                        rollouts.insert(r.id().to_string());
                    }
                }
                // Outside the rollout, a gateway may report what it already
                // runs, but not the version being rolled out.
                Err(ReportError::NotInRollout { .. }) if report.version.as_ref() != Some(&r.state.plan.version) => {}
                Err(e) => {
                    gateways.insert(sender.to_string(), gw);
                    return Err(e);
                }
            }
        }
        match &report.version {
            Some(v) => gw.services.insert(report.service.clone(), v.clone()),
            None => gw.services.remove(&report.service),
        };
        gw.health = report.health;
        if !report.kpis.is_empty() {
            gw.kpis.insert(report.service.clone(), report.kpis.clone());
        }
        gw.last_seen_ms = now;
        gateways.insert(sender.to_string(), gw);
        Ok(())
    }

    /// Advances every rollout to the clock's time; returns the actions to
    /// carry out, already persisted.
    pub fn tick(&mut self) -> Result<Vec<Action>, StoreError> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let ids: Vec<String> = self.active.keys().cloned().collect();
        for id in ids {
            let r = self.active.get_mut(&id).expect("listed");
            let before = r.state.clone();
            let actions = r.tick(now);
            if actions.is_empty() && r.state == before {
                continue;
            }
            let audit = actions
                .iter()
                .filter_map(|a| match a {
                    // The operator's own commands are audited under their name.
                    Action::Notify { notice: Notice::Paused | Notice::Resumed, .. } => None,
                    Action::Notify { notice, .. } => Some(AuditEntry {
                        at_ms: now,
                        actor: SYSTEM.to_string(),
                        rollout: Some(id.clone()),
                        action: notice_name(notice).to_string(),
                        detail: format!("{notice:?}"),
                    }),
                    _ => None,
                })
                .collect();
            Self::persist(&self.store, r, audit)?;
            if !r.state.phase.is_active() {
                self.active.remove(&id);
            }
            out.extend(actions);
        }
        Ok(out)
    }

    fn command(
        &mut self,
        id: &str,
        actor: &str,
        verb: &'static str,
        f: impl FnOnce(&mut Rollout, u64) -> bool,
    ) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        let entry = self.entry(actor, id, verb, String::new());
        let r = self.active.get_mut(id).ok_or_else(|| EngineError::NoSuchRollout(id.to_string()))?;
        if !f(r, now) {
            return Err(EngineError::WrongPhase { id: id.to_string(), verb, phase: format!("{:?}", r.state.phase) });
        }
        Self::persist(&self.store, r, vec![entry])?;
        Ok(())
    }

    /// No further gateway is asked to install until [`resume_rollout`](Self::resume_rollout).
    /// A failing wave still aborts while paused.
    pub fn pause(&mut self, id: &str, actor: &str) -> Result<(), EngineError> {
        self.command(id, actor, "pause", |r, _| r.pause())
    }

    pub fn resume_rollout(&mut self, id: &str, actor: &str) -> Result<(), EngineError> {
        self.command(id, actor, "resume", |r, _| r.resume_running())
    }

    /// Stops the rollout and rolls back every gateway already asked; the
    /// rollback actions come out of the next [`tick`](Self::tick).
    pub fn abort(&mut self, id: &str, actor: &str, reason: &str) -> Result<(), EngineError> {
        let reason = format!("aborted by {actor}: {reason}");
        self.command(id, actor, "abort", |r, now| r.abort(&reason, now))
    }

    /// A rollout's state, active or finished.
    pub fn state(&self, id: &str) -> Result<Option<RolloutState>, StoreError> {
        match self.active.get(id) {
            Some(r) => Ok(Some(r.state.clone())),
            None => self.store.rollout(id),
        }
    }
}

fn notice_name(n: &Notice) -> &'static str {
    match n {
        Notice::WaveStarted { .. } => "wave_started",
        Notice::WavePassed { .. } => "wave_passed",
        Notice::WaveFailed { .. } => "wave_failed",
        Notice::Paused => "paused",
        Notice::Resumed => "resumed",
        Notice::Succeeded => "succeeded",
        Notice::Aborted { .. } => "aborted",
        Notice::RolledBack => "rolled_back",
    }
}
