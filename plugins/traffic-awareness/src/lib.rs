//! Traffic awareness: proximity and collision-course warnings between
//! vehicles and people on a site, and zone violations (no-go areas, speed
//! limits), from positioning's GNSS fixes.
//!
//! Input: `svc/positioning/{asset}/fix` (gpsd TPV JSON; the asset is topic
//! segment 2). Output:
//! - `svc/traffic-awareness/{asset}/warning`: encounter events (`start`,
//!   `escalate`, `clear`), one per side of the pair;
//! - `svc/traffic-awareness/{asset}/zone`: zone violations (`start`, `clear`);
//! - `svc/traffic-awareness/site/{site}/picture`: every live asset, active
//!   encounter and violation, every `picture_interval_s` (from `tick`).
//!
//! Config keys (units and defaults; the manifest's `[config]` holds the same):
//! - `site` ("site-01"): the site name in the picture topic;
//! - `origin` ({lat, lon} degrees; default: the first fix): local frame origin;
//! - `default_radius_m` (2.5 m) and `classes` ([{name, prefix, length_m,
//!   width_m, radius_m}], []): each asset's footprint by longest id prefix,
//!   a rectangle along its heading or a circle ([`footprint`]);
//! - `heading_min_speed_mps` (1 m/s): the heading follows the course only
//!   at this speed or more;
//! - `warn_gap_m` (10 m) / `warn_time_s` (10 s): a warning when the gap
//!   between footprints is predicted to fall to `warn_gap_m`
//!   within `warn_time_s`; `critical_gap_m` (3 m) / `critical_time_s` (4 s): same, critical;
//! - `clear_margin_m` (2 m), `clear_hold_s` (2 s): hysteresis of a clear;
//! - `max_extrapolation_s` (2 s): the most an older fix is projected forward;
//! - `stale_after_s` (5 s): an asset silent this long is dropped;
//! - `picture_interval_s` (1 s);
//! - `max_assets` (1000), `max_encounters` (3000): memory bounds;
//! - `max_speed_mps` (50 m/s): faster fixes are refused as implausible;
//! - `design_closing_speed_mps` (30 m/s): sizes the spatial grid;
//! - `max_site_radius_m` (20000 m): fixes further from the origin are refused;
//! - `zones` ([{name, kind: "no_go"|"speed_limit", max_speed_mps, polygon: [[lat, lon], ...]}], []);
//! - `zone_clear_margin_m` (2 m), `speed_clear_margin_mps` (0.5 m/s): zone hysteresis.
//!
//! The rules (kinematics, severity, lifecycle, staleness) are in
//! [`engine`] and the crate README.

pub mod config;
pub mod engine;
pub mod footprint;
pub mod geo;
pub mod grid;
pub mod kinematics;
pub mod output;
pub mod tpv;

use config::Config;
use engine::{Engine, Saved, Stats};
use outpost_sdk::{export_service, host, Message, Service, ServiceError};
use output::Output;
use std::collections::BTreeMap;
use tpv::{Parsed, Reject};

/// State key holding the open encounters and violations (see [`engine::Saved`]).
const STATE_KEY: &str = "active";
/// Longest asset id accepted from a topic, bytes.
const MAX_ASSET_ID: usize = 128;
/// Rejections logged one by one per call; the rest are summed up.
const LOGGED_REJECTS_PER_CALL: usize = 5;

pub struct TrafficAwareness {
    engine: Engine,
    reported: Stats,
    last_picture_ms: Option<u64>,
}

impl TrafficAwareness {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn ingest(&mut self, m: &Message) -> Result<(), (Reject, String)> {
        // The id names output topics: no wildcards or control characters,
        // and a bounded length (it is kept per asset and in every message).
        let asset = match (m.topic_segment(2), m.topic.split('/').count()) {
            (Some(a), 4) if config::topic_safe(a) && a.len() <= MAX_ASSET_ID => a,
            _ => return Err((Reject::BadTopic, format!("topic '{}'", m.topic.chars().take(200).collect::<String>()))),
        };
        match tpv::parse(&m.payload, self.engine.config().max_speed_mps)? {
            Parsed::NoFix => {
                self.engine.no_fix();
                Ok(())
            }
            Parsed::Fix(f) => self.engine.ingest(asset, &f, m.received_ms),
        }
    }

