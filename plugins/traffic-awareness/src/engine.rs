//! The site's traffic state: live assets on a spatial grid, encounters
//! between pairs, zone violations, and their lifecycles. Pure logic (no
//! host calls): fixes in, [`Output`]s, a picture and KPI values out.
//!
//! Rules (the README has them with their reasons):
//! - A fix updates its asset, then its zones, then every pair it forms with
//!   an asset that could reach it within `warn_time_s`: its current
//!   partners plus grid neighbours within
//!   `(|v_a| + v_max) (warn_time_s + max_extrapolation_s) + 2 r_max + warn_gap_m + clear_margin_m`,
//!   where `v_max` bounds every live asset's speed.
//! - A pair is compared at the newer of its two fix times, the older fix
//!   extrapolated at constant velocity by at most `max_extrapolation_s`.
//! - Severity: `critical` if the gap (separation minus `r_a + r_b`) falls
//!   to `critical_gap_m` within `critical_time_s`; else `warning` if it
//!   falls to `warn_gap_m` within `warn_time_s`; else `none`.
//! - Lifecycle: `start` when a pair without an encounter reaches
//!   `warning`; `escalate` when the severity exceeds the highest so far;
//!   `clear` once the gap has not been predicted to fall to
//!   `warn_gap_m + clear_margin_m` within `warn_time_s` for `clear_hold_s`
//!   of site time, or when an asset goes stale.
//! - Site time is the newest fix time seen. An asset whose last fix is
//!   more than `stale_after_s` behind it (or, in `tick`, whose last fix
//!   arrived more than `stale_after_s` of wall clock ago) is dropped.

use crate::config::{Config, ZoneKind};
use crate::geo::{Frame, Polygon};
use crate::grid::{Cell, Grid};
use crate::kinematics::{geometry, reaches_within, velocity, Geometry};
use crate::output::*;
use crate::tpv::{iso_ms, Fix, Reject};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Most encounters listed in a picture (the counts cover all).
const PICTURE_MAX_ENCOUNTERS: usize = 1000;
const HOUR_MS: i64 = 3_600_000;
/// Most start times kept per hourly rate (bounds memory under an alert storm).
const RATE_WINDOW_CAP: usize = 100_000;

#[derive(Debug, Clone)]
struct Asset {
    id: String,
    class: Option<usize>,
    radius: f64,
    t_ms: i64,
    received_ms: u64,
    lat: f64,
    lon: f64,
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
    cell: Cell,
    /// Slots of the assets this one has an active encounter with.
    partners: Vec<u32>,
    violations: Vec<Violation>,
}

impl Asset {
    fn speed(&self) -> f64 {
        self.vx.hypot(self.vy)
    }
    fn track(&self) -> f64 {
        self.vx.atan2(self.vy).to_degrees().rem_euclid(360.0)
    }
}

#[derive(Debug, Clone)]
struct Violation {
    zone: usize,
    id: String,
    start_ms: i64,
    clear_since: Option<i64>,
    peak_speed: f64,
}

/// The last evaluation of a pair, from the lesser id's side (`dp = p_hi - p_lo`).
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    t_ms: i64,
    geo: Geometry,
    radius: f64,
    dp: (f64, f64),
}

#[derive(Debug, Clone)]
struct Encounter {
    id: String,
    /// Slots; `lo` holds the lesser id.
    lo: u32,
    hi: u32,
    start_ms: i64,
    peak: Severity,
    severity: Severity,
    last: Option<Snapshot>,
    clear_since: Option<i64>,
}

struct Zone {
    name: String,
    kind: ZoneKind,
    max_speed: Option<f64>,
    poly: Polygon,
}

/// What survives a restart (state key `active`): the open encounters and
/// zone violations, so they are neither started twice nor left uncleared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub clock_ms: i64,
    pub encounters: Vec<SavedEncounter>,
    pub zones: Vec<SavedViolation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedEncounter {
    pub id: String,
    pub a: String,
    pub b: String,
    pub peak: Severity,
    pub start_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedViolation {
    pub id: String,
    pub asset: String,
    pub zone: String,
    pub start_ms: i64,
    pub peak_speed: f64,
}

/// Counters, cumulative; the service reports their increase per call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub fixes: u64,
    pub no_fix: u64,
    pub duplicate_fixes: u64,
    pub late_fixes: u64,
    pub untimed_fixes: u64,
    pub velocity_from_positions: u64,
    pub velocity_unknown: u64,
    pub pair_checks: u64,
    pub encounters_started: u64,
    pub encounters_escalated: u64,
    pub encounters_cleared: u64,
    pub encounters_dropped: u64,
    pub critical_encounters: u64,
    pub zone_violations: u64,
    pub assets_expired: u64,
}

