//! Constant-velocity encounter geometry between two assets.
//!
//! With `dp = p_b - p_a` and `dv = v_b - v_a` at a common time (metres,
//! m/s, local east-north frame), separation at time `t` ahead is
//! `s(t) = |dp + dv t|`. Then:
//! - closing speed `-(dp·dv)/|dp|` (positive when approaching);
//! - closest point of approach at `t* = max(0, -(dp·dv)/|dv|²)` (0 if
//!   `dv = 0`), distance `s(t*)`;
//! - time to reach a separation `D`: 0 if `|dp| <= D` already, else the
//!   first root of `|dv|² t² + 2 (dp·dv) t + |dp|² - D² = 0` when the
//!   pair approaches (`dp·dv < 0`) and the root is real, else none;
//! - gap and time to collision (TTC) are between the footprints
//!   ([`crate::footprint`]): for two circles, the time to reach the
//!   separation `R = r_a + r_b`; head-on at closing speed `v`: `(d - R)/v`.

use crate::footprint::PairShape;

/// Encounter figures for one pair at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Current centre-to-centre separation, m.
    pub distance: f64,
    /// Rate at which the separation shrinks now, m/s (negative: opening).
    pub closing_speed: f64,
    /// Time to the closest point of approach, s (>= 0).
    pub cpa_time: f64,
    /// Separation at the closest point of approach, m.
    pub cpa_distance: f64,
    /// Current gap between the footprints, m (at most 0 when they overlap).
    pub gap: f64,
    /// Closest approach of the footprints ahead: time, s, and gap, m.
    pub cpa_gap_time: f64,
    pub cpa_gap: f64,
    /// Time until the footprints first touch, s.
    pub ttc: Option<f64>,
}

fn dot(a: (f64, f64), b: (f64, f64)) -> f64 {
    a.0 * b.0 + a.1 * b.1
}

/// Tiny relative speeds are noise (GNSS at rest jitters by cm/s); below
/// this, the pair counts as not moving relative to each other.
const STILL_MPS: f64 = 1e-6;

/// Time until `|dp + dv t|` first drops to `d` (t >= 0), if ever.
pub fn time_to_separation(dp: (f64, f64), dv: (f64, f64), d: f64) -> Option<f64> {
    let c = dot(dp, dp) - d * d;
    if c <= 0.0 {
        return Some(0.0);
    }
    let a = dot(dv, dv);
    let b = dot(dp, dv);
    if a < STILL_MPS * STILL_MPS || b >= 0.0 {
        return None;
    }
    let disc = b * b - a * c;
    if disc < 0.0 {
        return None;
    }
    // The smaller root, in the form that does not cancel when a is small:
    // (-b - √disc)/a = c/(-b + √disc).
    Some(c / (-b + disc.sqrt()))
}

/// Whether the separation falls to `d` within `horizon` seconds.
pub fn reaches_within(dp: (f64, f64), dv: (f64, f64), d: f64, horizon: f64) -> bool {
    time_to_separation(dp, dv, d).is_some_and(|t| t <= horizon)
}

pub fn geometry(dp: (f64, f64), dv: (f64, f64), shape: &PairShape) -> Geometry {
    let distance = dot(dp, dp).sqrt();
    let b = dot(dp, dv);
    let a = dot(dv, dv);
    let closing_speed = if distance > 0.0 { -b / distance } else { 0.0 };
    let cpa_time = if a >= STILL_MPS * STILL_MPS { (-b / a).max(0.0) } else { 0.0 };
    let (cx, cy) = (dp.0 + dv.0 * cpa_time, dp.1 + dv.1 * cpa_time);
    // sqrt, not hypot: glibc's hypot is several times slower and this runs per pair.
    let cpa_distance = (cx * cx + cy * cy).sqrt();
    let (cpa_gap_time, cpa_gap) = shape.closest_approach(dp, dv);
    Geometry {
        distance,
        closing_speed,
        cpa_time,
        cpa_distance,
        gap: shape.gap(dp),
        cpa_gap_time,
        cpa_gap,
        ttc: shape.time_to_gap(dp, dv, 0.0),
    }
}

/// Velocity (east, north), m/s, of a speed over ground and a course (degrees true).
pub fn velocity(speed: f64, track_deg: f64) -> (f64, f64) {
    let t = track_deg.to_radians();
    (speed * t.sin(), speed * t.cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(dp: (f64, f64), dv: (f64, f64), r: f64) -> Geometry {
        super::geometry(dp, dv, &PairShape::circles(r))
    }

    #[test]
    fn head_on() {
        let g = geometry((100.0, 0.0), (-20.0, 0.0), 5.0);
        assert_eq!(g.ttc, Some(4.75));
        assert_eq!(g.closing_speed, 20.0);
        assert_eq!(g.cpa_time, 5.0);
        assert_eq!(g.cpa_distance, 0.0);
    }

    #[test]
    fn passing_and_opening() {
        // Lateral offset 4 m: CPA 4 m, no contact with R = 3; with R = 5 first
        // contact is 3 m ahead of abeam (3-4-5 triangle).
        let g = geometry((100.0, 4.0), (-10.0, 0.0), 3.0);
        assert!((g.cpa_distance - 4.0).abs() < 1e-12);
        assert_eq!(g.ttc, None);
        let g = geometry((100.0, 4.0), (-10.0, 0.0), 5.0);
        assert!((g.ttc.unwrap_or(f64::NAN) - (100.0 - 3.0) / 10.0).abs() < 1e-12);
        let g = geometry((10.0, 0.0), (1.0, 0.0), 5.0);
        assert_eq!((g.ttc, g.cpa_time, g.closing_speed), (None, 0.0, -1.0));
        assert_eq!(time_to_separation((3.0, 0.0), (0.0, 0.0), 5.0), Some(0.0));
    }
}
