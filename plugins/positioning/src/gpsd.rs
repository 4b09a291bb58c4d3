//! NMEA 0183 to TPV the way gpsd 3.20 does it (driver_nmea0183.c,
//! libgpsd_core.c `gpsd_poll`/`gpsd_error_model`, gpsutils.c
//! `gps_merge_fix`, timebase.c `gpsd_utc_resolve`), so that a fix means
//! what gpsd users and gpsd's regression files expect.
//!
//! Per sentence: the sentence's data go into a fresh `newdata`; the first
//! sentence of a new epoch clears the merged fix (`CLEAR_IS`); the data
//! merge into it by the mask the sentence set; derived values are filled
//! (geoid separation, the missing one of altMSL/altHAE, speed from the
//! distance to the previous epoch's fix when no sentence gave one, climb).
//! A TPV is reported when the sentence is the learned end of a cycle (the
//! last timestamped sentence before time moved, learned like gpsd), or on
//! every position or mode change while no cycle end is known yet.
//! Choices gpsd makes that we follow, named in the README: GPS week
//! rollover (WKRO) dates before 2017 moved on 1024 weeks; the geoid model
//! when GGA carries no separation; mode from GGA's satellite count, RMC's
//! "keep 3D while an altitude is held", GSA's and Garmin PGRMZ's modes.

use crate::geoid::wgs84_separation;
use crate::tpv::{days_from_civil, iso_time, Tpv};

const KNOTS_TO_MPS: f64 = 0.514_444_444_444_444_5;
const METERS_TO_FEET: f64 = 3.280_839_9;
/// 2017-01-01T00:00:00Z, when GPS-UTC reached 18 s.
const WKRO_BEFORE_S: f64 = 1_483_228_800.0;
const ROLLOVER_S: f64 = 619_315_200.0;
const GPS_EPOCH_S: f64 = 315_964_800.0;

const TIME_SET: u32 = 1 << 0;
const LATLON_SET: u32 = 1 << 1;
const ALTITUDE_SET: u32 = 1 << 2;
const SPEED_SET: u32 = 1 << 3;
const TRACK_SET: u32 = 1 << 4;
const MODE_SET: u32 = 1 << 5;
const STATUS_SET: u32 = 1 << 6;
const CLEAR_IS: u32 = 1 << 7;
const REPORT_IS: u32 = 1 << 8;

const MODE_NO_FIX: u8 = 1;
const MODE_2D: u8 = 2;
const MODE_3D: u8 = 3;
const STATUS_NO_FIX: u8 = 0;
const STATUS_FIX: u8 = 1;
const STATUS_DGPS_FIX: u8 = 2;

/// gpsd's `struct gps_fix_t`, the fields a TPV needs (None = NaN).
#[derive(Debug, Clone, Default)]
struct Fix {
    /// Unix seconds; 0 = no time.
    time: f64,
    /// 0 = not seen, 1 = no fix, 2 = 2D, 3 = 3D.
    mode: u8,
    lat: Option<f64>,
    lon: Option<f64>,
    alt_hae: Option<f64>,
    alt_msl: Option<f64>,
    geoid_sep: Option<f64>,
    speed: Option<f64>,
    track: Option<f64>,
    climb: Option<f64>,
}

/// The date and time gpsd assembles from NMEA (`session->nmea.date`).
#[derive(Debug, Clone, Copy, Default)]
struct Tm {
    /// Full year; 1900 means "no year yet" (gpsd's `tm_year == 0`).
    year: i32,
    mon: u32,
    mday: i32,
    hour: i32,
    min: i32,
    sec: i32,
    nsec: i64,
}

/// Sentence types that take part in cycle detection (gpsd's tag numbers
/// are table positions; any distinct numbers do).
fn tag_of(name: &str) -> usize {
    match name {
        "RMC" => 1,
        "GGA" => 2,
        "GLL" => 3,
        "GNS" => 4,
        "GBS" => 5,
        "PSRFEPE" => 6,
        "GSA" => 7,
        "VTG" => 8,
        "ZDA" => 9,
        "GST" => 10,
        "PGRMZ" => 11,
        "PGRMF" => 12,
        "PGRME" => 13,
        "GSV" => 14,
        "TXT" => 15,
        "DTM" => 16,
        "PMGNST" => 17,
        _ => 0,
    }
}

