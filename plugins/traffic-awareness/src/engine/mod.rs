//! The site's traffic state: live assets on a spatial grid, encounters
//! between pairs, zone violations, and their lifecycles. Pure logic (no
//! host calls): fixes in, [`Output`]s, a picture and KPI values out.
//!
//! Rules (the README has them with their reasons):
//! - A fix updates its asset and checks its zones. At the end of the batch
//!   each asset with a new fix is paired with every asset that could reach
//!   it within `warn_time_s` (each pair once per batch, with both newest
//!   fixes): its current partners plus grid neighbours within
//!   `(|v_a| + v_max) (warn_time_s + max_extrapolation_s) + 2 r_max + warn_gap_m + clear_margin_m`,
//!   where `v_max` bounds every live asset's speed.
//! - A pair is compared at the newer of its two fix times, the older fix
//!   extrapolated at constant velocity by at most `max_extrapolation_s`.
//! - Severity: `critical` if the gap between the footprints (rectangles
//!   along the heading, or circles; [`crate::footprint`]) falls
//!   to `critical_gap_m` within `critical_time_s`; else `warning` if it
//!   falls to `warn_gap_m` within `warn_time_s`; else `none`.
//! - Lifecycle: `start` when a pair without an encounter reaches
//!   `warning`; `escalate` when the severity exceeds the highest so far;
//!   `clear` once the gap has not been predicted to fall to
//!   `warn_gap_m + clear_margin_m` within `warn_time_s` for `clear_hold_s`
//!   of site time, or when an asset goes stale.
//! - Site time is the newest fix time accepted; a fix further ahead of it
//!   than the site can have moved is refused (`time_jump`) unless the
//!   assets off the clock outnumber those on it. An asset whose last fix is
//!   more than `stale_after_s` behind it (or, in `tick`, whose last fix
//!   arrived more than `stale_after_s` of wall clock ago) is dropped.

mod report;
mod zones;

use zones::zone_msg;

use crate::config::{Config, ZoneKind};
use crate::footprint::{Footprint, PairShape};
use crate::geo::{Frame, Polygon};
use crate::grid::{Cell, Grid, IntMap};
use crate::kinematics::{geometry, reaches_within, velocity, Geometry};
use crate::output::*;
use crate::tpv::{iso_ms, Fix, Reject};
pub use report::{Kpis, Saved, SavedEncounter, SavedViolation};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most start times kept per hourly rate (bounds memory under an alert storm).
const RATE_WINDOW_CAP: usize = 100_000;

#[derive(Debug, Clone)]
struct Asset {
    id: String,
    class: Option<usize>,
    fp: Footprint,
    /// Degrees true: the course when last moving at `heading_min_speed_mps`
    /// or more; `None` until then (the covering circle stands in).
    heading: Option<f64>,
    t_ms: i64,
    received_ms: u64,
    lat: f64,
    lon: f64,
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
    /// |v|, m/s (kept: it is read for every neighbour of every fix).
    speed: f64,
    cell: Cell,
    /// Slots of the assets this one has an active encounter with.
    partners: Vec<u32>,
    violations: Vec<Violation>,
}

