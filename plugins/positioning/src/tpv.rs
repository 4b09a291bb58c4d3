//! Turns decoded sentences and frames into gpsd-style TPV reports, one per
//! reporting cycle.
//!
//! A receiver sends a burst of sentences per epoch (e.g. RMC, VTG, GGA,
//! GSA, GSV, GLL), all carrying the same UTC time where they carry one.
//! Like gpsd, we learn which sentence ends a cycle: when a sentence arrives
//! with a new time, the previous cycle is complete and the last sentence
//! seen before it is remembered as the cycle ender. From then on the fix is
//! published as soon as the ender arrives (no waiting for the next epoch);
//! until it is known, a cycle is published when the next one starts.
//! Values merge across sentences of a cycle, later sentences winning.

use crate::geoid::ecef_to_wgs84;
use crate::geoid::wgs84_separation;
use crate::nmea::Sentence;
use crate::ubx::{NavPvt, NavSol, NavTimeGps};
use serde::Serialize;

const KNOTS_TO_MPS: f64 = 0.514_444_444;
/// 2017-01-01T00:00:00Z: dates before it are WKRO victims (see `cycle_seconds`).
const WKRO_BEFORE_S: f64 = 1_483_228_800.0;
/// 1024 GPS weeks, s.
const ROLLOVER_S: f64 = 1024.0 * 7.0 * 86_400.0;

/// A gpsd TPV ("time-position-velocity") report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tpv {
    pub class: &'static str,
    pub device: String,
    /// 1 no fix, 2 = 2D, 3 = 3D.
    pub mode: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Altitude above mean sea level (gpsd's `alt`), m.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    #[serde(rename = "altMSL", skip_serializing_if = "Option::is_none")]
    pub alt_msl: Option<f64>,
    /// Height above the WGS84 ellipsoid, m.
    #[serde(rename = "altHAE", skip_serializing_if = "Option::is_none")]
    pub alt_hae: Option<f64>,
    #[serde(rename = "geoidSep", skip_serializing_if = "Option::is_none")]
    pub geoid_sep: Option<f64>,
    /// Speed over ground, m/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Course over ground, degrees true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<f64>,
    /// Vertical speed, m/s (up positive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub climb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eph: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epv: Option<f64>,
    /// Satellites used, where the source says.
    #[serde(rename = "nSat", skip_serializing_if = "Option::is_none")]
    pub satellites_used: Option<u8>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    outpost_sdk::civil::days_from_civil(y.into(), m.into(), d.into())
}

/// ISO 8601 UTC with milliseconds, as gpsd prints it.
pub fn iso_time(y: i32, m: u32, d: u32, seconds_of_day: f64) -> String {
    let ms_total = (seconds_of_day * 1000.0).round() as i64;
    let (day_carry, ms_of_day) = (ms_total.div_euclid(86_400_000), ms_total.rem_euclid(86_400_000));
    let days = days_from_civil(y, m, d) + day_carry;
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", s / 3600, s / 60 % 60, s % 60, ms_of_day % 1000)
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let (y, m, d) = outpost_sdk::civil::civil_from_days(z);
    (y, m as u32, d as u32)
}

/// Great-circle distance on the WGS84 mean sphere, m.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    const R: f64 = 6_371_009.0;
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dla = la2 - la1;
    let dlo = (b.1 - a.1).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * R * h.sqrt().min(1.0).asin()
}

/// Per-device fix state.
#[derive(Debug, Default)]
pub struct FixState {
    device: String,
    date: Option<(u32, u32, i32)>,
    cycle_time: Option<f64>,
    ender: Option<String>,
    last_tag: Option<String>,
    /// The current cycle has news not yet published.
    pending: bool,
    mode: u8,
    status: Option<u8>,
    pos: Option<(f64, f64)>,
    alt_msl: Option<f64>,
    geoid_sep: Option<f64>,
    sats: Option<u8>,
    /// Mode proposed by this cycle's sentences (the most capable wins, so a
    /// GSA saying 2D does not undo a GGA with altitude in the same cycle).
    cycle_mode: Option<u8>,
    /// Speed reported in this cycle; otherwise derived from the last fix.
    cycle_speed: Option<f64>,
    cycle_track: Option<f64>,
    /// Position and absolute time (s) of the last published fix.
    last_fix: Option<((f64, f64), f64)>,
    /// Once UBX NAV-PVT is seen, it is the source of fixes for this device.
    pub ubx_pvt_seen: bool,
    /// UBX NAV-SOL seen: likewise.
    ubx_sol_seen: bool,
    /// Apply gpsd's week-rollover correction to NMEA dates.
    pub rollover_fix: bool,
    /// UBX epoch state (receivers without NAV-PVT): see [`FixState::on_ubx_nav`].
    ubx: UbxEpoch,
}