/// Minimum field counts of gpsd's dispatch table.
fn min_fields(name: &str) -> usize {
    match name {
        "RMC" => 8,
        "GGA" | "GNS" => 13,
        "GLL" | "GBS" | "PSRFEPE" | "PGRME" => 7,
        "GSA" => 18,
        "VTG" | "TXT" => 5,
        "ZDA" | "PGRMZ" => 4,
        "GST" | "PMGNST" => 8,
        "PGRMF" => 15,
        "DTM" => 2,
        _ => 0,
    }
}

#[derive(Debug)]
pub struct GpsdNmea {
    device: String,
    newdata: Fix,
    fix: Fix,
    lastfix: Fix,
    oldfix: Fix,
    status: u8,
    satellites_used: u32,
    leap_seconds: i32,
    century: i32,
    date: Tm,
    last_gga_talker: u8,
    last_gga_timestamp: String,
    latch_mode: bool,
    last_gsa_talker: u8,
    seen_other_gsa: bool,
    this_frac: f64,
    last_frac: f64,
    latch_frac: bool,
    lasttag: usize,
    cycle_enders: u64,
    cycle_end_reliable: bool,
    /// Time of the last reported fix (an epoch is reported once at end of input).
    reported: Option<f64>,
}

fn num(s: &str) -> f64 {
    // gpsd's safe_atof: leading number, 0 when none.
    let s = s.trim_start();
    let end = s
        .char_indices()
        .take_while(|(i, c)| c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '-' || *c == '+')))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    s[..end].parse().unwrap_or(0.0)
}

fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let end = s
        .char_indices()
        .take_while(|(i, c)| c.is_ascii_digit() || (*i == 0 && (*c == '-' || *c == '+')))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    s[..end].parse().unwrap_or(0)
}

fn first(s: &str) -> u8 {
    s.as_bytes().first().copied().unwrap_or(0)
}

fn dd(s: &[u8]) -> i32 {
    i32::from(s[0].wrapping_sub(b'0')) * 10 + i32::from(s[1].wrapping_sub(b'0'))
}

/// `ddmm.mmmm,N,dddmm.mmmm,E` as gpsd's do_lat_lon.
fn lat_lon(f: &[&str]) -> Option<(f64, f64)> {
    if f.iter().take(4).any(|x| x.is_empty()) || f.len() < 4 {
        return None;
    }
    let conv = |v: f64| {
        let d = (v / 100.0).trunc();
        d + (v - d * 100.0) / 60.0
    };
    let mut lat = conv(num(f[0]));
    if first(f[1]) == b'S' {
        lat = -lat;
    }
    let mut lon = conv(num(f[2]));
    if first(f[3]) == b'W' {
        lon = -lon;
    }
    (lat.is_finite() && lon.is_finite()).then_some((lat, lon))
}

fn faa_mode(c: u8) -> u8 {
    match c {
        0 | b'N' | b'S' => STATUS_NO_FIX,
        b'D' | b'P' => STATUS_DGPS_FIX,
        b'E' => 5,
        b'F' => 4,
        b'R' => 3,
        _ => STATUS_FIX,
    }
}