impl Stats {
    pub fn named(&self) -> [(&'static str, u64); 15] {
        [
            ("fixes", self.fixes),
            ("no_fix", self.no_fix),
            ("duplicate_fixes", self.duplicate_fixes),
            ("late_fixes", self.late_fixes),
            ("untimed_fixes", self.untimed_fixes),
            ("velocity_from_positions", self.velocity_from_positions),
            ("velocity_unknown", self.velocity_unknown),
            ("pair_checks", self.pair_checks),
            ("encounters_started", self.encounters_started),
            ("encounters_escalated", self.encounters_escalated),
            ("encounters_cleared", self.encounters_cleared),
            ("encounters_dropped", self.encounters_dropped),
            ("critical_encounters", self.critical_encounters),
            ("zone_violations", self.zone_violations),
            ("assets_expired", self.assets_expired),
        ]
    }
}

/// KPI values at one instant.
#[derive(Debug, Clone, Default)]
pub struct Kpis {
    pub assets_tracked: usize,
    pub encounters_active: usize,
    pub encounters_critical: usize,
    pub warnings_per_hour: usize,
    pub critical_per_hour: usize,
    pub zone_violations_active: usize,
    pub zone_violations_per_hour: usize,
    pub min_ttc_s: f64,
    /// Active encounters per live asset, and 0 for assets dropped since the last call.
    pub per_asset: Vec<(String, usize)>,
    pub per_zone: Vec<(String, usize)>,
}

pub struct Engine {
    cfg: Config,
    stale_ms: i64,
    hold_ms: i64,
    frame: Option<Frame>,
    zones: Vec<Zone>,
    slots: Vec<Option<Asset>>,
    free: Vec<u32>,
    index: BTreeMap<String, u32>,
    grid: Grid,
    encounters: HashMap<(u32, u32), Encounter>,
    clock_ms: Option<i64>,
    clock_received_ms: u64,
    /// Upper bound of every live asset's speed, m/s.
    v_max: f64,
    restored_enc: BTreeMap<(String, String), SavedEncounter>,
    restored_zone: BTreeMap<(String, String), SavedViolation>,
    restored_clock_ms: i64,
    restored_wall_ms: Option<u64>,
    starts: VecDeque<i64>,
    critical_starts: VecDeque<i64>,
    zone_starts: VecDeque<i64>,
    out: Vec<Output>,
    /// The set of open encounters/violations changed since the last save.
    dirty: bool,
    saved_clock_ms: Option<i64>,
    expired_ids: Vec<String>,
    mark: Vec<u32>,
    mark_gen: u32,
    scratch: Vec<u32>,
    pub stats: Stats,
}

fn severity_of(cfg: &Config, dp: (f64, f64), dv: (f64, f64), radius: f64) -> Severity {
    if reaches_within(dp, dv, radius + cfg.critical_gap_m, cfg.critical_time_s) {
        Severity::Critical
    } else if reaches_within(dp, dv, radius + cfg.warn_gap_m, cfg.warn_time_s) {
        Severity::Warning
    } else {
        Severity::None
    }
}

fn secs_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        // Cell size = reach of a pair at the design closing speed, so a fix
        // usually scans its own cell and the 8 around it.
        let reach = cfg.warn_time_s * cfg.design_closing_speed_mps
            + 2.0 * cfg.max_radius()
            + cfg.warn_gap_m
            + cfg.clear_margin_m;
        let mut e = Engine {
            stale_ms: secs_ms(cfg.stale_after_s),
            hold_ms: secs_ms(cfg.clear_hold_s),
            frame: None,
            zones: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            index: BTreeMap::new(),
            grid: Grid::new(reach.max(10.0)),
            encounters: HashMap::new(),
            clock_ms: None,
            clock_received_ms: 0,
            v_max: 0.0,
            restored_enc: BTreeMap::new(),
            restored_zone: BTreeMap::new(),
            restored_clock_ms: 0,
            restored_wall_ms: None,
            starts: VecDeque::new(),
            critical_starts: VecDeque::new(),
            zone_starts: VecDeque::new(),
            out: Vec::new(),
            dirty: false,
            saved_clock_ms: None,
            expired_ids: Vec::new(),
            mark: Vec::new(),
            mark_gen: 0,
            scratch: Vec::new(),
            stats: Stats::default(),
            cfg,
        };
        if let Some(o) = e.cfg.origin {
            e.set_frame(Frame::new(o.lat, o.lon));
        }
        e
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn grid_cell_m(&self) -> f64 {
        self.grid.cell_m()
    }

    pub fn clock_ms(&self) -> Option<i64> {
        self.clock_ms
    }

    fn set_frame(&mut self, f: Frame) {
        self.zones = self
            .cfg
            .zones
            .iter()
            .map(|z| Zone {
                name: z.name.clone(),
                kind: z.kind,
                max_speed: z.max_speed_mps,
                poly: Polygon::new(z.polygon.iter().map(|v| f.to_local(v[0], v[1])).collect()),
            })
            .collect();
        self.frame = Some(f);
    }

