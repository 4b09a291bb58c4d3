//! The network model message (`leak-model`, built by `tools/leak_model.py`) and the
//! calibration learned from a leak-free period.

use crate::linalg::LinModel;
use std::collections::BTreeMap;

/// Network knowledge for localisation, as published on `site/{site}/{network}/leak-model`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelMsg {
    pub version: u32,
    #[serde(default)]
    pub network: String,
    pub sensors: Vec<String>,
    pub nodes: NodesMsg,
    /// Per node, per sensor: pressure change (m) per m³/h of outflow at the node.
    pub sensitivity: Vec<Vec<f64>>,
    pub pipes: PipesMsg,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NodesMsg {
    pub ids: Vec<String>,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PipesMsg {
    pub ids: Vec<String>,
    pub n1: Vec<usize>,
    pub n2: Vec<usize>,
    #[serde(default)]
    pub length_m: Vec<f64>,
}

/// The parsed model: per pipe, its midpoint and its signature (mean of its end nodes').
#[derive(Debug, Clone)]
pub struct NetModel {
    pub sensors: Vec<String>,
    pub sensor_index: BTreeMap<String, usize>,
    pub pipe_ids: Vec<String>,
    pub pipe_xy: Vec<(f64, f64)>,
    /// pipes × sensors, m per m³/h.
    pub pipe_sig: Vec<Vec<f64>>,
}

/// Why a network model was refused (counted as `flag_bad_model` or `flag_model_too_large`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("leak-model: not a model message: {0}")]
    Json(String),
    #[error("leak-model: version {0} (expected 1)")]
    Version(u32),
    #[error("leak-model: {0}")]
    Shape(String),
    #[error("leak-model: {what} is {got}, more than the limit {max}")]
    TooLarge { what: &'static str, got: usize, max: usize },
}

impl ModelError {
    /// The counter this refusal is counted under.
    pub fn counter(&self) -> &'static str {
        match self {
            ModelError::TooLarge { .. } => "flag_model_too_large",
            _ => "flag_bad_model",
        }
    }
}

/// Size limits of an accepted model (from the service config).
#[derive(Debug, Clone, Copy)]
pub struct ModelLimits {
    pub bytes: usize,
    pub nodes: usize,
    pub pipes: usize,
    pub sensors: usize,
}

impl Default for ModelLimits {
    fn default() -> Self {
        // L-Town: 269 KB, 782 nodes, 905 pipes, 33 sensors; the parsed model must stay far
        // below the service's 64 MiB.
        ModelLimits { bytes: 4 << 20, nodes: 20_000, pipes: 40_000, sensors: 512 }
    }
}

impl NetModel {
    pub fn parse(payload: &[u8]) -> Result<NetModel, ModelError> {
        Self::parse_limited(payload, &ModelLimits::default())
    }