/// Vincenty distance on WGS84 (gpsd's earth_distance), m.
pub fn earth_distance(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let a = 6_378_137.0_f64;
    let f = 1.0 / 298.257_223_563;
    let b = a * (1.0 - f);
    let l = (lon2 - lon1).to_radians();
    let u1 = ((1.0 - f) * lat1.to_radians().tan()).atan();
    let u2 = ((1.0 - f) * lat2.to_radians().tan()).atan();
    let (s_u1, c_u1, s_u2, c_u2) = (u1.sin(), u1.cos(), u2.sin(), u2.cos());
    let mut lambda = l;
    let mut i = 100;
    let (mut s_s, mut c_s, mut sig, mut c_sqa, mut c_2sm);
    loop {
        let (s_l, c_l) = (lambda.sin(), lambda.cos());
        s_s = ((c_u2 * s_l).powi(2) + (c_u1 * s_u2 - s_u1 * c_u2 * c_l).powi(2)).sqrt();
        if s_s == 0.0 {
            return 0.0;
        }
        c_s = s_u1 * s_u2 + c_u1 * c_u2 * c_l;
        sig = s_s.atan2(c_s);
        let s_a = c_u1 * c_u2 * s_l / s_s;
        c_sqa = 1.0 - s_a * s_a;
        c_2sm = c_s - 2.0 * s_u1 * s_u2 / c_sqa;
        if !c_2sm.is_finite() {
            c_2sm = 0.0;
        }
        let c = f / 16.0 * c_sqa * (4.0 + f * (4.0 - 3.0 * c_sqa));
        let l_p = lambda;
        lambda = l + (1.0 - c) * f * s_a * (sig + c * s_s * (c_2sm + c * c_s * (2.0 * c_2sm * c_2sm - 1.0)));
        i -= 1;
        if (lambda - l_p).abs() <= 1e-12 || i == 0 {
            break;
        }
    }
    if i == 0 {
        return f64::NAN;
    }
    let u_sq = c_sqa * (a * a - b * b) / (b * b);
    let aa = 1.0 + u_sq / 16384.0 * (4096.0 + u_sq * (-768.0 + u_sq * (320.0 - 175.0 * u_sq)));
    let bb = u_sq / 1024.0 * (256.0 + u_sq * (-128.0 + u_sq * (74.0 - 47.0 * u_sq)));
    let d_s = bb
        * s_s
        * (c_2sm
            + bb / 4.0
                * (c_s * (-1.0 + 2.0 * c_2sm * c_2sm)
                    - bb / 6.0 * c_2sm * (-3.0 + 4.0 * s_s * s_s) * (-3.0 + 4.0 * c_2sm * c_2sm)));
    b * aa * (sig - d_s)
}

impl GpsdNmea {
    pub fn new(device: &str) -> Self {
        GpsdNmea {
            device: device.to_owned(),
            newdata: Fix::default(),
            fix: Fix::default(),
            lastfix: Fix::default(),
            oldfix: Fix::default(),
            status: STATUS_NO_FIX,
            satellites_used: 0,
            leap_seconds: 18,
            century: 2000,
            date: Tm { year: 1900, ..Tm::default() },
            last_gga_talker: 0,
            last_gga_timestamp: String::new(),
            latch_mode: false,
            last_gsa_talker: 0,
            seen_other_gsa: false,
            this_frac: 0.0,
            last_frac: 0.0,
            latch_frac: false,
            lasttag: 0,
            cycle_enders: 0,
            cycle_end_reliable: false,
            reported: None,
        }
    }

    /// Feeds one checksum-valid sentence (with its `$`, without `*hh` or
    /// with it); returns the TPV it completes, if any.
    pub fn sentence(&mut self, line: &str) -> Option<Tpv> {
        self.newdata = Fix::default();
        let mask = self.parse(line);
        if mask & CLEAR_IS != 0 {
            self.fix = Fix::default();
        }
        self.merge(mask);
        self.error_model();
        let report = mask & REPORT_IS != 0 || (!self.cycle_end_reliable && mask & (LATLON_SET | MODE_SET) != 0);
        report.then(|| self.report())
    }

    /// The feed went quiet: the epoch not yet reported, if any.
    pub fn flush(&mut self) -> Option<Tpv> {
        (self.fix.mode != 0 && self.fix.time > 0.0 && self.reported != Some(self.fix.time)).then(|| self.report())
    }

    fn report(&mut self) -> Tpv {
        self.reported = Some(self.fix.time);
        let f = &self.fix;
        let fix = f.mode >= MODE_2D;
        let alt = f.alt_msl.or(f.alt_hae).filter(|_| fix);
        Tpv {
            class: "TPV",
            device: self.device.clone(),
            mode: f.mode.max(MODE_NO_FIX),
            status: fix.then_some(self.status),
            time: (f.time > 0.0).then(|| iso_time(1970, 1, 1, f.time)),
            lat: f.lat.filter(|_| fix),
            lon: f.lon.filter(|_| fix),
            alt,
            alt_msl: f.alt_msl.filter(|_| fix),
            alt_hae: f.alt_hae.filter(|_| fix),
            geoid_sep: f.geoid_sep.filter(|_| fix),
            speed: f.speed.filter(|_| fix),
            track: f.track.filter(|_| fix),
            climb: f.climb.filter(|_| f.mode >= MODE_3D),
            satellites_used: u8::try_from(self.satellites_used).ok().filter(|&n| n > 0),
            ..Default::default()
        }
    }

