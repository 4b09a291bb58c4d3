//! Asset footprints and the time for two of them, moving at constant
//! velocity without turning, to come within a gap of each other.
//!
//! A footprint is a rectangle (`length` along the heading, `width` across,
//! centred on the GNSS antenna) grown by `radius`: a person or an
//! unclassified asset is a 0 x 0 rectangle, i.e. a circle. A rectangle is
//! symmetric about its centre, so a machine reversing (course = heading +
//! 180°) has the same footprint as driving forward.
//!
//! Two footprints A (at `p_a`) and B (at `p_b`) are within `g` of each
//! other exactly when `dp = p_b - p_a` lies in `M ⊕ disk(r_a + r_b + g)`,
//! with `M = rect_a ⊕ rect_b` (Minkowski sum; `-rect_b = rect_b` by
//! symmetry), a convex polygon of at most 8 vertices. Under constant
//! relative velocity `dv`, `dp(t) = dp + dv t` is a ray, and the first time
//! it enters the rounded polygon is the smallest entry time into the
//! vertex disks and the edge bands (each edge pushed outwards by the
//! rounding), since a ray from outside must cross that boundary first.

use crate::kinematics::time_to_separation;

/// Rectangle `length` x `width` (m) around the antenna, grown by `radius` (m).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    pub length: f64,
    pub width: f64,
    pub radius: f64,
}

impl Footprint {
    pub fn circle(radius: f64) -> Footprint {
        Footprint { length: 0.0, width: 0.0, radius }
    }

    pub fn is_circle(&self) -> bool {
        self.length == 0.0 && self.width == 0.0
    }

    /// Radius of the smallest circle around the antenna covering the
    /// footprint in any heading.
    pub fn covering_radius(&self) -> f64 {
        0.5 * self.length.hypot(self.width) + self.radius
    }

    /// Half-axes (along, across) in the east-north frame for a heading in
    /// degrees true; `None` heading: the covering circle is all we know.
    fn half_axes(&self, heading_deg: Option<f64>) -> Option<[(f64, f64); 2]> {
        if self.is_circle() {
            return None;
        }
        let h = heading_deg?.to_radians();
        let (s, c) = h.sin_cos();
        let (l, w) = (self.length / 2.0, self.width / 2.0);
        Some([(l * s, l * c), (w * c, -w * s)])
    }
}

/// The pair's overlap region: a convex polygon (counter-clockwise, 1 to 8
/// vertices; one vertex at the origin for two circles) grown by `round`.
#[derive(Debug, Clone, Copy)]
pub struct PairShape {
    verts: [(f64, f64); 8],
    n: usize,
    pub round: f64,
}

fn cross(o: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
}

fn dot(a: (f64, f64), b: (f64, f64)) -> f64 {
    a.0 * b.0 + a.1 * b.1
}

/// Relative speeds below this are GNSS noise: the pair does not move.
const STILL_MPS: f64 = 1e-6;

impl PairShape {
    /// Two circles: the overlap region is a point at the origin grown by
    /// the sum of the radii (the common case; no allocation).
    pub fn circles(round: f64) -> PairShape {
        PairShape { verts: [(0.0, 0.0); 8], n: 1, round }
    }

    /// The shape of footprints `a` and `b` with their headings (degrees
    /// true; `None` when unknown, which uses the covering circle).
    pub fn new(a: Footprint, heading_a: Option<f64>, b: Footprint, heading_b: Option<f64>) -> PairShape {
        if a.is_circle() && b.is_circle() {
            return PairShape::circles(a.radius + b.radius);
        }
        // No allocation: this runs for every nearby pair with a rectangle.
        let mut axes = [(0.0, 0.0); 4];
        let mut na = 0;
        let mut round = 0.0;
        for (f, h) in [(a, heading_a), (b, heading_b)] {
            match f.half_axes(h) {
                Some(ax) => {
                    axes[na..na + 2].copy_from_slice(&ax);
                    na += 2;
                    round += f.radius;
                }
                None => round += f.covering_radius(),
            }
        }
        let mut pts = [(0.0, 0.0); 16];
        let np = 1usize << na;
        for (mask, p) in pts[..np].iter_mut().enumerate() {
            for (i, ax) in axes[..na].iter().enumerate() {
                let s = if mask & (1 << i) != 0 { 1.0 } else { -1.0 };
                *p = (p.0 + s * ax.0, p.1 + s * ax.1);
            }
        }
        let (verts, n) = convex_hull(&mut pts[..np]);
        PairShape { verts, n: n.max(1), round }
    }

