//! Leak detection: detects, locates and sizes leaks in a district water network from its
//! SCADA (pressures, inlet flows, AMR demands, tank level), in real time with bounded memory.
//!
//! Input: `site/{site}/{network}/scada` (one JSON message per step of `step_minutes`, 5 by
//! default), the network model
//! `site/{site}/{network}/leak-model` (built by `tools/leak_model.py`, stored in state) and the
//! command `site/{site}/{network}/calibrate` (`{"start": "...", "end": "..."}`).
//! Output: `svc/leak-detection/{site}/alarm` (`start`, `update`, `end`). See README.md.
//!
//! Method, per network, on hourly means:
//! - flow balance: inlet flow − (consumption from the AMR meters + tank level change), both
//!   learned by least squares on a leak-free calibration period: the residual is the leakage
//!   (m³/h); a two-sided CUSUM on it detects new leaks (rise) and repairs (drop);
//! - localisation: the change of the pressure residuals (per sensor, a model of pressure from
//!   consumption, tank level and pump flow, learned on the same period) between the hours
//!   before the onset and after it, matched to each pipe's sensitivity signature (whitened
//!   least squares with the flow-balance size as prior); refined at `refine_after_h`;
//! - leaks present from the first monitored hour (older than the service) show as a baseline
//!   shift against the leak-free calibration: alarmed at once, decomposed greedily into up to
//!   `max_startup_leaks` pipes;
//! - without AMR meters (e.g. LeakDB Hanoi) the consumption model is the calibration's
//!   time-of-week profile of the inlet flow, its scale smoothed over `profile_adapt_h` hours;
//! - calibration hours are stored per day while collected, so a restart continues the window.
//!
//! Config keys (units, defaults) are listed on [`Config`] and in README.md.

pub mod detector;
pub mod input;
pub mod linalg;
pub mod model;
#[cfg(not(target_family = "wasm"))]
pub mod replay;
pub mod time;

use detector::{Detector, Event, Params};
use input::{parse_scada, Checks, Kind, Validator};
use model::{Calibration, Hour, ModelLimits, NetModel};
use outpost_sdk::{export_service, host, Message, Service, ServiceError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A calibration window, `YYYY-MM-DD HH:MM` (network-local), both ends inclusive.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start: String,
    pub end: String,
}

