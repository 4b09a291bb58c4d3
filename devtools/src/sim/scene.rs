//! A whole scene of moving assets from a track file (local metres), as the
//! GNSS receivers of those assets would report it.
//!
//! Input CSV columns: `track_id`, `position_x`, `position_y` (m, east and
//! north in any local frame), `velocity_x`, `velocity_y` (m/s, optional:
//! zero if absent), and either `timestep` (× `period_s`) or `time_s`;
//! `object_type` is optional and lets kinds be skipped. This is the shape of
//! the Argoverse 2 `tracks.csv` rendering.
//!
//! Local x/y are placed on the WGS84 ellipsoid around `origin` with the
//! local tangent-plane approximation (radii of curvature at the origin):
//! exact to millimetres over a few kilometres, which is a site.
//!
//! Output per asset and time step, either
//! - NMEA (`site/{site}/{asset}/gnss/nmea`: one RMC + GGA pair), so the fixes
//!   go through the positioning service like a real receiver's, or
//! - TPV fixes (`svc/positioning/{asset}/fix`), for a site without positioning.

use super::{read, valid_level, Clock, Scheduled, SimError, Track};
use std::collections::BTreeMap;
use std::path::Path;

const WGS84_A: f64 = 6_378_137.0;
const WGS84_E2: f64 = 6.694_379_990_14e-3;
const MPS_TO_KNOTS: f64 = 1.0 / 0.514_444_444;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SceneOutput {
    Nmea,
    Fix,
}

#[derive(Debug, Clone)]
pub struct SceneOptions {
    /// Latitude and longitude (degrees) of the local point `origin_xy`.
    pub origin: (f64, f64),
    pub origin_xy: (f64, f64),
    /// Seconds per `timestep`.
    pub period_s: f64,
    /// UTC time of step 0, seconds since the epoch.
    pub start_utc: f64,
    /// `object_type`s not published (e.g. parked objects carry no receiver).
    pub skip_types: Vec<String>,
    pub output: SceneOutput,
}

/// Degrees latitude and longitude of a local point.
pub fn to_geodetic(origin: (f64, f64), east_m: f64, north_m: f64) -> (f64, f64) {
    let phi = origin.0.to_radians();
    let w = 1.0 - WGS84_E2 * phi.sin().powi(2);
    let meridional = WGS84_A * (1.0 - WGS84_E2) / w.powf(1.5);
    let normal = WGS84_A / w.sqrt();
    (origin.0 + (north_m / meridional).to_degrees(), origin.1 + (east_m / (normal * phi.cos())).to_degrees())
}

struct Sample {
    t: f64,
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
}

pub fn load(site: &str, path: &Path, opts: &SceneOptions) -> Result<Track, SimError> {
    let data = read(path)?;
    let bad = |message: String| SimError::Csv { path: path.to_owned(), message };
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(data.as_slice());
    let header: Vec<String> =
        reader.headers().map_err(|e| bad(format!("header: {e}")))?.iter().map(|h| h.trim().to_owned()).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let required = |name: &str| col(name).ok_or_else(|| bad(format!("no '{name}' column (header: {header:?})")));
    let (id_col, x_col, y_col) = (required("track_id")?, required("position_x")?, required("position_y")?);
    let (step_col, time_col) = (col("timestep"), col("time_s"));
    if step_col.is_none() && time_col.is_none() {
        return Err(bad("needs a 'timestep' or a 'time_s' column".into()));
    }
    let (vx_col, vy_col, type_col) = (col("velocity_x"), col("velocity_y"), col("object_type"));

    let mut track = Track {
        name: "scene".into(),
        path: path.to_owned(),
        clock: Clock::Recording,
        messages: Vec::new(),
        skipped: Vec::new(),
        skipped_count: 0,
    };
    let mut by_asset: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| bad(format!("line {line}: {e}")))?;
        let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).map(str::trim).filter(|v| !v.is_empty());
        if let Some(kind) = cell(type_col) {
            if opts.skip_types.iter().any(|s| s == kind) {
                continue;
            }
        }
        let num = |c: Option<usize>| cell(c).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        let Some(id) = cell(Some(id_col)).filter(|id| valid_level(id)) else {
            track.skip(format!("line {line}: track_id unusable as a topic level"));
            continue;
        };
        let t = match (num(step_col), num(time_col)) {
            (Some(step), _) => step * opts.period_s,
            (None, Some(t)) => t,
            _ => {
                track.skip(format!("line {line}: no timestep/time_s"));
                continue;
            }
        };
        let (Some(x), Some(y)) = (num(Some(x_col)), num(Some(y_col))) else {
            track.skip(format!("line {line}: position_x/position_y not numbers"));
            continue;
        };
        let (vx, vy) = (num(vx_col).unwrap_or(0.0), num(vy_col).unwrap_or(0.0));
        by_asset.entry(id.to_owned()).or_default().push(Sample { t, x, y, vx, vy });
    }

    // One message per asset and step; steps in time order, assets in id order.
    let mut timed: Vec<(f64, &str, &Sample)> =
        by_asset.iter().flat_map(|(id, samples)| samples.iter().map(move |s| (s.t, id.as_str(), s))).collect();
    timed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    let t0 = timed.first().map_or(0.0, |t| t.0);
    for (t, id, s) in timed {
        let (lat, lon) = to_geodetic(opts.origin, s.x - opts.origin_xy.0, s.y - opts.origin_xy.1);
        let speed = s.vx.hypot(s.vy);
        let course = if speed > 0.0 { s.vx.atan2(s.vy).to_degrees().rem_euclid(360.0) } else { 0.0 };
        let utc = opts.start_utc + (t - t0);
        let (topic, payload) = match opts.output {
            SceneOutput::Nmea => (format!("site/{site}/{id}/gnss/nmea"), nmea_epoch(utc, lat, lon, speed, course)),
            SceneOutput::Fix => (format!("svc/positioning/{id}/fix"), tpv(id, utc, lat, lon, speed, course)),
        };
        track.messages.push(Scheduled { at: t - t0, topic, payload: payload.into_bytes() });
    }
    Ok(track)
}

