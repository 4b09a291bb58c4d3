//! A water network's SCADA history as the leak-detection service's input:
//! one message per time step on `site/{site}/{network}/scada`, every
//! sensor's reading at that step grouped by kind.
//!
//! Reads a directory with any of `pressures.csv` (m), `flows.csv` (m³/h),
//! `demands.csv` (L/h), `levels.csv` (m): first column `timestamp`
//! (`YYYY-MM-DD HH:MM`, network-local), one column per sensor. This is the
//! layout of the BattLeDIM data sets and of
//! `plugins/leak-detection/tools/simulate_ltown.py`. An empty or non-numeric
//! cell leaves that sensor out of the step (an outage, as a real SCADA
//! export has them).

use super::haul::parse_iso_local;
use super::{valid_level, Clock, Scheduled, SimError, Track};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// File → field of the message, by sensor kind.
const KINDS: [(&str, &str); 4] = [
    ("pressures.csv", "pressure_m"),
    ("flows.csv", "flow_m3h"),
    ("demands.csv", "demand_lph"),
    ("levels.csv", "level_m"),
];

/// One time step: seconds since the epoch, and kind → sensor → reading.
type Step = (f64, Map<String, Value>);

pub fn load(site: &str, network: &str, dir: &Path) -> Result<Track, SimError> {
    if !valid_level(network) {
        return Err(SimError::Option(format!("--network '{network}' must be one topic level")));
    }
    let mut track = Track {
        name: format!("{network} scada"),
        path: dir.to_owned(),
        clock: Clock::Recording,
        messages: Vec::new(),
        skipped: Vec::new(),
        skipped_count: 0,
    };
    let mut steps: BTreeMap<String, Step> = BTreeMap::new();
    let mut found = 0;
    for (file, field) in KINDS {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        found += 1;
        let data = super::read(&path)?;
        let bad = |message: String| SimError::Csv { path: path.clone(), message };
        let mut reader = csv::ReaderBuilder::new().from_reader(data.as_slice());
        let header: Vec<String> =
            reader.headers().map_err(|e| bad(format!("header: {e}")))?.iter().map(|h| h.trim().to_owned()).collect();
        if header.first().map(String::as_str) != Some("timestamp") {
            return Err(bad(format!("the first column must be 'timestamp', not {:?}", header.first())));
        }
        for (i, row) in reader.records().enumerate() {
            let line = i + 2;
            let row = row.map_err(|e| bad(format!("line {line}: {e}")))?;
            let Some(stamp) = row.get(0).map(str::trim) else { continue };
            let Some(seconds) = parse_iso_local(stamp) else {
                track.skip(format!("{file} line {line}: timestamp '{stamp}' is not YYYY-MM-DD HH:MM"));
                continue;
            };
            let readings: Map<String, Value> = header
                .iter()
                .zip(row.iter())
                .skip(1)
                .filter_map(|(sensor, cell)| {
                    let v = cell.trim().parse::<f64>().ok().filter(|v| v.is_finite())?;
                    Some((sensor.clone(), Value::from(v)))
                })
                .collect();
            let step = steps.entry(stamp.to_owned()).or_insert_with(|| (seconds, Map::new()));
            step.1.insert(field.into(), Value::Object(readings));
        }
    }
    if found == 0 {
        return Err(SimError::Option(format!(
            "{} has none of pressures.csv, flows.csv, demands.csv, levels.csv",
            dir.display()
        )));
    }
    let mut ordered: Vec<(String, Step)> = steps.into_iter().collect();
    ordered.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
    let origin = ordered.first().map_or(0.0, |s| s.1 .0);
    track.clock = Clock::Site(origin);
    let topic = format!("site/{site}/{network}/scada");
    for (stamp, (seconds, kinds)) in ordered {
        let mut message = Map::new();
        message.insert("time".into(), Value::String(stamp));
        message.extend(kinds);
        track.messages.push(Scheduled {
            at: seconds - origin,
            topic: topic.clone(),
            payload: Value::Object(message).to_string().into_bytes(),
        });
    }
    Ok(track)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_step_with_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pressures.csv"),
            "timestamp,n1,n2\n2019-01-01 00:05,45.1,\n2019-01-01 00:00,45.0,44.0\nbad,1,2\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("flows.csv"), "timestamp,p227\n2019-01-01 00:00,120.5\n").unwrap();
        let track = load("utility", "ltown", dir.path()).unwrap();
        assert_eq!(track.messages.len(), 2);
        assert_eq!(track.skipped_count, 1);
        assert_eq!(track.messages[0].topic, "site/utility/ltown/scada");
        let first: Value = serde_json::from_slice(&track.messages[0].payload).unwrap();
        assert_eq!(first["time"], "2019-01-01 00:00");
        assert_eq!(first["pressure_m"]["n2"], 44.0);
        assert_eq!(first["flow_m3h"]["p227"], 120.5);
        let second: Value = serde_json::from_slice(&track.messages[1].payload).unwrap();
        assert!(second["pressure_m"].get("n2").is_none(), "an empty cell is an outage");
        assert!(second.get("flow_m3h").is_none());
        assert_eq!(track.messages[1].at, 300.0);
        assert!(load("utility", "ltown", &dir.path().join("nothing")).is_err());
    }
}
