//! Input records (haul cycle, refuel, bucket) read from JSON objects, and
//! the reasons a record is rejected.
//!
//! Field rules: `null`, an absent key and an empty string all mean "absent"
//! (the simulator leaves empty CSV cells out). A present field of the wrong
//! JSON type (a string where a number belongs, a number for the shift...) is
//! `wrong_type`: a producer that mixes types is not trusted for the rest of
//! the record. Unknown extra fields are ignored (newer producers).

use crate::aggregate::Consistency;
use crate::time;
use serde_json::{Map, Value};

/// Which input a rejection is about; prefixes the reason's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Cycle,
    Fuel,
    Bucket,
}

/// Why a record is rejected. Names are stable: counters are
/// `rejected_<name>` and reports key rejected counts by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Topic not `site/{site}/{asset}/{payload|fuel|bucket}`.
    BadTopic,
    /// Not JSON, or not a JSON object.
    MalformedJson,
    MissingField,
    WrongType,
    /// A time string that is not `YYYY-MM-DD HH:MM:SS`.
    BadTimestamp,
    /// The asset in the record differs from the one in the topic.
    AssetMismatch,
    ZeroPayload,
    /// 16-bit scale sentinels (65,519 / 65,527 t) and anything above `sentinel_min_t`.
    SentinelPayload,
    /// Negative, at or below `min_payload_t`, or above `max_payload_t`.
    ImplausiblePayload,
    /// Refuel litres at or below 0 or above `max_refuel_l`.
    ImplausibleLitres,
    /// Bucket weight at or below 0 or above `max_bucket_t`.
    ImplausibleWeight,
    /// A refuel that ends before it starts.
    TimeOrder,
    /// Same truck and `full_time` (cycle) or start time (refuel) as an
    /// accepted record, with different content.
    Duplicate,
    /// A cycle that completed before the truck's last accepted cycle.
    OutOfOrder,
    /// A bucket pass at or below one already loaded, with different content.
    PassOrder,
    /// Truck not in `known_trucks` while `unknown_trucks = "reject"`.
    UnknownTruck,
    /// The record's shift was dropped from the retained window.
    ExpiredShift,
    TooManyTrucks,
    TooManyLoaders,
    /// A number beyond the range of a 64-bit float (`1e400`): the record is
    /// well-formed JSON but holds no usable value.
    NumberOutOfRange,
    /// The record's clock jumped: a cycle whose times lie further apart than
    /// `max_cycle_s`, a refuel longer than that, or any record more than
    /// `max_future_s` ahead of the agent's clock.
    TimeJump,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadTopic => "bad_topic",
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::AssetMismatch => "asset_mismatch",
            Reason::ZeroPayload => "zero_payload",
            Reason::SentinelPayload => "sentinel_payload",
            Reason::ImplausiblePayload => "implausible_payload",
            Reason::ImplausibleLitres => "implausible_litres",
            Reason::ImplausibleWeight => "implausible_weight",
            Reason::TimeOrder => "time_order",
            Reason::Duplicate => "duplicate",
            Reason::OutOfOrder => "out_of_order",
            Reason::PassOrder => "pass_order",
            Reason::UnknownTruck => "unknown_truck",
            Reason::ExpiredShift => "expired_shift",
            Reason::TooManyTrucks => "too_many_trucks",
            Reason::TooManyLoaders => "too_many_loaders",
            Reason::NumberOutOfRange => "number_out_of_range",
            Reason::TimeJump => "time_jump",
        }
    }
}

/// The report and counter name of a rejection: cycle reasons bare, others
/// prefixed (`fuel_duplicate`, `bucket_pass_order`).
pub fn reason_name(kind: Kind, reason: Reason) -> String {
    match kind {
        Kind::Cycle => reason.as_str().to_owned(),
        Kind::Fuel => format!("fuel_{}", reason.as_str()),
        Kind::Bucket => format!("bucket_{}", reason.as_str()),
    }
}

/// A rejected field: the reason and the field's name (for the log).
pub type FieldError = (Reason, &'static str);

/// Typed access to a record's fields.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn raw(&self, key: &str) -> Option<&'a Value> {
        match self.0.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(v) => Some(v),
        }
    }

    pub fn opt_str(&self, key: &'static str) -> Result<Option<&'a str>, FieldError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err((Reason::WrongType, key)),
        }
    }

    pub fn str(&self, key: &'static str) -> Result<&'a str, FieldError> {
        self.opt_str(key)?.ok_or((Reason::MissingField, key))
    }

    /// A JSON number. Strings ("306", "NaN") are wrong types: units and
    /// parsing are the producer's job.
    pub fn opt_num(&self, key: &'static str) -> Result<Option<f64>, FieldError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().filter(|x| x.is_finite()).map(Some).ok_or((Reason::WrongType, key)),
            Some(_) => Err((Reason::WrongType, key)),
        }
    }

    pub fn num(&self, key: &'static str) -> Result<f64, FieldError> {
        self.opt_num(key)?.ok_or((Reason::MissingField, key))
    }

    pub fn opt_time(&self, key: &'static str) -> Result<Option<i64>, FieldError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => time::parse(s).map(Some).ok_or((Reason::BadTimestamp, key)),
        }
    }

    pub fn time(&self, key: &'static str) -> Result<i64, FieldError> {
        self.opt_time(key)?.ok_or((Reason::MissingField, key))
    }
}