fn utc_parts(utc: f64) -> (i64, u32, u32, f64) {
    let days = utc.div_euclid(86_400.0);
    let sod = utc - days * 86_400.0;
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, sod)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let (y, m, d) = outpost_sdk::civil::civil_from_days(z);
    (y, m as u32, d as u32)
}

/// `ddmm.mmmmmmm,H` for NMEA (minutes to 1e-7: about 0.2 mm).
fn nmea_angle(value: f64, deg_width: usize, pos: char, neg: char) -> String {
    let hemi = if value < 0.0 { neg } else { pos };
    let a = value.abs();
    let mut deg = a.floor();
    let mut min = ((a - deg) * 60.0 * 1e7).round() / 1e7;
    if min >= 60.0 {
        deg += 1.0;
        min -= 60.0;
    }
    format!("{:0w$}{:010.7},{hemi}", deg as u32, min, w = deg_width)
}

fn with_checksum(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |acc, b| acc ^ b);
    format!("${body}*{sum:02X}")
}

/// One receiver epoch: RMC (position, speed, course, date) then GGA (fix quality, altitude).
pub fn nmea_epoch(utc: f64, lat: f64, lon: f64, speed_mps: f64, course_deg: f64) -> String {
    let (y, m, d, sod) = utc_parts((utc * 100.0).round() / 100.0);
    let hms = format!("{:02}{:02}{:05.2}", (sod / 3600.0) as u32, (sod / 60.0) as u32 % 60, sod % 60.0);
    let (la, lo) = (nmea_angle(lat, 2, 'N', 'S'), nmea_angle(lon, 3, 'E', 'W'));
    let rmc = with_checksum(&format!(
        "GPRMC,{hms},A,{la},{lo},{:.4},{:.2},{d:02}{m:02}{:02},,,A",
        speed_mps * MPS_TO_KNOTS,
        course_deg,
        y.rem_euclid(100)
    ));
    let gga = with_checksum(&format!("GPGGA,{hms},{la},{lo},1,12,0.8,0.0,M,0.0,M,,"));
    format!("{rmc}\r\n{gga}")
}

