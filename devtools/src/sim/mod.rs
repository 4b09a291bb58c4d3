//! `outpost-sim`: replays recorded field data onto the bus, per asset, with
//! the recording's own timing, accelerated, or as fast as possible.
//!
//! Sources: GNSS captures (NMEA, UBX) of one asset each ([`load`]), haul
//! cycle and refuelling exports of a whole fleet ([`haul`]), track files
//! of a whole scene in local metres ([`scene`]), a water network's SCADA
//! history ([`scada`]), and recordings of live bus traffic
//! ([`recording`], written by `outpostctl record`).

pub mod haul;
pub mod recording;
pub mod scada;
pub mod scene;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What kind of recording a file is, which decides topic and pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NMEA 0183 text: one message per line, paced by the sentences' UTC time.
    Nmea,
    /// u-blox UBX (binary): fixed-size chunks, paced like a serial link.
    Ubx,
}

impl Kind {
    pub fn signal(self) -> &'static str {
        match self {
            Kind::Nmea => "gnss/nmea",
            Kind::Ubx => "gnss/ubx",
        }
    }
}

/// One message to publish, `at` seconds after the start of its track.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    pub at: f64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Where a track's times come from, which decides how tracks line up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clock {
    /// The recording's own clock: every such track starts at once.
    Recording,
    /// The site's wall clock; `at = 0` is this many seconds since the epoch
    /// (site-local). Tracks on the site clock keep their offsets to each other.
    Site(f64),
}

/// Everything one input file turns into, in publishing order.
#[derive(Debug, Clone)]
pub struct Track {
    /// Shown on the progress bar: the asset, or what the file holds.
    pub name: String,
    pub path: PathBuf,
    pub clock: Clock,
    pub messages: Vec<Scheduled>,
    /// Rows of the file that could not be used, with the reason (first few).
    pub skipped: Vec<String>,
    pub skipped_count: usize,
}

impl Track {
    pub(crate) fn skip(&mut self, reason: String) {
        self.skipped_count += 1;
        if self.skipped.len() < 5 {
            self.skipped.push(reason);
        }
    }
}

