//! The site calibration: truck models and their rated payloads, the target
//! band, plausible ranges, the known fleet and window sizes. Every key is
//! optional (the built-in defaults equal the manifest's `[config]`), unknown
//! keys are refused, and every problem is reported at once.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Rated and target payload of one truck model, tonnes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub rated_t: f64,
    pub target_t: f64,
}

/// What happens to records of trucks missing from `known_trucks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTrucks {
    /// Processed, flagged `known: false` and counted (`unknown_truck_records`).
    Accept,
    /// Rejected with reason `unknown_truck`.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub models: BTreeMap<String, ModelSpec>,
    pub default_model: String,
    pub truck_models: BTreeMap<String, String>,
    pub known_trucks: BTreeSet<String>,
    pub unknown_trucks: UnknownTrucks,
    pub target_band_pct: f64,
    pub overload_pct: f64,
    pub min_payload_t: f64,
    pub max_payload_t: f64,
    pub sentinel_min_t: f64,
    pub max_duration_s: f64,
    pub max_cycle_s: f64,
    /// Most time a cycle may hold outside its seven stages (s); beyond, the
    /// cycle is flagged `unaccounted_time` and kept out of the duration means.
    pub max_unaccounted_s: f64,
    /// Most a record's time may run ahead of the agent's clock (s) before it
    /// is a `time_jump`: the site's zone offset (at most 14 h) plus a day.
    pub max_future_s: f64,
    pub min_span_s: f64,
    pub max_refuel_l: f64,
    pub max_fuel_queue_min: f64,
    pub max_bucket_t: f64,
    pub advice_window: usize,
    pub keep_shifts: usize,
    pub max_trucks: usize,
    pub max_loaders: usize,
    pub bucket_timeout_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        let mut models = BTreeMap::new();
        models.insert("KOM 930E".to_owned(), ModelSpec { rated_t: 290.0, target_t: 290.0 });
        Config {
            models,
            default_model: "KOM 930E".into(),
            truck_models: BTreeMap::new(),
            known_trucks: BTreeSet::new(),
            unknown_trucks: UnknownTrucks::Accept,
            target_band_pct: 5.0,
            overload_pct: 110.0,
            min_payload_t: 0.0,
            max_payload_t: 400.0,
            sentinel_min_t: 65_000.0,
            max_duration_s: 14_400.0,
            max_cycle_s: 43_200.0,
            max_unaccounted_s: 3600.0,
            max_future_s: 172_800.0,
            min_span_s: 1800.0,
            max_refuel_l: 10_000.0,
            max_fuel_queue_min: 600.0,
            max_bucket_t: 150.0,
            advice_window: 10,
            keep_shifts: 28,
            max_trucks: 500,
            max_loaders: 100,
            bucket_timeout_s: 1800,
        }
    }
}

/// Payload limits of one truck, tonnes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub rated_t: f64,
    pub target_t: f64,
    /// Lower and upper edge of the target band.
    pub low_t: f64,
    pub high_t: f64,
    /// Above this a load is an overload.
    pub overload_t: f64,
}

