//! What the engine reports: the state saved across restarts, the site
//! picture, and KPI values.

use super::Engine;
use crate::output::*;
use crate::tpv::iso_ms;
use serde::{Deserialize, Serialize};

/// Most encounters listed in a picture (the counts cover all).
const PICTURE_MAX_ENCOUNTERS: usize = 1000;
const HOUR_MS: i64 = 3_600_000;

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

impl Engine {
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
                heading_deg: a.heading.map(r3),
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
                    gap_m: r3(s.geo.gap),
                    closing_speed_mps: r3(s.geo.closing_speed),
                    ttc_s: s.geo.ttc.map(r3),
                    cpa_time_s: r3(s.geo.cpa_time),
                    cpa_distance_m: r3(s.geo.cpa_distance),
                    cpa_gap_time_s: r3(s.geo.cpa_gap_time),
                    cpa_gap_m: r3(s.geo.cpa_gap),
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
