//! Live feeds for the management API: agent events (faults, dead letters,
//! rollbacks, lifecycle changes), service log lines, and a KPI snapshot.
//! Nothing is buffered for absent readers: with no subscriber a feed costs
//! one atomic load (the status page's small bounded memory, `history`,
//! rides along on the hub).

use std::sync::OnceLock;
use tokio::sync::broadcast;

/// Lines kept for a slow reader before it starts missing some (it is told).
const FEED_CAPACITY: usize = 1024;

/// An event the agent raised (the same JSON it publishes on
/// `outpost/{gateway}/events` or `.../deadletter/{service}`).
#[derive(Debug, Clone)]
pub struct AgentEvent {
    pub topic: String,
    pub json: String,
}

/// A log line written about a service.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub ts_ms: u64,
    pub level: String,
    pub service: String,
    pub message: String,
}

/// One agent's event feed (per agent, so two agents in one process, as in
/// tests, never see each other's events).
#[derive(Clone, Default)]
pub struct Hub {
    /// Made by the first reader: a channel's slots are allocated up front.
    tx: std::sync::Arc<OnceLock<broadcast::Sender<AgentEvent>>>,
    recent: std::sync::Arc<crate::history::Recent>,
    /// Where service outputs go up to the operations center, when the
    /// agent has an uplink (set once at start).
    uplink: std::sync::Arc<OnceLock<crate::uplink::DataTap>>,
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.tx.get_or_init(|| broadcast::channel(FEED_CAPACITY).0).subscribe()
    }

    /// Raises an event for API readers (if any).
    pub fn raise(&self, topic: &str, json: &str) {
        self.recent.record_event(topic, json, crate::dispatch::now_ms());
        if let Some(tx) = self.tx.get().filter(|tx| tx.receiver_count() > 0) {
            let _ = tx.send(AgentEvent { topic: topic.to_owned(), json: json.to_owned() });
        }
    }

    /// A service output, for the status page's latest warnings, alarms,
    /// advice and shift reports (see `history`).
    pub fn record_output(&self, service: &str, topic: &str, payload: &[u8], ts_ms: u64) {
        self.recent.record_output(service, topic, payload, ts_ms);
        if let Some(tap) = self.uplink.get() {
            tap.offer(topic, payload);
        }
    }

    /// Connects service outputs to the uplink (the sharing policy decides
    /// what of it leaves).
    pub fn set_uplink(&self, tap: crate::uplink::DataTap) {
        let _ = self.uplink.set(tap);
    }

    /// What the status page reads.
    pub fn recent(&self) -> std::sync::Arc<crate::history::Recent> {
        self.recent.clone()
    }
}

/// Made by the first reader, as [`Hub`]'s.
static LOGS: OnceLock<broadcast::Sender<LogLine>> = OnceLock::new();

/// Log lines are one feed per process (tracing is process-wide).
pub fn subscribe_logs() -> broadcast::Receiver<LogLine> {
    LOGS.get_or_init(|| broadcast::channel(FEED_CAPACITY).0).subscribe()
}

/// A tracing layer that copies every event carrying a `service` field to
/// the log feed (only while someone reads it).
pub struct LogTap;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogTap {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(tx) = LOGS.get().filter(|tx| tx.receiver_count() > 0) else { return };
        let mut v = Fields::default();
        event.record(&mut v);
        let Some(service) = v.service else { return };
        let mut message = v.message.unwrap_or_default();
        for (k, val) in v.rest {
            message.push_str(&format!(" {k}={val}"));
        }
        let _ = tx.send(LogLine {
            ts_ms: crate::dispatch::now_ms(),
            level: event.metadata().level().to_string(),
            service,
            message,
        });
    }
}

#[derive(Default)]
struct Fields {
    service: Option<String>,
    message: Option<String>,
    rest: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "service" => self.service = Some(value.to_owned()),
            "message" => self.message = Some(value.to_owned()),
            other => self.rest.push((other.to_owned(), value.to_owned())),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "service" => self.service = Some(text.trim_matches('"').to_owned()),
            "message" => self.message = Some(text),
            other => self.rest.push((other.to_owned(), text)),
        }
    }
}

/// One KPI as last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiValue {
    pub service: String,
    pub name: String,
    pub subject: String,
    pub value: f64,
}

/// The KPIs in a Prometheus text exposition (`outpost_service_kpi`).
pub fn kpis_from_metrics(text: &str) -> Vec<KpiValue> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("outpost_service_kpi{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let label = |key: &str| {
            let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_owned())
        };
        if let (Some(service), Some(name)) = (label("service"), label("name")) {
            out.push(KpiValue { service, name, subject: label("subject").unwrap_or_default(), value });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kpis_are_read_back_from_the_exposition() {
        let text = "# HELP x\noutpost_service_kpi{service=\"weight-loading\",name=\"tph\",subject=\"CDH90\"} 310.25\n\
                    outpost_service_kpi{service=\"positioning\",name=\"fixes\",subject=\"\"} 12\nother 1\n";
        let k = kpis_from_metrics(text);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k[0],
            KpiValue { service: "weight-loading".into(), name: "tph".into(), subject: "CDH90".into(), value: 310.25 }
        );
    }

    #[test]
    fn events_reach_readers_and_cost_nothing_without_them() {
        let hub = Hub::default();
        hub.raise("outpost/gw/events", "{}"); // no reader: dropped
        let mut rx = hub.subscribe();
        hub.raise("outpost/gw/events", "{\"event\":\"x\"}");
        let e = rx.try_recv().expect("event");
        assert_eq!(e.json, "{\"event\":\"x\"}");
    }
}
