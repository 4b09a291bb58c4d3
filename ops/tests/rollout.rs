//! Rollouts over simulated gateways: in-memory reports, no network.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use outpost_ops::engine::SYSTEM;
use outpost_ops::model::{Better, GateVerdict, Gates, GatewayStatus, Health, KpiGate, Phase, Selector, WaveSize};
use outpost_ops::rollout::ReportError;
use outpost_ops::{
    Action, Clock, Engine, EngineError, FleetStore, Gateway, ManualClock, MemStore, Plan, RedbStore, Report,
};

const SVC: &str = "weight-loading";
const OLD: &str = "1.4.0";
const NEW: &str = "1.5.0";
const DIGEST: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn fleet(n: usize) -> Vec<Gateway> {
    (0..n)
        .map(|i| {
            let mut g = Gateway::new(format!("gw-{i:05}"), format!("site-{}", i % 7));
            g.tags.insert("loader".into());
            g.services.insert(SVC.into(), OLD.into());
            g.kpis.insert(SVC.into(), BTreeMap::from([("latency_ms".to_string(), 10.0)]));
            g.health = Health::Healthy;
            g
        })
        .collect()
}

fn plan(id: &str, waves: Vec<WaveSize>, gates: Gates) -> Plan {
    Plan {
        id: id.into(),
        service: SVC.into(),
        version: NEW.into(),
        digest: DIGEST.into(),
        selector: Selector { sites: vec![], tags: vec!["loader".into()] },
        waves,
        gates: vec![gates],
    }
}

fn four_waves() -> Vec<WaveSize> {
    vec![WaveSize::Count(1), WaveSize::Percent(10.0), WaveSize::Percent(50.0), WaveSize::Percent(100.0)]
}

fn report(gw: &str, version: Option<&str>) -> Report {
    Report {
        gateway: gw.into(),
        service: SVC.into(),
        version: version.map(str::to_string),
        health: Health::Healthy,
        crash_loop: false,
        apply_error: None,
        kpis: BTreeMap::from([("latency_ms".to_string(), 10.0)]),
    }
}

/// What simulated gateways did, to check afterwards.
#[derive(Default)]
struct Sim {
    installed: BTreeMap<String, Option<String>>,
    applied: Vec<String>,
    rolled_back: Vec<String>,
}

impl Sim {
    fn new(fleet: &[Gateway]) -> Sim {
        Sim {
            installed: fleet.iter().map(|g| (g.id.clone(), g.services.get(SVC).cloned())).collect(),
            ..Sim::default()
        }
    }

    /// Carries out actions; `behave` turns an Apply into the gateway's report.
    fn run(&mut self, actions: &[Action], behave: &dyn Fn(&str) -> Report) -> Vec<Report> {
        let mut out = Vec::new();
        for a in actions {
            match a {
                Action::Apply { gateway, version, .. } => {
                    self.applied.push(gateway.clone());
                    let r = behave(gateway);
                    assert_eq!(r.version.as_deref(), Some(version.as_str()));
                    self.installed.insert(gateway.clone(), r.version.clone());
                    out.push(r);
                }
                Action::Rollback { gateway, to, .. } => {
                    self.rolled_back.push(gateway.clone());
                    self.installed.insert(gateway.clone(), to.clone());
                    out.push(report(gateway, to.as_deref()));
                }
                Action::Notify { .. } => {}
            }
        }
        out
    }
}

/// Ticks, answers and moves the clock a second at a time until the rollout
/// is over or `max_secs` passed.
fn drive<S: FleetStore>(
    engine: &mut Engine<S, &ManualClock>,
    clock: &ManualClock,
    sim: &mut Sim,
    id: &str,
    behave: &dyn Fn(&str) -> Report,
    max_secs: u64,
) {
    for _ in 0..max_secs {
        let actions = engine.tick().unwrap();
        let reports = sim.run(&actions, behave);
        let batch: Vec<(&str, &Report)> = reports.iter().map(|r| (r.gateway.as_str(), r)).collect();
        for v in engine.on_reports_from(batch).unwrap() {
            v.unwrap();
        }
        if engine.rollout(id).is_none() {
            // Finished: one more tick must produce nothing.
            assert!(engine.tick().unwrap().is_empty());
            return;
        }
        clock.advance_secs(1);
    }
}