    fn verts(&self) -> &[(f64, f64)] {
        &self.verts[..self.n]
    }

    /// Distance from `p` to the polygon (0 inside), m.
    pub fn polygon_distance(&self, p: (f64, f64)) -> f64 {
        let v = self.verts();
        if v.len() == 1 {
            return (p.0 - v[0].0).hypot(p.1 - v[0].1);
        }
        if v.len() >= 3 && (0..v.len()).all(|i| cross(v[i], v[(i + 1) % v.len()], p) >= 0.0) {
            return 0.0;
        }
        (0..v.len()).map(|i| segment_distance(p, v[i], v[(i + 1) % v.len()])).fold(f64::INFINITY, f64::min)
    }

    /// Gap between the footprints when the antennas are `dp` apart, m
    /// (at most 0 when they overlap).
    pub fn gap(&self, dp: (f64, f64)) -> f64 {
        self.polygon_distance(dp) - self.round
    }

    /// First `t >= 0` at which the gap at `dp + dv t` falls to `g`, if ever.
    pub fn time_to_gap(&self, dp: (f64, f64), dv: (f64, f64), g: f64) -> Option<f64> {
        let d = self.round + g;
        if self.polygon_distance(dp) <= d {
            return Some(0.0);
        }
        let v = self.verts();
        let mut best: Option<f64> = None;
        let mut take = |t: Option<f64>| {
            if let Some(t) = t {
                if best.is_none_or(|b| t < b) {
                    best = Some(t);
                }
            }
        };
        for &c in v {
            take(time_to_separation((dp.0 - c.0, dp.1 - c.1), dv, d));
        }
        if v.len() >= 2 {
            for i in 0..v.len() {
                take(time_to_band(dp, dv, v[i], v[(i + 1) % v.len()], d));
            }
        }
        best
    }
}

impl PairShape {
    /// Closest approach of the footprints along `dp + dv t`, `t >= 0`:
    /// (time, gap). If they ever overlap, the first time they touch with
    /// the gap then (at most 0). Otherwise the smallest distance from a ray
    /// to a convex polygon it does not cross is at the ray's start or
    /// abeam one of the polygon's vertices, so those are the candidates.
    pub fn closest_approach(&self, dp: (f64, f64), dv: (f64, f64)) -> (f64, f64) {
        if let Some(t) = self.time_to_gap(dp, dv, -self.round) {
            return (t, self.gap((dp.0 + dv.0 * t, dp.1 + dv.1 * t)));
        }
        let mut best = (0.0, self.polygon_distance(dp));
        let a = dot(dv, dv);
        if a >= STILL_MPS * STILL_MPS {
            for &c in self.verts() {
                let t = (dot((c.0 - dp.0, c.1 - dp.1), dv) / a).max(0.0);
                let d = self.polygon_distance((dp.0 + dv.0 * t, dp.1 + dv.1 * t));
                // Ties (a flank sliding past a flank) go to the earliest time.
                if d < best.1 - 1e-9 || (d <= best.1 + 1e-9 && t < best.0) {
                    best = (t, d.min(best.1));
                }
            }
        }
        (best.0, best.1 - self.round)
    }
}

/// Entry time of the ray `p + v t` into the band over edge `a -> b`:
/// along the edge within its length, across it within `d` of it.
fn time_to_band(p: (f64, f64), v: (f64, f64), a: (f64, f64), b: (f64, f64), d: f64) -> Option<f64> {
    let e = (b.0 - a.0, b.1 - a.1);
    let len = e.0.hypot(e.1);
    if len < 1e-9 {
        return None;
    }
    let u = (e.0 / len, e.1 / len);
    let nrm = (-u.1, u.0);
    let rel = (p.0 - a.0, p.1 - a.1);
    let (mut lo, mut hi) = (0.0_f64, f64::INFINITY);
    for (axis, min, max) in [(u, 0.0, len), (nrm, -d, d)] {
        let (s0, s1) = (dot(rel, axis), dot(v, axis));
        if s1.abs() < STILL_MPS {
            if s0 < min || s0 > max {
                return None;
            }
            continue;
        }
        let (t1, t2) = ((min - s0) / s1, (max - s0) / s1);
        lo = lo.max(t1.min(t2));
        hi = hi.min(t1.max(t2));
    }
    (lo <= hi).then_some(lo)
}

fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let e = (b.0 - a.0, b.1 - a.1);
    let len2 = dot(e, e);
    let t = if len2 > 0.0 { (dot((p.0 - a.0, p.1 - a.1), e) / len2).clamp(0.0, 1.0) } else { 0.0 };
    (p.0 - a.0 - t * e.0).hypot(p.1 - a.1 - t * e.1)
}