/// One UBX navigation epoch being assembled from NAV-SOL and NAV-TIMEGPS.
#[derive(Debug, Default)]
struct UbxEpoch {
    /// GPS-UTC leap seconds from NAV-TIMEGPS; gpsd's build-time 18 until known.
    leap_s: Option<i32>,
    sol: Option<NavSol>,
    gps_time: Option<(u16, f64)>,
}

/// Unix seconds of the start of GPS time (1980-01-06).
const GPS_EPOCH_S: f64 = 315_964_800.0;

impl FixState {
    pub fn new(device: &str) -> Self {
        FixState { device: device.to_owned(), mode: 1, rollover_fix: true, ..Default::default() }
    }

    /// Feeds one sentence (`kind` is its 3-letter type, talker ignored);
    /// returns the reports it completes (zero, one, or two at a cycle edge).
    pub fn on_sentence(&mut self, kind: &str, s: &Sentence) -> Vec<Tpv> {
        let mut out = Vec::new();
        if let Some(t) = s.time() {
            if self.cycle_time.is_some_and(|c| (c - t).abs() > 1e-6) {
                // A new cycle starts: the previous one is complete.
                if self.ender.is_none() {
                    self.ender = self.last_tag.clone();
                }
                if self.pending {
                    out.extend(self.report());
                }
                self.pending = false;
                self.cycle_mode = None;
                self.cycle_speed = None;
                self.cycle_track = None;
            }
            self.cycle_time = Some(t);
        }
        let news = self.merge(s);
        self.pending |= news;
        self.last_tag = Some(kind.to_owned());
        if self.pending && self.ender.as_deref() == Some(kind) {
            out.extend(self.report());
            self.pending = false;
        }
        out
    }

    fn propose(&mut self, mode: u8) {
        self.cycle_mode = Some(self.cycle_mode.map_or(mode, |m| m.max(mode)));
    }

    fn merge(&mut self, s: &Sentence) -> bool {
        match *s {
            Sentence::Gga { pos, quality, sats, alt_msl, geoid_sep, .. } => {
                if quality == 0 {
                    self.propose(1);
                } else {
                    self.pos = pos.or(self.pos);
                    self.propose(if alt_msl.is_some() { 3 } else { 2 });
                    self.status = Some(if quality == 2 { 2 } else { 1 });
                    self.alt_msl = alt_msl;
                    // No separation sent: gpsd fills it from its geoid model.
                    self.geoid_sep = geoid_sep.or(self.pos.map(|(la, lo)| wgs84_separation(la, lo)));
                }
                self.sats = sats;
                true
            }
            Sentence::Gns { pos, valid, alt_msl, geoid_sep, .. } => {
                if valid {
                    self.pos = pos.or(self.pos);
                    self.propose(if alt_msl.is_some() { 3 } else { 2 });
                    self.alt_msl = alt_msl;
                    self.geoid_sep = geoid_sep.or(self.pos.map(|(la, lo)| wgs84_separation(la, lo)));
                } else {
                    self.propose(1);
                }
                true
            }
            Sentence::Rmc { valid, pos, speed_knots, track, date, .. } => {
                if let Some(d) = date {
                    self.date = Some(d);
                }
                if valid {
                    self.pos = pos.or(self.pos);
                    self.propose(2);
                    self.cycle_speed = speed_knots.map(|k| k * KNOTS_TO_MPS);
                    self.cycle_track = track;
                } else {
                    self.propose(1);
                }
                true
            }
            Sentence::Gll { valid, pos, .. } => {
                if valid && pos.is_some() {
                    self.pos = pos;
                    self.propose(2);
                }
                true
            }
            Sentence::Gsa { mode: Some(m @ 1..=3), .. } => {
                self.propose(m);
                true
            }
            Sentence::Vtg { track, speed_knots, speed_kmh } => {
                if let Some(sp) = speed_knots.map(|k| k * KNOTS_TO_MPS).or(speed_kmh.map(|k| k / 3.6)) {
                    self.cycle_speed = Some(sp);
                }
                if track.is_some() {
                    self.cycle_track = track;
                }
                true
            }
            Sentence::Zda { date, .. } => {
                if let Some(d) = date {
                    self.date = Some(d);
                }
                false
            }
            _ => false,
        }
    }