/// The durations of a cycle, seconds, in report order.
pub const DURATIONS: [&str; 7] =
    ["queue_s", "spot_s", "loading_s", "empty_travel_s", "full_travel_s", "dump_queue_s", "dumping_s"];

/// Index of `cycle_s` (assign to empty, from the timestamps) after [`DURATIONS`].
pub const CYCLE: usize = 7;

/// One haul cycle as read (values not yet judged).
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    pub truck: String,
    /// Absent: the load still counts for the truck, no loader is credited.
    pub loader: Option<String>,
    pub shift: String,
    pub model: Option<String>,
    pub load_location: Option<String>,
    pub dump_location: Option<String>,
    pub dump_unit: Option<String>,
    pub payload_t: f64,
    pub dump_payload_t: Option<f64>,
    pub assign: Option<i64>,
    pub arrive: Option<i64>,
    pub full: i64,
    pub dump_arrive: Option<i64>,
    /// Absent: no order check, no `cycle_s`.
    pub empty: Option<i64>,
    /// As sent, in [`DURATIONS`] order; judged later.
    pub durations: [Option<f64>; 7],
    pub empty_dist_m: Option<f64>,
    pub full_dist_m: Option<f64>,
}

impl Cycle {
    /// Reads a cycle; `truck` comes from the topic (checked against the record).
    pub fn read(obj: &Map<String, Value>, truck: &str) -> Result<Cycle, FieldError> {
        let f = Fields(obj);
        let s = |k| f.opt_str(k).map(|o| o.map(str::to_owned));
        let mut durations = [None; 7];
        for (slot, key) in durations.iter_mut().zip(DURATIONS) {
            *slot = f.opt_num(key)?;
        }
        Ok(Cycle {
            truck: truck.to_owned(),
            loader: s("loader")?,
            shift: f.str("shift")?.to_owned(),
            model: s("model")?,
            load_location: s("load_location")?,
            dump_location: s("dump_location")?,
            dump_unit: s("dump_unit")?,
            payload_t: f.num("payload_t")?,
            dump_payload_t: f.opt_num("dump_payload_t")?,
            assign: f.opt_time("assign_time")?,
            arrive: f.opt_time("arrive_time")?,
            full: f.time("full_time")?,
            dump_arrive: f.opt_time("dump_arrive_time")?,
            empty: f.opt_time("empty_time")?,
            durations,
            empty_dist_m: f.opt_num("empty_dist_m")?,
            full_dist_m: f.opt_num("full_dist_m")?,
        })
    }

    /// Start of the cycle: the earliest of assign, arrive and full times
    /// (some records have assign after arrive).
    pub fn start(&self) -> i64 {
        [self.assign, self.arrive].into_iter().flatten().fold(self.full, i64::min)
    }

    /// Start of a cycle flagged for time outside its stages: when its empty
    /// travel began (arrival minus `empty_travel_s`, not before assignment),
    /// so hours parked after the assignment do not count as hauling.
    pub fn stage_start(&self) -> i64 {
        match (self.arrive, self.durations[3]) {
            (Some(a), Some(travel)) if travel.is_finite() && travel >= 0.0 => {
                let began = a.saturating_sub(travel.round() as i64);
                let began = self.assign.map_or(began, |s| began.max(s));
                began.min(a).min(self.full)
            }
            _ => self.start(),
        }
    }

    /// End of the cycle: the latest of full, dump arrive and empty times.
    pub fn end(&self) -> i64 {
        [self.dump_arrive, self.empty].into_iter().flatten().fold(self.full, i64::max)
    }

    /// `cycle_s`: assign to empty, seconds, when both times are known.
    pub fn cycle_s(&self) -> Option<f64> {
        Some((self.empty? - self.assign?) as f64)
    }