fn healthy(gw: &str) -> Report {
    report(gw, Some(NEW))
}

#[test]
fn thousand_gateways_in_four_waves_to_100_percent() {
    let gws = fleet(1000);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let mut engine = Engine::resume(store, &clock).unwrap();
    let gates = Gates {
        bake_secs: 60,
        kpis: vec![KpiGate { name: "latency_ms".into(), better: Better::Lower, margin: 0.1, max_regressed_ratio: 0.0 }],
        ..Gates::default()
    };
    let started = Instant::now();
    engine.start(plan("r1", four_waves(), gates), "alice").unwrap();
    let sizes: Vec<usize> = engine.rollout("r1").unwrap().state.waves.iter().map(|w| w.targets.len()).collect();
    assert_eq!(sizes, vec![1, 99, 400, 500]);
    let mut sim = Sim::new(&gws);
    drive(&mut engine, &clock, &mut sim, "r1", &healthy, 10_000);
    let elapsed = started.elapsed();
    println!(
        "pure engine (in-memory store): 1,000 gateways to 100% in 4 waves in {:.1} ms ({:.0} gateways/s; simulated time {} s with 60 s bake per wave)",
        elapsed.as_secs_f64() * 1e3,
        1000.0 / elapsed.as_secs_f64(),
        (clock.now_ms() - 1_700_000_000_000) / 1000
    );
    let state = engine.state("r1").unwrap().unwrap();
    assert_eq!(state.phase, Phase::Succeeded);
    assert!(state.gateways.values().all(|g| g.status == GatewayStatus::Succeeded));
    assert!(state.waves.iter().all(|w| w.verdict == Some(GateVerdict::Passed)));
    // Every gateway asked exactly once, and runs the new version.
    let unique: BTreeSet<&String> = sim.applied.iter().collect();
    assert_eq!(sim.applied.len(), 1000);
    assert_eq!(unique.len(), 1000);
    assert!(sim.installed.values().all(|v| v.as_deref() == Some(NEW)));
    assert!(sim.rolled_back.is_empty());
    // The fleet record follows the reports.
    assert!(engine.store().gateways().unwrap().iter().all(|g| g.services[SVC] == NEW));
    let audit = engine.store().audit().unwrap();
    assert_eq!(audit[0].actor, "alice");
    assert_eq!(audit[0].action, "start");
    assert_eq!(audit.iter().filter(|e| e.action == "wave_passed").count(), 4);
    assert!(audit.iter().any(|e| e.action == "succeeded" && e.actor == SYSTEM));
}

#[test]
fn failures_in_wave_two_abort_within_it_and_roll_back_waves_one_and_two() {
    let gws = fleet(1000);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    let gates = Gates { min_success_ratio: 0.95, bake_secs: 30, ..Gates::default() };
    engine.start(plan("r2", four_waves(), gates), "bob").unwrap();
    let state = engine.rollout("r2").unwrap().state.clone();
    // Ten gateways of wave 2 crash-loop on the new version.
    let bad: BTreeSet<String> = state.waves[1].targets.iter().take(10).cloned().collect();
    let later: BTreeSet<String> = state.waves[2..].iter().flat_map(|w| w.targets.clone()).collect();
    let behave = |gw: &str| {
        let mut r = report(gw, Some(NEW));
        if bad.contains(gw) {
            r.crash_loop = true;
            r.health = Health::Unhealthy;
        }
        r
    };
    let mut sim = Sim::new(&gws);
    drive(&mut engine, &clock, &mut sim, "r2", &behave, 10_000);
    let state = engine.state("r2").unwrap().unwrap();
    let Phase::RolledBack(reason) = &state.phase else { panic!("phase {:?}", state.phase) };
    assert!(reason.contains("wave 2"), "{reason}");
    assert!(reason.contains("crash loop"), "{reason}");
    assert_eq!(state.current_wave, 1, "aborted within wave 2");
    assert_eq!(state.waves[0].verdict, Some(GateVerdict::Passed));
    assert!(matches!(state.waves[1].verdict, Some(GateVerdict::Failed(_))));
    // No gateway of waves 3-4 was asked; every gateway of waves 1-2 is back.
    assert!(sim.applied.iter().all(|g| !later.contains(g)));
    assert_eq!(sim.applied.len(), 100);
    let touched: BTreeSet<&String> = sim.applied.iter().collect();
    let back: BTreeSet<&String> = sim.rolled_back.iter().collect();
    assert_eq!(touched, back);
    assert_eq!(sim.rolled_back.len(), 100, "each rolled back once");
    for (id, g) in &state.gateways {
        let want = if later.contains(id) { GatewayStatus::Pending } else { GatewayStatus::RolledBack };
        assert_eq!(g.status, want, "{id}");
    }
    // Nothing half-installed: every simulated gateway runs the old version.
    assert!(sim.installed.values().all(|v| v.as_deref() == Some(OLD)));
    let audit = engine.store().audit().unwrap();
    assert!(audit.iter().any(|e| e.action == "wave_failed"));
    assert!(audit.iter().any(|e| e.action == "rolled_back"));
}

