//! The dispatcher's lifecycle logic against test doubles: no wasmtime, no
//! broker, no clock beyond `Instant`.

use super::*;
use crate::host::FaultKind;
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What the fake did, shared with the test.
#[derive(Default)]
struct Journal {
    /// (version, topic, payload) of every handled message, in order.
    handled: Mutex<Vec<(String, String, String)>>,
    /// Sizes of the batches handed over.
    batches: Mutex<Vec<usize>>,
    starts: AtomicUsize,
}

/// A service double. Per message payload: `trap` faults the instance,
/// `internal` fails the call, `bad` refuses input, `sleep:MS` takes MS ms;
/// anything else is published to `out/{last level}` as `{version}:{payload}`.
struct Fake {
    version: String,
    journal: Arc<Journal>,
    tick_faults: bool,
}

impl Instance for Fake {
    fn handle(&mut self, batch: &[Envelope]) -> Result<CallOutput, CallError> {
        self.journal.batches.lock().unwrap().push(batch.len());
        let mut out = CallOutput::default();
        let mut handled = Vec::new();
        for e in batch {
            let p = String::from_utf8_lossy(&e.payload).into_owned();
            match p.as_str() {
                "trap" => return Err(CallError::Fault { kind: FaultKind::Trap, message: "trap".into() }),
                "internal" => return Err(CallError::Internal("broken".into())),
                "bad" => return Err(CallError::Service("bad input".into())),
                _ => {}
            }
            if let Some(ms) = p.strip_prefix("sleep:") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1)));
            }
            let tail = e.topic.rsplit('/').next().unwrap_or("x");
            out.published.push((format!("out/{tail}"), format!("{}:{p}", self.version).into_bytes()));
            handled.push((self.version.clone(), e.topic.clone(), p));
        }
        self.journal.handled.lock().unwrap().extend(handled);
        Ok(out)
    }

    fn tick(&mut self, _now_ms: u64) -> Result<CallOutput, CallError> {
        if self.tick_faults {
            return Err(CallError::Fault { kind: FaultKind::Trap, message: "tick trap".into() });
        }
        Ok(CallOutput::default())
    }
}

struct FakeFactory {
    version: String,
    journal: Arc<Journal>,
    fail_init: bool,
    tick_faults: bool,
}

impl InstanceFactory for FakeFactory {
    fn start(&self, _m: &Manifest, _c: &str) -> Result<Box<dyn Instance>, CallError> {
        self.journal.starts.fetch_add(1, Ordering::SeqCst);
        if self.fail_init {
            return Err(CallError::Service("bad config: nope".into()));
        }
        Ok(Box::new(Fake {
            version: self.version.clone(),
            journal: self.journal.clone(),
            tick_faults: self.tick_faults,
        }))
    }
    fn digest(&self) -> String {
        format!("digest-{}", self.version)
    }
}

fn manifest(name: &str, version: &str, subscribe: &str, publish: &str, instances: u32) -> Manifest {
    let text = format!(
        "[service]\nname = \"{name}\"\nversion = \"{version}\"\nprovider = \"t\"\nworld = \"outpost:service@1.0.0\"\n\
         [bus]\nsubscribe = [\"{subscribe}\"]\npublish = [\"{publish}\"]\nmirror = true\n\
         [scale]\ninstances = {instances}\nshard_by = 1\n[limits]\nqueue_capacity = 8\ncall_deadline_ms = 40\n"
    );
    Manifest::parse(&text, std::path::Path::new("test.toml")).expect("test manifest")
}

fn def(name: &str, version: &str, instances: u32, journal: &Arc<Journal>) -> ServiceDef {
    def_with(name, version, instances, journal, false, false)
}

fn def_with(
    name: &str,
    version: &str,
    instances: u32,
    journal: &Arc<Journal>,
    fail_init: bool,
    tick_faults: bool,
) -> ServiceDef {
    ServiceDef {
        manifest: manifest(name, version, "in/+", "out/+", instances),
        config_json: "{}".into(),
        instances,
        factory: Arc::new(FakeFactory { version: version.into(), journal: journal.clone(), fail_init, tick_faults }),
        metrics: Metrics::new().service(name),
    }
}

/// Egress double: records publishes and keeps their causes until `release`.
#[derive(Clone, Default)]
struct Sink {
    published: Arc<Mutex<Vec<(String, String)>>>,
    held: Arc<Mutex<Vec<Cause>>>,
}