    /// The timestamp furthest from `full_time`, seconds away (a cycle's clock
    /// that jumped by days shows here).
    pub fn spread_s(&self) -> i64 {
        [self.assign, self.arrive, self.dump_arrive, self.empty]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_sub(self.full).saturating_abs())
            .max()
            .unwrap_or(0)
    }

    /// Time between assignment and empty that lies in none of the seven
    /// stages: `cycle_s` minus the sum of the stage durations, when every
    /// stage is known and valid (0..=`max_duration_s`).
    pub fn unaccounted_s(&self, max_duration_s: f64) -> Option<f64> {
        let total = self.cycle_s()?;
        let mut parts = 0.0;
        for d in self.durations {
            parts += d.filter(|x| (0.0..=max_duration_s).contains(x))?;
        }
        Some(total - parts)
    }

    /// How far the record agrees with itself. Checks, each made only when
    /// its fields are present:
    /// 1. times in order: full <= dump arrival <= empty;
    /// 2. the full travel fits between full and dump arrival;
    /// 3. dump queue + dumping fit between dump arrival and empty;
    /// 4. queue + spot + loading fit between arrival and full;
    /// 5. the dump weight is within [`DUMP_WEIGHT_TOLERANCE_T`] of the payload.
    ///
    /// "Fit" allows [`TIME_TOLERANCE_S`]: times and durations are whole
    /// seconds, each rounded. A stage may be shorter than its interval (delays
    /// are not stages) but not longer.
    pub fn consistency(&self) -> Consistency {
        let mut c = Consistency { fails: 0, checks: 0 };
        let mut check = |ok: bool| {
            c.checks += 1;
            if !ok {
                c.fails += 1;
            }
        };
        if self.dump_arrive.is_some() || self.empty.is_some() {
            let mut order = vec![self.full];
            order.extend(self.dump_arrive);
            order.extend(self.empty);
            check(order.windows(2).all(|w| w[0] <= w[1]));
        }
        let fits = |parts: &[Option<f64>], from: Option<i64>, to: Option<i64>| -> Option<bool> {
            let mut sum = 0.0;
            for p in parts {
                sum += (*p)?;
            }
            Some(sum <= (to? - from?) as f64 + TIME_TOLERANCE_S)
        };
        let d = &self.durations;
        if let Some(ok) = fits(&[d[4]], Some(self.full), self.dump_arrive) {
            check(ok);
        }
        if let Some(ok) = fits(&[d[5], d[6]], self.dump_arrive, self.empty) {
            check(ok);
        }
        if let Some(ok) = fits(&[d[0], d[1], d[2]], self.arrive, Some(self.full)) {
            check(ok);
        }
        if let Some(w) = self.dump_payload_t {
            check((w - self.payload_t).abs() <= DUMP_WEIGHT_TOLERANCE_T);
        }
        c
    }
}

/// Rounding of whole-second times and durations (two roundings).
pub const TIME_TOLERANCE_S: f64 = 2.0;

/// The dump scale and the loader scale weigh one load; beyond this they
/// disagree (the same 1 t as the `dump_payload_mismatch` counter).
pub const DUMP_WEIGHT_TOLERANCE_T: f64 = 1.0;

/// One refuelling event.
#[derive(Debug, Clone, PartialEq)]
pub struct Refuel {
    pub truck: String,
    pub shift: String,
    pub model: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub litres: f64,
    pub queue_min: Option<f64>,
}

impl Refuel {
    pub fn read(obj: &Map<String, Value>, truck: &str) -> Result<Refuel, FieldError> {
        let f = Fields(obj);
        let r = Refuel {
            truck: truck.to_owned(),
            shift: f.str("shift")?.to_owned(),
            model: f.opt_str("model")?.map(str::to_owned),
            start: f.opt_time("start_time")?,
            end: f.opt_time("end_time")?,
            litres: f.num("litres")?,
            queue_min: f.opt_num("queue_min")?,
        };
        if r.start.is_none() && r.end.is_none() {
            return Err((Reason::MissingField, "start_time"));
        }
        Ok(r)
    }

    /// The event's key time: its start, or its end when the start is unknown.
    pub fn key(&self) -> i64 {
        self.start.or(self.end).unwrap_or(0)
    }
}

/// One bucket (pass) weighed by the loader.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub loader: String,
    pub truck: String,
    pub model: Option<String>,
    pub pass: u32,
    pub bucket_t: f64,
    pub time: Option<i64>,
}

impl Bucket {
    pub fn read(obj: &Map<String, Value>, loader: &str) -> Result<Bucket, FieldError> {
        let f = Fields(obj);
        let pass = match f.raw("pass") {
            None => return Err((Reason::MissingField, "pass")),
            Some(v) => v.as_u64().filter(|&n| (1..=1000).contains(&n)).ok_or((Reason::WrongType, "pass"))? as u32,
        };
        Ok(Bucket {
            loader: loader.to_owned(),
            truck: f.str("truck")?.to_owned(),
            model: f.opt_str("model")?.map(str::to_owned),
            pass,
            bucket_t: f.num("bucket_t")?,
            time: f.opt_time("time")?,
        })
    }
}

/// FNV-1a over the payload: recognises an exact redelivery.
pub fn fingerprint(payload: &[u8]) -> u64 {
    let trimmed = payload.trim_ascii();
    trimmed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn field_types_are_judged() {
        let o = obj(
            serde_json::json!({"a": "x", "n": 3, "s": "3", "e": "", "z": null, "t": "2022-11-07 08:00:00", "bt": "8:00"}),
        );
        let f = Fields(&o);
        assert_eq!(f.str("a"), Ok("x"));
        assert_eq!(f.str("e"), Err((Reason::MissingField, "e")));
        assert_eq!(f.opt_num("z"), Ok(None));
        assert_eq!(f.num("n"), Ok(3.0));
        assert_eq!(f.num("s"), Err((Reason::WrongType, "s")));
        assert_eq!(f.str("n"), Err((Reason::WrongType, "n")));
        assert!(f.time("t").is_ok());
        assert_eq!(f.time("bt"), Err((Reason::BadTimestamp, "bt")));
    }
}