#[test]
fn a_kpi_worse_than_the_gateways_own_baseline_fails_the_wave() {
    let mut gws = fleet(20);
    // Baselines differ per gateway: each is judged against its own.
    for (i, g) in gws.iter_mut().enumerate() {
        g.kpis.insert(SVC.into(), BTreeMap::from([("latency_ms".to_string(), 10.0 + i as f64)]));
    }
    let baseline: BTreeMap<String, f64> = gws.iter().map(|g| (g.id.clone(), g.kpis[SVC]["latency_ms"])).collect();
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    let gates = Gates {
        bake_secs: 10,
        kpis: vec![KpiGate { name: "latency_ms".into(), better: Better::Lower, margin: 0.1, max_regressed_ratio: 0.0 }],
        ..Gates::default()
    };
    engine.start(plan("r3", vec![WaveSize::Count(5), WaveSize::Percent(100.0)], gates), "carol").unwrap();
    let victim = engine.rollout("r3").unwrap().state.waves[0].targets[2].clone();
    let behave = |gw: &str| {
        let mut r = report(gw, Some(NEW));
        let base = baseline[gw];
        // Within the margin everywhere (+5 %), except 30 % worse on one.
        let v = if gw == victim { base * 1.3 } else { base * 1.05 };
        r.kpis.insert("latency_ms".into(), v);
        r
    };
    let mut sim = Sim::new(&gws);
    drive(&mut engine, &clock, &mut sim, "r3", &behave, 1000);
    let state = engine.state("r3").unwrap().unwrap();
    let Some(GateVerdict::Failed(reasons)) = &state.waves[0].verdict else { panic!("{:?}", state.waves[0]) };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("latency_ms") && reasons[0].contains(&victim), "{reasons:?}");
    assert!(matches!(state.phase, Phase::RolledBack(_)));
    assert_eq!(sim.applied.len(), 5);
    assert!(sim.installed.values().all(|v| v.as_deref() == Some(OLD)));
}

#[test]
fn higher_is_better_kpis_and_the_ratio_of_regressions_allowed() {
    let gws = fleet(10);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    let gates = Gates {
        kpis: vec![KpiGate { name: "cycles".into(), better: Better::Higher, margin: 0.2, max_regressed_ratio: 0.1 }],
        ..Gates::default()
    };
    engine.start(plan("r4", vec![WaveSize::Percent(100.0)], gates), "dan").unwrap();
    // Baselines arrive in reports before the wave applies (here: before the first tick).
    for g in &gws {
        let mut r = report(&g.id, Some(OLD));
        r.kpis = BTreeMap::from([("cycles".to_string(), 100.0)]);
        engine.on_report(&g.id, &r).unwrap();
    }
    let behave = |gw: &str| {
        let mut r = report(gw, Some(NEW));
        // One gateway of ten at 50 (worse than 100 - 20 %): 10 % regressed, allowed.
        let v = if gw == "gw-00003" { 50.0 } else { 85.0 };
        r.kpis = BTreeMap::from([("cycles".to_string(), v)]);
        r
    };
    let mut sim = Sim::new(&gws);
    drive(&mut engine, &clock, &mut sim, "r4", &behave, 1000);
    assert_eq!(engine.state("r4").unwrap().unwrap().phase, Phase::Succeeded);
}