    /// Takes back what was open before a restart.
    pub fn restore(&mut self, saved: Saved) {
        self.restored_clock_ms = saved.clock_ms;
        for e in saved.encounters {
            self.restored_enc.insert((e.a.clone(), e.b.clone()), e);
        }
        for z in saved.zones {
            if self.cfg.zones.iter().any(|s| s.name == z.zone) {
                self.restored_zone.insert((z.asset.clone(), z.zone.clone()), z);
            }
        }
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn asset(&self, slot: u32) -> Option<&Asset> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn asset_mut(&mut self, slot: u32) -> Option<&mut Asset> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub fn no_fix(&mut self) {
        self.stats.no_fix += 1;
    }

    /// One fix of `id`. `received_ms` is the agent's receive time (0 if unknown).
    pub fn ingest(&mut self, id: &str, fix: &Fix, received_ms: u64) -> Result<(), (Reject, String)> {
        let existing = self.index.get(id).copied();
        let t = match (fix.time_ms, self.clock_ms) {
            (Some(t), _) => t,
            // No time: stamp it with the site clock, advanced by the wall
            // time since the clock last moved when the agent says.
            (None, Some(c)) => {
                self.stats.untimed_fixes += 1;
                c + (received_ms.saturating_sub(self.clock_received_ms) as i64).min(self.stale_ms)
            }
            (None, None) => return Err((Reject::NoTime, "no time and no fix with a time seen yet".into())),
        };
        let prev = existing.and_then(|s| self.asset(s)).map(|a| (a.t_ms, a.x, a.y));
        if let Some((pt, _, _)) = prev {
            if t < pt {
                return Err((Reject::TimeBackwards, format!("{} after {}", iso_ms(t), iso_ms(pt))));
            }
            if t == pt && fix.time_ms.is_some() {
                // A redelivery (at-least-once bus) or a repeated report.
                self.stats.duplicate_fixes += 1;
                return Ok(());
            }
        }
        if self.clock_ms.is_some_and(|c| c - t > self.stale_ms) {
            // Too late to matter: it would expire at once.
            self.stats.late_fixes += 1;
            return Ok(());
        }
        if self.frame.is_none() {
            self.set_frame(Frame::new(fix.lat, fix.lon));
        }
        let Some(frame) = self.frame else { return Ok(()) };
        let (x, y) = frame.to_local(fix.lat, fix.lon);
        if x.hypot(y) > self.cfg.max_site_radius_m {
            return Err((
                Reject::OutsideSite,
                format!("{:.0} m from the origin (max_site_radius_m {})", x.hypot(y), self.cfg.max_site_radius_m),
            ));
        }
        // Velocity: reported speed and track; what is missing comes from
        // the displacement since the previous fix.
        let derived = prev.and_then(|(pt, px, py)| {
            let dt = (t - pt) as f64 / 1000.0;
            (dt > 0.0 && dt <= self.cfg.stale_after_s).then(|| ((x - px) / dt, (y - py) / dt))
        });
        let (vx, vy) = match (fix.speed, fix.track, derived) {
            (Some(s), Some(tr), _) => velocity(s, tr),
            (Some(s), None, Some(d)) if d.0.hypot(d.1) > 0.0 => {
                self.stats.velocity_from_positions += 1;
                let n = d.0.hypot(d.1);
                (d.0 / n * s, d.1 / n * s)
            }
            (None, _, Some(d)) if d.0.hypot(d.1) <= self.cfg.max_speed_mps => {
                self.stats.velocity_from_positions += 1;
                d
            }
            (s, _, _) => {
                if s.is_none_or(|s| s > 0.0) {
                    self.stats.velocity_unknown += 1;
                }
                (0.0, 0.0)
            }
        };
        let slot = match existing {
            Some(s) => s,
            None => {
                if self.index.len() >= self.cfg.max_assets {
                    return Err((Reject::AssetLimit, format!("{} assets tracked (max_assets)", self.index.len())));
                }
                let (class, radius) = self.cfg.radius_of(id);
                let asset = Asset {
                    id: id.to_owned(),
                    class,
                    radius,
                    t_ms: t,
                    received_ms,
                    lat: fix.lat,
                    lon: fix.lon,
                    x,
                    y,
                    vx,
                    vy,
                    cell: self.grid.cell_of(x, y),
                    partners: Vec::new(),
                    violations: Vec::new(),
                };
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.slots[s as usize] = Some(asset);
                        s
                    }
                    None => {
                        self.slots.push(Some(asset));
                        self.mark.push(0);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.grid.insert(self.grid.cell_of(x, y), slot);
                self.index.insert(id.to_owned(), slot);
                slot
            }
        };
        let new_cell = self.grid.cell_of(x, y);
        let Some(a) = self.asset_mut(slot) else { return Ok(()) };
        let old_cell = a.cell;
        (a.t_ms, a.received_ms, a.lat, a.lon, a.x, a.y, a.vx, a.vy, a.cell) =
            (t, received_ms, fix.lat, fix.lon, x, y, vx, vy, new_cell);
        if old_cell != new_cell {
            self.grid.remove(old_cell, slot);
            self.grid.insert(new_cell, slot);
        }
        if self.clock_ms.is_none_or(|c| t > c) {
            self.clock_ms = Some(t);
            self.clock_received_ms = received_ms;
        }
        self.v_max = self.v_max.max(vx.hypot(vy));
        self.stats.fixes += 1;
        self.check_zones(slot);
        self.check_pairs(slot);
        Ok(())
    }

    /// Evaluates every pair `slot` may form within the horizon.
    fn check_pairs(&mut self, slot: u32) {
        let Some(a) = self.asset(slot) else { return };
        let (x, y, speed) = (a.x, a.y, a.speed());
        let mut partners = a.partners.clone();
        // Encounters carried over a restart with this asset: adopt them.
        if !self.restored_enc.is_empty() {
            let id = a.id.clone();
            let others: Vec<String> = self
                .restored_enc
                .keys()
                .filter_map(|(p, q)| {
                    if *p == id {
                        Some(q.clone())
                    } else if *q == id {
                        Some(p.clone())
                    } else {
                        None
                    }
                })
                .collect();
            partners.extend(others.iter().filter_map(|o| self.index.get(o).copied()));
        }
        self.mark_gen = self.mark_gen.wrapping_add(1);
        if self.mark_gen == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.mark_gen = 1;
        }
        let gen = self.mark_gen;
        self.mark[slot as usize] = gen;
        for p in partners {
            if self.mark[p as usize] != gen {
                self.mark[p as usize] = gen;
                self.evaluate(slot, p);
            }
        }
        let c = &self.cfg;
        let look = c.warn_time_s + c.max_extrapolation_s;
        let slack = 2.0 * c.max_radius() + c.warn_gap_m + c.clear_margin_m;
        let radius = (speed + self.v_max) * look + slack;
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        self.grid.query(x, y, radius, &mut cands);
        for &b in &cands {
            if self.mark[b as usize] == gen {
                continue;
            }
            self.mark[b as usize] = gen;
            let Some(o) = self.asset(b) else { continue };
            // Exact reach of this pair (no encounter exists between them).
            let reach = (speed + o.speed()) * look + slack;
            if (o.x - x).powi(2) + (o.y - y).powi(2) <= reach * reach {
                self.evaluate(slot, b);
            }
        }
        self.scratch = cands;
    }