/// Andrew's monotone chain, counter-clockwise, collinear and repeated
/// points dropped (a rectangle of width 0 gives a 2-vertex segment). The
/// hull of the 16 corner sums of two rectangles has at most 8 vertices.
fn convex_hull(pts: &mut [(f64, f64)]) -> ([(f64, f64); 8], usize) {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut uniq = 0;
    for i in 0..pts.len() {
        let p = pts[i];
        if uniq == 0 || (p.0 - pts[uniq - 1].0).abs() >= 1e-9 || (p.1 - pts[uniq - 1].1).abs() >= 1e-9 {
            pts[uniq] = p;
            uniq += 1;
        }
    }
    let pts = &pts[..uniq];
    let mut out = [(0.0, 0.0); 8];
    if pts.len() <= 2 {
        out[..pts.len()].copy_from_slice(pts);
        return (out, pts.len());
    }
    let mut hull = [(0.0, 0.0); 34];
    let mut n = 0;
    for pass in 0..2 {
        let start = n;
        for k in 0..pts.len() {
            let p = if pass == 0 { pts[k] } else { pts[pts.len() - 1 - k] };
            while n >= start + 2 && cross(hull[n - 2], hull[n - 1], p) <= 1e-12 {
                n -= 1;
            }
            hull[n] = p;
            n += 1;
        }
        n -= 1;
    }
    let n = n.min(8);
    out[..n].copy_from_slice(&hull[..n]);
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_circles_are_the_centre_distance_rule() {
        let s = PairShape::new(Footprint::circle(2.0), None, Footprint::circle(3.0), Some(40.0));
        assert_eq!(s.time_to_gap((100.0, 0.0), (-20.0, 0.0), 0.0), Some(4.75));
        assert_eq!(s.gap((3.0, 4.0)), 0.0);
    }

    #[test]
    fn rectangles_side_by_side_and_nose_to_nose() {
        // Two 12 x 6 trucks heading north. Side by side, antennas 8 m apart
        // east-west: 2 m between their flanks.
        let t = Footprint { length: 12.0, width: 6.0, radius: 0.0 };
        let s = PairShape::new(t, Some(0.0), t, Some(180.0));
        assert!((s.gap((8.0, 0.0)) - 2.0).abs() < 1e-12);
        // Passing northbound at 10 m/s relative, 8 m apart: the gap never
        // falls under 2 m, so never to 1 m and never to contact; to 2.5 m
        // at the corners, 1.5 m along the axis before the 12 m half-length.
        assert_eq!(s.time_to_gap((8.0, -100.0), (0.0, 10.0), 1.0), None);
        assert!((s.time_to_gap((8.0, -100.0), (0.0, 10.0), 2.5).unwrap_or(f64::NAN) - 8.65).abs() < 1e-9);
        // Nose to nose along the axis, 100 m apart closing at 20 m/s: they
        // touch when the antennas are 12 m apart.
        assert!((s.time_to_gap((0.0, 100.0), (0.0, -20.0), 0.0).unwrap_or(f64::NAN) - 4.4).abs() < 1e-12);
        // Closest approach of that pass: 2 m, first reached with b's corner
        // abeam a's (y = -12, after 8.8 s).
        let (ct, cg) = s.closest_approach((8.0, -100.0), (0.0, 10.0));
        assert!((ct - 8.8).abs() < 1e-12 && (cg - 2.0).abs() < 1e-12, "{ct} {cg}");
        // Unknown heading: covering circles (radius sqrt(45) each).
        let u = PairShape::new(t, None, t, None);
        assert!((u.round - 2.0 * 45f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn a_corner_hit_is_found_by_the_vertex_disk() {
        // Unit squares (1 x 1, heading 0), b coming diagonally at a's corner.
        let sq = Footprint { length: 1.0, width: 1.0, radius: 0.0 };
        let s = PairShape::new(sq, Some(0.0), sq, Some(0.0));
        // M is the 2 x 2 square; dp starts at (3, 3) moving (-1, -1): it
        // reaches gap 0.5 where the distance to the corner (1, 1) is 0.5.
        let t = s.time_to_gap((3.0, 3.0), (-1.0, -1.0), 0.5).unwrap_or(f64::NAN);
        let want = 2.0 - 0.5 / 2f64.sqrt();
        assert!((t - want).abs() < 1e-12, "{t} vs {want}");
    }
}