    fn merge(&mut self, mask: u32) {
        let (to, from) = (&mut self.fix, &self.newdata);
        if mask & TIME_SET != 0 {
            to.time = from.time;
        }
        if mask & LATLON_SET != 0 {
            to.lat = from.lat;
            to.lon = from.lon;
        }
        if mask & MODE_SET != 0 {
            to.mode = from.mode;
        }
        if mask & ALTITUDE_SET != 0 {
            if from.alt_hae.is_some() {
                to.alt_hae = from.alt_hae;
            }
            if from.alt_msl.is_some() {
                to.alt_msl = from.alt_msl;
            }
        }
        if mask & TRACK_SET != 0 {
            to.track = from.track;
        }
        if mask & SPEED_SET != 0 {
            to.speed = from.speed;
        }
        if from.geoid_sep.is_some() {
            to.geoid_sep = from.geoid_sep;
        }
    }

    fn error_model(&mut self) {
        let fix = &mut self.fix;
        let mut deltatime = -1.0;
        if fix.time > 0.0 {
            deltatime = fix.time - self.lastfix.time;
            if deltatime.abs() > 0.0099 {
                self.oldfix = self.lastfix.clone();
            } else {
                deltatime = fix.time - self.oldfix.time;
            }
        }
        let old = &self.oldfix;
        match (fix.lat, fix.lon) {
            (Some(la), Some(lo)) if la.abs() <= 90.0 && lo.abs() <= 180.0 => {}
            _ => {
                fix.lat = None;
                fix.lon = None;
            }
        }
        if let (Some(la), Some(lo)) = (fix.lat, fix.lon) {
            if fix.geoid_sep.is_none() {
                fix.geoid_sep = Some(wgs84_separation(la, lo));
            }
        }
        if let Some(t) = fix.track {
            fix.track = Some(t.rem_euclid(360.0));
        }
        if let Some(sep) = fix.geoid_sep {
            match (fix.alt_hae, fix.alt_msl) {
                (Some(h), None) => fix.alt_msl = Some(h - sep),
                (None, Some(m)) => fix.alt_hae = Some(m + sep),
                _ => {}
            }
        }
        if deltatime > 0.0 && fix.mode >= MODE_2D && old.mode >= MODE_2D {
            if fix.speed.is_none() {
                fix.speed = match (fix.lat, fix.lon, old.lat, old.lon) {
                    (Some(a), Some(b), Some(c), Some(d)) => {
                        Some(earth_distance(a, b, c, d) / deltatime).filter(|s| s.is_finite() && s.abs() <= 9999.9)
                    }
                    _ => None,
                };
            }
            if fix.mode >= MODE_3D && old.mode >= MODE_3D && fix.climb.is_none() {
                if let (Some(h), Some(h0)) = (fix.alt_hae, old.alt_hae) {
                    fix.climb = Some((h - h0) / deltatime).filter(|c| c.abs() <= 9999.9);
                }
            }
        }
        if fix.time > 0.0 {
            self.lastfix = fix.clone();
        }
    }

    /// gpsd_utc_resolve: the NMEA date and time as Unix seconds, WKRO corrected.
    fn utc_resolve(&mut self) -> f64 {
        let d = self.date;
        let days = days_from_civil(d.year, d.mon.clamp(1, 12), 1) + i64::from(d.mday) - 1;
        let mut t = days as f64 * 86_400.0 + f64::from(d.hour * 3600 + d.min * 60 + d.sec);
        if self.leap_seconds > 17 && t < WKRO_BEFORE_S {
            t += ROLLOVER_S;
            let (y, m, day) = crate::tpv::civil_from_days((t / 86_400.0).floor() as i64);
            let sod = t.rem_euclid(86_400.0) as i32;
            self.date = Tm {
                year: y as i32,
                mon: m,
                mday: day as i32,
                hour: sod / 3600,
                min: sod / 60 % 60,
                sec: sod % 60,
                nsec: d.nsec,
            };
        }
        t + d.nsec as f64 * 1e-9
    }

