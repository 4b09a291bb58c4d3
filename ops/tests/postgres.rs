//! The PostgreSQL store against a server this test starts (initdb + pg_ctl
//! on a free port in a temp folder): the store contract, and two engines
//! sharing one rollout where the revision check lets only one of them act;
//! the leader lease on two connections.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use outpost_ops::model::{AuditEntry, Gates, Health, Selector, WaveSize};
use outpost_ops::store::StoreError;
use outpost_ops::{Action, Engine, FleetStore, Gateway, Lease, ManualClock, PackageRecord, PgStore, Plan, Report};

use support::postgres::Postgres;

fn fleet(n: usize) -> Vec<Gateway> {
    (0..n)
        .map(|i| {
            let mut g = Gateway::new(format!("gw-{i:02}"), "site");
            g.services.insert("svc".into(), "1".into());
            g.health = Health::Healthy;
            g
        })
        .collect()
}

fn plan() -> Plan {
    Plan {
        id: "shared".into(),
        service: "svc".into(),
        version: "2".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        selector: Selector::default(),
        waves: vec![WaveSize::Count(2), WaveSize::Percent(100.0)],
        gates: vec![Gates::default()],
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

fn report(gw: &str, v: &str) -> Report {
    Report {
        gateway: gw.into(),
        service: "svc".into(),
        version: Some(v.into()),
        health: Health::Healthy,
        crash_loop: false,
        apply_error: None,
        kpis: BTreeMap::new(),
    }
}

#[test]
fn postgres_store_keeps_the_contract_and_two_engines_never_both_act() {
    let pg = Postgres::start();
    let a_store = PgStore::connect(&pg.params()).expect("connect");
    let b_store = PgStore::connect(&pg.params()).expect("second connection");

    // The store contract: records round-trip, revisions are checked.
    a_store.put_gateways(&fleet(10)).unwrap();
    assert_eq!(b_store.gateways().unwrap().len(), 10);
    assert_eq!(b_store.gateway("gw-03").unwrap().unwrap().services["svc"], "1");
    assert_eq!(b_store.gateway("nope").unwrap(), None);
    let pkg = PackageRecord {
        service: "svc".into(),
        version: "2".into(),
        digest: "ab".repeat(32),
        size: 5,
        signer: "acme".into(),
        added_ms: 1,
    };
    a_store.put_package(&pkg).unwrap();
    assert_eq!(b_store.packages().unwrap(), vec![pkg]);
    let d =
        outpost_fleet::DesiredState { gateway: "gw-01".into(), revision: 4, issued_ms: 9, services: BTreeMap::new() };
    a_store.put_desired(std::slice::from_ref(&d)).unwrap();
    assert_eq!(b_store.desired_states().unwrap(), vec![d]);
    let entry =
        AuditEntry { at_ms: 1, actor: "me".into(), rollout: None, action: "note".into(), detail: String::new() };
    a_store.append_audit(&entry).unwrap();
    assert_eq!(b_store.audit().unwrap(), vec![entry]);

    // Two engines, one rollout.
    let clock = ManualClock::new(1_000);
    let mut a = Engine::resume(a_store, &clock).unwrap();
    a.start(plan(), "alice").unwrap();
    let mut b = Engine::resume(b_store, &clock).unwrap();
    assert!(b.rollout("shared").is_some(), "B sees the rollout A started");
    let first = applies(&a.tick().unwrap());
    assert_eq!(first.len(), 2, "wave 1 is two gateways");
    // B, still at the revision before, loses the race and hands nothing out.
    match b.tick() {
        Err(StoreError::Conflict { expected: 1, found: 2, .. }) => {}
        other => panic!("B must hit the revision check, got {other:?}"),
    }
    // Reloaded, B knows wave 1 was asked: it does not ask again.
    assert!(applies(&b.tick().unwrap()).is_empty());
    // B takes the reports; A, now behind, cannot act on a stale state.
    let reports: Vec<Report> = first.iter().map(|g| report(g, "2")).collect();
    for v in b.on_reports_from(reports.iter().map(|r| (r.gateway.as_str(), r))).unwrap() {
        v.unwrap();
    }
    let second = applies(&b.tick().unwrap());
    assert_eq!(second.len(), 8, "wave 2: the other eight");
    // A, behind, takes the same reports: its write loses and it reloads.
    let again = a.on_reports_from(reports.iter().map(|r| (r.gateway.as_str(), r)));
    assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
    assert!(applies(&a.tick().unwrap()).is_empty(), "reloaded A asks nobody again");
    let all: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(all.len(), 10, "each gateway asked exactly once");
    let audit: Vec<String> = b.store().audit().unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(audit.iter().filter(|a| *a == "wave_started").count(), 2, "{audit:?}");
}

#[test]
fn postgres_lease_elects_one_holder_across_connections() {
    let pg = Postgres::start();
    let a = PgStore::connect(&pg.params()).expect("connect");
    let b = PgStore::connect(&pg.params()).expect("second connection");
    assert_eq!(a.try_lease("core", "a", 1_000, 10_000).unwrap(), Lease { holder: "a".into(), expires_ms: 11_000 });
    // B is refused while A's lease runs, and told who holds it.
    assert_eq!(b.try_lease("core", "b", 1_000, 10_999).unwrap(), Lease { holder: "a".into(), expires_ms: 11_000 });
    // A renews; B still cannot take it before the new expiry.
    assert_eq!(a.try_lease("core", "a", 1_000, 10_900).unwrap().expires_ms, 11_900);
    assert_eq!(b.try_lease("core", "b", 1_000, 11_500).unwrap().holder, "a");
    // Expired: B takes it, and A's late renewal is refused.
    assert_eq!(b.try_lease("core", "b", 1_000, 11_900).unwrap(), Lease { holder: "b".into(), expires_ms: 12_900 });
    assert_eq!(a.try_lease("core", "a", 1_000, 12_000).unwrap().holder, "b");
    // Released by its holder (only): free at once.
    a.release_lease("core", "a").unwrap();
    assert_eq!(a.try_lease("core", "a", 1_000, 12_100).unwrap().holder, "b");
    b.release_lease("core", "b").unwrap();
    assert_eq!(a.try_lease("core", "a", 1_000, 12_100).unwrap().holder, "a");

    // Racing for a free lease from 8 connections at once: exactly one wins.
    let stores: Vec<PgStore> = (0..8).map(|_| PgStore::connect(&pg.params()).unwrap()).collect();
    let barrier = std::sync::Barrier::new(stores.len());
    let winners: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let me = format!("r{i}");
                    let l = st.try_lease("race", &me, 60_000, 20_000).unwrap();
                    (l.holder == me).then_some(me)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
}
