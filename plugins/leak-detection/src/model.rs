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
    /// Correlation of the pressure sensors' hourly residuals in the calibration window
    /// (`pressure_ids` order; empty: not known, each sensor is taken alone). Demand the AMR
    /// meters do not see moves whole areas of the network together.
    #[serde(default)]
    pub pressure_corr: Vec<Vec<f64>>,
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
            pressure_corr: vec![],
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
        partial.pressure_corr = partial.residual_correlation(hours, &amrs);
        Ok(partial)
    }

    /// Pairwise correlation of the fitted pressure models' hourly residuals (over the hours both
    /// sensors have); 0 where a pair has fewer than 24 such hours or a sensor has no model.
    fn residual_correlation(&self, hours: &[Hour], amrs: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = self.pressure_ids.len();
        let res: Vec<Vec<Option<f64>>> = hours
            .iter()
            .zip(amrs)
            .map(|(h, amr)| {
                let c = self.consumption(amr);
                self.pressure_ids
                    .iter()
                    .zip(&self.pressure)
                    .map(|(id, m)| match (m, h.pressure.get(id), h.level_mean, h.pump) {
                        (Some(m), Some(v), Some(l), Some(pu)) => Some(v - m.predict(&pressure_features(c, l, pu))),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let mut corr = vec![vec![0.0; n]; n];
        for i in 0..n {
            corr[i][i] = 1.0;
            for j in 0..i {
                let pairs: Vec<(f64, f64)> = res.iter().filter_map(|r| Some((r[i]?, r[j]?))).collect();
                if pairs.len() < 24 {
                    continue;
                }
                let k = pairs.len() as f64;
                let (mi, mj) = pairs.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / k, b + y / k));
                let (mut sij, mut sii, mut sjj) = (0.0, 0.0, 0.0);
                for (x, y) in &pairs {
                    sij += (x - mi) * (y - mj);
                    sii += (x - mi).powi(2);
                    sjj += (y - mj).powi(2);
                }
                let r = sij / (sii * sjj).sqrt();
                if r.is_finite() {
                    corr[i][j] = r;
                    corr[j][i] = r;
                }
            }
        }
        corr
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_learns_which_sensors_share_their_residuals() {
        // A deterministic generator in [-0.5, 0.5).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let hours: Vec<Hour> = (0..240)
            .map(|k| {
                let amr = 20.0 + 10.0 * ((k % 24) as f64 / 24.0 * std::f64::consts::TAU).sin() + rnd();
                let c = 2.0 * amr;
                // What the meters miss moves s0 and s1 together; s2 has only its own noise.
                let shared = 0.3 * rnd();
                let mut h = Hour {
                    hour: 430_000 + k,
                    flow_steps: 12,
                    inflow: Some(c + 0.1 * rnd()),
                    pump: Some(40.0 + rnd()),
                    level_mean: Some(3.0 + 0.5 * rnd()),
                    level_end: Some(3.0),
                    ..Hour::default()
                };
                h.amr.insert("m1".into(), amr);
                h.pressure.insert("s0".into(), 50.0 - 0.1 * c + shared + 0.05 * rnd());
                h.pressure.insert("s1".into(), 40.0 - 0.2 * c + shared + 0.05 * rnd());
                h.pressure.insert("s2".into(), 30.0 - 0.05 * c + 0.1 * rnd());
                h
            })
            .collect();
        let cal = Calibration::fit("a", "b", &hours, 1e-6).expect("fit");
        assert_eq!(cal.pressure_ids, ["s0", "s1", "s2"]);
        let r = &cal.pressure_corr;
        assert!(r[0][1] > 0.8 && (r[0][1] - r[1][0]).abs() < 1e-12, "{r:?}");
        assert!(r[0][2].abs() < 0.25 && r[1][2].abs() < 0.25, "{r:?}");
        assert!((0..3).all(|i| r[i][i] == 1.0));
    }
}
