//! Reads positioning's fixes (gpsd TPV reports, see
//! `plugins/positioning/src/tpv.rs`) and says why one is refused.
//!
//! Tolerant by design: unknown fields are ignored, `speed`, `track` and
//! `time` may be missing or `null`; only what the kinematics need is
//! checked. A report with `mode` 0 or 1 (gpsd: unknown / no fix) carries no
//! position and is ignored without being an error.

use outpost_sdk::civil::{civil_from_days, days_from_civil};

use serde::Deserialize;
use std::borrow::Cow;

/// Why a message was refused; each is counted as `rejected_<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{}", self.name())]
pub enum Reject {
    /// The topic has no asset segment (`svc/positioning/{asset}/fix`).
    BadTopic,
    /// Not UTF-8 (JSON text must be; serde would skip bad bytes inside
    /// fields it ignores).
    NotUtf8,
    /// Not JSON, or a field of the wrong type.
    MalformedJson,
    /// `class` is present and not "TPV".
    NotTpv,
    /// `mode` missing or not 0..=3.
    BadMode,
    /// Mode 2/3 without `lat`/`lon`.
    NoPosition,
    /// Latitude/longitude out of range or not finite.
    BadLatLon,
    /// Speed negative, not finite or above `max_speed_mps`.
    BadSpeed,
    /// Track outside 0..=360 degrees or not finite.
    BadTrack,
    /// `time` is not ISO 8601 UTC (`YYYY-MM-DDTHH:MM:SS[.fff]Z`).
    BadTime,
    /// Older than the asset's previous fix.
    TimeBackwards,
    /// Further than `max_site_radius_m` from the frame's origin.
    OutsideSite,
    /// A new asset while `max_assets` are tracked.
    AssetLimit,
    /// Dated further ahead of the site clock than the site could have moved
    /// (`stale_after_s`, plus the agent's wall time since the clock moved):
    /// a receiver whose clock jumped.
    TimeJump,
}

impl Reject {
    pub fn name(self) -> &'static str {
        match self {
            Reject::BadTopic => "bad_topic",
            Reject::NotUtf8 => "not_utf8",
            Reject::MalformedJson => "malformed_json",
            Reject::NotTpv => "not_tpv",
            Reject::BadMode => "bad_mode",
            Reject::NoPosition => "no_position",
            Reject::BadLatLon => "bad_lat_lon",
            Reject::BadSpeed => "bad_speed",
            Reject::BadTrack => "bad_track",
            Reject::BadTime => "bad_time",
            Reject::TimeBackwards => "time_backwards",
            Reject::OutsideSite => "outside_site",
            Reject::AssetLimit => "asset_limit",
            Reject::TimeJump => "time_jump",
        }
    }
}

#[derive(Deserialize)]
struct RawTpv<'a> {
    #[serde(borrow, default)]
    class: Option<Cow<'a, str>>,
    #[serde(default)]
    mode: Option<i64>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    speed: Option<f64>,
    #[serde(default)]
    track: Option<f64>,
}

/// A usable fix, checked field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// Unix milliseconds, when the report had a time.
    pub time_ms: Option<i64>,
    pub lat: f64,
    pub lon: f64,
    /// Speed over ground, m/s.
    pub speed: Option<f64>,
    /// Course over ground, degrees true.
    pub track: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Fix(Fix),
    /// Mode 0/1: the receiver has no position now.
    NoFix,
}