    fn merge_hhmmss(&mut self, s: &str) -> bool {
        let b = s.as_bytes();
        if b.len() < 6 || !b[..6].iter().all(u8::is_ascii_digit) {
            return false;
        }
        let old_hour = self.date.hour;
        self.date.hour = dd(b);
        if self.date.hour < old_hour {
            self.date.mday += 1;
        }
        self.date.min = dd(&b[2..]);
        self.date.sec = dd(&b[4..]);
        self.date.nsec = if b.len() > 7 && b[6] == b'.' && b[7].is_ascii_digit() {
            let frac = &s[7..];
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            let v: i64 = digits.parse().unwrap_or(0);
            let sublen = frac.len() as i32;
            if sublen <= 9 {
                v * 10i64.pow((9 - sublen) as u32)
            } else {
                0
            }
        } else {
            0
        };
        true
    }

    fn merge_ddmmyy(&mut self, s: &str) -> bool {
        let b = s.as_bytes();
        if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let (yy, mon, mday) = (dd(&b[4..]), dd(&b[2..]), dd(b));
        if (self.date.year - 1900) % 100 == 99 && yy == 0 {
            self.century += 100;
        }
        let mut year = self.century + yy;
        if year >= 2080 {
            year -= 100;
        }
        if !(1..=12).contains(&mon) || !(1..=31).contains(&mday) {
            return false;
        }
        self.date.year = year;
        self.date.mon = mon as u32;
        self.date.mday = mday;
        true
    }

    fn register_frac(&mut self, fld: &str) {
        if !fld.is_empty() {
            self.last_frac = self.this_frac;
            self.this_frac = num(fld);
            self.latch_frac = true;
        }
    }

    fn has_year(&self) -> bool {
        self.date.year != 1900
    }

    /// nmea_parse: one sentence into `newdata`; returns gpsd's mask.
    fn parse(&mut self, line: &str) -> u32 {
        let body = line.strip_prefix(['$', '!']).unwrap_or(line);
        // Up to the first control character (always one byte).
        let body = &body[..body.bytes().position(|b| b < b' ').unwrap_or(body.len())];
        let (text, had_star) = match body.find('*') {
            Some(i) => (&body[..i], true),
            None => (body, false),
        };
        let fields = crate::nmea::fields(text);
        let count = fields.len() - usize::from(!had_star);
        let f = |i: usize| -> &str {
            if i <= count {
                fields.get(i).copied().unwrap_or("")
            } else {
                ""
            }
        };
        let head = f(0);
        let name = if head.len() == 5 && !head.starts_with('P') { &head[2..] } else { head };
        self.latch_frac = false;
        let mut mask = 0;
        let mut thistag = 0;
        if tag_of(name) != 0 && count >= min_fields(name) {
            let fl: Vec<&str> = (0..count.max(20) + 1).map(f).collect();
            mask = match name {
                "RMC" => self.rmc(count, &fl),
                "GGA" => self.gga(&fl),
                "GLL" => self.gll(count, &fl),
                "GNS" => self.gns(&fl),
                "GSA" => self.gsa(count, &fl),
                "VTG" => self.vtg(count, &fl),
                "ZDA" => self.zda(&fl),
                "GBS" => {
                    self.register_frac(fl[1]);
                    0
                }
                "PSRFEPE" => {
                    let mut m = STATUS_SET;
                    if !fl[1].is_empty() && self.merge_hhmmss(fl[1]) {
                        self.register_frac(fl[1]);
                        if self.has_year() {
                            m |= TIME_SET;
                        }
                    }
                    m
                }
                "PGRMZ" => self.pgrmz(&fl),
                "PGRMF" => self.pgrmf(&fl),
                _ => 0,
            };
            thistag = tag_of(name);
        }
        if !head.get(2..).unwrap_or("").starts_with("GSA") {
            self.last_gsa_talker = 0;
        }
        if mask & TIME_SET != 0 {
            self.newdata.time = self.utc_resolve();
        }
        let lasttag_mask = if self.lasttag > 0 { 1u64 << self.lasttag } else { 0 };
        let thistag_mask = if thistag > 0 { 1u64 << thistag } else { 0 };
        if self.latch_frac && (self.this_frac - self.last_frac).abs() > 0.01 {
            mask |= CLEAR_IS;
            if self.lasttag > 0 && self.cycle_enders & lasttag_mask == 0 {
                self.cycle_enders |= lasttag_mask;
            }
        }
        if self.latch_frac && self.cycle_enders & thistag_mask != 0 {
            mask |= REPORT_IS;
        }
        if self.latch_frac {
            self.lasttag = thistag;
        }
        if self.cycle_enders != 0 {
            self.cycle_end_reliable = true;
        }
        // Don't downgrade a held 3D fix (RMC, GLL do not report 2D/3D).
        if mask & MODE_SET != 0
            && self.fix.mode == MODE_3D
            && self.newdata.mode != MODE_NO_FIX
            && (self.lastfix.alt_hae.is_some()
                || self.oldfix.alt_hae.is_some()
                || self.lastfix.alt_msl.is_some()
                || self.oldfix.alt_msl.is_some())
        {
            self.newdata.mode = self.fix.mode;
        }
        mask
    }