    /// Unix seconds of the current cycle, when the date is known, with
    /// gpsd's GPS week-rollover (WKRO) correction: a receiver reporting a UTC
    /// date before 2017-01-01 (when the leap second count reached 18) is
    /// taken to have wrapped its 10-bit GPS week and is moved forward 1024
    /// weeks (e.g. a 1999-08-22 date after the April 2019 rollover).
    fn cycle_seconds(&self) -> Option<f64> {
        let (d, m, y) = self.date?;
        let t = days_from_civil(y, m, d) as f64 * 86_400.0 + self.cycle_time?;
        Some(if self.rollover_fix && t < WKRO_BEFORE_S { t + ROLLOVER_S } else { t })
    }

    fn report(&mut self) -> Option<Tpv> {
        if self.ubx_pvt_seen {
            return None;
        }
        if let Some(m) = self.cycle_mode {
            self.mode = m;
        }
        let time = self.cycle_seconds().map(|t| iso_time(1970, 1, 1, t));
        let fix = self.mode >= 2;
        // Receivers that send no speed (GGA-only cycles): derive it from the
        // distance to the previous fix, as gpsd does.
        let now = self.cycle_seconds();
        let derived = match (self.cycle_speed, self.pos, self.last_fix, now) {
            (None, Some(p), Some((q, t0)), Some(t1)) if fix && t1 > t0 && t1 - t0 < 10.0 => {
                Some(distance_m(q, p) / (t1 - t0))
            }
            _ => None,
        };
        let speed = self.cycle_speed.or(derived);
        if let (true, Some(p), Some(t)) = (fix, self.pos, now) {
            self.last_fix = Some((p, t));
        }
        let alt = if self.mode == 3 { self.alt_msl } else { None };
        Some(Tpv {
            class: "TPV",
            device: self.device.clone(),
            mode: self.mode,
            status: if fix { self.status } else { None },
            time,
            lat: self.pos.filter(|_| fix).map(|p| p.0),
            lon: self.pos.filter(|_| fix).map(|p| p.1),
            alt,
            alt_msl: alt,
            alt_hae: alt.zip(self.geoid_sep).map(|(a, g)| a + g),
            geoid_sep: if alt.is_some() { self.geoid_sep } else { None },
            speed: speed.filter(|_| fix),
            track: self.cycle_track.filter(|_| fix),
            satellites_used: self.sats,
            ..Default::default()
        })
    }

    /// Whether UBX navigation solutions are this device's fixes (its NMEA is then not used).
    pub fn ubx_nav_seen(&self) -> bool {
        self.ubx_pvt_seen || self.ubx_sol_seen
    }

    /// End of input: publish a cycle still waiting for its ender.
    pub fn flush(&mut self) -> Option<Tpv> {
        if let Some(t) = self.sol_report() {
            return Some(t);
        }
        if self.pending {
            self.pending = false;
            self.report()
        } else {
            None
        }
    }

    /// A UBX NAV message of a receiver without NAV-PVT (u-blox 4..8 sending
    /// NAV-SOL). As gpsd 3.20 does, NAV-SOL reports the fix at once, with
    /// the leap seconds known at that moment (gpsd's built-in 18 until a
    /// NAV-TIMEGPS with a valid count arrives); NAV-TIMEGPS only updates
    /// the leap seconds.
    pub fn on_ubx_nav(&mut self, id: u8, _itow: u32, payload: &[u8]) -> Option<Tpv> {
        if self.ubx_pvt_seen {
            return None;
        }
        match id {
            0x06 => {
                let sol = NavSol::parse(payload)?;
                self.ubx_sol_seen = true;
                self.ubx.gps_time = sol.gps_time;
                self.ubx.sol = Some(sol);
                self.sol_report()
            }
            0x20 => {
                if let Some(l) = NavTimeGps::parse(payload).and_then(|t| t.leap_s) {
                    self.ubx.leap_s = Some(i32::from(l));
                }
                None
            }
            _ => None,
        }
    }

