//! Prometheus metrics for the agent and each service, plus tracing setup.
//! Per-service handles are resolved once so the message path only touches
//! atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Per-service series carry the version too, so the old and the new
/// version of an upgrade (or a canary beside the serving one) are told apart.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamedLabel {
    service: String,
    name: String,
}

/// A KPI is site-wide (empty subject) or about one subject: a truck, a
/// loader, a zone. Services pass `name/subject` (see the SDK's `kpi_for`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KpiLabel {
    service: String,
    name: String,
    subject: String,
}

/// Most distinct KPI and counter series one service may create: a guest
/// that invents names without end must not grow the agent's memory.
pub const MAX_SERIES_PER_SERVICE: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    service: String,
    reason: String,
}

type HistogramFamily = Family<ServiceLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 us .. ~1 s
    Histogram::new(exponential_buckets(1e-6, 2.0, 21))
}

/// All of the agent's metrics.
pub struct Metrics {
    registry: Registry,
    messages_in: Family<ServiceLabel, Counter>,
    messages_out: Family<ServiceLabel, Counter>,
    handle_seconds: HistogramFamily,
    traps: Family<ServiceLabel, Counter>,
    restarts: Family<ServiceLabel, Counter>,
    queue_depth: Family<ServiceLabel, Gauge>,
    instances: Family<ServiceLabel, Gauge>,
    acl_denied: Family<ServiceLabel, Counter>,
    dropped: Family<DropLabel, Counter>,
    dead_letters: Family<ServiceLabel, Counter>,
    service_errors: Family<ServiceLabel, Counter>,
    kpi: Family<KpiLabel, Gauge<f64, AtomicU64>>,
    counters: Family<NamedLabel, Counter>,
    /// 1 while the agent's MQTT connection is up.
    pub mqtt_connected: Gauge,
    /// Messages received from the broker.
    pub ingress: Counter,
    /// Messages from the broker refused before any service saw them
    /// (invalid topic, larger than the agent accepts).
    pub bad_input: Counter,
    /// The operations center's link (`uplink`): 1 while connected.
    pub fleet_connected: Gauge,
    /// Messages waiting in the store-and-forward outbox.
    pub uplink_queued: Gauge,
    /// Messages the broker acknowledged from the outbox.
    pub uplink_sent: Counter,
    /// Oldest messages dropped by the outbox's bound.
    pub uplink_dropped: Counter,
    /// Site data kept on the site by the customer's sharing policy, by reason.
    uplink_held: Family<ReasonLabel, Counter>,
    /// Desired states refused (bad signature, other gateway, malformed).
    pub fleet_desired_refused: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut r = Registry::default();
        let m = Metrics {
            messages_in: Family::default(),
            messages_out: Family::default(),
            handle_seconds: Family::new_with_constructor(latency_histogram),
            traps: Family::default(),
            restarts: Family::default(),
            queue_depth: Family::default(),
            instances: Family::default(),
            acl_denied: Family::default(),
            dropped: Family::default(),
            dead_letters: Family::default(),
            service_errors: Family::default(),
            kpi: Family::default(),
            counters: Family::default(),
            mqtt_connected: Gauge::default(),
            ingress: Counter::default(),
            bad_input: Counter::default(),
            fleet_connected: Gauge::default(),
            uplink_queued: Gauge::default(),
            uplink_sent: Counter::default(),
            uplink_dropped: Counter::default(),
            uplink_held: Family::default(),
            fleet_desired_refused: Counter::default(),
            registry: Registry::default(),
        };
        r.register("outpost_messages_in", "Messages delivered to a service", m.messages_in.clone());
        r.register("outpost_messages_out", "Messages published by a service", m.messages_out.clone());
        r.register("outpost_handle_seconds", "Time of one handle call (one batch)", m.handle_seconds.clone());
        r.register("outpost_traps", "Instance faults: traps, deadlines, out of memory", m.traps.clone());
        r.register("outpost_restarts", "Instance restarts after a fault", m.restarts.clone());
        r.register("outpost_queue_depth", "Messages waiting for a service", m.queue_depth.clone());
        r.register("outpost_instances", "Running instances of a service", m.instances.clone());
        r.register("outpost_acl_denied", "Publishes refused by the manifest ACL", m.acl_denied.clone());
        r.register("outpost_dropped", "Messages (or metric updates) not delivered, by reason", m.dropped.clone());
        r.register("outpost_dead_letters", "Messages that faulted an instance on their own", m.dead_letters.clone());
        r.register("outpost_service_errors", "Calls that returned a service error", m.service_errors.clone());
        r.register("outpost_service_kpi", "Service KPIs, as last reported", m.kpi.clone());
        r.register("outpost_service_events", "Service-defined counters", m.counters.clone());
        r.register("outpost_mqtt_connected", "1 while connected to the MQTT broker", m.mqtt_connected.clone());
        r.register("outpost_ingress_messages", "Messages received from the MQTT broker", m.ingress.clone());
        r.register(
            "outpost_ingress_refused",
            "Broker messages refused (invalid topic, oversized)",
            m.bad_input.clone(),
        );
        r.register("outpost_fleet_connected", "1 while connected to the operations center's broker", m.fleet_connected.clone());
        r.register("outpost_uplink_queued", "Messages waiting in the uplink outbox", m.uplink_queued.clone());
        r.register("outpost_uplink_sent", "Uplink messages acknowledged by the operations center's broker", m.uplink_sent.clone());
        r.register("outpost_uplink_dropped", "Oldest uplink messages dropped by the outbox bound", m.uplink_dropped.clone());
        r.register("outpost_uplink_held", "Site data kept on site by the sharing policy, by reason", m.uplink_held.clone());
        r.register(
            "outpost_fleet_desired_refused",
            "Desired states refused (signature, gateway, malformed)",
            m.fleet_desired_refused.clone(),
        );
        Arc::new(Metrics { registry: r, ..m })
    }

    /// Counts site data the sharing policy kept on site.
    pub fn uplink_held(&self, reason: &str, n: u64) {
        self.uplink_held.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc_by(n);
    }

    /// Handles for one service (no version: offline runs, checks, benches).
    pub fn service(self: &Arc<Self>, service: &str) -> ServiceMetrics {
        self.service_version(service, "")
    }

    /// Handles for one version of a service.
    pub fn service_version(self: &Arc<Self>, service: &str, version: &str) -> ServiceMetrics {
        let l = ServiceLabel { service: service.to_owned(), version: version.to_owned() };
        ServiceMetrics {
            name: service.into(),
            messages_in: self.messages_in.get_or_create(&l).clone(),
            messages_out: self.messages_out.get_or_create(&l).clone(),
            handle_seconds: self.handle_seconds.get_or_create(&l).clone(),
            traps: self.traps.get_or_create(&l).clone(),
            restarts: self.restarts.get_or_create(&l).clone(),
            queue_depth: self.queue_depth.get_or_create(&l).clone(),
            instances: self.instances.get_or_create(&l).clone(),
            acl_denied: self.acl_denied.get_or_create(&l).clone(),
            dead_letters: self.dead_letters.get_or_create(&l).clone(),
            service_errors: self.service_errors.get_or_create(&l).clone(),
            series: Arc::default(),
            site_kpis: Arc::default(),
            log_budget: Arc::default(),
            all: self.clone(),
        }
    }

    /// OpenMetrics text exposition.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// Prometheus text format 0.0.4, what every scraper and `promtool`
    /// accept: counter families are named with their `_total` suffix and
    /// the OpenMetrics `# EOF` marker is dropped.
    pub fn encode(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// KPI and counter names a service has used (their series exist).
#[derive(Default)]
struct SeriesSeen {
    kpis: HashSet<String>,
    counters: HashSet<String>,
}

#[derive(Clone, Copy)]
enum SeriesKind {
    Kpi,
    Counter,
}

/// One service's metric handles (cheap clones of atomics).
#[derive(Clone)]
pub struct ServiceMetrics {
    name: Arc<str>,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub handle_seconds: Histogram,
    pub traps: Counter,
    pub restarts: Counter,
    pub queue_depth: Gauge,
    pub instances: Gauge,
    pub acl_denied: Counter,
    pub dead_letters: Counter,
    pub service_errors: Counter,
    /// KPI and counter series this service has created (bounded).
    series: Arc<Mutex<SeriesSeen>>,
    /// This version's last site-wide value of each KPI: the exposition has
    /// no version label, and probation compares versions.
    site_kpis: Arc<Mutex<HashMap<String, f64>>>,
    /// Log lines this service may still write this second.
    log_budget: Arc<Mutex<LogBudget>>,
    all: Arc<Metrics>,
}

impl ServiceMetrics {
    /// A version that stopped serving: its gauges go to zero (its counters
    /// stay, they are history), so sums over versions stay true.
    pub fn retire(&self) {
        self.instances.set(0);
        self.queue_depth.set(0);
    }

    pub fn dropped(&self, reason: &str) {
        self.all.dropped.get_or_create(&DropLabel { service: self.name.to_string(), reason: reason.into() }).inc();
    }

    /// Sets a KPI; `name` may carry a subject as `name/subject`.
    pub fn set_kpi(&self, name: &str, value: f64) {
        if !self.admit_series(SeriesKind::Kpi, name) {
            return;
        }
        let (name, subject) = name.split_once('/').unwrap_or((name, ""));
        if subject.is_empty() {
            if let Ok(mut kpis) = self.site_kpis.lock() {
                kpis.insert(name.to_owned(), value);
            }
        }
        let label = KpiLabel { service: self.name.to_string(), name: name.into(), subject: subject.into() };
        self.all.kpi.get_or_create(&label).set(value);
    }

    /// This version's last site-wide value of a KPI, if it reported one.
    pub fn site_kpi(&self, name: &str) -> Option<f64> {
        self.site_kpis.lock().ok()?.get(name).copied()
    }

    pub fn add_counter(&self, name: &str, delta: u64) {
        if !self.admit_series(SeriesKind::Counter, name) {
            return;
        }
        self.all
            .counters
            .get_or_create(&NamedLabel { service: self.name.to_string(), name: name.into() })
            .inc_by(delta);
    }
}

/// Most log lines one service writes per second (its own and the agent's
/// about it); more are counted and summarised, so a stream of bad input
/// cannot flood the gateway's disk or journal.
pub const LOG_LINES_PER_SECOND: u32 = 20;

fn unix_second() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Default)]
struct LogBudget {
    second: u64,
    used: u32,
    suppressed: u64,
}

