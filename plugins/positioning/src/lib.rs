//! Positioning: GNSS fixes of every machine, shaped like gpsd's TPV report.
//!
//! Input, per asset: `site/{site}/{asset}/gnss/nmea` (one or more NMEA 0183
//! lines per message; the end of a message ends a sentence) and
//! `site/{site}/{asset}/gnss/ubx` (any chunk of a u-blox byte stream: UBX
//! frames, NMEA and RTCM3 interleaved, reassembled across messages).
//! Output: `svc/positioning/{asset}/fix`, one TPV per reporting cycle.
//!
//! Config (JSON, every key optional):
//! - `min_mode` (1..3, default 1): lowest fix mode published (1 = also "no fix" reports);
//! - `max_devices` (default 1000): assets tracked at once (memory bound);
//! - `idle_flush_ms` (default 1500): a cycle still open this long after its
//!   last input is published by `tick`.

pub mod geoid;
pub mod gpsd;
pub mod nmea;
pub mod score;
pub mod tpv;
pub mod ubx;

use nmea::NmeaError;
use outpost_sdk::{export_service, host, Message, Service, ServiceError};
use std::collections::BTreeMap;
use tpv::{FixState, Tpv};
use ubx::{Frame, NavPvt, StreamDecoder};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_min_mode")]
    pub min_mode: u8,
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
    #[serde(default = "default_idle_flush")]
    pub idle_flush_ms: u64,
}

fn default_min_mode() -> u8 {
    1
}
fn default_max_devices() -> usize {
    1000
}
fn default_idle_flush() -> u64 {
    1500
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, ServiceError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let c: Config =
            serde_json::from_str(json).map_err(|e| ServiceError::BadConfig(format!("positioning config: {e}")))?;
        if !(1..=3).contains(&c.min_mode) {
            return Err(ServiceError::BadConfig(format!("min_mode is {}; it must be 1, 2 or 3", c.min_mode)));
        }
        if c.max_devices == 0 {
            return Err(ServiceError::BadConfig("max_devices must be at least 1".into()));
        }
        Ok(c)
    }
}

struct Device {
    fix: FixState,
    nmea: gpsd::GpsdNmea,
    stream: StreamDecoder,
    last_input_ms: u64,
    /// Time of the last fix published (Unix ms) and the agent's receive
    /// time of the input that produced it (0 if unknown).
    last_fix: Option<(i64, u64)>,
}

/// Longest asset id taken from a topic (ids are names, not payloads).
const MAX_ASSET_ID: usize = 128;
/// A fix may move ahead of the device's previous one by the agent's wall
/// time between them plus this much (receiver latency, buffering).
const TIME_JUMP_SLACK_MS: i64 = 60_000;

/// The asset id of an input topic (`site/{site}/{asset}/gnss/...`), if it
/// can name an output topic: no MQTT wildcards or separators, no control
/// characters, at most `MAX_ASSET_ID` bytes.
fn asset_of(m: &Message) -> Option<&str> {
    let a = m.topic_segment(2)?;
    let ok = !a.is_empty()
        && a.len() <= MAX_ASSET_ID
        && m.topic.split('/').count() == 5
        && !a.contains(['+', '#'])
        && !a.chars().any(char::is_control);
    ok.then_some(a)
}

/// `YYYY-MM-DDTHH:MM:SS.sssZ` (as [`tpv`] writes it) to Unix ms.
fn tpv_time_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || !t.is_ascii() {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Milliseconds from up to three fraction digits ("5" is 500 ms).
    let ms = match (b[19], t.get(20..t.len().saturating_sub(1))) {
        (b'.', Some(frac)) => {
            let d: String = frac.chars().take(3).collect();
            let v = d.parse::<i64>().ok()?;
            v * 10_i64.pow(3 - d.len() as u32)
        }
        _ => 0,
    };
    let days = outpost_sdk::civil::days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

/// Counts kept by the service and reported through `metrics.counter`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub sentences: u64,
    pub other_sentences: u64,
    pub skipped_lines: u64,
    pub checksum_errors: u64,
    pub malformed: u64,
    pub ubx_frames: u64,
    pub fixes: u64,
    pub devices_rejected: u64,
    /// Inputs whose topic names no usable asset id.
    pub bad_topic: u64,
    /// Fixes dated before the device's previous one, or further ahead of
    /// it than the wall time between them allows (still published, as gpsd
    /// would; traffic-awareness refuses them).
    pub time_jumps: u64,
}

