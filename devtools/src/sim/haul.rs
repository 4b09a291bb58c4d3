//! Fleet-management exports as the weight-loading service's input: one
//! haul-cycle record per row on `site/{site}/{truck}/payload`, published
//! when the cycle completes (its empty time), and refuelling events on
//! `site/{site}/{truck}/fuel`, published when the refuel ends.
//!
//! The column names are those of the mine's dispatch export (see
//! `tests/data/mine-haul-dispatch/README.md`); the record fields are the
//! schema in `plugins/weight-loading/README.md`. Values are passed through
//! as found (numbers as numbers, anything else as text, empty cells left
//! out): judging junk is the service's job, not the replayer's.

use super::{read, valid_level, Clock, Scheduled, SimError, Track};
use serde_json::{Map, Value};
use std::path::Path;

/// Record field ← export column, for haul cycles.
const HAUL_FIELDS: &[(&str, &str)] = &[
    ("truck", "Truck"),
    ("loader", "Excav_x"),
    ("shift", "ShiftId_x"),
    ("load_location", "LoadLocation"),
    ("dump_location", "DumpLocation"),
    ("dump_unit", "DumpLocationUnit"),
    ("payload_t", "Tons_x"),
    ("dump_payload_t", "Tons_y"),
    ("assign_time", "AssignTimestamp_x"),
    ("arrive_time", "ArriveTimestamp_x"),
    ("full_time", "FullTimestamp"),
    ("dump_arrive_time", "ArriveTimestamp_y"),
    ("empty_time", "EmptyTimestamp"),
    ("queue_s", "QueueTime_x"),
    ("spot_s", "SpotTime_x"),
    ("loading_s", "LoadingTime"),
    ("empty_travel_s", "EmptyTravelDuration"),
    ("full_travel_s", "FullTravelDuration"),
    ("dump_queue_s", "QueueTime_y"),
    ("dumping_s", "DumpingTime"),
    ("empty_dist_m", "Dist_empty(m)"),
    ("full_dist_m", "Dist_full(m)"),
];

/// Fields kept as text even when they look like numbers.
const TEXT_FIELDS: &[&str] = &["truck", "loader", "shift", "load_location", "dump_location", "dump_unit", "model"];

/// Haul cycles, in completion order (rows of the export are not in time order).
pub fn load_cycles(site: &str, path: &Path) -> Result<Track, SimError> {
    let rows = read_csv(path)?;
    let mut track = new_track("haul cycles", path);
    let mut timed: Vec<(f64, usize, String, Vec<u8>)> = Vec::new();
    for (line, row) in rows.records.iter().enumerate() {
        let line = line + 2; // 1-based, after the header
        let mut record = Map::new();
        for (field, column) in HAUL_FIELDS {
            if let Some(value) = rows.get(row, column) {
                record.insert((*field).into(), json_value(field, value));
            }
        }
        let Some(truck) = rows.get(row, "Truck").filter(|t| valid_level(t)) else {
            track.skip(format!("line {line}: no usable Truck"));
            continue;
        };
        // The record is complete when the truck is empty again; fall back
        // to earlier times for rows that lack it.
        let when = ["EmptyTimestamp", "FullTimestamp", "AssignTimestamp_x"]
            .iter()
            .find_map(|c| rows.get(row, c).and_then(parse_iso_local));
        let Some(when) = when else {
            track.skip(format!("line {line}: no parseable EmptyTimestamp, FullTimestamp or AssignTimestamp_x"));
            continue;
        };
        let topic = format!("site/{site}/{truck}/payload");
        timed.push((when, line, topic, Value::Object(record).to_string().into_bytes()));
    }
    finish(track, timed)
}

/// Refuelling events, in end order.
pub fn load_fuel(site: &str, path: &Path) -> Result<Track, SimError> {
    let rows = read_csv(path)?;
    let mut track = new_track("refuelling", path);
    let mut timed = Vec::new();
    for (line, row) in rows.records.iter().enumerate() {
        let line = line + 2;
        let Some(truck) = rows.get(row, "Equipment").filter(|t| valid_level(t)) else {
            track.skip(format!("line {line}: no usable Equipment"));
            continue;
        };
        let start = rows.get(row, "StartTimestamp").and_then(parse_us_minutes);
        let end = rows.get(row, "EndTimestamp").and_then(parse_us_minutes);
        let Some(end) = end else {
            track.skip(format!("line {line}: EndTimestamp is not M/D/YYYY H:MM"));
            continue;
        };
        let mut record = Map::new();
        record.insert("truck".into(), Value::String(truck.into()));
        for (field, column) in [("model", "Eqtype"), ("shift", "ShiftId")] {
            if let Some(v) = rows.get(row, column) {
                record.insert(field.into(), Value::String(v.into()));
            }
        }
        if let Some(start) = start {
            record.insert("start_time".into(), Value::String(format_local(start)));
        }
        record.insert("end_time".into(), Value::String(format_local(end)));
        // Fuel00 is the first quantity the fuel station records (litres; the
        // 930E's tank holds 4,542 l).
        for (field, column) in [("litres", "Fuel00"), ("queue_min", "Queue(min)")] {
            if let Some(v) = rows.get(row, column) {
                record.insert(field.into(), json_value(field, v));
            }
        }
        let topic = format!("site/{site}/{truck}/fuel");
        timed.push((end, line, topic, Value::Object(record).to_string().into_bytes()));
    }
    finish(track, timed)
}

