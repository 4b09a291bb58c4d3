//! Running aggregates, one compact record per (truck, shift) and per
//! (loader, shift), plus each loader's recent loads and open bucket session.
//! These are what state keeps; reports and KPIs are computed from them.

use crate::config::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Payload class against the truck's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Below the target band.
    Under,
    /// Inside the band.
    Ok,
    /// Above the band, at or below the overload limit.
    Over,
    /// Above the overload limit.
    Overload,
}

impl Class {
    pub fn of(payload_t: f64, l: &Limits) -> Class {
        if payload_t > l.overload_t {
            Class::Overload
        } else if payload_t > l.high_t {
            Class::Over
        } else if payload_t < l.low_t {
            Class::Under
        } else {
            Class::Ok
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Under => "under",
            Class::Ok => "ok",
            Class::Over => "over",
            Class::Overload => "overload",
        }
    }
}

/// A count and a sum (for means).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub n: u64,
    pub sum: f64,
}

impl Stat {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
    }
    pub fn merge(&mut self, o: &Stat) {
        self.n += o.n;
        self.sum += o.sum;
    }
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
    /// Takes back one value added before (a replaced cycle).
    pub fn remove(&mut self, x: f64) {
        self.n = self.n.saturating_sub(1);
        self.sum = if self.n == 0 { 0.0 } else { self.sum - x };
    }
}

/// A message seen for a key (cycle `full_time` or refuel start), kept to
/// tell an exact redelivery (same fingerprint) from a conflicting duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub t: i64,
    pub fp: u64,
    /// Whether that message was accepted (duplicates are judged against these).
    pub ok: bool,
}

/// Most keys remembered per record; beyond, redeliveries may be rejected as
/// duplicates instead of ignored, but never counted twice.
pub const MAX_SEEN: usize = 2000;

/// How consistent a cycle record is with itself: the choice between two
/// records of one load (a split record in the export) is made on this, never
/// on arrival order. Lower `fails` wins, then more `checks` made, then the
/// earlier dump (a load is dumped once: the next dump is the next load's),
/// then the smaller fingerprint (arbitrary but fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Consistency {
    pub fails: u8,
    pub checks: u8,
}

impl Consistency {
    /// The order key: smaller is the record to keep. Absent times sort last.
    pub fn key(
        self,
        dump_arrive: Option<i64>,
        empty: Option<i64>,
        fp: u64,
    ) -> (u8, std::cmp::Reverse<u8>, i64, i64, u64) {
        let t = |x: Option<i64>| x.unwrap_or(i64::MAX);
        (self.fails, std::cmp::Reverse(self.checks), t(dump_arrive), t(empty), fp)
    }
}

/// What an accepted cycle added to its records, kept so that a more
/// consistent record of the same load can take its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// `full_time` (the cycle's identity with the truck).
    pub t: i64,
    pub fp: u64,
    pub consistency: Consistency,
    pub payload_t: f64,
    pub rated_t: f64,
    pub target_t: f64,
    pub class: u8,
    /// Durations counted in the means ([`TruckShift::dur`] order).
    pub dur: [Option<f64>; 8],
    pub start: i64,
    pub end: i64,
    pub empty: Option<i64>,
    #[serde(default)]
    pub dump_arrive: Option<i64>,
    pub loader: Option<String>,
    /// A flag (e.g. `unaccounted_time`) counted in [`TruckShift::flagged`].
    pub flag: Option<String>,
}

/// Most accepted cycles kept per (truck, shift) for replacement: a 12 h
/// shift of 7-minute cycles is about 100, real ones have 5 to 20. Beyond, a
/// later duplicate of a forgotten cycle is rejected (the first one stays).
pub const MAX_KEPT: usize = 200;

/// One truck in one shift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TruckShift {
    pub model: String,
    pub cycles: u64,
    pub tonnes: f64,
    /// Sum of payload / rated.
    pub ratio_sum: f64,
    /// Cycles per [`Class`].
    pub class: [u64; 4],
    /// Valid durations: the seven of `input::DURATIONS`, then `cycle_s`.
    pub dur: [Stat; 8],
    /// Earliest start and latest end of accepted cycles (span for t/h).
    pub first_start: Option<i64>,
    pub last_end: Option<i64>,
    /// Latest accepted `empty_time` (order check).
    pub last_empty: Option<i64>,
    /// Latest time of anything recorded here (retention order of shifts).
    pub last_time: Option<i64>,
    pub refuels: u64,
    pub litres: f64,
    pub fuel_queue_min: Stat,
    pub rejected: BTreeMap<String, u64>,
    /// Accepted cycles flagged, by reason (counted, kept out of the duration means).
    #[serde(default)]
    pub flagged: BTreeMap<String, u64>,
    pub seen: Vec<Seen>,
    pub fuel_seen: Vec<Seen>,
    /// Accepted cycles, oldest first (at most [`MAX_KEPT`]).
    #[serde(default)]
    pub kept: Vec<Kept>,
}

impl TruckShift {
    pub fn touch_time(&mut self, t: i64) {
        self.last_time = Some(self.last_time.map_or(t, |x| x.max(t)));
    }

    pub fn span_s(&self) -> Option<f64> {
        Some((self.last_end? - self.first_start?) as f64)
    }

    pub fn reject(&mut self, name: &str) {
        *self.rejected.entry(name.to_owned()).or_insert(0) += 1;
    }