impl Asset {
    fn speed(&self) -> f64 {
        self.speed
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

/// Counters, cumulative; the service reports their increase per call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub fixes: u64,
    pub no_fix: u64,
    pub duplicate_fixes: u64,
    pub late_fixes: u64,
    pub untimed_fixes: u64,
    pub untimed_dropped: u64,
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
    pub clock_rebased: u64,
}

impl Stats {
    pub fn named(&self) -> [(&'static str, u64); 17] {
        [
            ("fixes", self.fixes),
            ("no_fix", self.no_fix),
            ("duplicate_fixes", self.duplicate_fixes),
            ("late_fixes", self.late_fixes),
            ("untimed_fixes", self.untimed_fixes),
            ("untimed_dropped", self.untimed_dropped),
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
            ("clock_rebased", self.clock_rebased),
        ]
    }
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
    encounters: IntMap<(u32, u32), Encounter>,
    clock_ms: Option<i64>,
    clock_received_ms: u64,
    /// Assets whose latest fix was off the site clock (a time jump ahead,
    /// or a new asset too far behind): its time and the site clock then.
    /// When they outnumber the live assets that agree with the clock, the
    /// site clock moves to them (the site's time really moved).
    off_clock: BTreeMap<String, (i64, i64, u64)>,
    /// Ids of recently closed encounters, oldest first (see `fresh_id`).
    closed_ids: BTreeSet<String>,
    closed_order: VecDeque<String>,
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
    /// Per slot: stamp of the last pair scan that met it (dedupes a scan).
    mark: Vec<u32>,
    mark_gen: u32,
    /// Assets with a new fix in this batch, scanned for pairs at its end.
    moved: Vec<u32>,
    /// Per slot: the batch round in which it was queued / scanned.
    queued: Vec<u32>,
    done: Vec<u32>,
    round: u32,
    scratch: Vec<u32>,
    pub stats: Stats,
}

fn gap_within(shape: &PairShape, dp: (f64, f64), dv: (f64, f64), gap: f64, horizon: f64) -> bool {
    shape.time_to_gap(dp, dv, gap).is_some_and(|t| t <= horizon)
}

fn severity_of(cfg: &Config, shape: &PairShape, dp: (f64, f64), dv: (f64, f64)) -> Severity {
    if gap_within(shape, dp, dv, cfg.critical_gap_m, cfg.critical_time_s) {
        Severity::Critical
    } else if gap_within(shape, dp, dv, cfg.warn_gap_m, cfg.warn_time_s) {
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
            encounters: IntMap::default(),
            clock_ms: None,
            clock_received_ms: 0,
            off_clock: BTreeMap::new(),
            closed_ids: BTreeSet::new(),
            closed_order: VecDeque::new(),
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
            moved: Vec::new(),
            queued: Vec::new(),
            done: Vec::new(),
            round: 1,
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
            // Nothing to stamp it with yet (positioning sends no time until
            // the receiver gave a date): not an error, just not usable.
            (None, None) => {
                self.stats.untimed_dropped += 1;
                return Ok(());
            }
        };
        let prev = existing.and_then(|s| self.asset(s)).map(|a| (a.t_ms, a.x, a.y));
        let prev_heading = existing.and_then(|s| self.asset(s)).and_then(|a| a.heading);
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
        if let Some(c) = self.clock_ms {
            if c - t > self.stale_ms {
                // Too late to matter: it would expire at once. A new asset
                // living in another time may be the site's true time.
                if existing.is_none() {
                    self.note_off_clock(id, t, c, received_ms);
                }
                self.stats.late_fixes += 1;
                return Ok(());
            }
            // How far the site can have moved since its clock did: the
            // staleness window, plus the agent's wall time when known.
            let wall = if received_ms > 0 && self.clock_received_ms > 0 {
                received_ms.saturating_sub(self.clock_received_ms).min(i64::MAX as u64 / 2) as i64
            } else {
                0
            };
            if t.saturating_sub(c) > self.stale_ms.saturating_add(wall) && !self.index.is_empty() {
                self.note_off_clock(id, t, c, received_ms);
                return Err((
                    Reject::TimeJump,
                    format!("{} is {:.1} s ahead of the site clock {}", iso_ms(t), (t - c) as f64 / 1000.0, iso_ms(c)),
                ));
            }
        }
        self.off_clock.remove(id);
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
        let speed = (vx * vx + vy * vy).sqrt();
        // Course is noise when nearly still: keep the last good one (a
        // parked machine keeps the heading it parked with).
        let heading = if speed >= self.cfg.heading_min_speed_mps {
            Some(vx.atan2(vy).to_degrees().rem_euclid(360.0))
        } else {
            prev_heading
        };
        let slot = match existing {
            Some(s) => s,
            None => {
                if self.index.len() >= self.cfg.max_assets {
                    return Err((Reject::AssetLimit, format!("{} assets tracked (max_assets)", self.index.len())));
                }
                let (class, fp) = self.cfg.footprint_of(id);
                let asset = Asset {
                    id: id.to_owned(),
                    class,
                    fp,
                    heading,
                    t_ms: t,
                    received_ms,
                    lat: fix.lat,
                    lon: fix.lon,
                    x,
                    y,
                    vx,
                    vy,
                    speed,
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
                        self.queued.push(0);
                        self.done.push(0);
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
        (a.t_ms, a.received_ms, a.lat, a.lon, a.x, a.y, a.vx, a.vy, a.speed, a.cell, a.heading) =
            (t, received_ms, fix.lat, fix.lon, x, y, vx, vy, speed, new_cell, heading);
        if old_cell != new_cell {
            self.grid.remove(old_cell, slot);
            self.grid.insert(new_cell, slot);
        }
        if self.clock_ms.is_none_or(|c| t > c) {
            self.clock_ms = Some(t);
            self.clock_received_ms = received_ms;
        }
        self.v_max = self.v_max.max(speed);
        self.stats.fixes += 1;
        self.check_zones(slot);
        // Pairs are scanned once per batch with every asset's newest fix,
        // so a batch never starts and clears the same pair on the way.
        if self.queued[slot as usize] != self.round {
            self.queued[slot as usize] = self.round;
            self.moved.push(slot);
        }
        Ok(())
    }

    fn note_off_clock(&mut self, id: &str, t: i64, clock: i64, received_ms: u64) {
        if self.off_clock.len() < self.cfg.max_assets || self.off_clock.contains_key(id) {
            self.off_clock.insert(id.to_owned(), (t, clock, received_ms));
        }
    }

    /// End of batch: forgets off-clock reports the site has moved on from,
    /// and moves the site clock when the off-clock assets outnumber the
    /// live ones on it (the whole site's time moved: a replay with a gap,
    /// a restart after days). A single receiver jumping is outvoted.
    fn settle_clock(&mut self) {
        let Some(clock) = self.clock_ms else { return };
        let stale = self.stale_ms;
        self.off_clock.retain(|_, (_, at, _)| clock - *at <= stale);
        if self.off_clock.is_empty() {
            return;
        }
        let on_clock = self.index.keys().filter(|id| !self.off_clock.contains_key(*id)).count();
        if self.off_clock.len() <= on_clock {
            return;
        }
        let mut times: Vec<i64> = self.off_clock.values().map(|v| v.0).collect();
        times.sort_unstable();
        self.clock_ms = Some(times[(times.len() - 1) / 2]);
        // The new clock was read now: untimed fixes count from here.
        self.clock_received_ms = self.off_clock.values().map(|v| v.2).max().unwrap_or(0);
        self.off_clock.clear();
        self.stats.clock_rebased += 1;
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
            if self.mark[p as usize] != gen && self.done[p as usize] != self.round {
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
            if self.mark[b as usize] == gen || self.done[b as usize] == self.round {
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
        // Pairs with this asset are settled for this batch.
        self.done[slot as usize] = self.round;
    }

    fn evaluate(&mut self, sa: u32, sb: u32) {
        let (key, t, dp, dv, feet) = {
            let (Some(a), Some(b)) = (self.asset(sa), self.asset(sb)) else { return };
            // Keyed by slot order (cheap); names are ordered only when shown.
            let (key, al, ah) = if sa < sb { ((sa, sb), a, b) } else { ((sb, sa), b, a) };
            let t = al.t_ms.max(ah.t_ms);
            let ext = self.cfg.max_extrapolation_s;
            let at = |s: &Asset| {
                let dt = ((t - s.t_ms) as f64 / 1000.0).min(ext);
                (s.x + s.vx * dt, s.y + s.vy * dt)
            };
            let (pl, ph) = (at(al), at(ah));
            let feet = ((al.fp, al.heading), (ah.fp, ah.heading));
            (key, t, (ph.0 - pl.0, ph.1 - pl.1), (ah.vx - al.vx, ah.vy - al.vy), feet)
        };
        self.stats.pair_checks += 1;
        let open = self.encounters.contains_key(&key);
        let ((fa, ha), (fb, hb)) = feet;
        let c = &self.cfg;
        if !open && self.restored_enc.is_empty() && !(fa.is_circle() && fb.is_circle()) {
            // Footprints lie inside their covering circles: if those stay
            // clear of the widest gap, the exact shapes need not be built.
            let cover = fa.covering_radius() + fb.covering_radius();
            if !reaches_within(dp, dv, cover + c.warn_gap_m + c.clear_margin_m, c.warn_time_s) {
                return;
            }
        }
        let shape = PairShape::new(fa, ha, fb, hb);
        let sev = severity_of(c, &shape, dp, dv);
        if !open && sev == Severity::None && self.restored_enc.is_empty() {
            // The common case on a busy site: a neighbour, but no conflict.
            return;
        }
        let snap = Snapshot { t_ms: t, geo: geometry(dp, dv, &shape), dp };
        if !open {
            let restored = if self.restored_enc.is_empty() {
                None
            } else {
                self.ids(key).and_then(|k| self.restored_enc.remove(&k))
            };
            match restored {
                Some(r) => {
                    let (lo, hi) = self.by_name(key);
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
                    let (lo, hi) = self.by_name(key);
                    let e = Encounter {
                        id: self.fresh_id(format!("{a}|{b}|{t}")),
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
        let holding = gap_within(&shape, dp, dv, self.cfg.warn_gap_m + self.cfg.clear_margin_m, self.cfg.warn_time_s);
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

    /// The pair's ids, lesser first.
    fn ids(&self, key: (u32, u32)) -> Option<(String, String)> {
        let (lo, hi) = self.by_name(key);
        Some((self.asset(lo)?.id.clone(), self.asset(hi)?.id.clone()))
    }

    /// The pair's slots, the lesser id first.
    fn by_name(&self, key: (u32, u32)) -> (u32, u32) {
        match (self.asset(key.0), self.asset(key.1)) {
            (Some(a), Some(b)) if a.id > b.id => (key.1, key.0),
            _ => key,
        }
    }

    fn link(&mut self, lo: u32, hi: u32) {
        if let Some(a) = self.asset_mut(lo) {
            a.partners.push(hi);
        }
        if let Some(b) = self.asset_mut(hi) {
            b.partners.push(lo);
        }
    }

    /// `base`, or `base|n` (n = 2, 3...) when a closed encounter already
    /// had that id: a pair can meet again at the same pair time when an
    /// asset expires and comes back with a fix no newer than its partner's.
    fn fresh_id(&self, base: String) -> String {
        if !self.closed_ids.contains(&base) {
            return base;
        }
        (2u32..).map(|n| format!("{base}|{n}")).find(|id| !self.closed_ids.contains(id)).unwrap_or(base)
    }

    fn close(&mut self, key: (u32, u32)) {
        if let Some(e) = self.encounters.get(&key) {
            // Remember recent ids (bounded) so none is issued twice.
            let id = e.id.clone();
            if self.closed_order.len() >= 2 * self.cfg.max_encounters {
                if let Some(old) = self.closed_order.pop_front() {
                    self.closed_ids.remove(&old);
                }
            }
            self.closed_ids.insert(id.clone());
            self.closed_order.push_back(id);
        }
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
        // The snapshot's dp points from key.0 to key.1.
        let flip = if e.lo == key.0 { 1.0 } else { -1.0 };
        for (me, other, sign) in [(lo, hi, flip), (hi, lo, -flip)] {
            let s = e.last;
            let g = s.map(|s| s.geo);
            msgs.push(Output::Warning(Box::new(WarningMsg {
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
                gap_m: s.map(|s| r3(s.geo.gap)),
                closing_speed_mps: g.map(|g| r3(g.closing_speed)),
                ttc_s: g.and_then(|g| g.ttc).map(r3),
                cpa_time_s: g.map(|g| r3(g.cpa_time)),
                cpa_distance_m: g.map(|g| r3(g.cpa_distance)),
                cpa_gap_time_s: g.map(|g| r3(g.cpa_gap_time)),
                cpa_gap_m: g.map(|g| r3(g.cpa_gap)),
                collision_radius_m: s.map(|s| r3(s.geo.distance - s.geo.gap)),
                bearing_deg: s.map(|s| r3((sign * s.dp.0).atan2(sign * s.dp.1).to_degrees().rem_euclid(360.0))),
                lat: Some(r8(me.lat)),
                lon: Some(r8(me.lon)),
                speed_mps: Some(r3(me.speed())),
                track_deg: Some(r3(me.track())),
                other_lat: Some(r8(other.lat)),
                other_lon: Some(r8(other.lon)),
                other_speed_mps: Some(r3(other.speed())),
                other_track_deg: Some(r3(other.track())),
            })));
        }
        self.out.extend(msgs);
    }

    /// End of a batch: drops assets stale on the site clock, and encounters
    /// carried over a restart whose assets did not come back in time.
    pub fn end_of_batch(&mut self) {
        for slot in std::mem::take(&mut self.moved) {
            self.check_pairs(slot);
        }
        self.round = self.round.wrapping_add(1);
        if self.round == 0 {
            // Wrapped: old stamps could match again.
            self.queued.iter_mut().chain(self.done.iter_mut()).for_each(|r| *r = 0);
            self.round = 1;
        }
        self.settle_clock();
        let Some(clock) = self.clock_ms else { return };
        // Behind the clock by the staleness window; or ahead of it, which
        // only happens once the clock moved back to where the site is.
        let stale: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().filter(|a| (clock - a.t_ms).abs() > self.stale_ms).map(|_| i as u32))
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
                self.out.push(Output::Warning(Box::new(WarningMsg {
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
                    cpa_gap_time_s: None,
                    cpa_gap_m: None,
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
                })));
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
            let key = (slot.min(p), slot.max(p));
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
}

fn push_capped(q: &mut VecDeque<i64>, t: i64) {
    if q.len() >= RATE_WINDOW_CAP {
        q.pop_front();
    }
    q.push_back(t);
}