    fn rmc(&mut self, count: usize, f: &[&str]) -> u32 {
        let mut mask = 0;
        match first(f[2]) {
            b'A' | b'D' => {
                if !f[1].is_empty()
                    && count > 9
                    && !f[9].is_empty()
                    && self.merge_hhmmss(f[1])
                    && self.merge_ddmmyy(f[9])
                {
                    mask |= TIME_SET;
                    self.register_frac(f[1]);
                }
                let mut newstatus;
                if let Some((la, lo)) = lat_lon(&f[3..7]) {
                    (self.newdata.lat, self.newdata.lon) = (Some(la), Some(lo));
                    newstatus = STATUS_FIX;
                    mask |= LATLON_SET;
                    if self.fix.mode <= MODE_2D {
                        self.newdata.mode = MODE_2D;
                        mask |= MODE_SET;
                    }
                } else {
                    newstatus = STATUS_NO_FIX;
                    self.newdata.mode = MODE_NO_FIX;
                    mask |= MODE_SET;
                }
                if !f[7].is_empty() {
                    self.newdata.speed = Some(num(f[7]) * KNOTS_TO_MPS);
                    mask |= SPEED_SET;
                }
                if !f[8].is_empty() {
                    self.newdata.track = Some(num(f[8]));
                    mask |= TRACK_SET;
                }
                if count >= 12 {
                    newstatus = faa_mode(first(f[12]));
                }
                if self.satellites_used > 3 || self.fix.alt_hae.is_some() || self.fix.alt_msl.is_some() {
                    self.newdata.mode = MODE_3D;
                    mask |= MODE_SET;
                }
                self.status = newstatus;
            }
            _ => {
                self.status = STATUS_NO_FIX;
                self.newdata.mode = MODE_NO_FIX;
                mask |= STATUS_SET | MODE_SET;
            }
        }
        mask
    }

    fn gll(&mut self, count: usize, f: &[&str]) -> u32 {
        let mut mask = 0;
        if !f[5].is_empty() && self.merge_hhmmss(f[5]) {
            self.register_frac(f[5]);
            if self.has_year() {
                mask = TIME_SET;
            }
        }
        let st = first(f[6]);
        if st == 0 || st == b'V' {
            self.status = STATUS_NO_FIX;
            self.newdata.mode = MODE_NO_FIX;
            return mask | STATUS_SET | MODE_SET;
        }
        let ll = if st == b'A' && (count < 8 || first(f[7]) != b'N') { lat_lon(&f[1..5]) } else { None };
        match ll {
            Some((la, lo)) => {
                (self.newdata.lat, self.newdata.lon) = (Some(la), Some(lo));
                mask |= LATLON_SET;
                let newstatus = if count >= 8 { faa_mode(first(f[7])) } else { STATUS_FIX };
                if self.fix.alt_hae.is_some() || self.fix.alt_msl.is_some() || self.satellites_used > 3 {
                    self.newdata.mode = MODE_3D;
                    mask |= MODE_SET;
                } else if self.fix.mode < MODE_2D || (self.oldfix.alt_hae.is_none() && self.oldfix.alt_msl.is_none()) {
                    self.newdata.mode = MODE_2D;
                    mask |= MODE_SET;
                }
                self.status = newstatus;
            }
            None => {
                self.status = STATUS_NO_FIX;
                self.newdata.mode = MODE_NO_FIX;
                mask |= STATUS_SET | MODE_SET;
            }
        }
        mask
    }