#[test]
fn pause_holds_the_next_wave_and_resume_releases_it() {
    let gws = fleet(100);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    let gates = Gates { bake_secs: 5, ..Gates::default() };
    engine.start(plan("r5", four_waves(), gates), "erin").unwrap();
    let mut sim = Sim::new(&gws);
    let actions = engine.tick().unwrap();
    let reports = sim.run(&actions, &healthy);
    for r in &reports {
        engine.on_report(&r.gateway, r).unwrap();
    }
    assert_eq!(sim.applied.len(), 1);
    engine.pause("r5", "erin").unwrap();
    assert!(matches!(engine.pause("r5", "erin"), Err(EngineError::WrongPhase { .. })));
    for _ in 0..60 {
        clock.advance_secs(1);
        let actions = engine.tick().unwrap();
        assert!(actions.iter().all(|a| !matches!(a, Action::Apply { .. })), "{actions:?}");
    }
    assert_eq!(engine.rollout("r5").unwrap().state.current_wave, 0, "the gate waits while paused");
    engine.resume_rollout("r5", "frank").unwrap();
    let actions = engine.tick().unwrap();
    let applies = actions.iter().filter(|a| matches!(a, Action::Apply { .. })).count();
    assert_eq!(applies, 9, "wave 2 (10 % of 100, one already done) starts at once: bake time was served");
    sim.run(&actions, &healthy);
    let audit = engine.store().audit().unwrap();
    let who: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.action.starts_with("pause") || e.action.starts_with("resume"))
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(who, vec![("pause", "erin"), ("resume", "frank")]);
}

#[test]
fn manual_abort_rolls_back_what_was_applied() {
    let gws = fleet(50);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    engine.start(plan("r6", four_waves(), Gates { bake_secs: 100, ..Gates::default() }), "gus").unwrap();
    let mut sim = Sim::new(&gws);
    let mut reports = Vec::new();
    for _ in 0..3 {
        for r in &reports {
            let r: &Report = r;
            engine.on_report(&r.gateway, r).unwrap();
        }
        let actions = engine.tick().unwrap();
        reports = sim.run(&actions, &healthy);
        clock.advance_secs(101);
    }
    engine.abort("r6", "gus", "customer asked").unwrap();
    drive(&mut engine, &clock, &mut sim, "r6", &healthy, 100);
    let state = engine.state("r6").unwrap().unwrap();
    assert!(matches!(&state.phase, Phase::RolledBack(r) if r.contains("gus") && r.contains("customer asked")));
    assert!(!sim.applied.is_empty());
    assert_eq!(sim.applied.iter().collect::<BTreeSet<_>>(), sim.rolled_back.iter().collect::<BTreeSet<_>>());
    assert!(sim.installed.values().all(|v| v.as_deref() == Some(OLD)));
}