impl Egress for Sink {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.published.lock().unwrap().push((topic.into(), String::from_utf8_lossy(payload).into()));
    }
    fn publish_caused(&mut self, topic: &str, payload: &[u8], cause: &Cause) {
        self.publish(topic, payload);
        self.held.lock().unwrap().push(cause.clone());
    }
}

impl Sink {
    fn release(&self) {
        self.held.lock().unwrap().clear();
    }
    fn topics(&self) -> Vec<String> {
        self.published.lock().unwrap().iter().map(|(t, _)| t.clone()).collect()
    }
}

fn dispatcher(sink: &Sink) -> Dispatcher {
    let config = DispatchConfig { initial_backoff_ms: 1, max_backoff_ms: 2, ..DispatchConfig::default() };
    Dispatcher::without_host(config, "gw", Box::new(sink.clone()))
}

/// A reliable input whose ack bumps `acked`.
fn input(topic: &str, payload: &str, acked: &Arc<AtomicUsize>) -> Envelope {
    let a = acked.clone();
    Arc::new(Inbound {
        ack: Some(AckToken::new(move || {
            a.fetch_add(1, Ordering::SeqCst);
        })),
        ..Inbound::new(topic, payload.as_bytes().to_vec())
    })
}

fn handled(j: &Journal) -> Vec<(String, String, String)> {
    j.handled.lock().unwrap().clone()
}

#[test]
fn upgrade_moves_queued_messages_to_the_new_version_in_order() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 2, &j)).expect("install");
    for i in 0..5 {
        d.accept(input("in/a", &format!("a{i}"), &acked));
        d.accept(input("in/b", &format!("b{i}"), &acked));
    }
    d.run_until_idle();
    for i in 5..10 {
        d.accept(input("in/a", &format!("a{i}"), &acked));
        d.accept(input("in/b", &format!("b{i}"), &acked));
    }
    // Upgraded with 10 messages still queued: they belong to v2 now.
    d.upgrade(def("svc", "2.0.0", 3, &j), None).expect("upgrade");
    d.run_until_idle();
    let h = handled(&j);
    assert_eq!(h.len(), 20, "every message handled exactly once: {h:?}");
    for key in ["a", "b"] {
        let seq: Vec<&str> = h.iter().filter(|x| x.1 == format!("in/{key}")).map(|x| x.2.as_str()).collect();
        let want: Vec<String> = (0..10).map(|i| format!("{key}{i}")).collect();
        assert_eq!(seq, want, "order of key {key}");
        let versions: Vec<&str> = h.iter().filter(|x| x.1 == format!("in/{key}")).map(|x| x.0.as_str()).collect();
        assert_eq!(&versions[..5], ["1.0.0"; 5]);
        assert_eq!(&versions[5..], ["2.0.0"; 5]);
    }
    assert_eq!(acked.load(Ordering::SeqCst), 0, "outputs not yet acknowledged by the broker: inputs stay unacked");
    sink.release();
    assert_eq!(acked.load(Ordering::SeqCst), 20);
    assert_eq!(d.status()[0].version, "2.0.0");
    assert_eq!(d.status()[0].instances, 3);
}