fn new_track(name: &str, path: &Path) -> Track {
    Track {
        name: name.into(),
        path: path.to_owned(),
        clock: Clock::Recording,
        messages: Vec::new(),
        skipped: Vec::new(),
        skipped_count: 0,
    }
}

fn finish(mut track: Track, mut timed: Vec<(f64, usize, String, Vec<u8>)>) -> Result<Track, SimError> {
    // Stable by time, then file order.
    timed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let origin = timed.first().map_or(0.0, |t| t.0);
    track.clock = Clock::Site(origin);
    track.messages =
        timed.into_iter().map(|(when, _, topic, payload)| Scheduled { at: when - origin, topic, payload }).collect();
    Ok(track)
}

struct Rows {
    header: Vec<String>,
    records: Vec<csv::StringRecord>,
}

impl Rows {
    /// The trimmed, non-empty cell of `column`.
    fn get<'a>(&self, row: &'a csv::StringRecord, column: &str) -> Option<&'a str> {
        let i = self.header.iter().position(|h| h == column)?;
        row.get(i).map(str::trim).filter(|v| !v.is_empty())
    }
}

fn read_csv(path: &Path) -> Result<Rows, SimError> {
    let data = read(path)?;
    let bad = |message: String| SimError::Csv { path: path.to_owned(), message };
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(data.as_slice());
    let header = reader
        .headers()
        .map_err(|e| bad(format!("header: {e}")))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_owned())
        .collect();
    let mut records = Vec::new();
    for (i, r) in reader.records().enumerate() {
        records.push(r.map_err(|e| bad(format!("line {}: {e}", i + 2)))?);
    }
    Ok(Rows { header, records })
}

fn json_value(field: &str, text: &str) -> Value {
    if TEXT_FIELDS.contains(&field) {
        return Value::String(text.into());
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::String(text.into()),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (site-local) as seconds since the epoch.
pub fn parse_iso_local(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let mut t = time.split(':');
    let (h, mi) = (t.next()?.parse::<u32>().ok()?, t.next()?.parse::<u32>().ok()?);
    let sec = t.next().map_or(Some(0.0), |v| v.parse::<f64>().ok())?;
    civil_seconds(y, m, day, h, mi, sec)
}

/// `M/D/YYYY H:MM` (site-local) as seconds since the epoch.
pub fn parse_us_minutes(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('/');
    let (m, day, y) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (h, mi) = time.split_once(':')?;
    civil_seconds(y, m, day, h.parse().ok()?, mi.parse().ok()?, 0.0)
}

fn civil_seconds(y: i32, m: u32, d: u32, h: u32, mi: u32, s: f64) -> Option<f64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || !(0.0..61.0).contains(&s) {
        return None;
    }
    let days = outpost_sdk::civil::days_from_civil(y.into(), m.into(), d.into());
    Some(days as f64 * 86_400.0 + f64::from(h * 3600 + mi * 60) + s)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS`.
pub fn format_local(t: f64) -> String {
    let secs = t.floor() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = outpost_sdk::civil::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_reject_nonsense() {
        let t = parse_iso_local("2022-11-07 08:22:49").unwrap();
        assert_eq!(format_local(t), "2022-11-07 08:22:49");
        assert_eq!(t, 1_667_809_369.0);
        assert_eq!(parse_us_minutes("11/7/2022 8:26"), parse_iso_local("2022-11-07 08:26:00"));
        assert_eq!(parse_iso_local("2022-13-07 08:22:49"), None);
        assert_eq!(parse_iso_local("yesterday"), None);
        assert_eq!(parse_us_minutes("7/11/2022"), None);
    }

    #[test]
    fn cycles_become_records_in_completion_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haul.csv");
        std::fs::write(
            &path,
            "Truck,Excav_x,ShiftId_x,Tons_x,QueueTime_x,FullTimestamp,EmptyTimestamp\r\n\
             CDH90,PAB10,221107001,306.0,99,2022-11-07 08:29:10,2022-11-07 08:47:29\r\n\
             CDH66,PAB12,221107001,0,,2022-11-07 08:20:00,2022-11-07 08:40:00\r\n\
             ,PAB12,221107001,1,,2022-11-07 08:20:00,2022-11-07 08:40:00\r\n\
             CDH67,PAB12,221107001,x,,,\r\n",
        )
        .unwrap();
        let track = load_cycles("north", &path).unwrap();
        assert_eq!(track.messages.len(), 2);
        assert_eq!(track.skipped_count, 2, "{:?}", track.skipped);
        let first: Value = serde_json::from_slice(&track.messages[0].payload).unwrap();
        assert_eq!(track.messages[0].topic, "site/north/CDH66/payload");
        assert_eq!(first["payload_t"], 0);
        assert!(first.get("queue_s").is_none(), "empty cells are left out");
        let second: Value = serde_json::from_slice(&track.messages[1].payload).unwrap();
        assert_eq!(second["shift"], "221107001");
        assert_eq!(second["payload_t"], 306.0);
        assert_eq!(second["loader"], "PAB10");
        assert_eq!(track.messages[1].at, 449.0);
    }
}