/// Parses one TPV payload; `detail` of an error is for the log.
pub fn parse(payload: &[u8], max_speed_mps: f64) -> Result<Parsed, (Reject, String)> {
    let text = std::str::from_utf8(payload).map_err(|e| (Reject::NotUtf8, e.to_string()))?;
    let raw: RawTpv = serde_json::from_str(text).map_err(|e| (Reject::MalformedJson, e.to_string()))?;
    if let Some(c) = raw.class.as_deref() {
        if c != "TPV" {
            return Err((Reject::NotTpv, format!("class is {c:?}")));
        }
    }
    match raw.mode {
        Some(0 | 1) => return Ok(Parsed::NoFix),
        Some(2 | 3) => {}
        Some(m) => return Err((Reject::BadMode, format!("mode {m}"))),
        None => return Err((Reject::BadMode, "no mode".into())),
    }
    let (Some(lat), Some(lon)) = (raw.lat, raw.lon) else {
        return Err((Reject::NoPosition, "mode 2/3 without lat/lon".into()));
    };
    if !crate::config::valid_lat_lon(lat, lon) {
        return Err((Reject::BadLatLon, format!("lat {lat}, lon {lon}")));
    }
    if let Some(s) = raw.speed {
        if !(s.is_finite() && (0.0..=max_speed_mps).contains(&s)) {
            return Err((Reject::BadSpeed, format!("speed {s} m/s (plausible: 0 to {max_speed_mps})")));
        }
    }
    if let Some(t) = raw.track {
        if !(t.is_finite() && (0.0..=360.0).contains(&t)) {
            return Err((Reject::BadTrack, format!("track {t} deg")));
        }
    }
    let time_ms = match raw.time.as_deref() {
        Some(t) => Some(parse_iso_ms(t).ok_or_else(|| (Reject::BadTime, format!("time {t:?}")))?),
        None => None,
    };
    Ok(Parsed::Fix(Fix { time_ms, lat, lon, speed: raw.speed, track: raw.track }))
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `2026-03-01T10:00:00.123Z` (any number of fraction digits, or none) to
/// Unix milliseconds, rounded to the millisecond.
pub fn parse_iso_ms(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z')?;
    let (date, clock) = t.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, mo, da) = (digits(d.next()?)?, digits(d.next()?)?, digits(d.next()?)?);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut c = hms.splitn(3, ':');
    let (h, mi, s) = (digits(c.next()?)?, digits(c.next()?)?, digits(c.next()?)?);
    let month_days = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || !(1970..=9999).contains(&y) {
        return None;
    }
    if !(1..=month_days[(mo - 1) as usize]).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let frac_ms = if frac.is_empty() {
        0.0
    } else {
        // Check every byte before slicing: a multi-byte character must not
        // reach a byte-index slice.
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("0.{}", &frac[..frac.len().min(9)]).parse::<f64>().ok()? * 1000.0
    };
    Some((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s) * 1000 + frac_ms.round() as i64)
}

/// Unix milliseconds to `2026-03-01T10:00:00.123Z`.
pub fn iso_ms(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", s / 3600, s / 60 % 60, s % 60, ms_of_day % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for t in ["2026-03-01T10:00:00.123Z", "2000-02-29T23:59:59.999Z", "1970-01-01T00:00:00.000Z"] {
            let ms = parse_iso_ms(t).expect(t);
            assert_eq!(iso_ms(ms), t);
        }
        assert_eq!(parse_iso_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_iso_ms("1970-01-01T00:00:01.0005Z"), Some(1001));
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T24:00:00Z",
            "x",
            "2026-01-01T00:00:00.12345678\u{e9}Z",
            "2026-01-01T00:00:00.1a3Z",
        ] {
            assert_eq!(parse_iso_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn reasons_are_specific() {
        let r = |s: &str| parse(s.as_bytes(), 50.0).err().map(|e| e.0);
        assert_eq!(r("{"), Some(Reject::MalformedJson));
        assert_eq!(r(r#"{"class":"SKY","mode":3}"#), Some(Reject::NotTpv));
        assert_eq!(r(r#"{"class":"TPV","mode":7,"lat":1,"lon":1}"#), Some(Reject::BadMode));
        assert_eq!(r(r#"{"class":"TPV","mode":3}"#), Some(Reject::NoPosition));
        assert_eq!(r(r#"{"class":"TPV","mode":3,"lat":91,"lon":1}"#), Some(Reject::BadLatLon));
        assert_eq!(r(r#"{"class":"TPV","mode":3,"lat":1,"lon":1,"speed":90}"#), Some(Reject::BadSpeed));
        assert_eq!(r(r#"{"class":"TPV","mode":3,"lat":1,"lon":1,"track":-1}"#), Some(Reject::BadTrack));
        assert_eq!(r(r#"{"class":"TPV","mode":3,"lat":1,"lon":1,"time":"now"}"#), Some(Reject::BadTime));
        assert_eq!(parse(br#"{"class":"TPV","mode":1}"#, 50.0), Ok(Parsed::NoFix));
        let ok = parse(br#"{"class":"TPV","mode":2,"lat":1,"lon":2,"speed":null,"extra":[1]}"#, 50.0);
        assert_eq!(ok, Ok(Parsed::Fix(Fix { time_ms: None, lat: 1.0, lon: 2.0, speed: None, track: None })));
    }
}