/// Service configuration; every key optional (defaults in `service.toml` and here).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Leak-free period to learn from, applied to every network (a `calibrate` message overrides).
    pub calibration: Option<Window>,
    /// Inlet flow sensors whose sum is the supply (m³/h).
    pub inlet_flows: Vec<String>,
    /// Pump flow sensor (m³/h) and tank level sensor (m).
    pub pump_flow: String,
    pub tank_level: String,
    pub max_networks: usize,
    /// Distinct sensors per network (each keeps validation state and, while calibrating, a
    /// column of the fit); beyond it new ids are refused (`flag_too_many_sensors`).
    pub max_sensors: usize,
    /// Network model limits: bytes, nodes, pipes, sensors (`flag_model_too_large`).
    pub max_model_bytes: usize,
    pub max_model_nodes: usize,
    pub max_model_pipes: usize,
    pub max_model_sensors: usize,
    /// A step more than this many hours away from the latest one is held as a clock jump
    /// (`flag_time_jump`) until `time_jump_confirm_steps` consecutive steps continue it.
    pub max_time_jump_h: i64,
    pub time_jump_confirm_steps: u32,
    pub max_calibration_days: i64,
    /// Sampling step of the SCADA (min, divides 60): 5 for L-Town, 30 for LeakDB.
    pub step_minutes: i64,
    /// Steps (of `60 / step_minutes`) an hour needs with all inlets valid to count.
    pub min_steps_per_hour: u32,
    /// Without AMR meters: hours over which the time-of-week consumption profile's scale
    /// follows the inlet flow (exponential smoothing; frozen while a leak is open).
    pub profile_adapt_h: f64,
    /// Minutes after an hour's end before it is closed (late and reordered steps).
    pub grace_min: i64,
    pub cusum_drift_m3h: f64,
    pub cusum_threshold_m3h: f64,
    /// Hours after an event over which the CUSUM reference level is re-estimated.
    pub relearn_h: i64,
    /// Least size (m³/h) at which a leak alarmed without a location is given a pipe.
    pub locate_min_m3h: f64,
    /// Least slow rise (m³/h, last day's mean over the last reported level) that is reported.
    pub min_growth_m3h: f64,
    pub locate_after_h: i64,
    pub baseline_h: i64,
    pub refine_after_h: Vec<i64>,
    pub merge_ratio: f64,
    pub min_leak_m3h: f64,
    pub max_startup_leaks: usize,
    pub max_open_leaks: usize,
    /// Floor of a sensor's residual sigma in the matching (m).
    pub residual_floor_m: f64,
    /// Hours at the end of the localisation window that size a new leak.
    pub size_hours: i64,
    /// Least fit quality (0..1) for an alarm to name a pipe.
    pub min_confidence: f64,
    /// Weight (0 ≤ w < 1) of the pressure sensors' residual correlation (learnt in the
    /// calibration) in the matching; 0 takes each sensor alone.
    pub residual_correlation: f64,
    pub ridge: f64,
    pub pressure_range_m: (f64, f64),
    pub flow_range_m3h: (f64, f64),
    pub demand_range_lph: (f64, f64),
    pub level_range_m: (f64, f64),
    pub spike_pressure_m: f64,
    pub spike_flow_m3h: f64,
    pub spike_level_m: f64,
    pub frozen_steps: u32,
    pub spike_accept_after: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            calibration: None,
            inlet_flows: vec!["p227".into(), "p235".into()],
            pump_flow: "PUMP_1".into(),
            tank_level: "T1".into(),
            max_networks: 8,
            max_sensors: 1024,
            max_model_bytes: 4 << 20,
            max_model_nodes: 20_000,
            max_model_pipes: 40_000,
            max_model_sensors: 512,
            max_time_jump_h: 12,
            time_jump_confirm_steps: 3,
            max_calibration_days: 62,
            step_minutes: 5,
            min_steps_per_hour: 6,
            profile_adapt_h: 72.0,
            grace_min: 10,
            cusum_drift_m3h: 0.5,
            cusum_threshold_m3h: 12.0,
            relearn_h: 24,
            locate_min_m3h: 8.0,
            min_growth_m3h: 1.5,
            locate_after_h: 12,
            baseline_h: 24,
            refine_after_h: vec![24, 72],
            merge_ratio: 1.5,
            min_leak_m3h: 4.0,
            max_startup_leaks: 6,
            max_open_leaks: 32,
            residual_floor_m: 0.05,
            size_hours: 3,
            min_confidence: 0.6,
            residual_correlation: 0.8,
            ridge: 1e-6,
            pressure_range_m: (0.0, 200.0),
            flow_range_m3h: (-50.0, 5000.0),
            demand_range_lph: (0.0, 1.0e6),
            level_range_m: (-0.5, 20.0),
            spike_pressure_m: 8.0,
            spike_flow_m3h: 150.0,
            spike_level_m: 1.0,
            frozen_steps: 12,
            spike_accept_after: 3,
        }
    }
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, ServiceError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let c: Config =
            serde_json::from_str(json).map_err(|e| ServiceError::BadConfig(format!("leak-detection config: {e}")))?;
        let bad = |m: String| Err(ServiceError::BadConfig(m));
        if c.inlet_flows.is_empty() {
            return bad("inlet_flows must name at least one flow sensor".into());
        }
        if let Some(w) = &c.calibration {
            match (time::parse_minutes(&w.start), time::parse_minutes(&w.end)) {
                (Some(a), Some(b)) if b > a => {}
                _ => return bad(format!("calibration {w:?}: start and end must be YYYY-MM-DD HH:MM, end after start")),
            }
        }
        if !(1..=30).contains(&c.step_minutes) || 60 % c.step_minutes != 0 {
            return bad("step_minutes must divide 60 (1..30)".into());
        }
        let per_hour = (60 / c.step_minutes) as u32;
        if c.max_networks == 0 || c.max_calibration_days < 1 || !(1..=per_hour).contains(&c.min_steps_per_hour) {
            return bad(format!("max_networks ≥ 1, max_calibration_days ≥ 1, min_steps_per_hour 1..{per_hour}"));
        }
        if !(0.0..1.0).contains(&c.residual_correlation) {
            return bad("residual_correlation must be at least 0 and below 1".into());
        }
        if !(c.profile_adapt_h >= 1.0 && c.profile_adapt_h.is_finite()) {
            return bad("profile_adapt_h ≥ 1".into());
        }
        if c.cusum_threshold_m3h <= 0.0 || c.cusum_drift_m3h < 0.0 || c.min_leak_m3h <= 0.0 || c.merge_ratio < 1.0 {
            return bad("cusum_threshold_m3h > 0, cusum_drift_m3h ≥ 0, min_leak_m3h > 0, merge_ratio ≥ 1".into());
        }
        if c.max_sensors == 0 || c.max_time_jump_h < 1 || c.time_jump_confirm_steps == 0 {
            return bad("max_sensors ≥ 1, max_time_jump_h ≥ 1, time_jump_confirm_steps ≥ 1".into());
        }
        if c.locate_after_h < 1 || c.baseline_h < 1 || c.refine_after_h.iter().any(|h| *h < 1) || c.frozen_steps < 2 {
            return bad("locate_after_h, baseline_h, refine_after_h ≥ 1 h; frozen_steps ≥ 2".into());
        }
        if c.refine_after_h.iter().chain([&c.locate_after_h]).any(|h| *h > 24 * 14) || c.max_open_leaks == 0 {
            return bad("refine_after_h and locate_after_h at most 336 h; max_open_leaks ≥ 1".into());
        }
        Ok(c)
    }

    fn params(&self) -> Params {
        Params {
            cusum_drift_m3h: self.cusum_drift_m3h,
            cusum_threshold_m3h: self.cusum_threshold_m3h,
            locate_after_h: self.locate_after_h,
            baseline_h: self.baseline_h,
            refine_after_h: self.refine_after_h.clone(),
            merge_ratio: self.merge_ratio,
            min_leak_m3h: self.min_leak_m3h,
            max_startup_leaks: self.max_startup_leaks,
            max_open_leaks: self.max_open_leaks,
            residual_floor: self.residual_floor_m,
            size_hours: self.size_hours.max(1),
            min_confidence: self.min_confidence,
            relearn_h: self.relearn_h.max(1),
            locate_min_m3h: self.locate_min_m3h,
            min_growth_m3h: self.min_growth_m3h,
            profile_adapt_h: self.profile_adapt_h,
            residual_correlation: self.residual_correlation,
        }
    }

    fn checks(&self) -> Checks {
        Checks {
            pressure_range_m: self.pressure_range_m,
            flow_range_m3h: self.flow_range_m3h,
            demand_range_lph: self.demand_range_lph,
            level_range_m: self.level_range_m,
            spike_pressure_m: self.spike_pressure_m,
            spike_flow_m3h: self.spike_flow_m3h,
            spike_level_m: self.spike_level_m,
            frozen_steps: self.frozen_steps,
            spike_accept_after: self.spike_accept_after,
        }
    }

    fn model_limits(&self) -> ModelLimits {
        ModelLimits {
            bytes: self.max_model_bytes,
            nodes: self.max_model_nodes,
            pipes: self.max_model_pipes,
            sensors: self.max_model_sensors,
        }
    }

    fn ring_hours(&self) -> usize {
        let longest = self.refine_after_h.iter().copied().max().unwrap_or(0).max(self.locate_after_h);
        (self.baseline_h + longest + 2) as usize
    }
}