    fn gns(&mut self, f: &[&str]) -> u32 {
        let mut mask = 0;
        if !f[1].is_empty() && self.merge_hhmmss(f[1]) {
            self.register_frac(f[1]);
            if self.has_year() {
                mask = TIME_SET;
            }
        }
        let faa = first(f[6]);
        if faa == 0 || faa == b'N' {
            self.newdata.mode = MODE_NO_FIX;
            return mask | MODE_SET;
        }
        if matches!(first(f[13]), b'U' | b'V') {
            return mask;
        }
        let sats = atoi(f[7]);
        if let Some((la, lo)) = lat_lon(&f[2..6]) {
            (self.newdata.lat, self.newdata.lon) = (Some(la), Some(lo));
            mask |= LATLON_SET;
            self.newdata.mode = MODE_2D;
            if !f[9].is_empty() {
                self.newdata.alt_msl = Some(num(f[9]));
                mask |= ALTITUDE_SET;
                if sats > 3 {
                    self.newdata.mode = MODE_3D;
                }
                if !f[10].is_empty() {
                    self.newdata.geoid_sep = Some(num(f[10]));
                }
            }
        } else {
            self.newdata.mode = MODE_NO_FIX;
            mask |= MODE_SET;
        }
        self.status = faa_mode(faa);
        mask | MODE_SET
    }

    fn gga(&mut self, f: &[&str]) -> u32 {
        let mut mask = 0;
        let last_last_talker = self.last_gga_talker;
        self.last_gga_talker = f[0].as_bytes().get(1).copied().unwrap_or(0);
        let newstatus = if f[6].is_empty() {
            None
        } else {
            match atoi(f[6]) {
                0 => Some(STATUS_NO_FIX),
                1 => Some(STATUS_FIX),
                2 => Some(STATUS_DGPS_FIX),
                3 => Some(9),
                4 => Some(3),
                5 => Some(4),
                6 => Some(5),
                7 => Some(7),
                8 => Some(8),
                _ => None,
            }
        };
        if let Some(s) = newstatus {
            self.status = s;
            mask = STATUS_SET;
        }
        self.latch_mode = if last_last_talker != 0 && last_last_talker != self.last_gga_talker {
            false
        } else {
            f[1] == self.last_gga_timestamp
        };
        if self.latch_mode {
            self.status = STATUS_NO_FIX;
            self.newdata.mode = MODE_NO_FIX;
        } else {
            self.last_gga_timestamp = f[1].to_owned();
        }
        let sats_visible = atoi(f[7]);
        if self.merge_hhmmss(f[1]) {
            self.register_frac(f[1]);
            if self.has_year() {
                mask |= TIME_SET;
            }
        }
        if let Some((la, lo)) = lat_lon(&f[2..6]) {
            (self.newdata.lat, self.newdata.lon) = (Some(la), Some(lo));
            self.newdata.mode = MODE_2D;
            mask |= LATLON_SET;
            self.newdata.geoid_sep = Some(if f[11].is_empty() { wgs84_separation(la, lo) } else { num(f[11]) });
            if !f[9].is_empty() {
                self.newdata.alt_msl = Some(num(f[9]));
                mask |= ALTITUDE_SET;
                if sats_visible >= 4 {
                    self.newdata.mode = MODE_3D;
                }
            }
            if sats_visible < 3 {
                self.newdata.mode = MODE_NO_FIX;
            }
        } else {
            self.newdata.mode = MODE_NO_FIX;
        }
        mask | MODE_SET
    }