    /// Parses and checks a model; sizes beyond `lim` are refused before anything large is
    /// built from them (the byte limit before parsing).
    pub fn parse_limited(payload: &[u8], lim: &ModelLimits) -> Result<NetModel, ModelError> {
        let too = |what, got, max| if got > max { Err(ModelError::TooLarge { what, got, max }) } else { Ok(()) };
        too("the payload (bytes)", payload.len(), lim.bytes)?;
        let m: ModelMsg = serde_json::from_slice(payload).map_err(|e| ModelError::Json(e.to_string()))?;
        if m.version != 1 {
            return Err(ModelError::Version(m.version));
        }
        let nn = m.nodes.ids.len();
        let ns = m.sensors.len();
        let np = m.pipes.ids.len();
        too("the node count", nn, lim.nodes)?;
        too("the pipe count", np, lim.pipes)?;
        too("the sensor count", ns, lim.sensors)?;
        let shape = |s: String| Err(ModelError::Shape(s));
        if ns == 0 || np == 0 || m.nodes.x.len() != nn || m.nodes.y.len() != nn || m.sensitivity.len() != nn {
            return shape(
                "sensors and pipes must not be empty; nodes.ids, x, y and sensitivity must have one entry per node"
                    .into(),
            );
        }
        if m.sensitivity.iter().any(|r| r.len() != ns || r.iter().any(|v| !v.is_finite())) {
            return shape(format!("every sensitivity row must hold {ns} finite numbers"));
        }
        if m.pipes.n1.len() != np || m.pipes.n2.len() != np {
            return shape("pipes.ids, n1 and n2 must have one entry per pipe".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = m.sensors.iter().find(|s| !seen.insert(s.as_str())) {
            return shape(format!("sensor {dup} is listed twice"));
        }
        let mut pipe_xy = Vec::with_capacity(np);
        let mut pipe_sig = Vec::with_capacity(np);
        for k in 0..np {
            let (a, b) = (m.pipes.n1[k], m.pipes.n2[k]);
            if a >= nn || b >= nn {
                return shape(format!("pipe {} refers to a node index out of range", m.pipes.ids[k]));
            }
            pipe_xy.push(((m.nodes.x[a] + m.nodes.x[b]) / 2.0, (m.nodes.y[a] + m.nodes.y[b]) / 2.0));
            // The leak sits mid-pipe: its effect is close to the mean of the two ends'.
            pipe_sig.push((0..ns).map(|i| (m.sensitivity[a][i] + m.sensitivity[b][i]) / 2.0).collect());
        }
        let sensor_index = m.sensors.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        Ok(NetModel { sensors: m.sensors, sensor_index, pipe_ids: m.pipes.ids, pipe_xy, pipe_sig })
    }
}

/// What the calibration learned (stored in state as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub start: String,
    pub end: String,
    pub hours_used: usize,
    pub amr_ids: Vec<String>,
    /// Mean of each AMR over the calibration (m³/h), used when a meter has no value yet.
    pub amr_mean: Vec<f64>,
    pub pressure_ids: Vec<String>,
    /// Hourly inlet flow from the AMR meters and the tank's level change:
    /// features `[amr_1..amr_n (m³/h), Δlevel (m/h)]`.
    pub inflow: LinModel,
    /// Per pressure sensor, hourly mean pressure from `[c, c², level, pump, pump²]` where `c` is
    /// the consumption part of `inflow` (Δlevel = 0).
    pub pressure: Vec<Option<LinModel>>,
    /// Without AMR meters: mean inlet flow (m³/h) per hour of the week (168, Monday 00 first),
    /// the consumption model; empty when the AMR model `inflow` is used.
    #[serde(default)]
    pub profile: Vec<f64>,
}

/// Hour of the week (0 = Monday 00:00..01:00) of an hour index since 1970-01-01 (a Thursday).
pub fn hour_of_week(hour: i64) -> usize {
    ((hour.div_euclid(24) + 3).rem_euclid(7) * 24 + hour.rem_euclid(24)) as usize
}

/// One closed hour's means (stored in state while the calibration window is collected).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Hour {
    pub hour: i64,
    pub flow_steps: u32,
    pub inflow: Option<f64>,
    pub pump: Option<f64>,
    pub level_mean: Option<f64>,
    /// Mean level of the hour's last two steps: the tank term telescopes over hours.
    pub level_end: Option<f64>,
    pub pressure: BTreeMap<String, f64>,
    pub amr: BTreeMap<String, f64>,
}

/// Features of the pressure model.
pub fn pressure_features(c: f64, level: f64, pump: f64) -> Vec<f64> {
    vec![c, c * c, level, pump, pump * pump]
}

impl Calibration {
    /// AMR vector of an hour in calibration order: missing meters take `fill` (previous hour)
    /// or the calibration mean.
    pub fn amr_vector(&self, h: &Hour, fill: &mut Vec<f64>) -> (Vec<f64>, usize) {
        if fill.len() != self.amr_ids.len() {
            *fill = self.amr_mean.clone();
        }
        let mut missing = 0;
        for (k, id) in self.amr_ids.iter().enumerate() {
            match h.amr.get(id) {
                Some(v) => fill[k] = *v,
                None => missing += 1,
            }
        }
        (fill.clone(), missing)
    }

    /// Consumption estimate (m³/h) from the AMR vector.
    pub fn consumption(&self, amr: &[f64]) -> f64 {
        let mut x = amr.to_vec();
        x.push(0.0);
        self.inflow.predict(&x)
    }

