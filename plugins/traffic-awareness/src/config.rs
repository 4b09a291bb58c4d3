//! The service's config: serde with `deny_unknown_fields` (a site's typo is
//! refused by name), then semantic checks that list every problem at once.
//!
//! Keys are flat on purpose: the agent merges a site's config over the
//! manifest's `[config]` key by key, so a site overrides one threshold
//! without restating the others. Every key, its unit and default is in the
//! crate README; the defaults here equal the manifest's `[config]` (a test
//! checks it).

use crate::footprint::Footprint;
use serde::Deserialize;

/// Why a config was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, a key unknown, or a value of the wrong type or out of range.
    #[error("traffic-awareness config: {0}")]
    Json(String),
    /// Every value that breaks a rule, all at once.
    #[error("traffic-awareness config has {} problem(s): {}", .0.len(), .0.join("; "))]
    Problems(Vec<String>),
}

/// A point given as WGS84 degrees.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// Assets whose id starts with `prefix` share a footprint (longest prefix wins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetClass {
    pub name: String,
    pub prefix: String,
    /// With `length_m`/`width_m`: a margin around the rectangle (default 0);
    /// alone: a circle around the antenna covering the machine or person
    /// (default `default_radius_m`), m.
    #[serde(default)]
    pub radius_m: Option<f64>,
    /// Rectangle along the heading, centred on the antenna, m (both or neither).
    #[serde(default)]
    pub length_m: Option<f64>,
    #[serde(default)]
    pub width_m: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// Entering is a violation.
    NoGo,
    /// Driving faster than `max_speed_mps` inside is a violation.
    SpeedLimit,
}

impl ZoneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::NoGo => "no_go",
            ZoneKind::SpeedLimit => "speed_limit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub name: String,
    pub kind: ZoneKind,
    /// Speed limit, m/s; `speed_limit` zones only.
    #[serde(default)]
    pub max_speed_mps: Option<f64>,
    /// Vertices `[lat, lon]` in degrees, in order (either winding); the last
    /// edge closes back to the first vertex.
    pub polygon: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d_site")]
    pub site: String,
    #[serde(default)]
    pub origin: Option<LatLon>,
    #[serde(default = "d_default_radius")]
    pub default_radius_m: f64,
    #[serde(default)]
    pub classes: Vec<AssetClass>,
    #[serde(default = "d_warn_gap")]
    pub warn_gap_m: f64,
    #[serde(default = "d_warn_time")]
    pub warn_time_s: f64,
    #[serde(default = "d_critical_gap")]
    pub critical_gap_m: f64,
    #[serde(default = "d_critical_time")]
    pub critical_time_s: f64,
    #[serde(default = "d_clear_margin")]
    pub clear_margin_m: f64,
    #[serde(default = "d_clear_hold")]
    pub clear_hold_s: f64,
    #[serde(default = "d_heading_min_speed")]
    pub heading_min_speed_mps: f64,
    #[serde(default = "d_max_extrapolation")]
    pub max_extrapolation_s: f64,
    #[serde(default = "d_stale_after")]
    pub stale_after_s: f64,
    #[serde(default = "d_picture_interval")]
    pub picture_interval_s: f64,
    #[serde(default = "d_max_assets")]
    pub max_assets: usize,
    #[serde(default = "d_max_encounters")]
    pub max_encounters: usize,
    #[serde(default = "d_max_speed")]
    pub max_speed_mps: f64,
    #[serde(default = "d_design_closing_speed")]
    pub design_closing_speed_mps: f64,
    #[serde(default = "d_max_site_radius")]
    pub max_site_radius_m: f64,
    #[serde(default)]
    pub zones: Vec<ZoneSpec>,
    #[serde(default = "d_zone_clear_margin")]
    pub zone_clear_margin_m: f64,
    #[serde(default = "d_speed_clear_margin")]
    pub speed_clear_margin_mps: f64,
}

fn d_site() -> String {
    "site-01".into()
}
fn d_default_radius() -> f64 {
    2.5
}
fn d_warn_gap() -> f64 {
    10.0
}
fn d_warn_time() -> f64 {
    10.0
}
fn d_critical_gap() -> f64 {
    3.0
}
fn d_critical_time() -> f64 {
    4.0
}
fn d_clear_margin() -> f64 {
    2.0
}
fn d_clear_hold() -> f64 {
    2.0
}
fn d_heading_min_speed() -> f64 {
    1.0
}
fn d_max_extrapolation() -> f64 {
    2.0
}
fn d_stale_after() -> f64 {
    5.0
}
fn d_picture_interval() -> f64 {
    1.0
}
fn d_max_assets() -> usize {
    1000
}
fn d_max_encounters() -> usize {
    3000
}
fn d_max_speed() -> f64 {
    50.0
}
fn d_design_closing_speed() -> f64 {
    30.0
}
fn d_max_site_radius() -> f64 {
    20_000.0
}
fn d_zone_clear_margin() -> f64 {
    2.0
}
fn d_speed_clear_margin() -> f64 {
    0.5
}