pub struct Positioning {
    config: Config,
    devices: BTreeMap<String, Device>,
    counts: Counts,
    /// Fixes produced by the current call, published at its end.
    out: Vec<Tpv>,
}

impl Positioning {
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// UBX stream statistics of one asset (frames, bad checksums, skipped bytes...).
    pub fn stream_stats(&self, asset: &str) -> Option<ubx::StreamStats> {
        self.devices.get(asset).map(|d| d.stream.stats.clone())
    }

    /// The asset's device, created if there is room (`None`: the cap is
    /// reached; the caller counts it).
    fn device(&mut self, asset: &str, now_ms: u64) -> Option<&mut Device> {
        if !self.devices.contains_key(asset) {
            if self.devices.len() >= self.config.max_devices {
                return None;
            }
            self.devices.insert(
                asset.to_owned(),
                Device {
                    fix: FixState::new(asset),
                    nmea: gpsd::GpsdNmea::new(asset),
                    stream: StreamDecoder::new(),
                    last_input_ms: now_ms,
                    last_fix: None,
                },
            );
        }
        let d = self.devices.get_mut(asset)?;
        d.last_input_ms = now_ms;
        Some(d)
    }

    fn nmea_line(counts: &mut Counts, dev: &mut Device, line: &[u8], out: &mut Vec<Tpv>) {
        if line.is_empty() {
            return;
        }
        let parsed = nmea::parse(line);
        match &parsed {
            Ok((_, nmea::Sentence::Other)) => counts.other_sentences += 1,
            Ok(_) => counts.sentences += 1,
            _ => {}
        }
        match parsed {
            Ok(_) => {
                // A receiver sending UBX navigation solutions: those are its fixes.
                if !dev.fix.ubx_nav_seen() {
                    out.extend(dev.nmea.sentence(&String::from_utf8_lossy(line)));
                }
            }
            Err(NmeaError::NotNmea) => counts.skipped_lines += 1,
            Err(NmeaError::Checksum) => counts.checksum_errors += 1,
            Err(NmeaError::Malformed) => counts.malformed += 1,
        }
    }

    /// Processes one message; fixes collect in `self.out`.
    pub fn ingest(&mut self, m: &Message) {
        let Some(asset) = asset_of(m).map(str::to_owned) else {
            self.counts.bad_topic += 1;
            return;
        };
        let binary = m.topic.ends_with("/ubx");
        let mut out = std::mem::take(&mut self.out);
        let mut counts = std::mem::take(&mut self.counts);
        let dev = self.device(&asset, m.received_ms);
        if dev.is_none() {
            // Counted here: `counts` is taken out of `self` for this call.
            counts.devices_rejected += 1;
        }
        if let Some(dev) = dev {
            if binary {
                let mut frames = Vec::new();
                dev.stream.push(&m.payload, &mut frames);
                for f in frames {
                    match f {
                        Frame::Ubx { class: 0x01, id: 0x07, payload } => {
                            counts.ubx_frames += 1;
                            if let Some(pvt) = NavPvt::parse(&payload) {
                                out.push(dev.fix.on_nav_pvt(&pvt));
                            }
                        }
                        Frame::Ubx { class, id, payload } => {
                            counts.ubx_frames += 1;
                            if let Some(itow) = ubx::nav_itow(class, id, &payload) {
                                out.extend(dev.fix.on_ubx_nav(id, itow, &payload));
                            }
                        }
                        Frame::Nmea(line) => Self::nmea_line(&mut counts, dev, &line, &mut out),
                        Frame::Rtcm3 { .. } => {}
                    }
                }
            } else {
                for line in m.payload.split(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    Self::nmea_line(&mut counts, dev, line, &mut out);
                }
            }
        }
        self.counts = counts;
        self.out = out;
    }