    /// The epoch's fix from NAV-SOL (ECEF converted as gpsd does), if any.
    fn sol_report(&mut self) -> Option<Tpv> {
        let sol = self.ubx.sol.take()?;
        let leap = f64::from(self.ubx.leap_s.unwrap_or(18));
        let time = self
            .ubx
            .gps_time
            .take()
            .map(|(week, tow)| iso_time(1970, 1, 1, GPS_EPOCH_S + f64::from(week) * 604_800.0 + tow - leap));
        let mode = match sol.gps_fix {
            3..=5 => 3,
            2 => 2,
            _ => 1,
        };
        let fix = mode >= 2;
        let [x, y, z] = sol.ecef;
        let [vx, vy, vz] = sol.ecef_vel;
        let g = ecef_to_wgs84(x, y, z, vx, vy, vz).filter(|_| fix);
        let sep = g.map(|g| wgs84_separation(g.lat, g.lon));
        let alt = g.zip(sep).map(|(g, s)| g.alt_hae - s);
        Some(Tpv {
            class: "TPV",
            device: self.device.clone(),
            mode,
            status: fix.then_some(if sol.dgps { 2 } else { 1 }),
            time,
            lat: g.map(|g| g.lat),
            lon: g.map(|g| g.lon),
            alt,
            alt_msl: alt,
            alt_hae: g.map(|g| g.alt_hae),
            geoid_sep: sep,
            speed: g.map(|g| g.vel_n.hypot(g.vel_e)),
            track: g.map(|g| g.vel_e.atan2(g.vel_n).to_degrees().rem_euclid(360.0)),
            climb: g.map(|g| -g.vel_d),
            satellites_used: Some(sol.num_sv),
            ..Default::default()
        })
    }

    /// One report per UBX NAV-PVT epoch.
    pub fn on_nav_pvt(&mut self, p: &NavPvt) -> Tpv {
        self.ubx_pvt_seen = true;
        let mode = if !p.gnss_fix_ok {
            1
        } else {
            match p.fix_type {
                // 5 = time-only fix of a timing receiver on a surveyed position.
                3..=5 => 3,
                1 | 2 => 2,
                _ => 1,
            }
        };
        let fix = mode >= 2;
        let time =
            (p.valid_date && p.valid_time && (1..=12).contains(&p.month) && (1..=31).contains(&p.day)).then(|| {
                let sod =
                    f64::from(p.hour) * 3600.0 + f64::from(p.min) * 60.0 + f64::from(p.sec) + f64::from(p.nano) * 1e-9;
                iso_time(i32::from(p.year), u32::from(p.month), u32::from(p.day), sod)
            });
        let alt = (mode == 3).then_some(p.hmsl_m);
        Tpv {
            class: "TPV",
            device: self.device.clone(),
            mode,
            time,
            lat: fix.then_some(p.lat),
            lon: fix.then_some(p.lon),
            alt,
            alt_msl: alt,
            alt_hae: (mode == 3).then_some(p.height_m),
            geoid_sep: (mode == 3).then_some(p.height_m - p.hmsl_m),
            speed: fix.then_some(p.g_speed_mps),
            track: fix.then_some(p.head_mot_deg),
            climb: (mode == 3).then_some(-p.vel_d_mps),
            eph: fix.then_some(p.h_acc_m),
            epv: (mode == 3).then_some(p.v_acc_m),
            satellites_used: Some(p.num_sv),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nmea::parse;

    fn feed(state: &mut FixState, lines: &[&str]) -> Vec<Tpv> {
        let mut out = Vec::new();
        for l in lines {
            let (head, s) = parse(l.as_bytes()).expect("valid");
            out.extend(state.on_sentence(&head[head.len() - 3..], &s));
        }
        out
    }

    #[test]
    fn one_report_per_cycle_once_the_ender_is_known() {
        let mut st = FixState::new("t1");
        let out = feed(
            &mut st,
            &[
                "$GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000*7D",
                "$GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5*33",
                "$GPRMC,030719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A*7D",
                "$GPGGA,030720.000,3747.0875,S,17518.8938,E,1,08,1.1,59.8,M,23.7,M,,0000*70",
                "$GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5*33",
                "$GPRMC,030720.000,A,3747.0875,S,17518.8938,E,1.15,181.39,311214,,,A*7B",
            ],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].time.as_deref(), Some("2034-08-16T03:07:20.000Z"));
        assert_eq!(out[1].mode, 3);
        assert!((out[1].speed.unwrap_or(0.0) - 0.592).abs() < 0.001);
        assert_eq!(out[1].alt_hae, Some(59.8 + 23.7));
    }

    #[test]
    fn dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2034, 8, 16), (1999, 12, 31)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (i64::from(y), m, d));
        }
        assert_eq!(iso_time(2019, 12, 31, 86_399.999_6), "2020-01-01T00:00:00.000Z");
    }
}