    fn evaluate(&mut self, sa: u32, sb: u32) {
        let (key, t, dp, dv, radius) = {
            let (Some(a), Some(b)) = (self.asset(sa), self.asset(sb)) else { return };
            let (key, al, ah) = if a.id <= b.id { ((sa, sb), a, b) } else { ((sb, sa), b, a) };
            let t = al.t_ms.max(ah.t_ms);
            let ext = self.cfg.max_extrapolation_s;
            let at = |s: &Asset| {
                let dt = ((t - s.t_ms) as f64 / 1000.0).min(ext);
                (s.x + s.vx * dt, s.y + s.vy * dt)
            };
            let (pl, ph) = (at(al), at(ah));
            (key, t, (ph.0 - pl.0, ph.1 - pl.1), (ah.vx - al.vx, ah.vy - al.vy), al.radius + ah.radius)
        };
        self.stats.pair_checks += 1;
        let sev = severity_of(&self.cfg, dp, dv, radius);
        let snap = Snapshot { t_ms: t, geo: geometry(dp, dv, radius), radius, dp };
        if !self.encounters.contains_key(&key) {
            let restored = if self.restored_enc.is_empty() {
                None
            } else {
                self.ids(key).and_then(|k| self.restored_enc.remove(&k))
            };
            match restored {
                Some(r) => {
                    let (lo, hi) = key;
                    let (id, start_ms, peak) = (r.id, r.start_ms, r.peak);
                    let e = Encounter {
                        id,
                        lo,
                        hi,
                        start_ms,
                        peak,
                        severity: Severity::None,
                        last: None,
                        clear_since: None,
                    };
                    self.encounters.insert(key, e);
                    self.link(key.0, key.1);
                }
                None if sev >= Severity::Warning => {
                    if self.encounters.len() >= self.cfg.max_encounters {
                        self.stats.encounters_dropped += 1;
                        return;
                    }
                    let Some((a, b)) = self.ids(key) else { return };
                    let (lo, hi) = key;
                    let e = Encounter {
                        id: format!("{a}|{b}|{t}"),
                        lo,
                        hi,
                        start_ms: t,
                        peak: sev,
                        severity: sev,
                        last: Some(snap),
                        clear_since: None,
                    };
                    self.encounters.insert(key, e);
                    self.link(lo, hi);
                    self.stats.encounters_started += 1;
                    push_capped(&mut self.starts, t);
                    if sev == Severity::Critical {
                        self.stats.critical_encounters += 1;
                        push_capped(&mut self.critical_starts, t);
                    }
                    self.dirty = true;
                    self.emit_encounter(key, Lifecycle::Start, None);
                    return;
                }
                None => return,
            }
        }
        let holding =
            reaches_within(dp, dv, radius + self.cfg.warn_gap_m + self.cfg.clear_margin_m, self.cfg.warn_time_s);
        let hold_ms = self.hold_ms;
        let Some(e) = self.encounters.get_mut(&key) else { return };
        e.last = Some(snap);
        e.severity = sev;
        if sev > e.peak {
            e.peak = sev;
            e.clear_since = None;
            self.stats.encounters_escalated += 1;
            if sev == Severity::Critical {
                self.stats.critical_encounters += 1;
                push_capped(&mut self.critical_starts, t);
            }
            self.dirty = true;
            self.emit_encounter(key, Lifecycle::Escalate, None);
            return;
        }
        if holding {
            e.clear_since = None;
            return;
        }
        let since = *e.clear_since.get_or_insert(t);
        if t - since >= hold_ms {
            self.emit_encounter(key, Lifecycle::Clear, Some(ClearReason::Separated));
            self.close(key);
        }
    }

