//! What the status page shows beyond the live status, kept small and in
//! memory (nothing here survives a restart, nothing grows without bound):
//! a trend of each site-wide KPI (one sample a minute for six hours), the
//! latest warnings, alarms and advice the services published and the
//! agent's own events, and the latest weight-loading site shift reports.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Samples kept per KPI: six hours at one a minute.
pub const TREND_SAMPLES: usize = 360;
/// Site-wide KPI series kept (a service inventing names cannot grow this).
pub const MAX_TRENDS: usize = 256;
/// Latest items kept of each kind (warning, alarm, advice, agent event):
/// a loader's advice after every load must not push a leak alarm out.
pub const RECENT_ITEMS: usize = 50;
/// Latest shift reports kept (one per site and shift).
pub const SHIFT_REPORTS: usize = 8;
/// Longest one-line summary, in characters.
const SUMMARY_CHARS: usize = 200;

/// One line of the page's "latest warnings and alarms".
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecentItem {
    pub ts_ms: u64,
    /// The service that published it, or `agent` for an agent event.
    pub service: String,
    /// `warning`, `alarm`, `advice` or `event`.
    pub kind: String,
    /// The topic's middle (a truck, a loader, an asset, a site).
    pub subject: String,
    pub summary: String,
    pub topic: String,
}

/// One site shift report as last published, with when.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftReport {
    pub ts_ms: u64,
    pub site: String,
    pub shift: String,
    pub report: serde_json::Value,
}

#[derive(Default)]
struct Inner {
    /// Per kind, newest first.
    items: BTreeMap<String, VecDeque<RecentItem>>,
    shifts: Vec<ShiftReport>,
    trends: BTreeMap<(String, String), VecDeque<(u64, f64)>>,
}

/// The page's memory, shared by the dispatcher (writer) and the HTTP server.
#[derive(Default)]
pub struct Recent {
    inner: Mutex<Inner>,
}

/// The kind of output the page lists, from the topic's last level.
fn listed_kind(topic: &str) -> Option<&'static str> {
    // Every output passes here: one backwards byte scan, no searcher.
    let last = topic.as_bytes().iter().rposition(|&b| b == b'/').map_or(topic, |i| &topic[i + 1..]);
    ["warning", "alarm", "advice"].into_iter().find(|k| last == *k)
}

impl Recent {
    /// A service output: kept when it is a warning, an alarm, advice or a
    /// weight-loading site shift report; anything else costs a suffix check.
    pub fn record_output(&self, service: &str, topic: &str, payload: &[u8], ts_ms: u64) {
        if let Some(kind) = listed_kind(topic) {
            let json: serde_json::Value = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
            let levels: Vec<&str> = topic.split('/').collect();
            let subject = if levels.len() > 3 && levels[0] == "svc" {
                levels[2..levels.len() - 1].join("/")
            } else {
                String::new()
            };
            let summary = summarize(service, kind, &json, payload);
            self.push(RecentItem {
                ts_ms,
                service: service.to_owned(),
                kind: kind.to_owned(),
                subject,
                summary,
                topic: topic.to_owned(),
            });
        } else if let Some(rest) = topic.strip_prefix("svc/weight-loading/site/") {
            let Some(site) = rest.strip_suffix("/shift") else { return };
            let Ok(report) = serde_json::from_slice::<serde_json::Value>(payload) else { return };
            let shift = report["shift"].as_str().map(str::to_owned).unwrap_or_else(|| report["shift"].to_string());
            let Ok(mut inner) = self.inner.lock() else { return };
            inner.shifts.retain(|r| !(r.site == site && r.shift == shift));
            inner.shifts.insert(0, ShiftReport { ts_ms, site: site.to_owned(), shift, report });
            inner.shifts.truncate(SHIFT_REPORTS);
        }
    }

    /// An agent event (fault, dead letter, rollback, lifecycle change).
    pub fn record_event(&self, topic: &str, json: &str, ts_ms: u64) {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
        let subject = v["service"].as_str().unwrap_or_default().to_owned();
        let summary = summarize("agent", "event", &v, json.as_bytes());
        self.push(RecentItem {
            ts_ms,
            service: "agent".into(),
            kind: "event".into(),
            subject,
            summary,
            topic: topic.to_owned(),
        });
    }