/// Shifts site-clock tracks so the earliest of them starts at 0 and the
/// others keep their real offsets (a refuel an hour after a haul cycle is
/// replayed an hour, divided by the speed, after it).
pub fn align(tracks: &mut [Track]) {
    let origin = tracks
        .iter()
        .filter_map(|t| match t.clock {
            Clock::Site(o) => Some(o),
            Clock::Recording => None,
        })
        .fold(f64::INFINITY, f64::min);
    for t in tracks.iter_mut() {
        if let Clock::Site(o) = t.clock {
            let shift = o - origin;
            for m in &mut t.messages {
                m.at += shift;
            }
            t.clock = Clock::Site(origin);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("'{0}' must be ASSET=FILE")]
    Spec(String),
    #[error("asset name '{0}' must be non-empty without '/', '+' or '#'")]
    Asset(String),
    #[error("{path}: {message}")]
    Csv { path: PathBuf, message: String },
    #[error("{0}")]
    Option(String),
    #[error(transparent)]
    Recording(#[from] recording::RecordingError),
}

/// True for a name usable as one MQTT topic level.
pub fn valid_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#']) && !name.chars().any(char::is_control)
}

/// Parses `ASSET=FILE`.
pub fn parse_spec(spec: &str) -> Result<(String, PathBuf), SimError> {
    let (asset, file) = spec.split_once('=').ok_or_else(|| SimError::Spec(spec.into()))?;
    if !valid_level(asset) {
        return Err(SimError::Asset(asset.into()));
    }
    Ok((asset.to_owned(), PathBuf::from(file)))
}

/// A GNSS capture of one asset, published on `site/{site}/{asset}/gnss/...`.
pub fn load(
    site: &str,
    asset: &str,
    kind: Kind,
    path: &Path,
    chunk: usize,
    bytes_per_sec: f64,
) -> Result<Track, SimError> {
    let data = read(path)?;
    let topic = format!("site/{site}/{asset}/{}", kind.signal());
    let timed = match kind {
        Kind::Nmea => schedule_nmea(&data),
        Kind::Ubx => schedule_binary(&data, chunk.max(1), bytes_per_sec),
    };
    let messages = timed.into_iter().map(|(at, payload)| Scheduled { at, topic: topic.clone(), payload }).collect();
    Ok(Track {
        name: asset.to_owned(),
        path: path.to_owned(),
        clock: Clock::Recording,
        messages,
        skipped: Vec::new(),
        skipped_count: 0,
    })
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, SimError> {
    std::fs::read(path).map_err(|source| SimError::Read { path: path.to_owned(), source })
}

/// Lines keep the time of the last sentence that carried a UTC time of
/// day, so a reporting cycle goes out together, one cycle per recorded
/// second. gpsd-style `#` comment lines are file annotations and skipped.
pub fn schedule_nmea(data: &[u8]) -> Vec<(f64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut first: Option<f64> = None;
    let mut last = 0.0f64;
    let mut day = 0.0f64;
    for raw in data.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        if let Some(tod) = std::str::from_utf8(line).ok().and_then(time_of_day) {
            let mut t = tod + day;
            if first.is_some() {
                if t + 43_200.0 < last {
                    day += 86_400.0; // midnight rollover
                    t += 86_400.0;
                }
                last = t.max(last);
            } else {
                first = Some(t);
                last = t;
            }
        }
        let at = first.map_or(0.0, |f| last - f);
        out.push((at, line.to_vec()));
    }
    out
}

/// UTC seconds of day from GGA, RMC, GLL, GNS or ZDA.
fn time_of_day(line: &str) -> Option<f64> {
    let body = line.strip_prefix('$')?;
    let body = body.split('*').next()?;
    let mut fields = body.split(',');
    let head = fields.next()?;
    let kind = head.get(2..)?;
    let fields: Vec<&str> = fields.collect();
    let hhmmss = match kind {
        "GGA" | "RMC" | "GNS" | "ZDA" => fields.first()?,
        "GLL" => fields.get(4)?,
        _ => return None,
    };
    if hhmmss.len() < 6 {
        return None;
    }
    let h: f64 = hhmmss.get(0..2)?.parse().ok()?;
    let m: f64 = hhmmss.get(2..4)?.parse().ok()?;
    let s: f64 = hhmmss.get(4..)?.parse().ok()?;
    (h < 24.0 && m < 60.0 && s < 61.0).then_some(h * 3600.0 + m * 60.0 + s)
}

/// Binary streams have no timing of their own: pace them like a serial link.
pub fn schedule_binary(data: &[u8], chunk: usize, bytes_per_sec: f64) -> Vec<(f64, Vec<u8>)> {
    data.chunks(chunk).enumerate().map(|(i, c)| ((i * chunk) as f64 / bytes_per_sec.max(1.0), c.to_vec())).collect()
}

/// How to pace a replay.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Original timing divided by this factor (1 = real time).
    Speed(f64),
    /// No waiting at all.
    AsFastAsPossible,
}

impl Pace {
    pub fn delay(self, at: f64) -> Option<Duration> {
        match self {
            Pace::Speed(f) if f > 0.0 => Some(Duration::from_secs_f64((at / f).max(0.0))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmea_is_paced_by_sentence_time_and_rolls_over_midnight() {
        let text = b"# header\n$GPGGA,235959.00,1,N,2,E,1,5,1,1,M,1,M,,*00\r\n$GPGSA,A,3*00\n$GPRMC,000001.00,A*00\n";
        let s = schedule_nmea(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, 0.0);
        assert_eq!(s[1].0, 0.0);
        assert!((s[2].0 - 2.0).abs() < 1e-9, "{:?}", s[2]);
        assert!(!s[0].1.ends_with(b"\r"));
    }

    #[test]
    fn binary_is_paced_by_bytes() {
        let s = schedule_binary(&[0u8; 2500], 1000, 1000.0);
        assert_eq!(s.iter().map(|m| m.1.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        assert_eq!(s[2].0, 2.0);
    }

    #[test]
    fn specs_are_checked() {
        assert!(parse_spec("truck-1=a.log").is_ok());
        assert!(parse_spec("a.log").is_err());
        assert!(parse_spec("a/b=x").is_err());
    }
}