    fn gsa(&mut self, count: usize, f: &[&str]) -> u32 {
        let talker = f[0].as_bytes().get(1).copied().unwrap_or(0);
        let last_last = self.last_gsa_talker;
        let mut mask = 0;
        if count >= 18 && !self.latch_mode {
            self.newdata.mode = u8::try_from(atoi(f[2]).clamp(0, 3)).unwrap_or(0);
            mask = if first(f[2]) == b'E' { 0 } else { MODE_SET };
            if self.last_gsa_talker == 0 || (talker == self.last_gsa_talker && talker != b'N') {
                self.satellites_used = 0;
            }
            self.last_gsa_talker = talker;
            if matches!(talker, b'B' | b'D' | b'Q' | b'L' | b'A') {
                self.seen_other_gsa = true;
            }
            for i in 0..count.saturating_sub(6) {
                if atoi(f.get(i + 3).copied().unwrap_or("")) >= 1 {
                    self.satellites_used += 1;
                }
            }
        }
        if self.seen_other_gsa && talker == b'P' {
            mask = 0;
        } else if last_last != b'N' && talker == b'N' {
            mask = MODE_SET;
        }
        mask
    }

    fn vtg(&mut self, count: usize, f: &[&str]) -> u32 {
        if f[1].is_empty() || f[5].is_empty() {
            return 0;
        }
        if count > 9 && matches!(first(f[9]), b'E' | b'N') {
            return 0;
        }
        self.newdata.track = Some(num(f[1]));
        self.newdata.speed = Some(num(f[5]) * KNOTS_TO_MPS);
        TRACK_SET | SPEED_SET
    }

    fn zda(&mut self, f: &[&str]) -> u32 {
        if f[1..5].iter().any(|x| x.is_empty()) || !self.merge_hhmmss(f[1]) {
            return 0;
        }
        let (year, mon, mday) = (atoi(f[4]) as i32, atoi(f[3]), atoi(f[2]) as i32);
        if !(1900..=2200).contains(&year) || !(1..=12).contains(&mon) || !(1..=31).contains(&mday) {
            return 0;
        }
        self.century = year - year % 100;
        self.date.year = year;
        self.date.mon = mon as u32;
        self.date.mday = mday;
        TIME_SET
    }

    fn pgrmz(&mut self, f: &[&str]) -> u32 {
        let mut mask = 0;
        if first(f[2]) == b'f' && !f[1].is_empty() {
            self.newdata.alt_msl = Some(atoi(f[1]) as f64 / METERS_TO_FEET);
            mask |= ALTITUDE_SET;
        }
        match first(f[3]) {
            b'1' => self.newdata.mode = MODE_NO_FIX,
            b'2' => self.newdata.mode = MODE_2D,
            b'3' => self.newdata.mode = MODE_3D,
            _ => return mask,
        }
        mask | MODE_SET
    }

    fn pgrmf(&mut self, f: &[&str]) -> u32 {
        let mut mask = 0;
        if first(f[5]).is_ascii_digit() {
            self.leap_seconds = atoi(f[5]) as i32;
        }
        if first(f[1]).is_ascii_digit() && first(f[2]).is_ascii_digit() && self.leap_seconds > 0 {
            let (week, tow) = (atoi(f[1]) as f64, atoi(f[2]) as f64);
            self.newdata.time = GPS_EPOCH_S + week * 604_800.0 + tow - f64::from(self.leap_seconds);
            mask |= TIME_SET;
        } else if self.merge_hhmmss(f[4]) && self.merge_ddmmyy(f[3]) {
            mask |= TIME_SET;
        }
        if first(f[10]) != b'A' {
            return mask;
        }
        if let Some((la, lo)) = lat_lon(&f[6..10]) {
            (self.newdata.lat, self.newdata.lon) = (Some(la), Some(lo));
            mask |= LATLON_SET;
        }
        match first(f[11]) {
            b'0' => {
                self.newdata.mode = MODE_NO_FIX;
                mask |= MODE_SET;
            }
            b'1' => {
                self.newdata.mode = MODE_2D;
                mask |= MODE_SET;
            }
            b'2' => {
                self.newdata.mode = MODE_3D;
                mask |= MODE_SET;
            }
            _ => {}
        }
        self.newdata.speed = Some(num(f[12]) / 3.6);
        self.newdata.track = Some(num(f[13]));
        mask | SPEED_SET | TRACK_SET
    }
}