    /// Publishes the call's outputs, saves the open set, reports counters.
    fn finish(&mut self) -> Result<(), ServiceError> {
        let mut failed = 0u64;
        for o in self.engine.take_outputs() {
            let body = match &o {
                Output::Warning(w) => serde_json::to_vec(w),
                Output::Zone(z) => serde_json::to_vec(z),
            };
            let sent = body.map_err(|e| e.to_string()).and_then(|b| host::publish(&o.topic(), &b));
            if let Err(e) = sent {
                failed += 1;
                host::warn(&format!("publish to {} failed: {e}", o.topic()));
            }
        }
        if let Some(saved) = self.engine.take_saved() {
            match serde_json::to_vec(&saved) {
                Ok(b) => host::state_set(STATE_KEY, &b),
                Err(e) => host::warn(&format!("cannot save the open encounters: {e}")),
            }
        }
        let now = self.engine.stats.clone();
        for ((name, v), (_, was)) in now.named().into_iter().zip(self.reported.named()) {
            if v > was {
                host::counter(name, v - was);
            }
        }
        self.reported = now;
        if failed > 0 {
            host::counter("publish_failed", failed);
        }
        Ok(())
    }

    fn publish_picture(&mut self, now_ms: u64) {
        let pic = self.engine.picture(now_ms);
        let topic = format!("svc/traffic-awareness/site/{}/picture", pic.site);
        let sent = serde_json::to_vec(&pic).map_err(|e| e.to_string()).and_then(|b| host::publish(&topic, &b));
        if let Err(e) = sent {
            host::warn(&format!("publish to {topic} failed: {e}"));
            host::counter("publish_failed", 1);
        }
    }

    fn report_kpis(&mut self) {
        let k = self.engine.kpis();
        host::kpi("assets_tracked", k.assets_tracked as f64);
        host::kpi("encounters_active", k.encounters_active as f64);
        host::kpi("encounters_critical", k.encounters_critical as f64);
        host::kpi("warnings_per_hour", k.warnings_per_hour as f64);
        host::kpi("critical_per_hour", k.critical_per_hour as f64);
        host::kpi("zone_violations_active", k.zone_violations_active as f64);
        host::kpi("zone_violations_per_hour", k.zone_violations_per_hour as f64);
        host::kpi("min_ttc_s", k.min_ttc_s);
        for (asset, n) in &k.per_asset {
            host::kpi_for("encounters_active", asset, *n as f64);
        }
        for (zone, n) in &k.per_zone {
            host::kpi_for("zone_violations_active", zone, *n as f64);
        }
    }
}

impl Service for TrafficAwareness {
    fn init(config: &str) -> Result<Self, ServiceError> {
        let cfg = Config::parse(config).map_err(|e| ServiceError::BadConfig(e.to_string()))?;
        let mut engine = Engine::new(cfg);
        if let Some(bytes) = host::state_get(STATE_KEY) {
            match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => engine.restore(saved),
                // An unreadable save only loses the carry-over, never the service.
                Err(e) => host::warn(&format!("ignoring unreadable saved encounters: {e}")),
            }
        }
        Ok(TrafficAwareness { engine, reported: Stats::default(), last_picture_ms: None })
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        let mut rejected: BTreeMap<&'static str, u64> = BTreeMap::new();
        for m in &batch {
            if let Err((why, detail)) = self.ingest(m) {
                let n: u64 = rejected.values().sum();
                if (n as usize) < LOGGED_REJECTS_PER_CALL {
                    host::warn(&format!("rejected {}: {} ({detail})", m.topic, why.name()));
                }
                *rejected.entry(why.name()).or_default() += 1;
            }
        }
        self.engine.end_of_batch();
        for (why, n) in &rejected {
            host::counter(&format!("rejected_{why}"), *n);
        }
        self.finish()?;
        if rejected.is_empty() {
            return Ok(());
        }
        let total: u64 = rejected.values().sum();
        let list: Vec<String> = rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if total as usize > LOGGED_REJECTS_PER_CALL {
            host::warn(&format!("{total} of {} messages rejected: {}", batch.len(), list.join(", ")));
        }
        Err(ServiceError::BadInput(format!("{total} of {} messages rejected: {}", batch.len(), list.join(", "))))
    }

    fn tick(&mut self, now_ms: u64) -> Result<(), ServiceError> {
        self.engine.tick(now_ms);
        let interval_ms = (self.engine.config().picture_interval_s * 1000.0).round() as u64;
        if self.last_picture_ms.is_none_or(|t| now_ms.saturating_sub(t) >= interval_ms || now_ms < t) {
            self.last_picture_ms = Some(now_ms);
            self.publish_picture(now_ms);
        }
        self.report_kpis();
        self.finish()
    }
}

export_service!(TrafficAwareness);