/// Hard caps that keep the picture under the host's 1 MiB publish limit and
/// memory within the manifest's `limits.memory_mib`.
pub const MAX_ASSETS_CAP: usize = 5000;
pub const MAX_ENCOUNTERS_CAP: usize = 20_000;

pub fn topic_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#']) && !s.chars().any(char::is_control)
}

impl Config {
    /// Parses the merged config JSON and checks every value; all problems
    /// are reported together.
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let c: Config = serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let p = c.problems();
        if p.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError::Problems(p))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !topic_safe(&self.site) {
            p.push(format!("site '{}' must be non-empty, without '/', '+', '#' or control characters", self.site));
        }
        if let Some(o) = self.origin {
            if !valid_lat_lon(o.lat, o.lon) {
                p.push(format!("origin ({}, {}) is not a valid latitude/longitude", o.lat, o.lon));
            }
        }
        let mut positive = |name: &str, v: f64, zero_ok: bool| {
            let ok = v.is_finite() && if zero_ok { v >= 0.0 } else { v > 0.0 };
            if !ok {
                let rule = if zero_ok { "0 or more" } else { "more than 0" };
                p.push(format!("{name} is {v}; it must be a finite number, {rule}"));
            }
        };
        positive("default_radius_m", self.default_radius_m, true);
        positive("warn_gap_m", self.warn_gap_m, true);
        positive("warn_time_s", self.warn_time_s, false);
        positive("critical_gap_m", self.critical_gap_m, true);
        positive("critical_time_s", self.critical_time_s, false);
        positive("clear_margin_m", self.clear_margin_m, true);
        positive("clear_hold_s", self.clear_hold_s, true);
        positive("max_extrapolation_s", self.max_extrapolation_s, true);
        positive("heading_min_speed_mps", self.heading_min_speed_mps, false);
        positive("stale_after_s", self.stale_after_s, false);
        positive("picture_interval_s", self.picture_interval_s, false);
        positive("max_speed_mps", self.max_speed_mps, false);
        positive("design_closing_speed_mps", self.design_closing_speed_mps, false);
        positive("max_site_radius_m", self.max_site_radius_m, false);
        positive("zone_clear_margin_m", self.zone_clear_margin_m, true);
        positive("speed_clear_margin_mps", self.speed_clear_margin_mps, true);
        if self.critical_gap_m > self.warn_gap_m {
            p.push(format!(
                "critical_gap_m ({}) is larger than warn_gap_m ({}): a critical encounter must also be a warning",
                self.critical_gap_m, self.warn_gap_m
            ));
        }
        if self.critical_time_s > self.warn_time_s {
            p.push(format!(
                "critical_time_s ({}) is longer than warn_time_s ({}): a critical encounter must also be a warning",
                self.critical_time_s, self.warn_time_s
            ));
        }
        if self.warn_time_s > 120.0 {
            p.push(format!(
                "warn_time_s is {}; constant-velocity prediction is meaningless past 120 s",
                self.warn_time_s
            ));
        }
        if self.max_site_radius_m > 200_000.0 {
            p.push(format!("max_site_radius_m is {}; the local flat frame is valid to 200 km", self.max_site_radius_m));
        }
        if self.max_assets == 0 || self.max_assets > MAX_ASSETS_CAP {
            p.push(format!("max_assets is {}; it must be 1 to {MAX_ASSETS_CAP}", self.max_assets));
        }
        if self.max_encounters == 0 || self.max_encounters > MAX_ENCOUNTERS_CAP {
            p.push(format!("max_encounters is {}; it must be 1 to {MAX_ENCOUNTERS_CAP}", self.max_encounters));
        }
        for (i, c) in self.classes.iter().enumerate() {
            if c.name.is_empty() {
                p.push(format!("classes[{i}].name is empty"));
            }
            if c.prefix.is_empty() {
                p.push(format!("classes[{i}] ('{}'): prefix is empty", c.name));
            }
            for (key, v) in [("radius_m", c.radius_m), ("length_m", c.length_m), ("width_m", c.width_m)] {
                if let Some(v) = v {
                    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                        p.push(format!("classes[{i}] ('{}'): {key} is {v}; it must be 0 to 100", c.name));
                    }
                }
            }
            if c.length_m.is_some() != c.width_m.is_some() {
                p.push(format!("classes[{i}] ('{}'): give both length_m and width_m, or neither", c.name));
            }
            if self.classes[..i].iter().any(|o| o.prefix == c.prefix) {
                p.push(format!("classes[{i}] ('{}'): prefix '{}' is used twice", c.name, c.prefix));
            }
        }
        if self.default_radius_m > 100.0 {
            p.push(format!("default_radius_m is {}; it must be 0 to 100", self.default_radius_m));
        }
        for (i, z) in self.zones.iter().enumerate() {
            let label = format!("zones[{i}] ('{}')", z.name);
            if !topic_safe(&z.name) {
                p.push(format!("{label}: name must be non-empty, without '/', '+', '#' or control characters"));
            }
            if self.zones[..i].iter().any(|o| o.name == z.name) {
                p.push(format!("{label}: the name is used twice"));
            }
            match (z.kind, z.max_speed_mps) {
                (ZoneKind::SpeedLimit, None) => p.push(format!("{label}: speed_limit zones need max_speed_mps")),
                (ZoneKind::SpeedLimit, Some(v)) if !(v.is_finite() && v > 0.0) => {
                    p.push(format!("{label}: max_speed_mps is {v}; it must be more than 0"))
                }
                (ZoneKind::NoGo, Some(_)) => {
                    p.push(format!("{label}: max_speed_mps applies to speed_limit zones only"))
                }
                _ => {}
            }
            if z.polygon.len() < 3 {
                p.push(format!("{label}: polygon has {} vertices; it needs at least 3", z.polygon.len()));
            }
            for (k, v) in z.polygon.iter().enumerate() {
                if !valid_lat_lon(v[0], v[1]) {
                    p.push(format!("{label}: polygon[{k}] = [{}, {}] is not a valid [lat, lon]", v[0], v[1]));
                }
            }
        }
        p
    }

    /// Footprint of an asset: its class's (longest matching prefix) or a
    /// circle of the default radius.
    pub fn footprint_of(&self, asset: &str) -> (Option<usize>, Footprint) {
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| asset.starts_with(&c.prefix))
            .max_by_key(|(_, c)| c.prefix.len())
            .map_or((None, Footprint::circle(self.default_radius_m)), |(i, c)| (Some(i), self.class_footprint(c)))
    }

    fn class_footprint(&self, c: &AssetClass) -> Footprint {
        match (c.length_m, c.width_m) {
            (Some(length), Some(width)) => Footprint { length, width, radius: c.radius_m.unwrap_or(0.0) },
            _ => Footprint::circle(c.radius_m.unwrap_or(self.default_radius_m)),
        }
    }

    /// The largest covering radius any asset can have, m (sizes the grid).
    pub fn max_radius(&self) -> f64 {
        self.classes.iter().map(|c| self.class_footprint(c).covering_radius()).fold(self.default_radius_m, f64::max)
    }
}

