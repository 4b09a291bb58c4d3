//! What the service publishes: warnings, zone violations and the site
//! picture (schemas in the crate README).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    None,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Start,
    Escalate,
    Clear,
}

/// Why an encounter or a zone violation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearReason {
    /// The pair is no longer predicted to come within the warning gap plus
    /// the clear margin, for `clear_hold_s`.
    Separated,
    /// An asset stopped reporting (`stale_after_s`).
    Stale,
    /// Out of the zone by the zone clear margin, for `clear_hold_s`.
    LeftZone,
    /// Back under the zone's limit by the speed clear margin, for `clear_hold_s`.
    BelowLimit,
}

/// `svc/traffic-awareness/{asset}/warning`: one encounter event seen from
/// `asset`'s side (the other side gets its mirror on its own topic).
/// Measured fields are `null` only on a `stale` clear of an encounter
/// carried over a restart and never seen again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarningMsg {
    pub asset: String,
    pub other: String,
    /// `{lesser id}|{greater id}|{start fix time, Unix ms}`: stable across restarts.
    pub encounter: String,
    pub state: Lifecycle,
    /// Severity at this evaluation (`none` on most clears).
    pub severity: Severity,
    /// Highest severity of the encounter so far.
    pub peak_severity: Severity,
    /// "collision" if a time to collision exists, else "proximity".
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<ClearReason>,
    /// Site GNSS time of the evaluation (ISO 8601 UTC).
    pub time: String,
    pub distance_m: Option<f64>,
    /// Gap between the two footprints, m (at most 0 when they overlap).
    pub gap_m: Option<f64>,
    pub closing_speed_mps: Option<f64>,
    pub ttc_s: Option<f64>,
    pub cpa_time_s: Option<f64>,
    pub cpa_distance_m: Option<f64>,
    /// Closest approach of the footprints ahead: time, s, and gap, m.
    pub cpa_gap_time_s: Option<f64>,
    pub cpa_gap_m: Option<f64>,
    /// `distance_m - gap_m`: the antenna separation at which they would
    /// touch along the current line of sight (the sum of the radii for two circles), m.
    pub collision_radius_m: Option<f64>,
    /// Bearing from `asset` to `other`, degrees true.
    pub bearing_deg: Option<f64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub speed_mps: Option<f64>,
    pub track_deg: Option<f64>,
    pub other_lat: Option<f64>,
    pub other_lon: Option<f64>,
    pub other_speed_mps: Option<f64>,
    pub other_track_deg: Option<f64>,
}

/// `svc/traffic-awareness/{asset}/zone`: a zone violation starting or ending.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneMsg {
    pub asset: String,
    pub zone: String,
    pub zone_kind: &'static str,
    /// `{asset}|{zone}|{start fix time, Unix ms}`.
    pub violation: String,
    pub state: Lifecycle,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<ClearReason>,
    pub time: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub speed_mps: Option<f64>,
    /// The zone's limit (speed_limit zones).
    pub max_speed_mps: Option<f64>,
    /// Highest speed seen during the violation (speed_limit zones).
    pub peak_speed_mps: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Boxed: a warning is several times a zone message's size.
    Warning(Box<WarningMsg>),
    Zone(ZoneMsg),
}

impl Output {
    pub fn topic(&self) -> String {
        match self {
            Output::Warning(w) => format!("svc/traffic-awareness/{}/warning", w.asset),
            Output::Zone(z) => format!("svc/traffic-awareness/{}/zone", z.asset),
        }
    }
}

/// `svc/traffic-awareness/site/{site}/picture`, every `picture_interval_s`.
#[derive(Debug, Clone, Serialize)]
pub struct Picture {
    pub site: String,
    /// Site GNSS clock (newest fix time), if any fix was seen.
    pub time: Option<String>,
    /// Agent wall clock of the tick, Unix ms.
    pub generated_ms: u64,
    pub counts: PictureCounts,
    pub assets: Vec<PictureAsset>,
    /// The most severe first (then shortest TTC), at most 1000.
    pub encounters: Vec<PictureEncounter>,
    pub zone_violations: Vec<PictureViolation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PictureCounts {
    pub assets: usize,
    pub encounters: usize,
    pub critical: usize,
    pub zone_violations: usize,
    /// Encounters carried over a restart, waiting for their assets.
    pub restored_pending: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PictureAsset {
    pub id: String,
    pub class: Option<String>,
    pub lat: f64,
    pub lon: f64,
    pub x_m: f64,
    pub y_m: f64,
    pub speed_mps: f64,
    pub track_deg: f64,
    /// Orientation of the footprint (course when last moving), degrees true.
    pub heading_deg: Option<f64>,
    /// Site clock minus the asset's last fix time, s.
    pub age_s: f64,
    pub time: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PictureEncounter {
    pub id: String,
    pub a: String,
    pub b: String,
    pub severity: Severity,
    pub peak_severity: Severity,
    pub kind: &'static str,
    pub distance_m: f64,
    pub gap_m: f64,
    pub closing_speed_mps: f64,
    pub ttc_s: Option<f64>,
    pub cpa_time_s: f64,
    pub cpa_distance_m: f64,
    pub cpa_gap_time_s: f64,
    pub cpa_gap_m: f64,
    pub since: String,
    pub updated: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PictureViolation {
    pub id: String,
    pub asset: String,
    pub zone: String,
    pub zone_kind: &'static str,
    pub since: String,
    pub speed_mps: f64,
    pub max_speed_mps: Option<f64>,
}

/// Rounds to millimetres / milliseconds: keeps messages short, far below
/// GNSS accuracy.
pub fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Rounds degrees to 1e-8 (about a millimetre).
pub fn r8(v: f64) -> f64 {
    (v * 1e8).round() / 1e8
}