/// Sums of one open hour.
#[derive(Debug, Default)]
struct HourAcc {
    hour: i64,
    seen: u64,
    inflow: (f64, u32),
    pump: (f64, u32),
    level: (f64, u32),
    level_tail: Vec<(i64, f64)>,
    pressure: BTreeMap<String, (f64, u32)>,
    amr: BTreeMap<String, (f64, u32)>,
}

impl HourAcc {
    fn close(self) -> Hour {
        let mean = |(s, n): (f64, u32)| (n > 0).then(|| s / n as f64);
        let mut tail = self.level_tail;
        tail.sort_by_key(|t| t.0);
        let last: Vec<f64> = tail.iter().rev().take(2).map(|t| t.1).collect();
        Hour {
            hour: self.hour,
            flow_steps: self.inflow.1,
            inflow: mean(self.inflow),
            pump: mean(self.pump),
            level_mean: mean(self.level),
            level_end: (!last.is_empty()).then(|| last.iter().sum::<f64>() / last.len() as f64),
            pressure: self.pressure.into_iter().filter_map(|(k, v)| Some((k, mean(v)?))).collect(),
            amr: self.amr.into_iter().filter_map(|(k, v)| Some((k, mean(v)?))).collect(),
        }
    }
}

enum Calib {
    /// Nothing to learn from yet (no window configured or commanded).
    None,
    Collecting {
        window: Window,
        start: i64,
        end: i64,
        hours: Vec<Hour>,
    },
    Done(Box<Calibration>),
}

