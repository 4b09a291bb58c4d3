//! SCADA message parsing and per-sensor validation (nulls, non-numbers, ranges, spikes,
//! frozen values). Every rejected value is reported with a reason; none raises an alarm.

use serde_json::Value;
use std::collections::BTreeMap;

/// Sensor kinds, with their plausible ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pressure,
    Flow,
    Demand,
    Level,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pressure => "pressure",
            Kind::Flow => "flow",
            Kind::Demand => "demand",
            Kind::Level => "level",
        }
    }
}

/// Why a value was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Null,
    NotANumber,
    OutOfRange,
    Spike,
    Frozen,
}

impl Reject {
    pub fn counter(self) -> &'static str {
        match self {
            Reject::Null => "flag_null",
            Reject::NotANumber => "flag_not_a_number",
            Reject::OutOfRange => "flag_out_of_range",
            Reject::Spike => "flag_spike",
            Reject::Frozen => "flag_frozen",
        }
    }
}

/// Limits of the checks (from the service config).
#[derive(Debug, Clone)]
pub struct Checks {
    pub pressure_range_m: (f64, f64),
    pub flow_range_m3h: (f64, f64),
    pub demand_range_lph: (f64, f64),
    pub level_range_m: (f64, f64),
    pub spike_pressure_m: f64,
    pub spike_flow_m3h: f64,
    pub spike_level_m: f64,
    pub frozen_steps: u32,
    /// After this many consecutive "spikes" the new level is accepted (a real step change).
    pub spike_accept_after: u32,
}

#[derive(Debug, Clone, Default)]
struct SensorState {
    last_ok: Option<(i64, f64)>,
    last_raw: Option<f64>,
    same: u32,
    spikes: u32,
}

/// Validation memory of one network's sensors.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    /// Per kind (`Kind as usize`), so that a sensor is found by its `&str` id.
    sensors: [BTreeMap<String, SensorState>; 4],
}

impl Validator {
    /// Sensors validated so far (each a little memory).
    pub fn len(&self) -> usize {
        self.sensors.iter().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sensors.iter().all(BTreeMap::is_empty)
    }

    pub fn knows(&self, kind: Kind, id: &str) -> bool {
        self.sensors[kind as usize].contains_key(id)
    }

    /// Checks one value at `minute`; `Ok` gives the value to use.
    pub fn check(&mut self, c: &Checks, kind: Kind, id: &str, minute: i64, v: &Value) -> Result<f64, Reject> {
        let x = match v {
            Value::Null => return Err(Reject::Null),
            Value::Number(n) => n.as_f64().ok_or(Reject::NotANumber)?,
            _ => return Err(Reject::NotANumber),
        };
        if !x.is_finite() {
            return Err(Reject::NotANumber);
        }
        let (lo, hi, spike) = match kind {
            Kind::Pressure => (c.pressure_range_m.0, c.pressure_range_m.1, c.spike_pressure_m),
            Kind::Flow => (c.flow_range_m3h.0, c.flow_range_m3h.1, c.spike_flow_m3h),
            Kind::Demand => (c.demand_range_lph.0, c.demand_range_lph.1, f64::INFINITY),
            Kind::Level => (c.level_range_m.0, c.level_range_m.1, c.spike_level_m),
        };
        if x < lo || x > hi {
            return Err(Reject::OutOfRange);
        }
        let sensors = &mut self.sensors[kind as usize];
        // The id is copied only for a sensor seen for the first time.
        let st = match sensors.get_mut(id) {
            Some(st) => st,
            None => sensors.entry(id.to_owned()).or_default(),
        };
        // Frozen: the exact same reading again and again (0 is a normal repeated value for
        // meters and an idle pump, so it is exempt).
        if st.last_raw == Some(x) && x != 0.0 {
            st.same += 1;
        } else {
            st.same = 0;
        }
        st.last_raw = Some(x);
        if st.same + 1 >= c.frozen_steps {
            return Err(Reject::Frozen);
        }
        if let Some((t, last)) = st.last_ok {
            // Only against a recent reading: after a gap any value is a fresh start.
            if minute - t <= 30 && (x - last).abs() > spike {
                st.spikes += 1;
                if st.spikes <= c.spike_accept_after {
                    return Err(Reject::Spike);
                }
            }
        }
        st.spikes = 0;
        st.last_ok = Some((minute, x));
        Ok(x)
    }
}

/// The parts of one SCADA message.
#[derive(Debug)]
pub struct Scada {
    pub time: String,
    pub groups: Vec<(Kind, serde_json::Map<String, Value>)>,
}

/// Why a whole SCADA message was refused; each has its own counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScadaError {
    #[error("not UTF-8 (byte {0})")]
    NotUtf8(usize),
    /// A number JSON can write but f64 cannot hold (1e400): the JSON parser refuses the
    /// whole message, so none of its values can be used.
    #[error("a number beyond the f64 range: {0}")]
    NumberOverflow(String),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Shape(String),
}

impl ScadaError {
    pub fn counter(&self) -> &'static str {
        match self {
            ScadaError::NotUtf8(_) => "flag_not_utf8",
            ScadaError::NumberOverflow(_) => "flag_number_overflow",
            ScadaError::NotJson(_) | ScadaError::Shape(_) => "flag_bad_message",
        }
    }
}

/// Parses the message shape; a missing group is an empty one (all its sensors missing).
pub fn parse_scada(payload: &[u8]) -> Result<Scada, ScadaError> {
    let text = std::str::from_utf8(payload).map_err(|e| ScadaError::NotUtf8(e.valid_up_to()))?;
    let v: Value = serde_json::from_str(text).map_err(|e| {
        if e.to_string().starts_with("number out of range") {
            ScadaError::NumberOverflow(e.to_string())
        } else {
            ScadaError::NotJson(e.to_string())
        }
    })?;
    let shape = |m: &str| ScadaError::Shape(m.to_owned());
    let Value::Object(mut obj) = v else { return Err(shape("not a JSON object")) };
    let time = obj.get("time").and_then(Value::as_str).ok_or_else(|| shape("no \"time\" string"))?.to_owned();
    let mut groups = Vec::new();
    for (key, kind) in [
        ("pressure_m", Kind::Pressure),
        ("flow_m3h", Kind::Flow),
        ("demand_lph", Kind::Demand),
        ("level_m", Kind::Level),
    ] {
        match obj.remove(key) {
            None | Some(Value::Null) => groups.push((kind, serde_json::Map::new())),
            Some(Value::Object(m)) => groups.push((kind, m)),
            Some(_) => return Err(ScadaError::Shape(format!("\"{key}\" is not an object"))),
        }
    }
    Ok(Scada { time, groups })
}
