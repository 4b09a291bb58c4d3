//! The site's local east-north frame (metres) and zone polygons in it.
//!
//! The frame is equirectangular about the origin on the WGS84 ellipsoid:
//! `x = Δlon · N(φ0) cos φ0`, `y = Δlat · M(φ0)` (radians), with `M` and `N`
//! the meridional and prime-vertical radii of curvature at the origin's
//! latitude. Distances between two nearby points are off by about
//! `tan φ · Δφ` relative to their distance north of the origin, 3e-4 at
//! 45° and 2 km: a few millimetres for a 10 m gap.

const WGS84_A: f64 = 6_378_137.0;
const WGS84_F: f64 = 1.0 / 298.257_223_563;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub lat0: f64,
    pub lon0: f64,
    /// Metres per degree of longitude / latitude at the origin.
    m_per_deg_lon: f64,
    m_per_deg_lat: f64,
}

impl Frame {
    pub fn new(lat0: f64, lon0: f64) -> Frame {
        let e2 = WGS84_F * (2.0 - WGS84_F);
        let s = lat0.to_radians().sin();
        let w = (1.0 - e2 * s * s).sqrt();
        let n = WGS84_A / w;
        let m = WGS84_A * (1.0 - e2) / (w * w * w);
        Frame {
            lat0,
            lon0,
            m_per_deg_lon: n * lat0.to_radians().cos() * std::f64::consts::PI / 180.0,
            m_per_deg_lat: m * std::f64::consts::PI / 180.0,
        }
    }

    /// (east, north) in metres.
    pub fn to_local(&self, lat: f64, lon: f64) -> (f64, f64) {
        // Wrap across the antimeridian so a site straddling it stays contiguous.
        let dlon = (lon - self.lon0 + 540.0).rem_euclid(360.0) - 180.0;
        (dlon * self.m_per_deg_lon, (lat - self.lat0) * self.m_per_deg_lat)
    }
}

/// A closed polygon in the local frame, with its bounding box.
#[derive(Debug, Clone)]
pub struct Polygon {
    pts: Vec<(f64, f64)>,
    min: (f64, f64),
    max: (f64, f64),
}

impl Polygon {
    pub fn new(pts: Vec<(f64, f64)>) -> Polygon {
        let min = pts.iter().fold((f64::INFINITY, f64::INFINITY), |m, p| (m.0.min(p.0), m.1.min(p.1)));
        let max = pts.iter().fold((f64::NEG_INFINITY, f64::NEG_INFINITY), |m, p| (m.0.max(p.0), m.1.max(p.1)));
        Polygon { pts, min, max }
    }

    /// Whether the bounding box grown by `margin` holds the point (cheap pre-check).
    pub fn near(&self, p: (f64, f64), margin: f64) -> bool {
        p.0 >= self.min.0 - margin
            && p.0 <= self.max.0 + margin
            && p.1 >= self.min.1 - margin
            && p.1 <= self.max.1 + margin
    }

    /// Even-odd rule; points on an edge may go either way.
    pub fn contains(&self, p: (f64, f64)) -> bool {
        if !self.near(p, 0.0) {
            return false;
        }
        let mut inside = false;
        let n = self.pts.len();
        for i in 0..n {
            let (a, b) = (self.pts[i], self.pts[(i + 1) % n]);
            if (a.1 > p.1) != (b.1 > p.1) {
                let x = a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1);
                if p.0 < x {
                    inside = !inside;
                }
            }
        }
        inside
    }

    /// Distance from the point to the nearest edge, m.
    pub fn distance_to_edge(&self, p: (f64, f64)) -> f64 {
        let n = self.pts.len();
        (0..n)
            .map(|i| {
                let (a, b) = (self.pts[i], self.pts[(i + 1) % n]);
                let (ex, ey) = (b.0 - a.0, b.1 - a.1);
                let len2 = ex * ex + ey * ey;
                let t = if len2 > 0.0 { (((p.0 - a.0) * ex + (p.1 - a.1) * ey) / len2).clamp(0.0, 1.0) } else { 0.0 };
                (p.0 - a.0 - t * ex).hypot(p.1 - a.1 - t * ey)
            })
            .fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_degree_of_latitude_is_about_111_km() {
        let f = Frame::new(45.0, 10.0);
        let (x, y) = f.to_local(46.0, 11.0);
        // Geodesic references at 45° (WGS84): 111,132 m per degree of
        // latitude, 78,847 m per degree of longitude.
        assert!((y - 111_132.0).abs() < 10.0, "{y}");
        assert!((x - 78_847.0).abs() < 10.0, "{x}");
        let (x, _) = Frame::new(0.0, 179.9).to_local(0.0, -179.9);
        assert!((x - 22_264.0).abs() < 1.0, "{x}");
    }

    #[test]
    fn inside_and_edge_distance() {
        let sq = Polygon::new(vec![(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]);
        assert!(sq.contains((5.0, 5.0)));
        assert!(!sq.contains((15.0, 5.0)));
        assert!((sq.distance_to_edge((15.0, 5.0)) - 5.0).abs() < 1e-12);
        assert!((sq.distance_to_edge((5.0, 8.0)) - 2.0).abs() < 1e-12);
    }
}