#[test]
fn metrics_are_per_version_and_a_replaced_version_shows_no_instances() {
    let (sink, j) = (Sink::default(), Arc::new(Journal::default()));
    let metrics = Metrics::new();
    let versioned = |v: &str, n: u32| ServiceDef { metrics: metrics.service_version("svc", v), ..def("svc", v, n, &j) };
    let mut d = dispatcher(&sink);
    let v1 = versioned("1.0.0", 2);
    let v1_metrics = v1.metrics.clone();
    d.install(v1).expect("install");
    let v2 = versioned("2.0.0", 3);
    let v2_metrics = v2.metrics.clone();
    d.upgrade(v2, None).expect("upgrade");
    assert_eq!((v1_metrics.instances.get(), v2_metrics.instances.get()), (0, 3));
    let text = metrics.encode();
    assert!(text.contains(r#"outpost_instances{service="svc",version="2.0.0"} 3"#), "{text}");
    assert!(text.contains(r#"outpost_instances{service="svc",version="1.0.0"} 0"#), "{text}");
}

#[test]
fn a_new_version_that_fails_to_start_leaves_the_old_one_serving() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    d.accept(input("in/a", "x", &acked));
    let err = d.upgrade(def_with("svc", "2.0.0", 1, &j, true, false), None).unwrap_err();
    assert!(err.to_string().contains("svc@2.0.0 failed to start"), "{err}");
    d.run_until_idle();
    assert_eq!(handled(&j), vec![("1.0.0".into(), "in/a".into(), "x".into())]);
    assert!(matches!(d.install(def("svc", "3.0.0", 1, &j)), Err(LifecycleError::Exists(_))));
}

#[test]
fn remove_handles_what_is_queued_then_unsubscribes() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    assert_eq!(d.broker_subscriptions(), vec!["in/+".to_string()]);
    d.accept(input("in/a", "1", &acked));
    d.accept(input("in/a", "2", &acked));
    assert_eq!(d.remove("svc").expect("remove"), 0);
    assert_eq!(handled(&j).len(), 2);
    assert!(d.broker_subscriptions().is_empty());
    assert!(matches!(d.remove("svc"), Err(LifecycleError::Unknown(_))));
}

#[test]
fn scaling_reshards_without_reordering_a_key() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    for i in 0..30 {
        d.accept(input(&format!("in/k{}", i % 6), &i.to_string(), &acked));
    }
    d.scale("svc", 4).expect("scale up");
    d.run_until_idle();
    d.scale("svc", 2).expect("scale down");
    for i in 30..60 {
        d.accept(input(&format!("in/k{}", i % 6), &i.to_string(), &acked));
    }
    d.run_until_idle();
    let h = handled(&j);
    assert_eq!(h.len(), 60);
    for k in 0..6 {
        let seq: Vec<u32> = h.iter().filter(|x| x.1 == format!("in/k{k}")).map(|x| x.2.parse().unwrap()).collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "key k{k} out of order: {seq:?}");
    }
    assert!(d.scale("svc", 0).is_err());
}

#[test]
fn canary_takes_a_stable_share_of_keys_and_promotes_or_aborts() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    d.start_canary(def("svc", "2.0.0", 1, &j), 30).expect("canary");
    for round in 0..2 {
        for k in 0..200 {
            d.accept(input(&format!("in/k{k}"), &round.to_string(), &acked));
        }
    }
    d.run_until_idle();
    let h = handled(&j);
    let on_canary: std::collections::BTreeSet<&str> =
        h.iter().filter(|x| x.0 == "2.0.0").map(|x| x.1.as_str()).collect();
    let on_main: std::collections::BTreeSet<&str> = h.iter().filter(|x| x.0 == "1.0.0").map(|x| x.1.as_str()).collect();
    assert!(on_canary.is_disjoint(&on_main), "a key is served by one version only");
    assert!((40..=80).contains(&on_canary.len()), "about 30% of 200 keys: {}", on_canary.len());
    assert_eq!(d.status()[0].canary, Some(("2.0.0".into(), 30)));
    assert_eq!(d.promote_canary("svc").expect("promote"), "2.0.0");
    assert_eq!(d.status()[0].version, "2.0.0");
    assert!(d.abort_canary("svc").is_err(), "no canary left");
}

#[test]
fn shadow_sees_a_copy_and_its_outputs_stay_aside() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    d.start_shadow(def("svc", "2.0.0", 1, &j)).expect("shadow");
    for i in 0..10 {
        d.accept(input("in/a", &i.to_string(), &acked));
    }
    d.run_until_idle();
    sink.release();
    assert_eq!(acked.load(Ordering::SeqCst), 10, "the shadow holds no acknowledgement");
    let published = sink.published.lock().unwrap().clone();
    assert_eq!(published.len(), 10, "only the live version's outputs leave");
    assert!(published.iter().all(|(_, p)| p.starts_with("1.0.0:")));
    let report = d.shadow_report("svc", true).expect("report");
    let t = &report.topics["out/a"];
    // Payloads carry the version, so every pair differs.
    assert_eq!((t.live, t.shadow, t.same, t.different), (10, 10, 0, 10));
    assert!(d.shadow_report("svc", false).is_err(), "stopped");
}

fn probation(window: Duration) -> ProbationPolicy {
    ProbationPolicy { window, max_faults: 3, error_margin: 0.05, min_messages: 5 }
}

