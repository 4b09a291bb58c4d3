//! Weight loading: payload per truck, loader advice, congestion and fuel
//! KPIs, computed live from haul-cycle records.
//!
//! Input (JSON objects; schemas in the crate README):
//! - `site/{site}/{truck}/payload`: one haul cycle when it completes;
//! - `site/{site}/{truck}/fuel`: one refuelling event;
//! - `site/{site}/{loader}/bucket`: one weighed bucket (pass) while loading.
//!
//! Output:
//! - `svc/weight-loading/{truck}/cycle`: summary of each accepted cycle;
//! - `svc/weight-loading/{loader}/advice`: live bucket advice (tonnes still
//!   to add, overload warning) and, after each load, the loader's recent bias;
//! - `svc/weight-loading/{truck}/shift`: running report of a truck in a shift;
//! - `svc/weight-loading/site/{site}/shift`: the site's shift report.
//!
//! KPIs: `tonnes_per_hour`, `payload_ratio`, `overload_share`,
//! `underload_share`, `loader_queue_s`, `fuel_per_tonne`, `rejected_share`
//! (definitions in the manifest and README).
//!
//! Config (JSON, every key optional; defaults = the manifest's `[config]`):
//! - `models` (table model -> `{ rated_t, target_t }`, tonnes; default
//!   `"KOM 930E" = { rated_t = 290, target_t = 290 }`); `target_t` defaults to `rated_t`;
//! - `default_model` ("KOM 930E"): model of trucks whose model is not known;
//! - `truck_models` (table truck -> model, default empty);
//! - `known_trucks` (list, default empty = every truck is known);
//! - `unknown_trucks` ("accept" | "reject", default "accept");
//! - `target_band_pct` (5, % of target): the band counted "ok";
//! - `overload_pct` (110, % of rated): above it a load is an overload;
//! - `min_payload_t` (0, t, exclusive), `max_payload_t` (400, t): plausible payloads;
//! - `sentinel_min_t` (65000, t): scale sentinels from here up;
//! - `max_duration_s` (14400, s): longest valid queue/spot/loading/travel/dump time;
//! - `max_cycle_s` (43200, s): longest valid cycle (assign to empty); times
//!   further apart are a `time_jump`;
//! - `max_unaccounted_s` (3600, s): most time outside a cycle's seven stages
//!   before it is flagged `unaccounted_time` (kept out of the duration means);
//! - `max_future_s` (172800, s): a record further ahead of the agent's clock
//!   is a `time_jump`;
//! - `min_span_s` (1800, s): shortest span that yields a tonnes-per-hour;
//! - `max_refuel_l` (10000, l), `max_fuel_queue_min` (600, min);
//! - `max_bucket_t` (150, t): heaviest plausible bucket;
//! - `advice_window` (10 loads): loads in the loader's recent bias;
//! - `keep_shifts` (28 shifts): shifts kept (state, reports, KPIs);
//! - `max_trucks` (500), `max_loaders` (100): memory bounds;
//! - `bucket_timeout_s` (1800, s): an idle bucket session is dropped by `tick`.

pub mod aggregate;
pub mod config;
pub mod input;
pub mod report;
mod site_kpis;
pub mod store;
pub mod time;

use aggregate::{Class, Kept, LoaderRecent, LoaderShift, RecentLoad, Seen, Session, TruckShift, MAX_SEEN};
use config::{Config, UnknownTrucks};
use input::{fingerprint, reason_name, Bucket, Cycle, Fields, Kind, Reason, Refuel, CYCLE, DURATIONS};
use outpost_sdk::{export_service, host, Message, Service, ServiceError};
use report::{BucketAdvice, CycleSummary, LoadAdvice, SiteShiftReport, TruckShiftReport};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What a call changed: written to state and reported at its end.
#[derive(Debug, Default)]
struct Dirty {
    truck_shifts: BTreeSet<(String, String)>,
    loader_shifts: BTreeSet<(String, String)>,
    recent: BTreeSet<String>,
    shifts: BTreeSet<String>,
    deleted: BTreeSet<String>,
    index: bool,
    all_kpis: bool,
}

pub struct WeightLoading {
    config: Config,
    site: String,
    /// truck -> shift -> record.
    trucks: BTreeMap<String, BTreeMap<String, TruckShift>>,
    /// loader -> shift -> record.
    loaders: BTreeMap<String, BTreeMap<String, LoaderShift>>,
    recent: BTreeMap<String, LoaderRecent>,
    /// Shifts dropped from the window, oldest first (bounded).
    expired: Vec<String>,
    /// Rejections with no (truck, shift) to charge: bad topics, malformed
    /// JSON without a shift, bucket junk, expired shifts, capacity.
    unattributed: BTreeMap<String, u64>,
    dirty: Dirty,
    /// Running totals behind the site KPIs.
    site_totals: site_kpis::SiteTotals,
    out: Vec<(String, Vec<u8>)>,
    counters: BTreeMap<String, u64>,
}

type Judged<T> = Result<T, (Reason, String)>;