fn tpv(device: &str, utc: f64, lat: f64, lon: f64, speed: f64, track: f64) -> String {
    let (y, m, d, sod) = utc_parts((utc * 1000.0).round() / 1000.0);
    let ms = (sod * 1000.0).round() as i64;
    let time = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    serde_json::json!({
        "class": "TPV", "device": device, "mode": 3, "time": time,
        "lat": lat, "lon": lon, "alt": 0.0, "speed": speed, "track": track,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_metres_land_where_the_ellipsoid_says() {
        // 1 km north and east of 45°N: meridional radius 6,367,381.8 m,
        // normal radius 6,388,838.3 m (WGS84 tables).
        let (lat, lon) = to_geodetic((45.0, 7.0), 1000.0, 1000.0);
        assert!((lat - 45.0 - (1000.0f64 / 6_367_381.8).to_degrees()).abs() < 1e-9);
        let east = 1000.0f64 / (6_388_838.3 * 45f64.to_radians().cos());
        assert!((lon - 7.0 - east.to_degrees()).abs() < 1e-9);
    }

    #[test]
    fn nmea_is_well_formed() {
        // 2026-01-01T10:20:30.5Z, 1 m/s towards the east.
        let text = nmea_epoch(1_767_262_830.5, -33.5, 151.25, 1.0, 90.0);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("$GPRMC,102030.50,A,3330.0000000,S,15115.0000000,E,1.9438,90.00,010126"));
        for l in lines {
            let (body, sum) = l[1..].split_once('*').unwrap();
            assert_eq!(u8::from_str_radix(sum, 16).unwrap(), body.bytes().fold(0, |a, b| a ^ b));
        }
    }

    /// The receiver output decodes, through the real positioning service, to
    /// the positions and velocities the scene had.
    #[test]
    fn positioning_decodes_the_generated_nmea() {
        use outpost_sdk::testing::Harness;
        let mut h = Harness::<positioning::Positioning>::new("{}").unwrap();
        let origin = (-23.44, -70.25);
        let steps: Vec<(f64, f64, f64, f64)> = (0..20).map(|i| (i as f64 * 0.1, 3.0 * i as f64, -40.0, 3.0)).collect();
        for &(t, x, y, v) in &steps {
            let (lat, lon) = to_geodetic(origin, x, y);
            h.send("site/s/a/gnss/nmea", nmea_epoch(1_767_262_830.0 + t, lat, lon, v, 90.0)).unwrap();
        }
        h.service().flush_all().unwrap();
        let mut fixes: Vec<serde_json::Value> =
            h.take_published().iter().map(|(_, p)| serde_json::from_slice(p).unwrap()).collect();
        // Like gpsd, the first epoch is reported after RMC (before GGA has
        // told the altitude) and again after GGA: keep each epoch's last report.
        fixes.dedup_by(|later, earlier| {
            let same = later["time"] == earlier["time"];
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        assert_eq!(fixes.len(), steps.len(), "{fixes:#?}");
        for (fix, &(_, x, y, v)) in fixes.iter().zip(&steps) {
            let (lat, lon) = to_geodetic(origin, x, y);
            assert!((fix["lat"].as_f64().unwrap() - lat).abs() < 1e-8, "{fix}");
            assert!((fix["lon"].as_f64().unwrap() - lon).abs() < 1e-8, "{fix}");
            assert!((fix["speed"].as_f64().unwrap() - v).abs() < 1e-3, "{fix}");
            assert!((fix["track"].as_f64().unwrap() - 90.0).abs() < 1e-9, "{fix}");
        }
    }

    #[test]
    fn scene_rows_become_per_asset_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracks.csv");
        std::fs::write(
            &path,
            "track_id,object_type,timestep,position_x,position_y,velocity_x,velocity_y\n\
             b,vehicle,1,10,0,0,2\na,vehicle,0,0,0,1,0\na,vehicle,1,0.1,0,1,0\np,static,0,5,5,0,0\nc,vehicle,x,1,1,0,0\n",
        )
        .unwrap();
        let opts = SceneOptions {
            origin: (0.0, 0.0),
            origin_xy: (0.0, 0.0),
            period_s: 0.1,
            start_utc: 0.0,
            skip_types: vec!["static".into()],
            output: SceneOutput::Fix,
        };
        let track = load("s", &path, &opts).unwrap();
        let topics: Vec<(&str, f64)> = track.messages.iter().map(|m| (m.topic.as_str(), m.at)).collect();
        assert_eq!(
            topics,
            vec![("svc/positioning/a/fix", 0.0), ("svc/positioning/a/fix", 0.1), ("svc/positioning/b/fix", 0.1)]
        );
        assert_eq!(track.skipped_count, 1);
        let fix: serde_json::Value = serde_json::from_slice(&track.messages[2].payload).unwrap();
        assert_eq!(fix["time"], "1970-01-01T00:00:00.100Z");
        assert!((fix["speed"].as_f64().unwrap() - 2.0).abs() < 1e-12);
        assert!(fix["track"].as_f64().unwrap().abs() < 1e-12, "north is 0");
    }
}