/// `svc` at `version`, declaring `fix_rate` (higher is better) as a health
/// KPI with a 20 % margin, with its metrics handle for the test to report.
fn with_health_kpi(version: &str, j: &Arc<Journal>, metrics: &Arc<Metrics>) -> (ServiceDef, ServiceMetrics) {
    let mut d = def("svc", version, 1, j);
    let text = format!(
        "[service]\nname = \"svc\"\nversion = \"{version}\"\nprovider = \"t\"\nworld = \"outpost:service@1.0.0\"\n\
         [bus]\nsubscribe = [\"in/+\"]\npublish = [\"out/+\"]\n[limits]\ncall_deadline_ms = 40\n\
         [kpis]\nfix_rate = {{ unit = \"1/min\", better = \"higher\", health_margin = 0.2 }}\n"
    );
    d.manifest = Manifest::parse(&text, std::path::Path::new("test.toml")).expect("test manifest");
    d.metrics = metrics.service_version("svc", version);
    let m = d.metrics.clone();
    (d, m)
}

/// Upgrades 1.0.0 (which reported `fix_rate` 10) to 2.0.0, which reports
/// `v2_rate`; returns the version serving once the window has ended.
fn judged_on_health_kpi(v2_rate: f64) -> (String, Vec<Notice>) {
    let (sink, j, metrics) = (Sink::default(), Arc::new(Journal::default()), Metrics::new());
    let mut d = dispatcher(&sink);
    let (v1, m1) = with_health_kpi("1.0.0", &j, &metrics);
    d.install(v1).expect("install");
    m1.set_kpi("fix_rate", 10.0);
    let (v2, m2) = with_health_kpi("2.0.0", &j, &metrics);
    d.upgrade(v2, Some(probation(Duration::from_millis(30)))).expect("upgrade");
    m2.set_kpi("fix_rate", v2_rate);
    d.run_until_idle();
    assert_eq!(d.status()[0].version, "2.0.0", "judged only when the window ends");
    std::thread::sleep(Duration::from_millis(40));
    d.run_until_idle();
    (d.status()[0].version.clone(), d.take_notices())
}

#[test]
fn an_upgrade_whose_health_kpi_is_worse_rolls_back_when_probation_ends() {
    let (version, notices) = judged_on_health_kpi(7.0);
    assert_eq!(version, "1.0.0", "30 % worse than 1.0.0 with a 20 % margin");
    assert!(
        matches!(&notices[..], [Notice::RolledBack { reason, .. }] if reason.contains("health KPI fix_rate is 7 against 10")),
        "{notices:?}"
    );
    let (version, notices) = judged_on_health_kpi(8.5);
    assert_eq!(version, "2.0.0", "15 % worse is inside the margin");
    assert!(matches!(&notices[..], [Notice::Promoted { version, .. }] if version == "2.0.0"), "{notices:?}");
}

#[test]
fn an_upgrade_answering_more_messages_with_errors_rolls_back_when_probation_ends() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let metrics = Metrics::new();
    let versioned = |v: &str| ServiceDef { metrics: metrics.service_version("svc", v), ..def("svc", v, 1, &j) };
    let mut d = dispatcher(&sink);
    d.install(versioned("1.0.0")).expect("install");
    for i in 0..10 {
        d.accept(input("in/a", &i.to_string(), &acked));
    }
    d.run_until_idle();
    d.upgrade(versioned("2.0.0"), Some(probation(Duration::from_millis(30)))).expect("upgrade");
    // The new version's inputs: 4 of 10 are refused (the fake answers
    // `bad` with a service error), 40 % against 0 % before.
    for i in 0..10 {
        d.accept(input("in/a", if i % 3 == 0 { "bad" } else { "ok" }, &acked));
        d.run_until_idle();
    }
    std::thread::sleep(Duration::from_millis(40));
    d.run_until_idle();
    assert_eq!(d.status()[0].version, "1.0.0");
    let notices = d.take_notices();
    assert!(
        matches!(&notices[..], [Notice::RolledBack { reason, .. }]
            if reason.contains("40.0 % of 10 messages answered with an error, against 0.0 % for 1.0.0")),
        "{notices:?}"
    );
}