    /// Cycles rejected for their payload (zero, sentinel, implausible):
    /// real cycles whose tonnes are unknown.
    pub fn payload_junk(&self) -> u64 {
        ["zero_payload", "sentinel_payload", "implausible_payload"].iter().filter_map(|k| self.rejected.get(*k)).sum()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Cycle rejections (not refuels).
    pub fn cycles_rejected(&self) -> u64 {
        self.rejected.iter().filter(|(k, _)| !k.starts_with("fuel_") && !k.starts_with("bucket_")).map(|(_, n)| n).sum()
    }

    /// Adds an accepted cycle.
    pub fn add(&mut self, k: Kept) {
        self.cycles += 1;
        self.tonnes += k.payload_t;
        self.ratio_sum += k.payload_t / k.rated_t;
        self.class[usize::from(k.class).min(3)] += 1;
        for (s, v) in self.dur.iter_mut().zip(k.dur) {
            if let Some(v) = v {
                s.add(v);
            }
        }
        if let Some(f) = &k.flag {
            *self.flagged.entry(f.clone()).or_insert(0) += 1;
        }
        self.first_start = Some(self.first_start.map_or(k.start, |x| x.min(k.start)));
        self.last_end = Some(self.last_end.map_or(k.end, |x| x.max(k.end)));
        if let Some(e) = k.empty {
            self.last_empty = Some(self.last_empty.map_or(e, |x| x.max(e)));
        }
        self.touch_time(k.end);
        if self.kept.len() >= MAX_KEPT {
            self.kept.remove(0);
        }
        self.kept.push(k);
    }

    /// Takes an accepted cycle back out (it is being replaced). The span and
    /// order times are recomputed from the cycles still kept.
    pub fn remove(&mut self, t: i64) -> Option<Kept> {
        let i = self.kept.iter().position(|k| k.t == t)?;
        let k = self.kept.remove(i);
        self.cycles = self.cycles.saturating_sub(1);
        self.tonnes -= k.payload_t;
        self.ratio_sum -= k.payload_t / k.rated_t;
        let c = &mut self.class[usize::from(k.class).min(3)];
        *c = c.saturating_sub(1);
        for (s, v) in self.dur.iter_mut().zip(k.dur) {
            if let Some(v) = v {
                s.remove(v);
            }
        }
        if let Some(f) = &k.flag {
            if let Some(n) = self.flagged.get_mut(f) {
                *n = n.saturating_sub(1);
            }
            self.flagged.retain(|_, n| *n > 0);
        }
        if self.cycles == 0 {
            // Sums of floats drift; nothing left means exactly zero.
            self.tonnes = 0.0;
            self.ratio_sum = 0.0;
        }
        // Only a complete list can give the span back (MAX_KEPT).
        if self.kept.len() as u64 == self.cycles {
            self.first_start = self.kept.iter().map(|k| k.start).min();
            self.last_end = self.kept.iter().map(|k| k.end).max();
            self.last_empty = self.kept.iter().filter_map(|k| k.empty).max();
        }
        Some(k)
    }
}

/// One loader in one shift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderShift {
    pub cycles: u64,
    pub tonnes: f64,
    pub ratio_sum: f64,
    /// Sum of payload - target.
    pub dev_sum: f64,
    pub class: [u64; 4],
    pub queue_s: Stat,
    pub loading_s: Stat,
}

impl LoaderShift {
    /// Takes back a replaced cycle's share.
    pub fn remove(&mut self, k: &Kept) {
        self.cycles = self.cycles.saturating_sub(1);
        self.tonnes -= k.payload_t;
        self.ratio_sum -= k.payload_t / k.rated_t;
        self.dev_sum -= k.payload_t - k.target_t;
        let c = &mut self.class[usize::from(k.class).min(3)];
        *c = c.saturating_sub(1);
        if let Some(q) = k.dur[0] {
            self.queue_s.remove(q);
        }
        if let Some(q) = k.dur[2] {
            self.loading_s.remove(q);
        }
        if self.cycles == 0 {
            *self = LoaderShift::default();
        }
    }
}

/// One of a loader's recent loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentLoad {
    /// `full_time` of the load.
    pub t: i64,
    pub truck: String,
    pub payload_t: f64,
    pub target_t: f64,
    pub class: u8,
}

/// A loader's open bucket session: the truck being loaded and its passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub truck: String,
    pub model: String,
    /// (pass, bucket_t, fingerprint), in pass order.
    pub passes: Vec<(u32, f64, u64)>,
    /// Passes skipped (lost messages): the weights are incomplete.
    pub missing: u32,
    /// Agent time of the last bucket (expiry by `tick`).
    pub last_ms: u64,
}

impl Session {
    pub fn loaded_t(&self) -> f64 {
        self.passes.iter().map(|p| p.1).sum()
    }
    pub fn last_pass(&self) -> u32 {
        self.passes.last().map_or(0, |p| p.0)
    }
}

/// What a loader keeps beyond its shift records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderRecent {
    /// The latest `advice_window` loads by `full_time`, oldest first.
    pub loads: Vec<RecentLoad>,
    pub session: Option<Session>,
}

impl LoaderRecent {
    /// Inserts in `full_time` order and keeps the latest `window`, so the
    /// window does not depend on the order trucks' messages arrive in.
    pub fn remove(&mut self, truck: &str, t: i64) {
        self.loads.retain(|l| !(l.t == t && l.truck == truck));
    }

    pub fn push(&mut self, load: RecentLoad, window: usize) {
        let at = self.loads.partition_point(|l| l.t <= load.t);
        self.loads.insert(at, load);
        if self.loads.len() > window {
            let extra = self.loads.len() - window;
            self.loads.drain(..extra);
        }
    }
}