struct Network {
    site: String,
    name: String,
    model: Option<NetModel>,
    calib: Calib,
    validator: Validator,
    open: Vec<HourAcc>,
    last_closed: Option<i64>,
    latest: Option<i64>,
    /// A step far from `latest` (clock jump) not yet confirmed: its minute and how many
    /// consecutive steps continued it.
    jump: Option<(i64, u32)>,
    det: Detector,
}

/// The service: one [`Network`] per `(site, network)` of the topics.
pub struct LeakDetection {
    // Shared, so that a step holds them beside its network without copying.
    cfg: Arc<Config>,
    params: Arc<Params>,
    checks: Arc<Checks>,
    nets: BTreeMap<(String, String), Network>,
}

fn key(kind: &str, site: &str, net: &str) -> String {
    format!("{kind}/{site}/{net}")
}

/// State key of the calibration hours collected on day `day` (days since 1970).
fn day_key(site: &str, net: &str, day: i64) -> String {
    format!("calhours/{site}/{net}/{day}")
}

/// Days (since 1970) a window from `start` to `end` (minutes) spans, at most `max_days + 1`.
fn window_days(start: i64, end: i64, max_days: i64) -> std::ops::RangeInclusive<i64> {
    let first = start.div_euclid(1440);
    first..=end.div_euclid(1440).min(first + max_days)
}

fn forget_hours(site: &str, net: &str, start: i64, end: i64, max_days: i64) {
    for d in window_days(start, end, max_days) {
        host::state_delete(&day_key(site, net, d));
    }
}

fn flag(counter: &str, why: &str) {
    host::counter(counter, 1);
    host::debug(why);
}

impl LeakDetection {
    fn network(&mut self, site: &str, name: &str) -> Option<&mut Network> {
        let k = (site.to_owned(), name.to_owned());
        if !self.nets.contains_key(&k) {
            if self.nets.len() >= self.cfg.max_networks {
                flag("flag_too_many_networks", &format!("network {site}/{name}: max_networks reached"));
                return None;
            }
            let net = self.load_network(site, name);
            self.nets.insert(k.clone(), net);
        }
        self.nets.get_mut(&k)
    }