impl Config {
    /// Parses the merged config (JSON object); lists every problem at once.
    pub fn parse(json: &str) -> Result<Config, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let root: Value = serde_json::from_str(json).map_err(|e| format!("weight-loading config is not JSON: {e}"))?;
        let Value::Object(obj) = root else {
            return Err("weight-loading config must be a JSON object".into());
        };
        let mut c = Config::default();
        let mut p = Vec::new();
        for (key, v) in &obj {
            let k = key.as_str();
            match k {
                "models" => {
                    if let Some(m) = models(v, &mut p) {
                        c.models = m;
                    }
                }
                "default_model" => set(&mut c.default_model, string(k, v, &mut p)),
                "truck_models" => {
                    if let Some(m) = string_map(k, v, &mut p) {
                        c.truck_models = m;
                    }
                }
                "known_trucks" => {
                    if let Some(l) = string_list(k, v, &mut p) {
                        c.known_trucks = l;
                    }
                }
                "unknown_trucks" => match v.as_str() {
                    Some("accept") => c.unknown_trucks = UnknownTrucks::Accept,
                    Some("reject") => c.unknown_trucks = UnknownTrucks::Reject,
                    _ => p.push(format!("unknown_trucks is {v}; it must be \"accept\" or \"reject\"")),
                },
                "target_band_pct" => set(&mut c.target_band_pct, number(k, v, &mut p)),
                "overload_pct" => set(&mut c.overload_pct, number(k, v, &mut p)),
                "min_payload_t" => set(&mut c.min_payload_t, number(k, v, &mut p)),
                "max_payload_t" => set(&mut c.max_payload_t, number(k, v, &mut p)),
                "sentinel_min_t" => set(&mut c.sentinel_min_t, number(k, v, &mut p)),
                "max_duration_s" => set(&mut c.max_duration_s, number(k, v, &mut p)),
                "max_cycle_s" => set(&mut c.max_cycle_s, number(k, v, &mut p)),
                "max_unaccounted_s" => set(&mut c.max_unaccounted_s, number(k, v, &mut p)),
                "max_future_s" => set(&mut c.max_future_s, number(k, v, &mut p)),
                "min_span_s" => set(&mut c.min_span_s, number(k, v, &mut p)),
                "max_refuel_l" => set(&mut c.max_refuel_l, number(k, v, &mut p)),
                "max_fuel_queue_min" => set(&mut c.max_fuel_queue_min, number(k, v, &mut p)),
                "max_bucket_t" => set(&mut c.max_bucket_t, number(k, v, &mut p)),
                "advice_window" => set(&mut c.advice_window, count(k, v, 1, 1000, &mut p)),
                "keep_shifts" => set(&mut c.keep_shifts, count(k, v, 1, 1000, &mut p)),
                "max_trucks" => set(&mut c.max_trucks, count(k, v, 1, 100_000, &mut p)),
                "max_loaders" => set(&mut c.max_loaders, count(k, v, 1, 10_000, &mut p)),
                "bucket_timeout_s" => set(&mut c.bucket_timeout_s, count(k, v, 1, 86_400, &mut p).map(|n| n as u64)),
                _ => p.push(format!("unknown key '{k}'")),
            }
        }
        c.check(&obj, &mut p);
        if p.is_empty() {
            Ok(c)
        } else {
            Err(format!("weight-loading config has {} problem(s): {}", p.len(), p.join("; ")))
        }
    }

    /// Cross-key checks, on the values that parsed.
    fn check(&self, obj: &Map<String, Value>, p: &mut Vec<String>) {
        let band = self.target_band_pct;
        if !(0.0..50.0).contains(&band) {
            p.push(format!("target_band_pct is {band}; it must be 0 to 50 (percent of target)"));
        }
        if self.overload_pct <= 100.0 || self.overload_pct > 200.0 {
            p.push(format!(
                "overload_pct is {}; it must be above 100 and at most 200 (percent of rated)",
                self.overload_pct
            ));
        }
        if self.min_payload_t < 0.0 {
            p.push(format!("min_payload_t is {}; it must be at least 0", self.min_payload_t));
        }
        if self.max_payload_t <= self.min_payload_t {
            p.push(format!(
                "max_payload_t ({}) must be above min_payload_t ({})",
                self.max_payload_t, self.min_payload_t
            ));
        }
        if self.sentinel_min_t <= self.max_payload_t {
            p.push(format!(
                "sentinel_min_t ({}) must be above max_payload_t ({})",
                self.sentinel_min_t, self.max_payload_t
            ));
        }
        if self.min_span_s < 0.0 {
            p.push(format!("min_span_s is {}; it must be at least 0", self.min_span_s));
        }
        for (k, v) in [
            ("max_duration_s", self.max_duration_s),
            ("max_cycle_s", self.max_cycle_s),
            ("max_unaccounted_s", self.max_unaccounted_s),
            ("max_future_s", self.max_future_s),
            ("max_refuel_l", self.max_refuel_l),
            ("max_fuel_queue_min", self.max_fuel_queue_min),
            ("max_bucket_t", self.max_bucket_t),
        ] {
            if v <= 0.0 {
                p.push(format!("{k} is {v}; it must be above 0"));
            }
        }
        if self.models.is_empty() && obj.contains_key("models") {
            p.push("models is empty: at least the default_model must be rated".into());
        }
        if !self.models.contains_key(&self.default_model) {
            p.push(format!("default_model '{}' is not in models", self.default_model));
        }
        for (truck, model) in &self.truck_models {
            if !self.models.contains_key(model) {
                p.push(format!("truck_models.{truck} is '{model}', which is not in models"));
            }
        }
        if (0.0..50.0).contains(&band) {
            for (name, m) in &self.models {
                let l = self.limits_of(m);
                if l.high_t >= l.overload_t {
                    p.push(format!(
                        "models.{name}: the target band's top ({:.1} t) must be below the overload limit ({:.1} t = overload_pct of rated)",
                        l.high_t, l.overload_t
                    ));
                }
                if l.overload_t > self.max_payload_t {
                    p.push(format!(
                        "models.{name}: the overload limit ({:.1} t) is above max_payload_t ({}): overloads would be rejected as implausible",
                        l.overload_t, self.max_payload_t
                    ));
                }
            }
        }
    }

    pub fn limits_of(&self, m: &ModelSpec) -> Limits {
        let band = self.target_band_pct / 100.0;
        Limits {
            rated_t: m.rated_t,
            target_t: m.target_t,
            low_t: m.target_t * (1.0 - band),
            high_t: m.target_t * (1.0 + band),
            overload_t: m.rated_t * self.overload_pct / 100.0,
        }
    }

    /// The model used for a truck: the record's own `model` when rated here,
    /// else `truck_models`, else `default_model`. The flag says the record
    /// named a model that is not rated.
    pub fn model_for<'a>(&'a self, truck: &str, stated: Option<&'a str>) -> (&'a str, bool) {
        if let Some(m) = stated {
            if self.models.contains_key(m) {
                return (m, false);
            }
        }
        let fallback = self.truck_models.get(truck).map_or(self.default_model.as_str(), String::as_str);
        (fallback, stated.is_some())
    }

    pub fn limits(&self, model: &str) -> Limits {
        // Checked at init: default_model and every truck_models value are rated.
        let spec = self.models.get(model).or_else(|| self.models.get(&self.default_model));
        spec.map_or(Limits { rated_t: f64::NAN, target_t: f64::NAN, low_t: 0.0, high_t: 0.0, overload_t: 0.0 }, |m| {
            self.limits_of(m)
        })
    }

    pub fn is_known(&self, truck: &str) -> bool {
        self.known_trucks.is_empty() || self.known_trucks.contains(truck)
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn number(key: &str, v: &Value, p: &mut Vec<String>) -> Option<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Some(x),
        _ => {
            p.push(format!("{key} is {v}; it must be a number"));
            None
        }
    }
}