    fn push(&self, item: RecentItem) {
        if let Ok(mut inner) = self.inner.lock() {
            let ring = inner.items.entry(item.kind.clone()).or_default();
            ring.push_front(item);
            ring.truncate(RECENT_ITEMS);
        }
    }

    /// Adds a sample of each site-wide KPI (`(service, name, value)`)
    /// whose last one is at least `every_ms` old (or ahead: the clock was
    /// set back). Called more often than `every_ms`, a KPI's first sample
    /// comes soon after it is first reported, not up to a period later.
    pub fn sample_kpis(&self, ts_ms: u64, every_ms: u64, kpis: impl IntoIterator<Item = (String, String, f64)>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        for (service, name, value) in kpis {
            let key = (service, name);
            if !inner.trends.contains_key(&key) && inner.trends.len() >= MAX_TRENDS {
                continue;
            }
            let series = inner.trends.entry(key).or_default();
            if series.back().is_some_and(|&(last, _)| ts_ms >= last && ts_ms - last < every_ms) {
                continue;
            }
            series.push_back((ts_ms, value));
            while series.len() > TREND_SAMPLES {
                series.pop_front();
            }
        }
    }

    /// Every kind's latest, newest first.
    pub fn items(&self) -> Vec<RecentItem> {
        let mut all: Vec<RecentItem> =
            self.inner.lock().map(|i| i.items.values().flatten().cloned().collect()).unwrap_or_default();
        all.sort_by_key(|r| std::cmp::Reverse(r.ts_ms));
        all
    }

    /// Newest first.
    pub fn shifts(&self) -> Vec<ShiftReport> {
        self.inner.lock().map(|i| i.shifts.clone()).unwrap_or_default()
    }

    /// A KPI's samples, oldest first.
    pub fn trend(&self, service: &str, name: &str) -> Vec<(u64, f64)> {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.trends.get(&(service.to_owned(), name.to_owned())).map(|s| s.iter().copied().collect()))
            .unwrap_or_default()
    }
}