impl ServiceMetrics {
    /// Whether a log line about this service may be written now. The first
    /// line of a new second after lines were held back is preceded by one
    /// notice with their exact count, whichever path logs it.
    pub fn admit_log(&self) -> bool {
        let (admitted, held_back) = self.log_budget_at(unix_second());
        self.say_held_back(held_back);
        admitted
    }

    /// Says how many lines were held back once their second is over, even
    /// if no new line comes (the dispatcher calls it on every tick).
    pub fn report_held_back(&self) {
        let held_back = {
            let mut b = self.budget();
            let second = unix_second();
            if b.second == second {
                return;
            }
            std::mem::take(&mut b.suppressed)
        };
        self.say_held_back(held_back);
    }

    fn say_held_back(&self, held_back: u64) {
        if held_back > 0 {
            tracing::warn!(service = %self.name, held_back, "log lines held back (rate limit; see outpost_dropped_total)");
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, LogBudget> {
        match self.log_budget.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// (admitted, lines held back in earlier seconds not yet reported).
    fn log_budget_at(&self, second: u64) -> (bool, u64) {
        let mut b = self.budget();
        let mut held_back = 0;
        if b.second != second {
            b.second = second;
            b.used = 0;
            held_back = std::mem::take(&mut b.suppressed);
        }
        if b.used >= LOG_LINES_PER_SECOND {
            b.suppressed += 1;
            drop(b);
            self.dropped("log_rate_limit");
            return (false, held_back);
        }
        b.used += 1;
        (true, held_back)
    }

    /// True if the series exists or there is room for it; otherwise the
    /// update is dropped and counted.
    fn admit_series(&self, kind: SeriesKind, name: &str) -> bool {
        let mut seen = match self.series.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        let SeriesSeen { kpis, counters } = &mut *seen;
        let total = kpis.len() + counters.len();
        let set = match kind {
            SeriesKind::Kpi => kpis,
            SeriesKind::Counter => counters,
        };
        // Known series (every call after the first) are found without allocating.
        if set.contains(name) {
            return true;
        }
        if total >= MAX_SERIES_PER_SERVICE {
            drop(seen);
            self.dropped("series_limit");
            return false;
        }
        set.insert(name.to_owned());
        true
    }
}

/// Logs go to stderr, human-readable or JSON (`OUTPOST_LOG_FORMAT=json`),
/// filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with("info,rumqttd=warn,rumqttd::router::routing=off,rumqttd::server::broker=off")
}

/// Like [`init_tracing`] with another default filter (tests use `warn`).
pub fn init_tracing_with(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let json = std::env::var("OUTPOST_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Service log lines are also tapped for `outpostctl logs` (the API's StreamLogs).
    let _ = if json {
        builder.json().finish().with(crate::events::LogTap).try_init()
    } else {
        builder.finish().with(crate::events::LogTap).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kpis_carry_their_subject_as_a_label() {
        let metrics = Metrics::new();
        let svc = metrics.service("weight-loading");
        svc.set_kpi("tonnes_per_hour", 1200.5);
        svc.set_kpi("tonnes_per_hour/CDH90", 310.25);
        let text = metrics.encode();
        assert!(
            text.contains(r#"outpost_service_kpi{service="weight-loading",name="tonnes_per_hour",subject=""} 1200.5"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"outpost_service_kpi{service="weight-loading",name="tonnes_per_hour",subject="CDH90"} 310.25"#
            ),
            "{text}"
        );
    }

    #[test]
    fn log_lines_are_rate_limited_per_service_and_every_held_back_line_is_counted() {
        let metrics = Metrics::new();
        let (noisy, quiet) = (metrics.service("noisy"), metrics.service("quiet"));
        // 160 lines in one second: 20 written, 140 held back.
        let admitted = (0..160).filter(|_| noisy.log_budget_at(100).0).count();
        assert_eq!(admitted, LOG_LINES_PER_SECOND as usize);
        assert_eq!(quiet.log_budget_at(100), (true, 0), "budgets are per service");
        // The next second's first line, from any caller, reports all 140.
        assert_eq!(noisy.log_budget_at(101), (true, 140));
        assert_eq!(noisy.log_budget_at(101), (true, 0), "reported once");
        assert!(metrics.encode().contains(r#"outpost_dropped_total{service="noisy",reason="log_rate_limit"} 140"#));
    }

    #[test]
    fn a_service_cannot_create_series_without_end() {
        let metrics = Metrics::new();
        let svc = metrics.service("noisy");
        for i in 0..MAX_SERIES_PER_SERVICE + 10 {
            svc.set_kpi(&format!("k/{i}"), 1.0);
        }
        let text = metrics.encode();
        let series = text.lines().filter(|l| l.starts_with("outpost_service_kpi{")).count();
        assert_eq!(series, MAX_SERIES_PER_SERVICE);
        assert!(text.contains(r#"reason="series_limit"} 10"#), "drops are counted");
    }
}