pub fn valid_lat_lon(lat: f64, lon: f64) -> bool {
    lat.is_finite() && lon.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_typos_are_named() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.warn_gap_m, 10.0);
        let e = Config::parse(r#"{"warn_gap": 3}"#).expect_err("typo").to_string();
        assert!(e.contains("warn_gap"), "{e}");
    }

    #[test]
    fn every_problem_is_listed() {
        let e = Config::parse(
            r#"{"warn_time_s": 0, "critical_gap_m": 50, "max_assets": 0,
                "zones": [{"name": "pit", "kind": "speed_limit", "polygon": [[0, 0], [0, 1]]}]}"#,
        )
        .expect_err("bad")
        .to_string();
        for needle in ["warn_time_s", "critical_gap_m", "max_assets", "max_speed_mps", "3"] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
    }

    #[test]
    fn longest_prefix_gives_the_footprint() {
        let c = Config::parse(
            r#"{"classes": [{"name": "truck", "prefix": "t", "radius_m": 4},
                            {"name": "haul", "prefix": "th", "length_m": 12, "width_m": 5},
                            {"name": "tag", "prefix": "tag"}]}"#,
        )
        .expect("ok");
        assert_eq!(c.footprint_of("th-1"), (Some(1), Footprint { length: 12.0, width: 5.0, radius: 0.0 }));
        assert_eq!(c.footprint_of("t-1"), (Some(0), Footprint::circle(4.0)));
        assert_eq!(c.footprint_of("tag-1"), (Some(2), Footprint::circle(2.5)));
        assert_eq!(c.footprint_of("p-1"), (None, Footprint::circle(2.5)));
        assert_eq!(c.max_radius(), 6.5);
        let e = Config::parse(
            r#"{"classes": [{"name": "x", "prefix": "x", "length_m": 3, "width_m": -1},
                                              {"name": "y", "prefix": "y", "length_m": 3}]}"#,
        )
        .expect_err("bad")
        .to_string();
        assert!(e.contains("width_m is -1") && e.contains("both length_m and width_m"), "{e}");
    }
}
