//! Fleet bench: the operations center and N simulated gateways (each its own
//! MQTT client with its own credentials) against one Mosquitto with a
//! password file and the fleet ACL, all on this machine.
//!
//! For each fleet size: a rollout in waves [1, 10%, 50%, 100%] without bake
//! (time to 100 %, gateways per second, broker messages per gateway), then a
//! rollout with failures injected in wave 2 that must abort in wave 2 and
//! roll waves 1-2 back (time to rolled back).
//!
//! `cargo bench -p outpost-ops --bench fleet [-- SIZES [RUNS]]`, e.g.
//! `-- 1000,10000 3`. Defaults: sizes 1000,10000, 3 runs (median printed).
//! `OUTPOST_FLEET_BENCH_MEMSTORE=1` runs the core over the in-memory store
//! instead of redb, to see what storage costs.

#[path = "../tests/support/fixture.rs"]
mod fixture;
#[path = "../tests/support/mosquitto.rs"]
mod mosquitto;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fixture::{World, SVC};
use outpost_ops::model::{Gates, GatewayStatus, Phase, RolloutState, WaveSize};
use outpost_ops::sim::Outcome;
use outpost_ops::{FleetStore, Rollout};

const V1: &str = "1.4.0";
const V2: &str = "1.5.0";
const V3: &str = "1.6.0";

#[derive(Debug, Clone, Copy)]
struct Figures {
    /// From the rollout's creation to the last gateway of the last wave
    /// reporting the new version healthy (engine clock).
    to_100_ms: u64,
    gateways_per_s: f64,
    /// Messages the operations center published plus received, per gateway.
    msgs_per_gw: f64,
    /// Failed rollout: from creation to the last gateway confirmed back.
    to_rolled_back_ms: u64,
    rolled_back: usize,
    /// Connecting the fleet and its first reports (not part of the rollout).
    connect_ms: u64,
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
        r.rlim_cur
    }
}

fn four_waves() -> Vec<WaveSize> {
    vec![WaveSize::Count(1), WaveSize::Percent(10.0), WaveSize::Percent(50.0), WaveSize::Percent(100.0)]
}

fn last_settled(r: &RolloutState) -> u64 {
    r.waves.iter().filter_map(|w| w.settled_ms).max().unwrap_or(r.created_ms)
}

async fn measure(n: usize) -> Figures {
    let mut w = World::new(n, &[V1, V2, V3], false);
    w.start_center();
    let failing: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let f = failing.clone();
    let behaviour = Arc::new(move |gw: &str, _: &str, version: &str| {
        if version == V3 && f.lock().map(|s| s.contains(gw)).unwrap_or(false) {
            Outcome::ApplyError("injected failure".into())
        } else {
            Outcome::Ok
        }
    });
    let t = Instant::now();
    let ramp = Duration::from_millis((n as u64 / 2).max(100));
    w.wait_subscribed().await;
    let fleet = w.sim(behaviour, false, ramp);
    w.wait_all_seen(Duration::from_secs(300)).await;
    let connect_ms = t.elapsed().as_millis() as u64;

    // 1. Waves [1, 10%, 50%, 100%], no bake.
    let c0 = w.center().counters.snapshot();
    w.center().start(w.plan("to-v2", V2, four_waves(), Gates::default()), "bench").await.expect("plan");
    let done = w.wait_rollout("to-v2", Duration::from_secs(600), |p| !p.is_active()).await;
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.phase);
    // Let the counters see the last reports arrive.
    let c1 = w.center().counters.snapshot();
    let to_100_ms = last_settled(&done) - done.created_ms;
    let msgs = (c1.received - c0.received) + (c1.desired_published - c0.desired_published);
    let installed = fleet.stats.installed();
    assert!(installed.values().all(|s| s[SVC] == V2), "not every gateway runs {V2}");

    // 2. Failures in wave 2: it must abort there and roll waves 1-2 back.
    let plan = w.plan("to-v3", V3, four_waves(), Gates::default());
    let assigned = Rollout::start(plan.clone(), &w.store().gateways().expect("gateways"), 0).expect("plan");
    let wave2 = assigned.state.waves[1].targets.clone();
    if let Ok(mut s) = failing.lock() {
        // Every tenth gateway of wave 2.
        s.extend(wave2.iter().step_by(10).cloned());
    }
    w.center().start(plan, "bench").await.expect("plan");
    let back = w.wait_rollout("to-v3", Duration::from_secs(600), |p| matches!(p, Phase::RolledBack(_))).await;
    assert!(back.waves[2].started_ms.is_none(), "wave 3 started");
    let rolled: Vec<_> = back.gateways.values().filter(|g| g.status == GatewayStatus::RolledBack).collect();
    let to_rolled_back_ms = rolled.iter().map(|g| g.since_ms).max().unwrap_or(back.created_ms) - back.created_ms;
    let installed = fleet.stats.installed();
    assert!(installed.values().all(|s| s[SVC] == V2), "a gateway is not back on {V2}");
    let figures = Figures {
        to_100_ms,
        gateways_per_s: n as f64 / (to_100_ms.max(1) as f64 / 1000.0),
        msgs_per_gw: msgs as f64 / n as f64,
        to_rolled_back_ms,
        rolled_back: rolled.len(),
        connect_ms,
    };
    drop(fleet);
    w.stop_center().await;
    figures
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let sizes: Vec<usize> = args
        .first()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10_000]);
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let nofile = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let store = if std::env::var_os("OUTPOST_FLEET_BENCH_MEMSTORE").is_some() { "in-memory" } else { "redb" };
    println!("fleet bench: Mosquitto with password file + ACL, one {store}-backed outpost-ops, N simulated gateways (one MQTT connection each), waves [1, 10%, 50%, 100%], no bake; open-files limit {nofile}");
    for n in sizes {
        // Each gateway holds a socket here and one in the broker.
        if (n as u64) + 200 > nofile {
            println!("{n} gateways: skipped, the open-files limit is {nofile} (needs about {})", n + 200);
            continue;
        }
        let mut all = Vec::new();
        for run in 0..runs {
            let f = rt.block_on(measure(n));
            println!(
                "  {n} gateways run {}: to 100% {} ms ({:.0} gateways/s), {:.2} broker messages/gateway, wave-2 failure rolled back {} gateways in {} ms; connect+first report {} ms",
                run + 1,
                f.to_100_ms,
                f.gateways_per_s,
                f.msgs_per_gw,
                f.rolled_back,
                f.to_rolled_back_ms,
                f.connect_ms
            );
            all.push(f);
        }
        let m = |g: fn(&Figures) -> f64| median(all.iter().map(g).collect());
        println!(
            "{n} gateways (median of {runs}): time to 100% {:.0} ms, {:.0} gateways/s, {:.2} broker messages per gateway, time to rolled back {:.0} ms{}",
            m(|f| f.to_100_ms as f64),
            m(|f| f.gateways_per_s),
            m(|f| f.msgs_per_gw),
            m(|f| f.to_rolled_back_ms as f64),
            if n == 1000 {
                if m(|f| f.to_100_ms as f64) < 6000.0 { " (target < 6 s: met)" } else { " (target < 6 s: MISSED)" }
            } else {
                ""
            }
        );
    }
}