#[test]
fn a_bad_plan_is_refused_with_every_problem_named() {
    let gws = fleet(10);
    let mut p = plan(
        "",
        vec![WaveSize::Count(0), WaveSize::Percent(150.0), WaveSize::Percent(50.0), WaveSize::Percent(40.0)],
        Gates { min_success_ratio: 1.5, ..Gates::default() },
    );
    p.digest = "md5:abc".into();
    p.selector = Selector { sites: vec!["nowhere".into()], tags: vec![] };
    p.gates.push(Gates::default());
    let err = p.validate(&gws).unwrap_err();
    let text = err.to_string();
    for needle in [
        "id is empty",
        "digest `md5:abc`",
        "matches no gateway",
        "wave 1: size 0",
        "wave 2: 150% is outside",
        "wave 3 (50%) does not grow past wave 2 (150%)",
        "wave 4 (40%) does not grow past wave 3 (50%)",
        "gates has 2 entries for 4 waves",
        "min_success_ratio 1.5",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert_eq!(err.0.len(), 9, "{text}");
    // The engine refuses it and records nothing.
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    assert!(matches!(engine.start(p, "hal"), Err(EngineError::Plan(_))));
    assert!(engine.store().rollouts().unwrap().is_empty());
    assert!(engine.store().audit().unwrap().is_empty());

    // Unknown fields and malformed waves are refused when read.
    let json = format!(
        r#"{{"id":"r","service":"{SVC}","version":"{NEW}","digest":"{DIGEST}","waves":[1,"10%"],"gates":[{{"bake":5}}]}}"#
    );
    let e = Plan::from_json(&json).unwrap_err().to_string();
    assert!(e.contains("unknown field `bake`"), "{e}");
    let json = format!(r#"{{"id":"r","service":"{SVC}","version":"{NEW}","digest":"{DIGEST}","waves":["ten"]}}"#);
    let e = Plan::from_json(&json).unwrap_err().to_string();
    assert!(e.contains("ten"), "{e}");
    let json = format!(
        r#"{{"id":"r","service":"{SVC}","version":"{NEW}","digest":"{DIGEST}","waves":[1,"10%","50%","100%"],"gates":[{{"bake_secs":60,"kpis":[{{"name":"latency_ms","better":"lower","margin":0.05}}]}}]}}"#
    );
    let ok = Plan::from_json(&json).unwrap();
    assert_eq!(ok.waves, four_waves());
    ok.validate(&gws).unwrap();
}

#[test]
fn garbage_and_impersonating_reports_are_refused_and_change_nothing() {
    let mut gws = fleet(20);
    gws.push(Gateway::new("gw-other", "elsewhere")); // not selected: no `loader` tag
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    engine.start(plan("r7", vec![WaveSize::Count(2), WaveSize::Percent(100.0)], Gates::default()), "ivy").unwrap();
    engine.tick().unwrap();
    let state = engine.state("r7").unwrap().unwrap();
    let applying = state.waves[0].targets[0].clone();
    let pending = state.waves[1].targets[0].clone();
    let fleet_before = engine.store().gateways().unwrap();

    type Case<'a> = (&'a str, Report, fn(&EngineError) -> bool);
    let cases: Vec<Case> = vec![
        ("gw-other", report("gw-other", Some(NEW)), |e| {
            matches!(e, EngineError::Report(ReportError::NotInRollout { .. }))
        }),
        (applying.as_str(), report(&applying, Some("9.9.9")), |e| {
            matches!(e, EngineError::Report(ReportError::UnexpectedVersion { .. }))
        }),
        (pending.as_str(), report(&pending, Some(NEW)), |e| {
            matches!(e, EngineError::Report(ReportError::UnexpectedVersion { .. }))
        }),
        (pending.as_str(), report(&applying, Some(NEW)), |e| {
            matches!(e, EngineError::Report(ReportError::Impersonation { .. }))
        }),
        ("gw-ghost", report("gw-ghost", Some(NEW)), |e| {
            matches!(e, EngineError::Report(ReportError::UnknownGateway(_)))
        }),
        (
            applying.as_str(),
            {
                let mut r = report(&applying, Some(NEW));
                r.kpis.insert("latency_ms".into(), f64::NAN);
                r
            },
            |e| matches!(e, EngineError::Report(ReportError::BadKpi { .. })),
        ),
    ];
    for (sender, r, is) in cases {
        let e = engine.on_report(sender, &r).unwrap_err();
        assert!(is(&e), "{sender}: {e}");
        assert!(!e.to_string().is_empty());
        assert_eq!(engine.state("r7").unwrap().unwrap(), state, "{sender}: {e}");
        assert_eq!(engine.store().gateways().unwrap(), fleet_before, "{sender}: {e}");
    }
    let e = engine.on_report("gw-other", &report("gw-other", Some(NEW))).unwrap_err().to_string();
    assert_eq!(e, "gateway `gw-other` is not part of rollout `r7`");
    // A gateway outside the rollout may still report what it runs.
    engine.on_report("gw-other", &report("gw-other", None)).unwrap();
}

#[test]
fn replaying_a_report_does_not_duplicate_anything() {
    let gws = fleet(10);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    engine
        .start(
            plan("r8", vec![WaveSize::Count(2), WaveSize::Percent(100.0)], Gates { bake_secs: 10, ..Gates::default() }),
            "jo",
        )
        .unwrap();
    let first = engine.tick().unwrap();
    assert_eq!(first.iter().filter(|a| matches!(a, Action::Apply { .. })).count(), 2);
    let gw = engine.state("r8").unwrap().unwrap().waves[0].targets[0].clone();
    engine.on_report(&gw, &healthy(&gw)).unwrap();
    let once = engine.state("r8").unwrap().unwrap();
    engine.on_report(&gw, &healthy(&gw)).unwrap();
    assert_eq!(engine.state("r8").unwrap().unwrap(), once, "same state, same revision");
    assert!(engine.tick().unwrap().is_empty());
    assert!(engine.tick().unwrap().is_empty());
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("outpost-ops-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("fleet.redb")
}

#[test]
fn a_rollout_survives_a_restart_of_the_engine_and_applies_nobody_twice() {
    let path = temp_path("resume");
    let gws = fleet(60);
    let clock = ManualClock::new(0);
    let mut sim = Sim::new(&gws);
    let gates = Gates { bake_secs: 5, ..Gates::default() };
    let half_answered;
    {
        let store = RedbStore::open(&path).unwrap();
        store.put_gateways(&gws).unwrap();
        let mut engine = Engine::resume(store, &clock).unwrap();
        engine.start(plan("r9", four_waves(), gates), "kim").unwrap();
        // Run until wave 3 is applying, and answer only half of it.
        loop {
            let actions = engine.tick().unwrap();
            let reports = sim.run(&actions, &healthy);
            let wave3 = engine.rollout("r9").unwrap().state.current_wave == 2;
            let take = if wave3 { reports.len() / 2 } else { reports.len() };
            for r in &reports[..take] {
                engine.on_report(&r.gateway, r).unwrap();
            }
            if wave3 {
                half_answered = reports[take..].to_vec();
                break;
            }
            clock.advance_secs(1);
        }
        assert!(!half_answered.is_empty());
    } // the engine and the store are dropped: a restart
    let store = RedbStore::open(&path).unwrap();
    let mut engine = Engine::resume(store, &clock).unwrap();
    let state = engine.rollout("r9").expect("resumed").state.clone();
    assert_eq!(state.current_wave, 2);
    // The late answers arrive after the restart.
    for r in &half_answered {
        engine.on_report(&r.gateway, r).unwrap();
    }
    drive(&mut engine, &clock, &mut sim, "r9", &healthy, 1000);
    let state = engine.state("r9").unwrap().unwrap();
    assert_eq!(state.phase, Phase::Succeeded);
    let unique: BTreeSet<&String> = sim.applied.iter().collect();
    assert_eq!(sim.applied.len(), 60, "nobody applied twice");
    assert_eq!(unique.len(), 60);
    assert!(engine.store().audit().unwrap().iter().any(|e| e.action == "succeeded"));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn wave_membership_is_deterministic_whatever_the_fleet_order() {
    let gws = fleet(200);
    let mut shuffled = gws.clone();
    shuffled.reverse();
    shuffled.rotate_left(37);
    let p = plan("r10", four_waves(), Gates::default());
    let a = outpost_ops::Rollout::start(p.clone(), &gws, 0).unwrap();
    let b = outpost_ops::Rollout::start(p, &shuffled, 5).unwrap();
    assert_eq!(a.state.waves, b.state.waves);
    // Not simply the first ids: the order is a stable hash of plan and gateway.
    assert_ne!(a.state.waves[0].targets[0], "gw-00000");
}

#[test]
fn one_rollout_per_service_at_a_time() {
    let gws = fleet(5);
    let store = MemStore::default();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    engine.start(plan("a", four_waves(), Gates::default()), "x").unwrap();
    assert!(matches!(engine.start(plan("a", four_waves(), Gates::default()), "x"), Err(EngineError::Exists(_))));
    assert!(matches!(engine.start(plan("b", four_waves(), Gates::default()), "x"), Err(EngineError::Busy { .. })));
}

/// The same rollout with every transition written to redb (one transaction
/// per tick and per batch of reports), to see what persistence costs.
#[test]
fn thousand_gateways_with_every_transition_in_redb() {
    let path = temp_path("thousand");
    let gws = fleet(1000);
    let store = RedbStore::open(&path).unwrap();
    store.put_gateways(&gws).unwrap();
    let clock = ManualClock::new(0);
    let mut engine = Engine::resume(store, &clock).unwrap();
    let started = Instant::now();
    engine.start(plan("r11", four_waves(), Gates::default()), "lee").unwrap();
    let mut sim = Sim::new(&gws);
    drive(&mut engine, &clock, &mut sim, "r11", &healthy, 1000);
    let elapsed = started.elapsed();
    let state = engine.state("r11").unwrap().unwrap();
    assert_eq!(state.phase, Phase::Succeeded);
    println!(
        "engine over redb: 1,000 gateways to 100% in 4 waves (no bake) in {:.1} ms, {} rollout revisions written",
        elapsed.as_secs_f64() * 1e3,
        state.revision
    );
    assert_eq!(sim.applied.len(), 1000);
    drop(engine);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