    fn load_network(&self, site: &str, name: &str) -> Network {
        let lim = self.cfg.model_limits();
        let model = host::state_get(&key("model", site, name)).and_then(|b| NetModel::parse_limited(&b, &lim).ok());
        let stored: Option<Calibration> =
            host::state_get(&key("calib", site, name)).and_then(|b| serde_json::from_slice(&b).ok());
        let commanded: Option<Window> =
            host::state_get(&key("window", site, name)).and_then(|b| serde_json::from_slice(&b).ok());
        let window = commanded.or_else(|| self.cfg.calibration.clone());
        let calib = match (stored, window) {
            (Some(c), Some(w)) if c.start == w.start && c.end == w.end => Calib::Done(Box::new(c)),
            (Some(c), None) => Calib::Done(Box::new(c)),
            (_, Some(w)) => collecting(w),
            (None, None) => Calib::None,
        };
        // Hours collected before a restart continue the window.
        let mut calib = calib;
        let mut last_closed = None;
        if let Calib::Collecting { start, end, hours, .. } = &mut calib {
            for d in window_days(*start, *end, self.cfg.max_calibration_days) {
                if let Some(day) =
                    host::state_get(&day_key(site, name, d)).and_then(|b| serde_json::from_slice::<Vec<Hour>>(&b).ok())
                {
                    hours.extend(day);
                }
            }
            hours.sort_by_key(|h| h.hour);
            hours.dedup_by_key(|h| h.hour);
            hours.truncate((self.cfg.max_calibration_days * 24) as usize);
            last_closed = hours.last().map(|h| h.hour);
            if !hours.is_empty() {
                host::info(&format!("{site}/{name}: {} calibration hours reloaded", hours.len()));
            }
        }
        let mut det: Detector = match &calib {
            Calib::Done(_) => host::state_get(&key("detector", site, name))
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| Detector::new(self.cfg.ring_hours())),
            _ => Detector::new(self.cfg.ring_hours()),
        };
        det.ring_cap = self.cfg.ring_hours();
        Network {
            site: site.into(),
            name: name.into(),
            model,
            calib,
            validator: Validator::default(),
            open: Vec::new(),
            last_closed,
            latest: None,
            jump: None,
            det,
        }
    }

    fn on_model(&mut self, site: &str, name: &str, payload: &[u8]) -> Result<(), (String, String)> {
        let m = NetModel::parse_limited(payload, &self.cfg.model_limits())
            .map_err(|e| (e.counter().to_owned(), e.to_string()))?;
        // Refused networks store nothing (state would grow with every new name).
        let Some(net) = self.network(site, name) else { return Ok(()) };
        if let Calib::Done(c) = &net.calib {
            if !c.pressure_ids.is_empty() && !c.pressure_ids.iter().any(|id| m.sensor_index.contains_key(id)) {
                let why =
                    format!("leak-model: none of its {} sensors is a calibrated pressure sensor", m.sensors.len());
                return Err(("flag_bad_model".into(), why));
            }
        }
        // Open leaks keep their pipe by id: a model of another size must not leave them
        // pointing past its pipe list.
        let old = net.model.take();
        for l in &mut net.det.open {
            l.pipe = l.pipe.and_then(|p| {
                let id = old.as_ref()?.pipe_ids.get(p)?;
                m.pipe_ids.iter().position(|q| q == id)
            });
        }
        host::state_set(&key("model", site, name), payload);
        host::info(&format!("leak-model for {site}/{name}: {} pipes, {} sensors", m.pipe_ids.len(), m.sensors.len()));
        net.model = Some(m);
        Ok(())
    }

    fn on_calibrate(&mut self, site: &str, name: &str, payload: &[u8]) -> Result<(), String> {
        let w: Window = serde_json::from_slice(payload).map_err(|e| format!("calibrate: {e}"))?;
        match (time::parse_minutes(&w.start), time::parse_minutes(&w.end)) {
            (Some(a), Some(b)) if b > a => {}
            _ => return Err(format!("calibrate: bad window {w:?}")),
        }
        // Refused networks store nothing.
        if self.network(site, name).is_none() {
            return Ok(());
        }
        let ring = self.cfg.ring_hours();
        let bytes = serde_json::to_vec(&w).map_err(|e| e.to_string())?;
        host::state_set(&key("window", site, name), &bytes);
        host::state_delete(&key("calib", site, name));
        host::state_delete(&key("detector", site, name));
        let max_days = self.cfg.max_calibration_days;
        if let (Some(a), Some(b)) = (time::parse_minutes(&w.start), time::parse_minutes(&w.end)) {
            forget_hours(site, name, a, b, max_days);
        }
        if let Some(net) = self.network(site, name) {
            if let Calib::Collecting { start, end, .. } = &net.calib {
                forget_hours(site, name, *start, *end, max_days);
            }
            host::info(&format!("{site}/{name}: calibration from {} to {}", w.start, w.end));
            net.calib = collecting(w);
            net.det = Detector::new(ring);
            net.open.clear();
            net.last_closed = None;
            net.latest = None;
        }
        Ok(())
    }

    fn on_scada(&mut self, site: &str, name: &str, payload: &[u8]) -> Result<(), (String, String)> {
        let cfg = Arc::clone(&self.cfg);
        let checks = Arc::clone(&self.checks);
        let params = Arc::clone(&self.params);
        let msg = parse_scada(payload).map_err(|e| (e.counter().to_string(), e.to_string()))?;
        let minute = time::parse_minutes(&msg.time)
            .ok_or_else(|| ("flag_bad_time".to_string(), format!("time {:?} is not YYYY-MM-DD HH:MM", msg.time)))?;
        if minute % cfg.step_minutes != 0 {
            let why = format!("time {} is not on a {}-min step", msg.time, cfg.step_minutes);
            return Err(("flag_bad_time".into(), why));
        }
        let Some(net) = self.network(site, name) else { return Ok(()) };
        match &net.calib {
            Calib::None => {
                return Err(("flag_not_calibrated".into(), "no calibration window yet: step skipped".into()))
            }
            Calib::Collecting { start, .. } if minute < *start => {
                return Err(("flag_before_calibration".into(), format!("{} is before the calibration", msg.time)));
            }
            _ => {}
        }
        if let Some(latest) = net.latest {
            if (minute - latest).abs() > cfg.max_time_jump_h * 60 {
                // One wrong clock would otherwise close every open hour (forward) or be late
                // for days (backward); a real outage or clock change is followed by more steps
                // on the new time.
                let n = match net.jump {
                    Some((last, n)) if minute > last && minute - last <= 60 => n + 1,
                    _ => 1,
                };
                if n < cfg.time_jump_confirm_steps {
                    net.jump = Some((minute, n));
                    let why = format!(
                        "{} is {} h from the latest step: held as a clock jump",
                        msg.time,
                        (minute - latest) / 60
                    );
                    return Err(("flag_time_jump".into(), why));
                }
                net.jump = None;
                if minute < latest {
                    // The clock went back for good: a new timeline from here.
                    net.open.clear();
                    net.last_closed = None;
                    net.latest = None;
                }
            } else {
                net.jump = None;
            }
        }
        let hour = minute.div_euclid(60);
        if net.last_closed.is_some_and(|c| hour <= c) || net.open.first().is_some_and(|a| hour < a.hour) {
            return Err(("flag_late".into(), format!("{} arrived after its hour was closed", msg.time)));
        }
        let per_hour = 60 / cfg.step_minutes;
        let slot = minute.rem_euclid(60) / cfg.step_minutes;
        if let Some(acc) = net.open.iter().find(|a| a.hour == hour) {
            if acc.seen & (1 << slot) != 0 {
                return Err(("flag_duplicate".into(), format!("{} already received", msg.time)));
            }
        }
        // Flags of individual values are counted here; the step is used with what is valid.
        let mut inlets = Vec::new();
        let mut pump = None;
        let mut level = None;
        let mut pressures = Vec::new();
        let mut amrs = Vec::new();
        let expected = match &net.calib {
            Calib::Done(c) => Some((&c.pressure_ids, &c.amr_ids)),
            _ => None,
        };
        // Calibrated sensors present in the message (its keys are unique, and
        // so are the calibrated ids): the others are counted missing.
        let mut expected_seen = 0;
        for (kind, group) in &msg.groups {
            for (id, v) in group {
                let inlet = *kind == Kind::Flow && cfg.inlet_flows.contains(id);
                let known = match kind {
                    Kind::Flow => inlet || *id == cfg.pump_flow,
                    Kind::Level => *id == cfg.tank_level,
                    Kind::Pressure => expected.is_none_or(|e| e.0.binary_search(id).is_ok()),
                    Kind::Demand => expected.is_none_or(|e| e.1.binary_search(id).is_ok()),
                };
                expected_seen +=
                    usize::from(known && expected.is_some() && matches!(kind, Kind::Pressure | Kind::Demand));
                if !known {
                    flag(
                        "flag_unknown_sensor",
                        &format!(
                            "{site}/{name} {} {} {id}: not a configured or calibrated sensor",
                            msg.time,
                            kind.name()
                        ),
                    );
                    continue;
                }
                // The configured flows and level are never crowded out.
                let listed = matches!(kind, Kind::Flow | Kind::Level);
                if !listed && net.validator.len() >= cfg.max_sensors && !net.validator.knows(*kind, id) {
                    flag("flag_too_many_sensors", &format!("{site}/{name} {} {id}: max_sensors reached", kind.name()));
                    continue;
                }
                match net.validator.check(&checks, *kind, id, minute, v) {
                    Ok(x) => match kind {
                        Kind::Flow if inlet => inlets.push(x),
                        Kind::Flow if *id == cfg.pump_flow => pump = Some(x),
                        Kind::Level if *id == cfg.tank_level => level = Some(x),
                        Kind::Pressure => pressures.push((id.as_str(), x)),
                        Kind::Demand => amrs.push((id.as_str(), x / 1000.0)),
                        _ => {}
                    },
                    Err(r) => {
                        flag(r.counter(), &format!("{site}/{name} {} {} {id}: {:?} ({v})", msg.time, kind.name(), r))
                    }
                }
            }
        }
        if let Some((p_ids, a_ids)) = expected {
            let flows = msg.groups.iter().find(|g| g.0 == Kind::Flow).map(|g| &g.1);
            let miss = p_ids.len() + a_ids.len() - expected_seen
                + cfg.inlet_flows.iter().filter(|id| !flows.is_some_and(|f| f.contains_key(*id))).count();
            if miss > 0 {
                host::counter("flag_missing", miss as u64);
            }
        }
        if !net.open.iter().any(|a| a.hour == hour) {
            net.open.push(HourAcc { hour, ..Default::default() });
            net.open.sort_by_key(|a| a.hour);
        }
        let Some(acc) = net.open.iter_mut().find(|a| a.hour == hour) else { return Ok(()) };
        acc.seen |= 1 << slot;
        if inlets.len() == cfg.inlet_flows.len() {
            acc.inflow.0 += inlets.iter().sum::<f64>();
            acc.inflow.1 += 1;
        }
        if let Some(p) = pump {
            acc.pump.0 += p;
            acc.pump.1 += 1;
        }
        if let Some(l) = level {
            acc.level.0 += l;
            acc.level.1 += 1;
            // Only the last two steps of the hour end it (55 and 50 min at 5-min steps).
            if slot >= per_hour - 2 {
                acc.level_tail.push((minute, l));
            }
        }
        for (sums, values) in [(&mut acc.pressure, pressures), (&mut acc.amr, amrs)] {
            for (id, x) in values {
                // The key is copied once an hour, when the sensor first reports in it.
                let e = match sums.get_mut(id) {
                    Some(e) => e,
                    None => sums.entry(id.to_owned()).or_default(),
                };
                e.0 += x;
                e.1 += 1;
            }
        }
        net.latest = Some(net.latest.map_or(minute, |l| l.max(minute)));
        let latest = net.latest.unwrap_or(minute);
        // Close hours whose grace has passed.
        let mut closing = Vec::new();
        while net.open.first().is_some_and(|a| latest >= (a.hour + 1) * 60 + cfg.grace_min) {
            closing.push(net.open.remove(0));
        }
        let done_collecting = matches!(&net.calib, Calib::Collecting { end, .. } if minute >= *end);
        if done_collecting {
            closing.append(&mut net.open);
        }
        for acc in closing {
            net.last_closed = Some(acc.hour);
            let h = acc.close();
            if h.flow_steps < cfg.min_steps_per_hour {
                flag(
                    "flag_incomplete_hour",
                    &format!(
                        "{site}/{name}: hour {} has {} valid inflow steps",
                        time::format_minutes(h.hour * 60),
                        h.flow_steps
                    ),
                );
            }
            let h = if h.flow_steps < cfg.min_steps_per_hour { Hour { inflow: None, ..h } } else { h };
            net.on_hour(h, &params, latest, cfg.max_calibration_days);
        }
        if done_collecting {
            net.finish_calibration(cfg.ridge, cfg.max_calibration_days);
        }
        Ok(())
    }
}