    fn ids(&self, key: (u32, u32)) -> Option<(String, String)> {
        Some((self.asset(key.0)?.id.clone(), self.asset(key.1)?.id.clone()))
    }

    fn link(&mut self, lo: u32, hi: u32) {
        if let Some(a) = self.asset_mut(lo) {
            a.partners.push(hi);
        }
        if let Some(b) = self.asset_mut(hi) {
            b.partners.push(lo);
        }
    }

    fn close(&mut self, key: (u32, u32)) {
        if self.encounters.remove(&key).is_some() {
            self.stats.encounters_cleared += 1;
            self.dirty = true;
        }
        for (s, o) in [(key.0, key.1), (key.1, key.0)] {
            if let Some(a) = self.asset_mut(s) {
                a.partners.retain(|&p| p != o);
            }
        }
    }

    /// Publishes an encounter event to both assets' topics.
    fn emit_encounter(&mut self, key: (u32, u32), state: Lifecycle, reason: Option<ClearReason>) {
        let Some(e) = self.encounters.get(&key) else { return };
        let (Some(lo), Some(hi)) = (self.asset(e.lo), self.asset(e.hi)) else { return };
        let time = iso_ms(e.last.map_or(self.clock_ms.unwrap_or(0), |s| s.t_ms));
        let mut msgs = Vec::with_capacity(2);
        for (me, other, sign) in [(lo, hi, 1.0), (hi, lo, -1.0)] {
            let s = e.last;
            let g = s.map(|s| s.geo);
            msgs.push(Output::Warning(WarningMsg {
                asset: me.id.clone(),
                other: other.id.clone(),
                encounter: e.id.clone(),
                state,
                severity: e.severity,
                peak_severity: e.peak,
                kind: g.map(|g| if g.ttc.is_some() { "collision" } else { "proximity" }),
                reason,
                time: time.clone(),
                distance_m: g.map(|g| r3(g.distance)),
                gap_m: s.map(|s| r3(s.geo.distance - s.radius)),
                closing_speed_mps: g.map(|g| r3(g.closing_speed)),
                ttc_s: g.and_then(|g| g.ttc).map(r3),
                cpa_time_s: g.map(|g| r3(g.cpa_time)),
                cpa_distance_m: g.map(|g| r3(g.cpa_distance)),
                collision_radius_m: s.map(|s| r3(s.radius)),
                bearing_deg: s.map(|s| r3((sign * s.dp.0).atan2(sign * s.dp.1).to_degrees().rem_euclid(360.0))),
                lat: Some(r8(me.lat)),
                lon: Some(r8(me.lon)),
                speed_mps: Some(r3(me.speed())),
                track_deg: Some(r3(me.track())),
                other_lat: Some(r8(other.lat)),
                other_lon: Some(r8(other.lon)),
                other_speed_mps: Some(r3(other.speed())),
                other_track_deg: Some(r3(other.track())),
            }));
        }
        self.out.extend(msgs);
    }