    /// Publishes what the call produced and reports counters.
    fn publish(&mut self, before: Counts) -> Result<(), ServiceError> {
        let mut failed = None;
        for fix in self.out.drain(..) {
            if fix.mode < self.config.min_mode {
                continue;
            }
            self.counts.fixes += 1;
            if let (Some(t), Some(d)) = (fix.time.as_deref().and_then(tpv_time_ms), self.devices.get_mut(&fix.device)) {
                let wall = d.last_input_ms;
                if let Some((pt, pw)) = d.last_fix {
                    let allowed = if wall > 0 && pw > 0 {
                        (wall.saturating_sub(pw).min(i64::MAX as u64 / 4) as i64).saturating_add(TIME_JUMP_SLACK_MS)
                    } else {
                        i64::MAX
                    };
                    if t < pt - 1000 || t - pt > allowed {
                        self.counts.time_jumps += 1;
                    }
                }
                d.last_fix = Some((t, wall));
            }
            let body = serde_json::to_vec(&fix).map_err(|e| ServiceError::Internal(e.to_string()))?;
            if let Err(e) = host::publish(&format!("svc/positioning/{}/fix", fix.device), &body) {
                failed.get_or_insert(e);
            }
        }
        let c = &self.counts;
        for (name, now, was) in [
            ("sentences", c.sentences, before.sentences),
            ("other_sentences", c.other_sentences, before.other_sentences),
            ("skipped_lines", c.skipped_lines, before.skipped_lines),
            ("checksum_errors", c.checksum_errors, before.checksum_errors),
            ("malformed", c.malformed, before.malformed),
            ("frames", c.ubx_frames, before.ubx_frames),
            ("fixes", c.fixes, before.fixes),
            ("devices_rejected", c.devices_rejected, before.devices_rejected),
            ("bad_topic", c.bad_topic, before.bad_topic),
            ("time_jumps", c.time_jumps, before.time_jumps),
        ] {
            if now > was {
                host::counter(name, now - was);
            }
        }
        match failed {
            Some(e) => Err(ServiceError::Internal(format!("publish failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Publishes every open cycle (end of a recording).
    pub fn flush_all(&mut self) -> Result<(), ServiceError> {
        let before = self.counts.clone();
        for d in self.devices.values_mut() {
            self.out.extend(d.fix.flush());
            self.out.extend(d.nmea.flush());
            d.stream.finish();
        }
        self.publish(before)
    }
}

impl Service for Positioning {
    fn init(config: &str) -> Result<Self, ServiceError> {
        Ok(Positioning {
            config: Config::parse(config)?,
            devices: BTreeMap::new(),
            counts: Counts::default(),
            out: Vec::new(),
        })
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        let before = self.counts.clone();
        for m in &batch {
            self.ingest(m);
        }
        self.publish(before)
    }

    fn tick(&mut self, now_ms: u64) -> Result<(), ServiceError> {
        let before = self.counts.clone();
        let idle = self.config.idle_flush_ms;
        for d in self.devices.values_mut() {
            if now_ms.saturating_sub(d.last_input_ms) >= idle {
                self.out.extend(d.fix.flush());
                self.out.extend(d.nmea.flush());
            }
        }
        host::kpi("devices", self.devices.len() as f64);
        self.publish(before)
    }
}

export_service!(Positioning);

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_sdk::testing::Harness;

    #[test]
    fn config_is_checked() {
        assert!(Config::parse("").is_ok());
        assert!(matches!(Config::parse("{\"min_mod\": 2}"), Err(ServiceError::BadConfig(m)) if m.contains("min_mod")));
        assert!(Config::parse("{\"min_mode\": 4}").is_err());
    }

    #[test]
    fn fixes_are_published_per_asset() {
        let mut h = Harness::<Positioning>::with_acl("{}", &["svc/positioning/+/fix"]).expect("init");
        for l in [
            "$GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000*7D",
            "$GPRMC,030719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A*7D",
            "$GPGGA,030720.000,3747.0875,S,17518.8938,E,1,08,1.1,59.8,M,23.7,M,,0000*70",
            "garbage line",
            "$GPGGA,030720.000,3747.0875,S,17518.8938,E,1,08,1.1,59.8,M,23.7,M,,0000*71",
        ] {
            h.send("site/s1/truck-9/gnss/nmea", l).expect("handle");
        }
        // Until the cycle's end is learned (at the second epoch), gpsd
        // reports on every position change: GGA (no date yet, so no time),
        // then RMC. The second epoch's GGA teaches that RMC ends a cycle.
        let out = h.take_published();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].0, "svc/positioning/truck-9/fix");
        let v: serde_json::Value = serde_json::from_slice(&out[1].1).expect("json");
        assert_eq!(v["class"], "TPV");
        assert_eq!(v["time"], "2034-08-16T03:07:19.000Z");
        assert_eq!(v["mode"], 3);
        let counters = h.host().counters;
        assert_eq!(counters.get("skipped_lines"), Some(&1));
        assert_eq!(counters.get("checksum_errors"), Some(&1));
    }
}