fn collecting(w: Window) -> Calib {
    let start = time::parse_minutes(&w.start).unwrap_or(i64::MIN);
    let end = time::parse_minutes(&w.end).unwrap_or(i64::MIN);
    Calib::Collecting { window: w, start, end, hours: Vec::new() }
}

impl Network {
    fn on_hour(&mut self, h: Hour, params: &Params, latest: i64, max_days: i64) {
        match &mut self.calib {
            Calib::None => {}
            Calib::Collecting { hours, .. } => {
                if (hours.len() as i64) < max_days * 24 {
                    let day = h.hour.div_euclid(24);
                    hours.push(h);
                    // Persisted per day so that a restart continues the window.
                    let today: Vec<&Hour> = hours.iter().filter(|x| x.hour.div_euclid(24) == day).collect();
                    if let Ok(b) = serde_json::to_vec(&today) {
                        host::state_set(&day_key(&self.site, &self.name, day), &b);
                    }
                }
            }
            Calib::Done(cal) => {
                let mut missing = 0;
                let events = self.det.on_hour(&h, cal, self.model.as_ref(), params, &mut missing);
                if missing > 0 {
                    host::counter("amr_hours_imputed", missing as u64);
                }
                for ev in events {
                    self.publish(&ev, latest);
                }
                self.kpis(latest);
                if let Ok(b) = serde_json::to_vec(&self.det) {
                    host::state_set(&key("detector", &self.site, &self.name), &b);
                }
            }
        }
    }