fn num(v: &serde_json::Value, key: &str) -> Option<String> {
    let x = v.get(key)?.as_f64()?;
    Some(if x.fract() == 0.0 && x.abs() < 1e15 { format!("{x:.0}") } else { format!("{x:.1}") })
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One line a site technician reads: the service's own `message` when it
/// writes one, a sentence for traffic encounters and leak alarms, else the
/// payload's plain fields.
fn summarize(service: &str, kind: &str, v: &serde_json::Value, raw: &[u8]) -> String {
    let line = if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
        m.to_owned()
    } else if service == "traffic-awareness" && kind == "warning" {
        let other = text(v, "other").unwrap_or_else(|| "?".into());
        let mut s = if text(v, "state").as_deref() == Some("clear") {
            format!("clear: the encounter with {other} is over")
        } else {
            format!(
                "{} {} {} with {other}",
                text(v, "state").unwrap_or_default(),
                text(v, "severity").unwrap_or_default(),
                text(v, "kind").unwrap_or_else(|| "encounter".into()),
            )
        };
        if let Some(d) = v.get("distance_m").and_then(|d| d.as_f64()) {
            s += &format!(", {d:.1} m apart");
        }
        if let Some(t) = v.get("ttc_s").and_then(|t| t.as_f64()) {
            s += &format!(", collision in {t:.1} s");
        }
        if let Some(r) = text(v, "reason") {
            s += &format!(" ({r})");
        }
        s
    } else if service == "leak-detection" && kind == "alarm" {
        let mut s = format!(
            "leak {} {}: pipe {}",
            text(v, "leak_id").unwrap_or_default(),
            text(v, "event").unwrap_or_default(),
            text(v, "pipe").unwrap_or_else(|| "not located".into()),
        );
        if let Some(f) = v.get("flow_m3h").and_then(|f| f.as_f64()) {
            s += &format!(", {f:.1} m³/h");
        }
        if let Some(c) = v.get("confidence").and_then(|c| c.as_f64()) {
            s += &format!(", confidence {:.0} %", c * 100.0);
        }
        if let Some(r) = text(v, "reason") {
            s += &format!(" ({r})");
        }
        s
    } else if let Some(o) = v.as_object() {
        o.iter()
            .filter(|(_, x)| !x.is_object() && !x.is_array())
            .map(|(k, _)| format!("{k}={}", num(v, k).or_else(|| text(v, k)).unwrap_or_else(|| "null".into())))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    let line = line.replace(['\n', '\r'], " ");
    if line.chars().count() > SUMMARY_CHARS {
        line.chars().take(SUMMARY_CHARS - 1).collect::<String>() + "…"
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_alarms_and_advice_are_kept_newest_first_and_bounded() {
        let r = Recent::default();
        r.record_output("weight-loading", "svc/weight-loading/CDH90/cycle", b"{}", 1);
        assert!(r.items().is_empty(), "a cycle summary is not listed");
        r.record_output("leak-detection", "svc/leak-detection/ltown/alarm", br#"{"event":"start"}"#, 0);
        for i in 0..(RECENT_ITEMS as u64 + 5) {
            r.record_output("weight-loading", "svc/weight-loading/EX1/advice", br#"{"message":"add 30 t"}"#, 1 + i);
        }
        let items = r.items();
        assert_eq!(items.len(), RECENT_ITEMS + 1, "the alarm outlives a flood of advice");
        assert_eq!(items[0].ts_ms, RECENT_ITEMS as u64 + 5);
        assert_eq!((items[0].subject.as_str(), items[0].summary.as_str()), ("EX1", "add 30 t"));
        assert_eq!(items[RECENT_ITEMS].kind, "alarm");
    }

    #[test]
    fn encounters_and_leaks_read_as_sentences() {
        let r = Recent::default();
        r.record_output(
            "traffic-awareness",
            "svc/traffic-awareness/haul-1/warning",
            br#"{"state":"start","severity":"critical","kind":"collision","other":"haul-2","distance_m":40.25,"ttc_s":2.5}"#,
            5,
        );
        r.record_output(
            "leak-detection",
            "svc/leak-detection/ltown/alarm",
            br#"{"event":"start","leak_id":"ltown-3","pipe":null,"flow_m3h":12.34,"confidence":0.8}"#,
            6,
        );
        let items = r.items();
        assert_eq!(items[1].summary, "start critical collision with haul-2, 40.2 m apart, collision in 2.5 s");
        assert_eq!(items[0].summary, "leak ltown-3 start: pipe not located, 12.3 m³/h, confidence 80 %");
        assert_eq!(items[0].subject, "ltown");
        r.record_output(
            "traffic-awareness",
            "svc/traffic-awareness/haul-1/warning",
            br#"{"state":"clear","severity":"none","kind":"proximity","other":"haul-2","distance_m":51.8,"ttc_s":null,"reason":"separated"}"#,
            7,
        );
        assert_eq!(r.items()[0].summary, "clear: the encounter with haul-2 is over, 51.8 m apart (separated)");
    }

    #[test]
    fn the_latest_report_per_shift_is_kept() {
        let r = Recent::default();
        for (i, shift) in ["1", "2", "1"].iter().enumerate() {
            let p = format!(r#"{{"shift":"{shift}","tonnes":{i}}}"#);
            r.record_output("weight-loading", "svc/weight-loading/site/s1/shift", p.as_bytes(), i as u64);
        }
        let s = r.shifts();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].shift.as_str(), s[0].report["tonnes"].as_f64()), ("1", Some(2.0)));
        for i in 0..20 {
            let p = format!(r#"{{"shift":"x{i}"}}"#);
            r.record_output("weight-loading", "svc/weight-loading/site/s1/shift", p.as_bytes(), i);
        }
        assert_eq!(r.shifts().len(), SHIFT_REPORTS);
    }

    #[test]
    fn trends_keep_six_hours_of_minutes() {
        let r = Recent::default();
        for i in 0..(TREND_SAMPLES as u64 + 10) * 12 {
            // Polled every 5 s, sampled every minute.
            r.sample_kpis(i * 5_000, 60_000, [("wl".to_owned(), "tph".to_owned(), i as f64)]);
        }
        let t = r.trend("wl", "tph");
        assert_eq!(t.len(), TREND_SAMPLES);
        assert_eq!(t[0], (600_000, 120.0));
        assert_eq!(t[1].0 - t[0].0, 60_000);
    }
}
