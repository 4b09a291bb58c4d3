//! Zone violations of one asset: start when it is inside a no-go zone or
//! over a speed-limit zone's limit inside it; clear once out by
//! `zone_clear_margin_m` or under the limit by `speed_clear_margin_mps`,
//! held `clear_hold_s` of site time.

use super::{push_capped, Asset, Engine, Violation, Zone};
use crate::config::ZoneKind;
use crate::output::{r3, r8, ClearReason, Lifecycle, Output, ZoneMsg};
use crate::tpv::iso_ms;

impl Engine {
    pub(super) fn check_zones(&mut self, slot: u32) {
        if self.zones.is_empty() {
            return;
        }
        let Some(a) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        let (p, speed, t) = ((a.x, a.y), a.speed, a.t_ms);
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
}

pub(super) fn zone_msg(
    a: &Asset,
    z: &Zone,
    v: &Violation,
    state: Lifecycle,
    reason: Option<ClearReason>,
    t: i64,
) -> ZoneMsg {
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