    fn finish_calibration(&mut self, ridge: f64, max_days: i64) {
        let Calib::Collecting { window, hours, start, end } = std::mem::replace(&mut self.calib, Calib::None) else {
            return;
        };
        forget_hours(&self.site, &self.name, start, end, max_days);
        match Calibration::fit(&window.start, &window.end, &hours, ridge) {
            Ok(c) => {
                host::info(&format!(
                    "{}/{}: calibrated on {} hours: inflow model sigma {:.2} m3/h, {} pressure sensors, {} meters",
                    self.site,
                    self.name,
                    c.hours_used,
                    c.inflow.sigma,
                    c.pressure_ids.len(),
                    c.amr_ids.len()
                ));
                if let Ok(b) = serde_json::to_vec(&c) {
                    host::state_set(&key("calib", &self.site, &self.name), &b);
                }
                self.calib = Calib::Done(Box::new(c));
            }
            Err(e) => {
                host::warn(&format!("{}/{}: {e}; send a new calibrate command", self.site, self.name));
                host::counter("calibration_failed", 1);
            }
        }
        // Monitoring starts on a fresh clock: the evaluation data may replay earlier times.
        self.det = Detector::new(self.det.ring_cap);
        self.open.clear();
        self.last_closed = None;
        self.latest = None;
    }