    fn check_zones(&mut self, slot: u32) {
        if self.zones.is_empty() {
            return;
        }
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        let (p, speed, t) = ((a.x, a.y), a.vx.hypot(a.vy), a.t_ms);
        let margin = self.cfg.zone_clear_margin_m;
        for (zi, z) in self.zones.iter().enumerate() {
            let mut at = a.violations.iter().position(|v| v.zone == zi);
            if at.is_none() && !self.restored_zone.is_empty() {
                if let Some(r) = self.restored_zone.remove(&(a.id.clone(), z.name.clone())) {
                    a.violations.push(Violation {
                        zone: zi,
                        id: r.id,
                        start_ms: r.start_ms,
                        clear_since: None,
                        peak_speed: r.peak_speed,
                    });
                    at = Some(a.violations.len() - 1);
                }
            }
            if at.is_none() && !z.poly.near(p, 0.0) {
                continue;
            }
            let inside = z.poly.contains(p);
            let limit = z.max_speed.unwrap_or(f64::INFINITY);
            match at {
                None => {
                    let on = inside && (z.kind == ZoneKind::NoGo || speed > limit);
                    if on {
                        let v = Violation {
                            zone: zi,
                            id: format!("{}|{}|{t}", a.id, z.name),
                            start_ms: t,
                            clear_since: None,
                            peak_speed: speed,
                        };
                        self.out.push(Output::Zone(zone_msg(a, z, &v, Lifecycle::Start, None, t)));
                        a.violations.push(v);
                        self.stats.zone_violations += 1;
                        push_capped(&mut self.zone_starts, t);
                        self.dirty = true;
                    }
                }
                Some(i) => {
                    let left = !inside && z.poly.distance_to_edge(p) >= margin;
                    let slowed = z.kind == ZoneKind::SpeedLimit && speed <= limit - self.cfg.speed_clear_margin_mps;
                    let v = &mut a.violations[i];
                    if !(left || slowed) {
                        v.clear_since = None;
                        v.peak_speed = v.peak_speed.max(speed);
                        continue;
                    }
                    let since = *v.clear_since.get_or_insert(t);
                    if t - since >= self.hold_ms {
                        let v = a.violations.swap_remove(i);
                        let why = if left { ClearReason::LeftZone } else { ClearReason::BelowLimit };
                        self.out.push(Output::Zone(zone_msg(a, z, &v, Lifecycle::Clear, Some(why), t)));
                        self.dirty = true;
                    }
                }
            }
        }
    }