    /// Fits from leak-free hours; `None` if too few complete hours.
    pub fn fit(start: &str, end: &str, hours: &[Hour], ridge: f64) -> Result<Calibration, String> {
        let mut amr_ids: Vec<String> = hours.iter().flat_map(|h| h.amr.keys().cloned()).collect();
        amr_ids.sort();
        amr_ids.dedup();
        let mut pressure_ids: Vec<String> = hours.iter().flat_map(|h| h.pressure.keys().cloned()).collect();
        pressure_ids.sort();
        pressure_ids.dedup();
        let mut amr_mean = vec![0.0; amr_ids.len()];
        for (k, id) in amr_ids.iter().enumerate() {
            let v: Vec<f64> = hours.iter().filter_map(|h| h.amr.get(id).copied()).collect();
            amr_mean[k] = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        }
        let mut partial = Calibration {
            start: start.to_owned(),
            end: end.to_owned(),
            hours_used: 0,
            amr_ids,
            amr_mean,
            pressure_ids,
            inflow: LinModel { mu: vec![], sd: vec![], beta: vec![], b0: 0.0, sigma: 0.0 },
            pressure: vec![],
            profile: vec![],
        };
        if partial.amr_ids.is_empty() {
            return Self::fit_profile(partial, hours);
        }
        let mut fill = Vec::new();
        let mut rows = Vec::new();
        let mut y = Vec::new();
        let mut amrs = Vec::new();
        let mut prev: Option<(i64, f64)> = None;
        for h in hours {
            let (amr, _) = partial.amr_vector(h, &mut fill);
            amrs.push(amr.clone());
            if let (Some(q), Some(le), Some((ph, pl))) = (h.inflow, h.level_end, prev) {
                if ph == h.hour - 1 {
                    let mut x = amr;
                    x.push(le - pl);
                    rows.push(x);
                    y.push(q);
                }
            }
            prev = h.level_end.map(|l| (h.hour, l));
        }
        partial.hours_used = rows.len();
        partial.inflow = LinModel::fit(&rows, &y, ridge)
            .ok_or_else(|| format!("calibration: {} usable hours for the flow balance, too few", rows.len()))?;
        let mut pressure = Vec::new();
        for id in &partial.pressure_ids {
            let mut rows = Vec::new();
            let mut y = Vec::new();
            for (h, amr) in hours.iter().zip(&amrs) {
                if let (Some(p), Some(l), Some(pu)) = (h.pressure.get(id), h.level_mean, h.pump) {
                    rows.push(pressure_features(partial.consumption(amr), l, pu));
                    y.push(*p);
                }
            }
            pressure.push(LinModel::fit(&rows, &y, ridge));
        }
        partial.pressure = pressure;
        Ok(partial)
    }

    /// No AMR meters: the consumption model is the time-of-week profile of the inlet flow
    /// (every hour of the week needs a value: at least 7 days); no pressure model.
    fn fit_profile(mut c: Calibration, hours: &[Hour]) -> Result<Calibration, String> {
        let mut sum = [(0.0, 0u32); 168];
        for h in hours {
            if let Some(q) = h.inflow {
                let k = hour_of_week(h.hour);
                sum[k].0 += q;
                sum[k].1 += 1;
            }
        }
        let empty = sum.iter().filter(|s| s.1 == 0).count();
        if empty > 0 {
            return Err(format!("calibration: no AMR meters and {empty} hours of the week without inlet flow"));
        }
        c.profile = sum.iter().map(|(s, n)| s / *n as f64).collect();
        let res: Vec<f64> = hours.iter().filter_map(|h| Some(h.inflow? - c.profile[hour_of_week(h.hour)])).collect();
        let n = res.len() as f64;
        let sigma = (res.iter().map(|r| r * r).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let mean = c.profile.iter().sum::<f64>() / 168.0;
        c.hours_used = res.len();
        c.inflow = LinModel { mu: vec![], sd: vec![], beta: vec![], b0: mean, sigma };
        c.pressure = vec![None; c.pressure_ids.len()];
        Ok(c)
    }
}