    fn publish(&mut self, ev: &Event, now: i64) {
        let (kind, id, reason) = match ev {
            Event::Start { id, reason } => ("start", *id, reason),
            Event::Update { id, reason } => ("update", *id, reason),
            Event::End { id, reason } => ("end", *id, reason),
        };
        let leak = self.det.open.iter().chain(self.det.closed.iter()).find(|l| l.id == id).cloned();
        let Some(l) = leak else { return };
        let (pipe, pos) = match (&self.model, l.pipe) {
            (Some(m), Some(p)) => (
                Some(m.pipe_ids[p].clone()),
                serde_json::json!({"x": m.pipe_xy[p].0, "y": m.pipe_xy[p].1, "frame": "network"}),
            ),
            _ => (None, serde_json::Value::Null),
        };
        let delay_h = (now - l.onset * 60) as f64 / 60.0;
        let body = serde_json::json!({
            "event": kind,
            "leak_id": format!("{}-{}", self.name, l.id),
            "site": self.site,
            "network": self.name,
            "time": time::format_minutes(now),
            "onset": time::format_minutes(l.onset * 60),
            "pipe": pipe,
            "position": pos,
            "flow_m3h": (l.size_m3h * 100.0).round() / 100.0,
            "confidence": (l.confidence * 1000.0).round() / 1000.0,
            "delay_h": (delay_h * 10.0).round() / 10.0,
            "reason": reason,
        });
        if kind == "start" {
            host::kpi_for("time_to_detect_h", &self.name, delay_h);
        }
        let topic = format!("svc/leak-detection/{}/alarm", self.site);
        if let Err(e) = host::publish(&topic, body.to_string().as_bytes()) {
            host::warn(&format!("alarm not published: {e}"));
        }
        host::info(&format!("{} {kind} {:?} {:.1} m3/h: {reason}", self.name, pipe, l.size_m3h));
        if kind == "end" {
            self.det.closed.retain(|c| c.id != id);
        }
    }

    fn kpis(&self, _now: i64) {
        let open = self.det.open.len() as f64;
        let lost: f64 = self.det.open.iter().map(|l| l.size_m3h.max(0.0)).sum::<f64>() * 24.0;
        host::kpi_for("leaks_open", &self.name, open);
        host::kpi_for("water_lost_m3_per_day", &self.name, lost);
        if let Some(level) = self.det.recent_level(24) {
            host::kpi_for("leakage_m3h", &self.name, level);
        }
    }
}

impl Service for LeakDetection {
    fn init(config_json: &str) -> Result<Self, ServiceError> {
        let cfg = Config::parse(config_json)?;
        Ok(LeakDetection {
            params: Arc::new(cfg.params()),
            checks: Arc::new(cfg.checks()),
            cfg: Arc::new(cfg),
            nets: BTreeMap::new(),
        })
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        for msg in batch {
            let (Some("site"), Some(site), Some(net), Some(kind), None) = (
                msg.topic_segment(0),
                msg.topic_segment(1),
                msg.topic_segment(2),
                msg.topic_segment(3),
                msg.topic_segment(4),
            ) else {
                flag("flag_bad_topic", &format!("unexpected topic {}", msg.topic));
                continue;
            };
            let (site, net) = (site.to_owned(), net.to_owned());
            let result = match kind {
                "scada" => self.on_scada(&site, &net, &msg.payload),
                "leak-model" => self.on_model(&site, &net, &msg.payload),
                "calibrate" => self.on_calibrate(&site, &net, &msg.payload).map_err(|e| ("flag_bad_command".into(), e)),
                _ => Err(("flag_bad_topic".into(), format!("unexpected topic {}", msg.topic))),
            };
            if let Err((counter, why)) = result {
                host::counter(&counter, 1);
                if counter == "flag_not_calibrated" || counter == "flag_before_calibration" {
                    host::debug(&format!("{site}/{net}: {why}"));
                } else {
                    host::warn(&format!("{site}/{net}: {why}"));
                }
            }
        }
        Ok(())
    }

    fn tick(&mut self, _now_ms: u64) -> Result<(), ServiceError> {
        Ok(())
    }
}

export_service!(LeakDetection);