    /// End of a batch: drops assets stale on the site clock, and encounters
    /// carried over a restart whose assets did not come back in time.
    pub fn end_of_batch(&mut self) {
        let Some(clock) = self.clock_ms else { return };
        let stale: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().filter(|a| clock - a.t_ms > self.stale_ms).map(|_| i as u32))
            .collect();
        for s in stale {
            self.expire(s);
        }
        if clock.saturating_sub(self.restored_clock_ms) > self.stale_ms {
            self.expire_restored(clock);
        }
        self.v_max = self.slots.iter().flatten().map(Asset::speed).fold(0.0, f64::max);
    }

    /// Wall-clock expiry (`tick`): an asset whose last fix arrived more than
    /// `stale_after_s` ago is dropped even if the site clock stopped.
    pub fn tick(&mut self, now_ms: u64) {
        let stale_ms = self.stale_ms as u64;
        let stale: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                a.as_ref()
                    .filter(|a| a.received_ms > 0 && now_ms.saturating_sub(a.received_ms) > stale_ms)
                    .map(|_| i as u32)
            })
            .collect();
        for s in stale {
            self.expire(s);
        }
        if !self.restored_enc.is_empty() || !self.restored_zone.is_empty() {
            let since = *self.restored_wall_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) > stale_ms {
                self.expire_restored(self.clock_ms.unwrap_or(self.restored_clock_ms));
            }
        }
    }

    fn expire_restored(&mut self, t: i64) {
        let time = iso_ms(t);
        for (_, r) in std::mem::take(&mut self.restored_enc) {
            self.dirty = true;
            for (me, other) in [(&r.a, &r.b), (&r.b, &r.a)] {
                self.out.push(Output::Warning(WarningMsg {
                    asset: me.clone(),
                    other: other.clone(),
                    encounter: r.id.clone(),
                    state: Lifecycle::Clear,
                    severity: Severity::None,
                    peak_severity: r.peak,
                    kind: None,
                    reason: Some(ClearReason::Stale),
                    time: time.clone(),
                    distance_m: None,
                    gap_m: None,
                    closing_speed_mps: None,
                    ttc_s: None,
                    cpa_time_s: None,
                    cpa_distance_m: None,
                    collision_radius_m: None,
                    bearing_deg: None,
                    lat: None,
                    lon: None,
                    speed_mps: None,
                    track_deg: None,
                    other_lat: None,
                    other_lon: None,
                    other_speed_mps: None,
                    other_track_deg: None,
                }));
            }
        }
        for (_, r) in std::mem::take(&mut self.restored_zone) {
            self.dirty = true;
            let kind = self.cfg.zones.iter().find(|z| z.name == r.zone);
            self.out.push(Output::Zone(ZoneMsg {
                asset: r.asset,
                zone: r.zone,
                zone_kind: kind.map_or("no_go", |z| z.kind.as_str()),
                violation: r.id,
                state: Lifecycle::Clear,
                reason: Some(ClearReason::Stale),
                time: time.clone(),
                lat: None,
                lon: None,
                speed_mps: None,
                max_speed_mps: kind.and_then(|z| z.max_speed_mps),
                peak_speed_mps: Some(r3(r.peak_speed)),
            }));
        }
    }

    /// Drops an asset: its encounters and zone violations clear as stale.
    fn expire(&mut self, slot: u32) {
        let Some(a) = self.asset(slot) else { return };
        let partners = a.partners.clone();
        for p in partners {
            let key = match (self.asset(slot), self.asset(p)) {
                (Some(a), Some(b)) if a.id <= b.id => (slot, p),
                _ => (p, slot),
            };
            self.emit_encounter(key, Lifecycle::Clear, Some(ClearReason::Stale));
            self.close(key);
        }
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::take) else { return };
        let t = self.clock_ms.unwrap_or(a.t_ms);
        for v in &a.violations {
            if let Some(z) = self.zones.get(v.zone) {
                self.out.push(Output::Zone(zone_msg(&a, z, v, Lifecycle::Clear, Some(ClearReason::Stale), t)));
                self.dirty = true;
            }
        }
        self.grid.remove(a.cell, slot);
        self.index.remove(&a.id);
        self.free.push(slot);
        self.stats.assets_expired += 1;
        if self.expired_ids.len() < self.cfg.max_assets {
            self.expired_ids.push(a.id);
        }
    }

    /// What to persist, when the open set changed or the saved clock is
    /// more than half `stale_after_s` old (so a restart judges staleness
    /// from a recent time).
    pub fn take_saved(&mut self) -> Option<Saved> {
        let clock = self.clock_ms?;
        let open = !self.encounters.is_empty() || self.slots.iter().flatten().any(|a| !a.violations.is_empty());
        let pending = !self.restored_enc.is_empty() || !self.restored_zone.is_empty();
        let due = self.saved_clock_ms.is_none_or(|c| clock.saturating_sub(c) > self.stale_ms / 2);
        if !self.dirty && !((open || pending) && due) {
            return None;
        }
        self.dirty = false;
        self.saved_clock_ms = Some(clock);
        let name = |s: u32| self.asset(s).map(|a| a.id.clone()).unwrap_or_default();
        let mut encounters: Vec<SavedEncounter> = self
            .encounters
            .values()
            .map(|e| SavedEncounter {
                id: e.id.clone(),
                a: name(e.lo),
                b: name(e.hi),
                peak: e.peak,
                start_ms: e.start_ms,
            })
            .collect();
        encounters.extend(self.restored_enc.values().cloned());
        encounters.sort_by(|x, y| x.id.cmp(&y.id));
        let mut zones: Vec<SavedViolation> = self
            .slots
            .iter()
            .flatten()
            .flat_map(|a| {
                a.violations.iter().filter_map(|v| {
                    Some(SavedViolation {
                        id: v.id.clone(),
                        asset: a.id.clone(),
                        zone: self.zones.get(v.zone)?.name.clone(),
                        start_ms: v.start_ms,
                        peak_speed: v.peak_speed,
                    })
                })
            })
            .collect();
        zones.extend(self.restored_zone.values().cloned());
        zones.sort_by(|x, y| x.id.cmp(&y.id));
        // Restored entries keep the clock they were judged by.
        let clock_ms = if pending { self.restored_clock_ms.max(clock - self.stale_ms) } else { clock };
        Some(Saved { clock_ms, encounters, zones })
    }

    pub fn picture(&self, now_ms: u64) -> Picture {
        let clock = self.clock_ms.unwrap_or(0);
        let mut assets: Vec<PictureAsset> = self
            .slots
            .iter()
            .flatten()
            .map(|a| PictureAsset {
                id: a.id.clone(),
                class: a.class.and_then(|c| self.cfg.classes.get(c)).map(|c| c.name.clone()),
                lat: r8(a.lat),
                lon: r8(a.lon),
                x_m: r3(a.x),
                y_m: r3(a.y),
                speed_mps: r3(a.speed()),
                track_deg: r3(a.track()),
                age_s: r3((clock - a.t_ms) as f64 / 1000.0),
                time: iso_ms(a.t_ms),
            })
            .collect();
        assets.sort_by(|x, y| x.id.cmp(&y.id));
        let mut encounters: Vec<PictureEncounter> = self
            .encounters
            .values()
            .filter_map(|e| {
                let s = e.last?;
                Some(PictureEncounter {
                    id: e.id.clone(),
                    a: self.asset(e.lo)?.id.clone(),
                    b: self.asset(e.hi)?.id.clone(),
                    severity: e.severity,
                    peak_severity: e.peak,
                    kind: if s.geo.ttc.is_some() { "collision" } else { "proximity" },
                    distance_m: r3(s.geo.distance),
                    gap_m: r3(s.geo.distance - s.radius),
                    closing_speed_mps: r3(s.geo.closing_speed),
                    ttc_s: s.geo.ttc.map(r3),
                    cpa_time_s: r3(s.geo.cpa_time),
                    cpa_distance_m: r3(s.geo.cpa_distance),
                    since: iso_ms(e.start_ms),
                    updated: iso_ms(s.t_ms),
                })
            })
            .collect();
        encounters.sort_by(|x, y| {
            y.severity
                .cmp(&x.severity)
                .then(x.ttc_s.unwrap_or(f64::INFINITY).total_cmp(&y.ttc_s.unwrap_or(f64::INFINITY)))
                .then_with(|| x.id.cmp(&y.id))
        });
        let critical = self.encounters.values().filter(|e| e.severity == Severity::Critical).count();
        let n_enc = self.encounters.len();
        encounters.truncate(PICTURE_MAX_ENCOUNTERS);
        let mut zone_violations: Vec<PictureViolation> = self
            .slots
            .iter()
            .flatten()
            .flat_map(|a| {
                a.violations.iter().filter_map(|v| {
                    let z = self.zones.get(v.zone)?;
                    Some(PictureViolation {
                        id: v.id.clone(),
                        asset: a.id.clone(),
                        zone: z.name.clone(),
                        zone_kind: z.kind.as_str(),
                        since: iso_ms(v.start_ms),
                        speed_mps: r3(a.speed()),
                        max_speed_mps: z.max_speed,
                    })
                })
            })
            .collect();
        zone_violations.sort_by(|x, y| x.id.cmp(&y.id));
        Picture {
            site: self.cfg.site.clone(),
            time: self.clock_ms.map(iso_ms),
            generated_ms: now_ms,
            counts: PictureCounts {
                assets: assets.len(),
                encounters: n_enc,
                critical,
                zone_violations: zone_violations.len(),
                restored_pending: self.restored_enc.len() + self.restored_zone.len(),
            },
            assets,
            encounters,
            zone_violations,
        }
    }

    /// KPI values now; also forgets the assets dropped since the last call.
    pub fn kpis(&mut self) -> Kpis {
        let clock = self.clock_ms.unwrap_or(0);
        for q in [&mut self.starts, &mut self.critical_starts, &mut self.zone_starts] {
            while q.front().is_some_and(|&t| clock - t >= HOUR_MS) {
                q.pop_front();
            }
        }
        let mut per_asset: Vec<(String, usize)> =
            self.slots.iter().flatten().map(|a| (a.id.clone(), a.partners.len())).collect();
        per_asset.extend(self.expired_ids.drain(..).filter(|id| !self.index.contains_key(id)).map(|id| (id, 0)));
        let per_zone: Vec<(String, usize)> = self
            .zones
            .iter()
            .enumerate()
            .map(|(zi, z)| {
                let n = self.slots.iter().flatten().filter(|a| a.violations.iter().any(|v| v.zone == zi)).count();
                (z.name.clone(), n)
            })
            .collect();
        Kpis {
            assets_tracked: self.index.len(),
            encounters_active: self.encounters.len(),
            encounters_critical: self.encounters.values().filter(|e| e.severity == Severity::Critical).count(),
            warnings_per_hour: self.starts.len(),
            critical_per_hour: self.critical_starts.len(),
            zone_violations_active: per_zone.iter().map(|z| z.1).sum(),
            zone_violations_per_hour: self.zone_starts.len(),
            min_ttc_s: self
                .encounters
                .values()
                .filter_map(|e| e.last.and_then(|s| s.geo.ttc))
                .fold(self.cfg.warn_time_s, f64::min),
            per_asset,
            per_zone,
        }
    }
}

fn push_capped(q: &mut VecDeque<i64>, t: i64) {
    if q.len() >= RATE_WINDOW_CAP {
        q.pop_front();
    }
    q.push_back(t);
}

fn zone_msg(a: &Asset, z: &Zone, v: &Violation, state: Lifecycle, reason: Option<ClearReason>, t: i64) -> ZoneMsg {
    let limited = z.kind == ZoneKind::SpeedLimit;
    ZoneMsg {
        asset: a.id.clone(),
        zone: z.name.clone(),
        zone_kind: z.kind.as_str(),
        violation: v.id.clone(),
        state,
        reason,
        time: iso_ms(t),
        lat: Some(r8(a.lat)),
        lon: Some(r8(a.lon)),
        speed_mps: Some(r3(a.speed())),
        max_speed_mps: z.max_speed,
        peak_speed_mps: limited.then(|| r3(v.peak_speed.max(a.speed()))),
    }
}