impl WeightLoading {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The record of a truck in a shift, if kept.
    pub fn truck_shift(&self, truck: &str, shift: &str) -> Option<&TruckShift> {
        self.trucks.get(truck)?.get(shift)
    }

    /// Every kept (truck, shift) record.
    pub fn truck_shifts(&self) -> impl Iterator<Item = (&str, &str, &TruckShift)> {
        self.trucks.iter().flat_map(|(t, m)| m.iter().map(move |(s, r)| (t.as_str(), s.as_str(), r)))
    }

    pub fn unattributed(&self) -> &BTreeMap<String, u64> {
        &self.unattributed
    }

    fn count(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_owned()).or_insert(0) += n;
    }

    fn is_expired(&self, shift: &str) -> bool {
        self.expired.iter().any(|s| s == shift)
    }

    fn emit<T: serde::Serialize>(&mut self, topic: String, doc: &T) {
        match serde_json::to_vec(doc) {
            Ok(b) => self.out.push((topic, b)),
            Err(e) => host::log(host::Level::Error, &format!("cannot encode {topic}: {e}")),
        }
    }

    /// The record of `truck` in `shift`, created if the bounds allow.
    fn truck_shift_mut(&mut self, truck: &str, shift: &str) -> Option<&mut TruckShift> {
        if self.is_expired(shift) {
            return None;
        }
        if !self.trucks.contains_key(truck) && self.trucks.len() >= self.config.max_trucks {
            return None;
        }
        let shifts = self.trucks.entry(truck.to_owned()).or_default();
        if !shifts.contains_key(shift) {
            self.dirty.index = true;
        }
        self.dirty.truck_shifts.insert((truck.to_owned(), shift.to_owned()));
        self.dirty.shifts.insert(shift.to_owned());
        Some(
            shifts
                .entry(shift.to_owned())
                .or_insert_with(|| TruckShift { model: self.config.default_model.clone(), ..TruckShift::default() }),
        )
    }

    fn loader_known_or_room(&self, loader: &str) -> bool {
        self.recent.contains_key(loader)
            || self.loaders.contains_key(loader)
            || self.recent.len() < self.config.max_loaders
    }

    /// Counts, logs and charges a rejection to its (truck, shift) when both
    /// are known and kept, else to the site.
    fn reject(&mut self, kind: Kind, reason: Reason, truck: Option<&str>, shift: Option<&str>, detail: &str) {
        let name = reason_name(kind, reason);
        self.count(&format!("rejected_{name}"), 1);
        host::warn(&format!(
            "rejected {name}: {detail} (truck {}, shift {})",
            truck.unwrap_or("?"),
            shift.unwrap_or("?")
        ));
        // Trucks outside the fleet get no record of their own.
        let charged = match (kind, truck, shift) {
            _ if reason == Reason::UnknownTruck => false,
            (Kind::Cycle | Kind::Fuel, Some(t), Some(s)) => {
                self.truck_shift_mut(t, s).map(|r| r.reject(&name)).is_some()
            }
            _ => false,
        };
        if !charged {
            *self.unattributed.entry(name).or_insert(0) += 1;
            self.dirty.index = true;
        }
    }

    /// Whether this exact message (key and fingerprint) was seen for the truck.
    fn is_redelivery(&self, kind: Kind, truck: &str, shift: &str, t: i64, fp: u64) -> bool {
        self.truck_shift(truck, shift).is_some_and(|r| {
            let seen = if kind == Kind::Fuel { &r.fuel_seen } else { &r.seen };
            seen.iter().any(|s| s.t == t && s.fp == fp)
        })
    }

    /// Whether an accepted record of `truck` (any kept shift) has this key.
    fn has_accepted(&self, kind: Kind, truck: &str, t: i64) -> bool {
        self.trucks.get(truck).is_some_and(|m| {
            m.values().any(|r| {
                let seen = if kind == Kind::Fuel { &r.fuel_seen } else { &r.seen };
                seen.iter().any(|s| s.t == t && s.ok)
            })
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn remember(&mut self, kind: Kind, truck: &str, shift: &str, t: i64, fp: u64, ok: bool, touch: bool) {
        let Some(r) = self.trucks.get_mut(truck).and_then(|m| m.get_mut(shift)) else {
            return;
        };
        let seen = if kind == Kind::Fuel { &mut r.fuel_seen } else { &mut r.seen };
        if seen.len() < MAX_SEEN {
            seen.push(Seen { t, fp, ok });
        } else if ok {
            // Full: keep accepted keys (they guard against double counting)
            // by dropping the oldest rejected one.
            if let Some(i) = seen.iter().position(|s| !s.ok) {
                seen.remove(i);
                seen.push(Seen { t, fp, ok });
            }
        }
        if touch {
            r.touch_time(t);
        }
    }

    fn ingest(&mut self, m: &Message) {
        let segs: Vec<&str> = m.topic.split('/').collect();
        let kind = match segs.as_slice() {
            ["site", site, asset, kind] if !site.is_empty() && !asset.is_empty() => match *kind {
                "payload" => Some(Kind::Cycle),
                "fuel" => Some(Kind::Fuel),
                "bucket" => Some(Kind::Bucket),
                _ => None,
            },
            _ => None,
        };
        let Some(kind) = kind else {
            self.reject(Kind::Cycle, Reason::BadTopic, None, None, &format!("topic '{}'", m.topic));
            return;
        };
        let (site, asset) = (segs[1], segs[2]);
        if self.site != site {
            // One site per agent; the latest name is the one reported.
            self.site = site.to_owned();
            self.dirty.index = true;
        }
        let obj = match serde_json::from_slice::<Value>(&m.payload) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                self.reject(kind, Reason::MalformedJson, Some(asset), None, "not a JSON object");
                return;
            }
            // serde_json refuses a number beyond f64 (1e400) as a syntax error;
            // it is a value problem of a well-formed record, counted apart.
            Err(e) if e.to_string().starts_with("number out of range") => {
                self.reject(kind, Reason::NumberOutOfRange, Some(asset), None, &format!("{e}"));
                return;
            }
            Err(e) => {
                self.reject(kind, Reason::MalformedJson, Some(asset), None, &format!("not JSON: {e}"));
                return;
            }
        };
        let fp = fingerprint(&m.payload);
        match kind {
            Kind::Cycle | Kind::Fuel => self.ingest_truck_record(kind, asset, &obj, fp, m.received_ms),
            Kind::Bucket => self.ingest_bucket(asset, &obj, fp, m.received_ms),
        }
    }

    /// Cycles and refuels: redelivery check, judgement, then accept or reject.
    fn ingest_truck_record(&mut self, kind: Kind, truck: &str, obj: &Map<String, Value>, fp: u64, now_ms: u64) {
        let shift = obj.get("shift").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let key_fields: &[&str] = if kind == Kind::Fuel { &["start_time", "end_time"] } else { &["full_time"] };
        let key = key_fields.iter().find_map(|k| obj.get(*k).and_then(Value::as_str).and_then(time::parse));
        if let (Some(s), Some(k)) = (&shift, key) {
            if self.is_redelivery(kind, truck, s, k, fp) {
                self.count("redelivered", 1);
                return;
            }
        }
        let judged = if kind == Kind::Fuel {
            self.judge_fuel(truck, shift.as_deref(), obj, now_ms).map(|r| self.accept_fuel(r))
        } else {
            self.judge_cycle(truck, shift.as_deref(), obj, fp, now_ms)
                .map(|(c, replace)| self.accept_cycle(c, fp, replace))
        };
        let (ok, jumped) = match judged {
            Ok(()) => (true, false),
            Err((reason, detail)) => {
                self.reject(kind, reason, Some(truck), shift.as_deref(), &detail);
                (false, reason == Reason::TimeJump)
            }
        };
        if let (Some(s), Some(k)) = (&shift, key) {
            // A jumped clock's time must not make its shift look recent.
            self.remember(kind, truck, s, k, fp, ok, !jumped);
        }
    }

    /// Checks shared by cycles and refuels before the record is read.
    fn judge_common(&self, truck: &str, shift: Option<&str>, obj: &Map<String, Value>) -> Judged<()> {
        if let Some(s) = shift.filter(|s| self.is_expired(s)) {
            return Err((Reason::ExpiredShift, format!("shift {s} is older than the kept window")));
        }
        match Fields(obj).opt_str("truck") {
            Err(_) => return Err((Reason::WrongType, "field truck".into())),
            Ok(Some(t)) if t != truck => {
                return Err((Reason::AssetMismatch, format!("record truck '{t}' on the topic of '{truck}'")))
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks after the record is read: fleet list and bounds.
    fn judge_fleet(&self, truck: &str, loader: Option<&str>) -> Judged<()> {
        if self.config.unknown_trucks == UnknownTrucks::Reject && !self.config.is_known(truck) {
            return Err((Reason::UnknownTruck, format!("truck '{truck}' is not in known_trucks")));
        }
        if !self.trucks.contains_key(truck) && self.trucks.len() >= self.config.max_trucks {
            return Err((Reason::TooManyTrucks, format!("already {} trucks (max_trucks)", self.trucks.len())));
        }
        if let Some(l) = loader.filter(|l| !self.loader_known_or_room(l)) {
            return Err((Reason::TooManyLoaders, format!("loader '{l}' over max_loaders")));
        }
        Ok(())
    }

    /// A record more than `max_future_s` ahead of the agent's clock (when the
    /// agent stamped one: `received_ms` > 0).
    fn judge_future(&self, latest: i64, now_ms: u64) -> Judged<()> {
        if now_ms == 0 {
            return Ok(());
        }
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        if (latest.saturating_sub(now) as f64) > self.config.max_future_s {
            return Err((
                Reason::TimeJump,
                format!("time {} is more than max_future_s ahead of the agent's clock", time::format(latest)),
            ));
        }
        Ok(())
    }

    /// The accepted cycle of `truck` with this `full_time`: its shift and record.
    fn accepted_cycle(&self, truck: &str, t: i64) -> Option<(&str, &Kept)> {
        self.trucks.get(truck)?.iter().find_map(|(s, r)| r.kept.iter().find(|k| k.t == t).map(|k| (s.as_str(), k)))
    }

    /// The truck's latest accepted `empty_time`.
    fn last_empty(&self, truck: &str) -> i64 {
        self.trucks.get(truck).and_then(|m| m.values().filter_map(|r| r.last_empty).max()).unwrap_or(i64::MIN)
    }

    /// Judges a cycle; `Ok` carries the shift of an accepted, less consistent
    /// record of the same load that this one replaces.
    fn judge_cycle(
        &self,
        truck: &str,
        shift: Option<&str>,
        obj: &Map<String, Value>,
        fp: u64,
        now_ms: u64,
    ) -> Judged<(Cycle, Option<String>)> {
        self.judge_common(truck, shift, obj)?;
        let c = Cycle::read(obj, truck).map_err(|(r, f)| (r, format!("field {f}")))?;
        let spread = c.spread_s();
        if spread as f64 > self.config.max_cycle_s {
            return Err((
                Reason::TimeJump,
                format!("times {spread} s from full_time {} (max_cycle_s)", time::format(c.full)),
            ));
        }
        self.judge_future(c.end(), now_ms)?;
        let p = c.payload_t;
        let cfg = &self.config;
        if p == 0.0 {
            return Err((Reason::ZeroPayload, "payload_t is 0".into()));
        }
        if p >= cfg.sentinel_min_t {
            return Err((Reason::SentinelPayload, format!("payload_t {p} is a scale sentinel")));
        }
        if p <= cfg.min_payload_t || p > cfg.max_payload_t {
            return Err((
                Reason::ImplausiblePayload,
                format!("payload_t {p} outside ({}, {}] t", cfg.min_payload_t, cfg.max_payload_t),
            ));
        }
        // A split record: the export joined one load with two dumps. The
        // record that agrees with itself is kept, whichever came first.
        let mut replace = None;
        if self.has_accepted(Kind::Cycle, truck, c.full) {
            let mine = c.consistency();
            match self.accepted_cycle(truck, c.full) {
                Some((s, k))
                    if mine.key(c.dump_arrive, c.empty, fp) < k.consistency.key(k.dump_arrive, k.empty, k.fp) =>
                {
                    replace = Some(s.to_owned())
                }
                Some((_, k)) => {
                    return Err((
                        Reason::Duplicate,
                        format!(
                            "another cycle with full_time {} is as consistent or more ({} of {} checks failed, here {} of {})",
                            time::format(c.full),
                            k.consistency.fails,
                            k.consistency.checks,
                            mine.fails,
                            mine.checks
                        ),
                    ))
                }
                None => {
                    return Err((Reason::Duplicate, format!("another cycle with full_time {}", time::format(c.full))))
                }
            }
        }
        // A replacement corrects a load already accepted in its place in the
        // truck's sequence: it is not a late cycle.
        let last_empty = if replace.is_some() { i64::MIN } else { self.last_empty(truck) };
        if let Some(e) = c.empty.filter(|e| *e < last_empty) {
            return Err((
                Reason::OutOfOrder,
                format!("empty_time {} before the last accepted {}", time::format(e), time::format(last_empty)),
            ));
        }
        self.judge_fleet(truck, c.loader.as_deref())?;
        Ok((c, replace))
    }

    fn judge_fuel(&self, truck: &str, shift: Option<&str>, obj: &Map<String, Value>, now_ms: u64) -> Judged<Refuel> {
        self.judge_common(truck, shift, obj)?;
        let r = Refuel::read(obj, truck).map_err(|(r, f)| (r, format!("field {f}")))?;
        if let (Some(s), Some(e)) = (r.start, r.end) {
            if e < s {
                return Err((Reason::TimeOrder, "end_time before start_time".into()));
            }
            if e.saturating_sub(s) as f64 > self.config.max_cycle_s {
                return Err((Reason::TimeJump, format!("refuel lasting {} s (max_cycle_s)", e.saturating_sub(s))));
            }
        }
        self.judge_future(r.end.unwrap_or(r.key()), now_ms)?;
        if r.litres <= 0.0 || r.litres > self.config.max_refuel_l {
            return Err((
                Reason::ImplausibleLitres,
                format!("litres {} outside (0, {}]", r.litres, self.config.max_refuel_l),
            ));
        }
        if self.has_accepted(Kind::Fuel, truck, r.key()) {
            return Err((Reason::Duplicate, format!("another refuel starting {}", time::format(r.key()))));
        }
        self.judge_fleet(truck, None)?;
        Ok(r)
    }

    /// Takes back an accepted cycle that a more consistent record of the
    /// same load replaces: it becomes a `duplicate` rejection of its shift.
    fn unaccept(&mut self, truck: &str, shift: &str, t: i64) {
        let Some(r) = self.trucks.get_mut(truck).and_then(|m| m.get_mut(shift)) else { return };
        let Some(k) = r.remove(t) else { return };
        r.reject(Reason::Duplicate.as_str());
        for s in r.seen.iter_mut().filter(|s| s.t == t && s.fp == k.fp) {
            s.ok = false;
        }
        self.dirty.truck_shifts.insert((truck.to_owned(), shift.to_owned()));
        self.dirty.shifts.insert(shift.to_owned());
        if let Some(loader) = &k.loader {
            if let Some(ls) = self.loaders.get_mut(loader).and_then(|m| m.get_mut(shift)) {
                ls.remove(&k);
                self.dirty.loader_shifts.insert((loader.clone(), shift.to_owned()));
            }
            if let Some(recent) = self.recent.get_mut(loader) {
                recent.remove(truck, t);
                self.dirty.recent.insert(loader.clone());
            }
        }
        self.count("rejected_duplicate", 1);
        self.count("cycles_replaced", 1);
        host::warn(&format!(
            "rejected duplicate: cycle of {truck} with full_time {} replaced by a more consistent record (shift {shift})",
            time::format(t)
        ));
    }

    fn accept_cycle(&mut self, c: Cycle, fp: u64, replace: Option<String>) {
        if let Some(shift) = &replace {
            self.unaccept(&c.truck, shift, c.full);
        }
        let cfg = &self.config;
        let (model, unrated) = cfg.model_for(&c.truck, c.model.as_deref());
        let model = model.to_owned();
        let l = cfg.limits(&model);
        let max_d = cfg.max_duration_s;
        let mut valid = [None; 8];
        for (v, raw) in valid.iter_mut().zip(c.durations) {
            *v = raw.filter(|x| (0.0..=max_d).contains(x));
        }
        valid[CYCLE] = c.cycle_s().filter(|x| (0.0..=cfg.max_cycle_s).contains(x));
        // Hours in none of the stages: the record spans a stop (break, shift
        // change, parking), not a haul; its times say nothing of hauling.
        let unaccounted = c.unaccounted_s(max_d);
        let flag = unaccounted.filter(|u| *u > cfg.max_unaccounted_s).map(|_| "unaccounted_time");
        let known = cfg.is_known(&c.truck);
        if unrated {
            self.count("unknown_model", 1);
        }
        if !known {
            self.count("unknown_truck_records", 1);
        }
        for (i, name) in DURATIONS.iter().chain(["cycle_s"].iter()).enumerate() {
            let raw = if i == CYCLE { c.cycle_s() } else { c.durations[i] };
            if raw.is_some() && valid[i].is_none() {
                self.count(&format!("dropped_{name}"), 1);
            }
        }
        if c.dump_payload_t.is_some_and(|d| (d - c.payload_t).abs() > input::DUMP_WEIGHT_TOLERANCE_T) {
            self.count("dump_payload_mismatch", 1);
        }
        if let Some(f) = flag {
            self.count(&format!("flagged_{f}"), 1);
            host::warn(&format!(
                "flagged {f}: cycle of {} with full_time {} has {:.0} s outside its stages",
                c.truck,
                time::format(c.full),
                unaccounted.unwrap_or(0.0)
            ));
        }
        self.count("cycles_accepted", 1);
        let class = Class::of(c.payload_t, &l);
        let kept = Kept {
            t: c.full,
            fp,
            consistency: c.consistency(),
            payload_t: c.payload_t,
            rated_t: l.rated_t,
            target_t: l.target_t,
            class: class.index() as u8,
            dur: if flag.is_some() { [None; 8] } else { valid },
            start: if flag.is_some() { c.stage_start() } else { c.start() },
            end: c.end(),
            empty: c.empty,
            dump_arrive: c.dump_arrive,
            loader: c.loader.clone(),
            flag: flag.map(str::to_owned),
        };
        let means = kept.dur;
        if let Some(r) = self.truck_shift_mut(&c.truck, &c.shift) {
            r.model.clone_from(&model);
            r.add(kept);
        }
        let mut summary = CycleSummary::new(&c, &model, &l, valid);
        summary.flag = flag;
        summary.unaccounted_s = unaccounted;
        summary.replaces_earlier = replace.is_some();
        self.emit(format!("svc/weight-loading/{}/cycle", c.truck), &summary);
        match c.loader.as_deref() {
            Some(loader) => self.credit_loader(loader, &c, &l, class, &means),
            // Still a weighed load of the truck; nothing to tell a loader.
            None => self.count("cycles_without_loader", 1),
        }
    }

    /// The loader's share of an accepted cycle: shift record, recent
    /// window, bucket session closed, advice published.
    fn credit_loader(&mut self, loader: &str, c: &Cycle, l: &config::Limits, class: Class, valid: &[Option<f64>; 8]) {
        let (band, window) = (self.config.target_band_pct, self.config.advice_window);
        let ls = self.loaders.entry(loader.to_owned()).or_default();
        if !ls.contains_key(&c.shift) {
            self.dirty.index = true;
        }
        let ls = ls.entry(c.shift.clone()).or_default();
        ls.cycles += 1;
        ls.tonnes += c.payload_t;
        ls.ratio_sum += c.payload_t / l.rated_t;
        ls.dev_sum += c.payload_t - l.target_t;
        ls.class[class.index()] += 1;
        if let Some(q) = valid[0] {
            ls.queue_s.add(q);
        }
        if let Some(q) = valid[2] {
            ls.loading_s.add(q);
        }
        self.dirty.loader_shifts.insert((loader.to_owned(), c.shift.clone()));
        if !self.recent.contains_key(loader) {
            self.dirty.index = true;
        }
        let recent = self.recent.entry(loader.to_owned()).or_default();
        recent.push(
            RecentLoad {
                t: c.full,
                truck: c.truck.clone(),
                payload_t: c.payload_t,
                target_t: l.target_t,
                class: class.index() as u8,
            },
            window,
        );
        // The truck's weight at the scale closes the loader's bucket session.
        let buckets = match &recent.session {
            Some(s) if s.truck == c.truck => Some(s.loaded_t()),
            _ => None,
        };
        if buckets.is_some() {
            recent.session = None;
        }
        let advice = LoadAdvice::new(loader, c, l, band, recent, buckets);
        self.dirty.recent.insert(loader.to_owned());
        self.emit(format!("svc/weight-loading/{loader}/advice"), &advice);
    }

    fn accept_fuel(&mut self, f: Refuel) {
        let max_q = self.config.max_fuel_queue_min;
        if !self.config.is_known(&f.truck) {
            self.count("unknown_truck_records", 1);
        }
        let q = f.queue_min;
        if q.is_some_and(|q| !(0.0..=max_q).contains(&q)) {
            self.count("dropped_fuel_queue_min", 1);
        }
        self.count("refuels_accepted", 1);
        if let Some(r) = self.truck_shift_mut(&f.truck, &f.shift) {
            r.refuels += 1;
            r.litres += f.litres;
            if let Some(q) = q.filter(|q| (0.0..=max_q).contains(q)) {
                r.fuel_queue_min.add(q);
            }
            r.touch_time(f.end.unwrap_or(f.key()));
        }
    }

    fn ingest_bucket(&mut self, loader: &str, obj: &Map<String, Value>, fp: u64, now_ms: u64) {
        // An exact redelivery of a bucket of the open session.
        if self.recent.get(loader).and_then(|r| r.session.as_ref()).is_some_and(|s| s.passes.iter().any(|p| p.2 == fp))
        {
            self.count("redelivered", 1);
            return;
        }
        match self.judge_bucket(loader, obj) {
            Ok(b) => self.accept_bucket(b, fp, now_ms),
            Err((reason, detail)) => {
                self.reject(Kind::Bucket, reason, None, None, &format!("loader {loader}: {detail}"))
            }
        }
    }

    fn judge_bucket(&self, loader: &str, obj: &Map<String, Value>) -> Judged<Bucket> {
        match Fields(obj).opt_str("loader") {
            Err(_) => return Err((Reason::WrongType, "field loader".into())),
            Ok(Some(l)) if l != loader => {
                return Err((Reason::AssetMismatch, format!("record loader '{l}' on the topic of '{loader}'")))
            }
            _ => {}
        }
        let b = Bucket::read(obj, loader).map_err(|(r, f)| (r, format!("field {f}")))?;
        if b.bucket_t <= 0.0 || b.bucket_t > self.config.max_bucket_t {
            return Err((
                Reason::ImplausibleWeight,
                format!("bucket_t {} outside (0, {}]", b.bucket_t, self.config.max_bucket_t),
            ));
        }
        if let Some(s) = self.recent.get(loader).and_then(|r| r.session.as_ref()) {
            if s.truck == b.truck && b.pass != 1 && b.pass <= s.last_pass() {
                return Err((Reason::PassOrder, format!("pass {} after pass {}", b.pass, s.last_pass())));
            }
        }
        if !self.loader_known_or_room(loader) {
            return Err((Reason::TooManyLoaders, format!("loader '{loader}' over max_loaders")));
        }
        Ok(b)
    }

    fn accept_bucket(&mut self, b: Bucket, fp: u64, now_ms: u64) {
        let (model, unrated) = self.config.model_for(&b.truck, b.model.as_deref());
        let model = model.to_owned();
        let l = self.config.limits(&model);
        if unrated {
            self.count("unknown_model", 1);
        }
        self.count("buckets_accepted", 1);
        if !self.recent.contains_key(&b.loader) {
            self.dirty.index = true;
        }
        let recent = self.recent.entry(b.loader.clone()).or_default();
        let same_load = recent.session.as_ref().is_some_and(|s| s.truck == b.truck && b.pass != 1);
        let mut abandoned = false;
        if !same_load {
            abandoned = recent.session.is_some();
            recent.session =
                Some(Session { truck: b.truck.clone(), model, passes: Vec::new(), missing: 0, last_ms: now_ms });
        }
        let Some(s) = recent.session.as_mut() else {
            return;
        };
        s.missing += b.pass - s.last_pass() - 1;
        s.passes.push((b.pass, b.bucket_t, fp));
        s.last_ms = now_ms;
        let doc = serde_json::to_vec(&BucketAdvice::new(&b.loader, s, &l));
        self.dirty.recent.insert(b.loader.clone());
        if abandoned {
            // The previous truck left without its scale record arriving.
            self.count("bucket_sessions_abandoned", 1);
        }
        match doc {
            Ok(doc) => self.out.push((format!("svc/weight-loading/{}/advice", b.loader), doc)),
            Err(e) => host::log(host::Level::Error, &format!("cannot encode bucket advice: {e}")),
        }
    }

    /// Drops the shifts beyond `keep_shifts`, least recently active first.
    fn evict(&mut self) {
        let mut activity: BTreeMap<String, i64> = BTreeMap::new();
        for shifts in self.trucks.values() {
            for (s, r) in shifts {
                let t = r.last_time.unwrap_or(i64::MIN);
                let e = activity.entry(s.clone()).or_insert(t);
                *e = (*e).max(t);
            }
        }
        while activity.len() > self.config.keep_shifts {
            let Some(oldest) = activity.iter().min_by_key(|(s, t)| (**t, (*s).clone())).map(|(s, _)| s.clone()) else {
                break;
            };
            activity.remove(&oldest);
            self.drop_shift(&oldest);
        }
    }

    fn drop_shift(&mut self, shift: &str) {
        for (truck, shifts) in self.trucks.iter_mut() {
            if shifts.remove(shift).is_some() {
                self.dirty.deleted.insert(store::truck_key(truck, shift));
            }
        }
        for (loader, shifts) in self.loaders.iter_mut() {
            if shifts.remove(shift).is_some() {
                self.dirty.deleted.insert(store::loader_key(loader, shift));
            }
        }
        self.trucks.retain(|_, s| !s.is_empty());
        self.loaders.retain(|_, s| !s.is_empty());
        let loaders = &self.loaders;
        let mut gone = Vec::new();
        self.recent.retain(|l, r| {
            let keep = loaders.contains_key(l) || r.session.is_some();
            if !keep {
                gone.push(store::recent_key(l));
            }
            keep
        });
        self.dirty.deleted.extend(gone);
        self.dirty.truck_shifts.retain(|(_, s)| s != shift);
        self.dirty.loader_shifts.retain(|(_, s)| s != shift);
        self.dirty.shifts.remove(shift);
        self.expired.push(shift.to_owned());
        let cap = 4 * self.config.keep_shifts;
        if self.expired.len() > cap {
            let extra = self.expired.len() - cap;
            self.expired.drain(..extra);
        }
        self.dirty.index = true;
        self.dirty.all_kpis = true;
        self.count("shifts_expired", 1);
        host::info(&format!("shift {shift} left the kept window (keep_shifts = {})", self.config.keep_shifts));
    }

    /// Reports of what changed: per (truck, shift), then per site shift.
    fn reports(&mut self) {
        let mut out = Vec::new();
        for (truck, shift) in &self.dirty.truck_shifts {
            let Some(r) = self.truck_shift(truck, shift) else { continue };
            let l = self.config.limits(&r.model);
            let known = self.config.is_known(truck);
            let doc = TruckShiftReport::new(&self.site, truck, shift, r, &l, known, self.config.min_span_s);
            out.push((format!("svc/weight-loading/{truck}/shift"), serde_json::to_vec(&doc)));
        }
        for shift in &self.dirty.shifts {
            let trucks: Vec<(&str, &TruckShift)> =
                self.trucks.iter().filter_map(|(t, m)| m.get(shift).map(|r| (t.as_str(), r))).collect();
            let loaders: Vec<(&str, &LoaderShift)> =
                self.loaders.iter().filter_map(|(l, m)| m.get(shift).map(|r| (l.as_str(), r))).collect();
            let doc =
                SiteShiftReport::new(&self.site, shift, &trucks, &loaders, &self.unattributed, self.config.min_span_s);
            out.push((format!("svc/weight-loading/site/{}/shift", self.site), serde_json::to_vec(&doc)));
        }
        for (topic, doc) in out {
            match doc {
                Ok(d) => self.out.push((topic, d)),
                Err(e) => host::log(host::Level::Error, &format!("cannot encode {topic}: {e}")),
            }
        }
    }

    /// KPIs of the touched trucks and loaders (all after init or eviction) and of the site.
    fn kpis(&mut self) {
        let all = self.dirty.all_kpis;
        let min_span = self.config.min_span_s;
        let trucks: BTreeSet<&str> = if all {
            self.trucks.keys().map(String::as_str).collect()
        } else {
            self.dirty.truck_shifts.iter().map(|(t, _)| t.as_str()).collect()
        };
        for truck in trucks {
            let Some(shifts) = self.trucks.get(truck) else { continue };
            let (mut rated_tonnes, mut span, mut ratio, mut cycles) = (0.0, 0.0, 0.0, 0u64);
            for r in shifts.values() {
                if let Some(s) = r.span_s().filter(|s| *s >= min_span && *s > 0.0) {
                    rated_tonnes += r.tonnes;
                    span += s;
                }
                ratio += r.ratio_sum;
                cycles += r.cycles;
            }
            if span > 0.0 {
                host::kpi_for("tonnes_per_hour", truck, rated_tonnes / (span / 3600.0));
            }
            if cycles > 0 {
                host::kpi_for("payload_ratio", truck, ratio / cycles as f64);
            }
            if let Some((litres, tonnes)) = site_kpis::fuel_share(shifts.values()) {
                host::kpi_for("fuel_per_tonne", truck, litres / tonnes);
            }
        }
        let loaders: BTreeSet<&str> = if all {
            self.loaders.keys().map(String::as_str).collect()
        } else {
            self.dirty.loader_shifts.iter().map(|(l, _)| l.as_str()).collect()
        };
        for loader in loaders {
            let Some(shifts) = self.loaders.get(loader) else { continue };
            let mut t = LoaderShift::default();
            for r in shifts.values() {
                t.cycles += r.cycles;
                t.ratio_sum += r.ratio_sum;
                t.class[0] += r.class[0];
                t.class[3] += r.class[3];
                t.queue_s.merge(&r.queue_s);
            }
            if let Some(q) = t.queue_s.mean() {
                host::kpi_for("loader_queue_s", loader, q);
            }
            if t.cycles > 0 {
                let n = t.cycles as f64;
                host::kpi_for("overload_share", loader, t.class[3] as f64 / n);
                host::kpi_for("underload_share", loader, t.class[0] as f64 / n);
                host::kpi_for("payload_ratio", loader, t.ratio_sum / n);
            }
        }
        self.site_kpis();
    }

    /// Site-wide KPIs from running totals: a call re-reads only the
    /// records it touched (all of them after init or an eviction).
    fn site_kpis(&mut self) {
        let min_span = self.config.min_span_s;
        if self.dirty.all_kpis {
            self.site_totals = site_kpis::SiteTotals::rebuild(&self.trucks, min_span);
        } else {
            self.site_totals.update(&self.trucks, &self.dirty.truck_shifts, min_span);
        }
        let unattributed: u64 = self.unattributed.iter().filter(|(k, _)| is_cycle_reason(k)).map(|(_, n)| n).sum();
        for (name, value) in self.site_totals.kpis(unattributed) {
            host::kpi(name, value);
        }
    }

    fn save(&mut self) {
        let d = std::mem::take(&mut self.dirty);
        for key in &d.deleted {
            host::state_delete(key);
        }
        for (truck, shift) in &d.truck_shifts {
            if let Some(r) = self.truck_shift(truck, shift) {
                store::put(&store::truck_key(truck, shift), r);
            }
        }
        for (loader, shift) in &d.loader_shifts {
            if let Some(r) = self.loaders.get(loader).and_then(|m| m.get(shift)) {
                store::put(&store::loader_key(loader, shift), r);
            }
        }
        for loader in &d.recent {
            if let Some(r) = self.recent.get(loader) {
                store::put(&store::recent_key(loader), r);
            }
        }
        if d.index {
            let idx = store::index_of(
                &self.site,
                &self.trucks,
                &self.loaders,
                &self.recent,
                &self.expired,
                &self.unattributed,
            );
            store::put(store::INDEX, &idx);
        }
    }

    /// End of a call: eviction, reports, KPIs, state, counters, publishes.
    fn finish(&mut self) -> Result<(), ServiceError> {
        // The shift count only grows when a record is created (index dirty);
        // all_kpis is set after init, when keep_shifts may have shrunk.
        if self.dirty.index || self.dirty.all_kpis {
            self.evict();
        }
        self.reports();
        self.kpis();
        self.save();
        for (name, n) in std::mem::take(&mut self.counters) {
            host::counter(&name, n);
        }
        let mut failed = None;
        for (topic, body) in std::mem::take(&mut self.out) {
            if let Err(e) = host::publish(&topic, &body) {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(ServiceError::Internal(format!("publish failed: {e}"))),
            None => Ok(()),
        }
    }
}

/// Cycle rejection names carry no `fuel_`/`bucket_` prefix.
fn is_cycle_reason(name: &str) -> bool {
    !name.starts_with("fuel_") && !name.starts_with("bucket_")
}

impl Service for WeightLoading {
    fn init(config: &str) -> Result<Self, ServiceError> {
        let config = Config::parse(config).map_err(ServiceError::BadConfig)?;
        let loaded = store::load();
        let mut s = WeightLoading {
            config,
            site: loaded.index.site,
            trucks: loaded.trucks,
            loaders: loaded.loaders,
            recent: loaded.recent,
            expired: loaded.index.expired,
            unattributed: loaded.index.unattributed,
            dirty: Dirty::default(),
            site_totals: site_kpis::SiteTotals::default(),
            out: Vec::new(),
            counters: BTreeMap::new(),
        };
        // Report every KPI again on the first call after a restart.
        s.dirty.all_kpis = true;
        Ok(s)
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        for m in &batch {
            self.ingest(m);
        }
        self.finish()
    }

    fn tick(&mut self, now_ms: u64) -> Result<(), ServiceError> {
        let timeout_ms = self.config.bucket_timeout_s.saturating_mul(1000);
        let mut expired = 0;
        for (loader, r) in self.recent.iter_mut() {
            if r.session.as_ref().is_some_and(|s| now_ms.saturating_sub(s.last_ms) > timeout_ms) {
                r.session = None;
                expired += 1;
                self.dirty.recent.insert(loader.clone());
            }
        }
        if expired > 0 {
            self.count("bucket_sessions_expired", expired);
        }
        self.finish()
    }
}

export_service!(WeightLoading);