#[test]
fn a_crash_loop_on_probation_rolls_back_by_itself() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    d.upgrade(def("svc", "2.0.0", 1, &j), Some(probation(Duration::from_secs(60)))).expect("upgrade");
    assert!(d.status()[0].probation);
    for _ in 0..3 {
        d.accept(input("in/a", "trap", &acked));
        d.run_until_idle();
        std::thread::sleep(Duration::from_millis(5));
        d.run_until_idle();
    }
    assert_eq!(d.status()[0].version, "1.0.0", "rolled back");
    let notices = d.take_notices();
    assert!(
        matches!(&notices[..], [Notice::RolledBack { from, to, .. }] if from == "2.0.0" && to == "1.0.0"),
        "{notices:?}"
    );
    assert!(sink.topics().iter().any(|t| t == "outpost/gw/events"));
}

#[test]
fn an_internal_error_isolates_the_message_and_the_rest_are_handled() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    for p in ["1", "2", "internal", "3", "bad", "4"] {
        d.accept(input("in/a", p, &acked));
    }
    d.run_until_idle();
    let got: Vec<String> = handled(&j).into_iter().map(|x| x.2).collect();
    assert_eq!(got, ["1", "2", "3", "4"], "nothing lost around the failing message");
    assert!(sink.topics().contains(&"outpost/gw/deadletter/svc".to_string()), "the failing one is dead-lettered");
    sink.release();
    assert_eq!(acked.load(Ordering::SeqCst), 6);
}

#[test]
fn a_fault_in_tick_dead_letters_nothing() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def_with("svc", "1.0.0", 1, &j, false, true)).expect("install");
    d.accept(input("in/a", "innocent", &acked));
    d.tick_all(0);
    std::thread::sleep(Duration::from_millis(5));
    d.run_until_idle();
    assert!(!sink.topics().iter().any(|t| t.contains("deadletter")), "{:?}", sink.topics());
    assert_eq!(handled(&j), vec![("1.0.0".into(), "in/a".into(), "innocent".into())]);
}

#[test]
fn batches_shrink_to_fit_the_deadline() {
    assert_eq!(batch_size(Duration::from_millis(6), Duration::from_millis(50), 256), 4);
    assert_eq!(batch_size(Duration::from_micros(2), Duration::from_millis(50), 256), 256);
    assert_eq!(batch_size(Duration::from_millis(90), Duration::from_millis(50), 256), 1);
    // Against a slow fake: a backlog of 40 messages at 6 ms each never
    // becomes one 240 ms call against a 40 ms deadline.
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let mut d = dispatcher(&sink);
    d.install(def("svc", "1.0.0", 1, &j)).expect("install");
    for _ in 0..40 {
        d.accept(input("in/a", "sleep:6", &acked));
    }
    d.run_until_idle();
    let batches = j.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 40);
    assert!(batches.iter().skip(1).all(|&n| n <= 4), "{batches:?}");
}

#[test]
fn a_full_downstream_queue_holds_the_producer_back() {
    let (sink, acked) = (Sink::default(), Arc::new(AtomicUsize::new(0)));
    let (up, down) = (Arc::new(Journal::default()), Arc::new(Journal::default()));
    let mut d = dispatcher(&sink);
    d.install(def("producer", "1.0.0", 1, &up)).expect("install");
    let mut consumer = def_with("consumer", "1.0.0", 1, &down, false, false);
    consumer.manifest = manifest("consumer", "1.0.0", "out/+", "final/+", 1);
    // The consumer cannot run (in backoff) so its queue (capacity 8) fills.
    d.install(consumer).expect("install");
    let s = d.find("consumer").expect("consumer");
    d.services[s].current.instances[0].health = Health::Backoff { until: Instant::now() + Duration::from_secs(3600) };
    for i in 0..20 {
        d.accept(input("in/a", &i.to_string(), &acked));
    }
    d.run_until_idle();
    let consumer_queue = d.services[s].current.queued();
    assert!(consumer_queue <= 8 + 16, "bounded by capacity plus one batch: {consumer_queue}");
    assert!(handled(&up).len() < 20, "the producer waits for room");
    assert_eq!(d.queued(), 20 + consumer_queue - handled(&up).len());
}

/// Starts instances of one version whose code moves from baseline to
/// optimized (as `WasmFactory` after a fast start); the journal names the
/// code each message ran on.
struct TieredFactory {
    journal: Arc<Journal>,
    tier: Mutex<CodeTier>,
}

impl InstanceFactory for TieredFactory {
    fn start(&self, _m: &Manifest, _c: &str) -> Result<Box<dyn Instance>, CallError> {
        let version = self.code_tier().as_str().to_owned();
        Ok(Box::new(Fake { version, journal: self.journal.clone(), tick_faults: false }))
    }
    fn digest(&self) -> String {
        "digest-1".into()
    }
    fn code_tier(&self) -> CodeTier {
        *self.tier.lock().unwrap()
    }
}