fn count(key: &str, v: &Value, min: u64, max: u64, p: &mut Vec<String>) -> Option<usize> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Some(n as usize),
        _ => {
            p.push(format!("{key} is {v}; it must be a whole number from {min} to {max}"));
            None
        }
    }
}

fn string(key: &str, v: &Value, p: &mut Vec<String>) -> Option<String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Some(s.to_owned()),
        _ => {
            p.push(format!("{key} is {v}; it must be a non-empty string"));
            None
        }
    }
}

fn string_list(key: &str, v: &Value, p: &mut Vec<String>) -> Option<BTreeSet<String>> {
    let Some(items) = v.as_array() else {
        p.push(format!("{key} must be a list of strings"));
        return None;
    };
    let mut out = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.is_empty() => {
                out.insert(s.to_owned());
            }
            _ => p.push(format!("{key}[{i}] is {item}; it must be a non-empty string")),
        }
    }
    Some(out)
}

fn string_map(key: &str, v: &Value, p: &mut Vec<String>) -> Option<BTreeMap<String, String>> {
    let Some(items) = v.as_object() else {
        p.push(format!("{key} must be a table of truck = \"model\""));
        return None;
    };
    let mut out = BTreeMap::new();
    for (k, item) in items {
        match item.as_str() {
            Some(s) if !s.is_empty() => {
                out.insert(k.clone(), s.to_owned());
            }
            _ => p.push(format!("{key}.{k} is {item}; it must be a model name")),
        }
    }
    Some(out)
}

fn models(v: &Value, p: &mut Vec<String>) -> Option<BTreeMap<String, ModelSpec>> {
    let Some(items) = v.as_object() else {
        p.push("models must be a table of model = { rated_t, target_t }".into());
        return None;
    };
    let mut out = BTreeMap::new();
    for (name, spec) in items {
        let Some(fields) = spec.as_object() else {
            p.push(format!("models.{name} must be a table {{ rated_t, target_t }}"));
            continue;
        };
        let mut rated = None;
        let mut target = None;
        for (k, x) in fields {
            let slot = match k.as_str() {
                "rated_t" => &mut rated,
                "target_t" => &mut target,
                _ => {
                    p.push(format!("unknown key 'models.{name}.{k}'"));
                    continue;
                }
            };
            match x.as_f64() {
                Some(t) if t.is_finite() && t > 0.0 => *slot = Some(t),
                _ => p.push(format!("models.{name}.{k} is {x}; it must be a number above 0 (tonnes)")),
            }
        }
        match (rated, fields.contains_key("rated_t")) {
            (Some(r), _) => {
                out.insert(name.clone(), ModelSpec { rated_t: r, target_t: target.unwrap_or(r) });
            }
            (None, false) => p.push(format!("models.{name}.rated_t is missing")),
            (None, true) => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(Config::parse("").expect("empty"), Config::default());
        assert_eq!(Config::parse("{}").expect("{}"), Config::default());
    }

    #[test]
    fn limits_follow_rated_and_band() {
        let c = Config::default();
        let l = c.limits("KOM 930E");
        assert_eq!((l.low_t, l.high_t, l.overload_t), (275.5, 304.5, 319.0));
        assert_eq!(c.model_for("CDH1", Some("CAT 793F")), ("KOM 930E", true));
        assert_eq!(c.model_for("CDH1", None), ("KOM 930E", false));
    }
}