#[test]
fn a_fast_start_moves_to_optimized_code_without_losing_or_reordering_a_message() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let factory = Arc::new(TieredFactory { journal: j.clone(), tier: Mutex::new(CodeTier::Baseline) });
    let mut d = dispatcher(&sink);
    d.install(ServiceDef { factory: factory.clone(), ..def("svc", "1.0.0", 2, &j) }).expect("install");
    assert_eq!(d.status()[0].code, CodeTier::Baseline);
    let send = |d: &mut Dispatcher, range: std::ops::Range<usize>| {
        for i in range {
            d.accept(input(&format!("in/k{}", i % 3), &i.to_string(), &acked));
        }
    };
    send(&mut d, 0..12);
    d.run_for(Some(Duration::ZERO));
    // Nothing to move to yet, another component, or another service: no restart.
    assert!(!d.restart_on_optimized_code("svc", "digest-1").expect("no optimized code yet"));
    *factory.tier.lock().unwrap() = CodeTier::Optimized;
    assert!(!d.restart_on_optimized_code("svc", "digest-2").expect("other component"));
    assert!(!d.restart_on_optimized_code("gone", "digest-1").expect("unknown service"));
    send(&mut d, 12..24);
    assert!(d.restart_on_optimized_code("svc", "digest-1").expect("restart"));
    send(&mut d, 24..36);
    d.run_until_idle();

    let h = handled(&j);
    assert_eq!(h.len(), 36, "every message handled exactly once: {h:?}");
    for k in 0..3 {
        let seq: Vec<usize> = h.iter().filter(|x| x.1 == format!("in/k{k}")).map(|x| x.2.parse().unwrap()).collect();
        assert_eq!(seq, (0..36).filter(|i| i % 3 == k).collect::<Vec<_>>(), "key k{k} in order");
    }
    let code: Vec<&str> = h.iter().map(|x| x.0.as_str()).collect();
    let first_optimized = code.iter().position(|c| *c == "optimized").expect("optimized code ran");
    assert!(first_optimized > 0, "baseline code served first: {code:?}");
    assert!(code[first_optimized..].iter().all(|c| *c == "optimized"), "no baseline after the move: {code:?}");
    assert_eq!(d.status()[0].code, CodeTier::Optimized);
    assert!(!d.restart_on_optimized_code("svc", "digest-1").expect("already optimized"), "restarts once");
    let events: Vec<String> = sink
        .published
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == "outpost/gw/events")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains("\"event\":\"optimized_code\"") && events[0].contains("\"service\":\"svc\""));
    sink.release();
    assert_eq!(acked.load(Ordering::SeqCst), 36);
}

#[test]
fn the_move_to_optimized_code_restarts_an_instance_waiting_after_a_fault_and_counts_it() {
    let (sink, j, acked) = (Sink::default(), Arc::new(Journal::default()), Arc::new(AtomicUsize::new(0)));
    let factory = Arc::new(TieredFactory { journal: j.clone(), tier: Mutex::new(CodeTier::Baseline) });
    // A backoff far longer than the test: only the move can bring it back.
    let config = DispatchConfig { initial_backoff_ms: 600_000, max_backoff_ms: 600_000, ..DispatchConfig::default() };
    let mut d = Dispatcher::without_host(config, "gw", Box::new(sink.clone()));
    let svc = ServiceDef { factory: factory.clone(), ..def("svc", "1.0.0", 1, &j) };
    let restarts = svc.metrics.restarts.clone();
    d.install(svc).expect("install");
    d.accept(input("in/a", "trap", &acked));
    d.run_for(Some(Duration::from_millis(50)));
    assert_eq!(d.status()[0].running, 0, "the instance waits in backoff after its fault");
    *factory.tier.lock().unwrap() = CodeTier::Optimized;
    assert!(d.restart_on_optimized_code("svc", "digest-1").expect("move"));
    assert_eq!(d.status()[0].running, 1, "running again, on optimized code");
    assert_eq!(restarts.get(), 1, "the restart the move made is counted");
    d.accept(input("in/a", "after", &acked));
    d.run_until_idle();
    assert!(handled(&j).contains(&("optimized".into(), "in/a".into(), "after".into())));
}
