//! Test helpers: the mine's CSVs converted to the service's input messages
//! (the schema in the crate README, as `outpost-sim` publishes them), the
//! manifest, and a harness run over a message list.
#![allow(dead_code)]

use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use weight_loading::WeightLoading;

pub const SITE: &str = "north";

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn data_dir() -> PathBuf {
    crate_dir().join("../../tests/data/mine-haul-dispatch")
}

pub fn cycles_csv() -> PathBuf {
    data_dir().join("StdShiftLoadsDumpsFuel.train.csv")
}

pub fn fuel_csv() -> PathBuf {
    data_dir().join("SfdShiftFueltrucksAllUpdatedFin.csv")
}

/// A plain CSV (no quoting in these files): header and rows of cells.
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn read(path: &PathBuf) -> Csv {
        let text = std::fs::read_to_string(path).expect("csv");
        assert!(!text.contains('"'), "{path:?}: quoted cells are not expected");
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.is_empty());
        let header: Vec<String> = lines.next().expect("header").split(',').map(str::to_owned).collect();
        let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(str::to_owned).collect()).collect();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), header.len(), "{path:?} row {}", i + 2);
        }
        Csv { header, rows }
    }

    pub fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"))
    }
}

/// One input message with its sort time and source line.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub truck: String,
    /// `YYYY-MM-DD HH:MM:SS` when it is sent (string order = time order).
    pub at: String,
    pub line: usize,
}

impl Msg {
    pub fn message(&self) -> Message {
        Message::new(self.topic.clone(), self.payload.clone())
    }
}

/// Message field <- column; text fields stay strings, the rest are numbers.
const CYCLE_FIELDS: &[(&str, &str)] = &[
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

fn is_text(field: &str) -> bool {
    matches!(field, "truck" | "loader" | "shift" | "load_location" | "dump_location" | "dump_unit" | "model")
        || field.ends_with("_time")
}

fn value(field: &str, cell: &str) -> Value {
    if is_text(field) {
        return Value::String(cell.to_owned());
    }
    let x: f64 = cell.parse().unwrap_or_else(|_| panic!("{field}: '{cell}' is not a number"));
    Value::from(x)
}

/// Every haul-cycle row as a `site/{site}/{truck}/payload` message, in
/// completion order (empty time, then file order).
pub fn cycle_messages() -> Vec<Msg> {
    let csv = Csv::read(&cycles_csv());
    let cols: Vec<(&str, usize)> = CYCLE_FIELDS.iter().map(|(f, c)| (*f, csv.col(c))).collect();
    let empty = csv.col("EmptyTimestamp");
    let truck = csv.col("Truck");
    let mut out: Vec<Msg> = csv
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut o = Map::new();
            for (field, c) in &cols {
                if !row[*c].is_empty() {
                    o.insert((*field).to_owned(), value(field, &row[*c]));
                }
            }
            Msg {
                topic: format!("site/{SITE}/{}/payload", row[truck]),
                payload: serde_json::to_vec(&Value::Object(o)).expect("json"),
                truck: row[truck].clone(),
                at: row[empty].clone(),
                line: i + 2,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.at, a.line).cmp(&(&b.at, b.line)));
    out
}

/// `M/D/YYYY H:MM` -> `YYYY-MM-DD HH:MM:00`.
pub fn us_to_iso(s: &str) -> String {
    let (date, time) = s.split_once(' ').expect("date time");
    let d: Vec<u32> = date.split('/').map(|x| x.parse().expect("date")).collect();
    let t: Vec<u32> = time.split(':').map(|x| x.parse().expect("time")).collect();
    format!("{:04}-{:02}-{:02} {:02}:{:02}:00", d[2], d[0], d[1], t[0], t[1])
}

/// Every refuelling row as a `site/{site}/{truck}/fuel` message, in end order.
/// `litres` is `Fuel00` (see the README for why).
pub fn fuel_messages() -> Vec<Msg> {
    let csv = Csv::read(&fuel_csv());
    let (eq, ty, sh) = (csv.col("Equipment"), csv.col("Eqtype"), csv.col("ShiftId"));
    let (st, en, fu, qu) =
        (csv.col("StartTimestamp"), csv.col("EndTimestamp"), csv.col("Fuel00"), csv.col("Queue(min)"));
    let mut out: Vec<Msg> = csv
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let end = us_to_iso(&row[en]);
            let doc = serde_json::json!({
                "truck": row[eq],
                "model": row[ty],
                "shift": row[sh],
                "start_time": us_to_iso(&row[st]),
                "end_time": end,
                "litres": row[fu].parse::<f64>().expect("Fuel00"),
                "queue_min": row[qu].parse::<f64>().expect("Queue(min)"),
            });
            Msg {
                topic: format!("site/{SITE}/{}/fuel", row[eq]),
                payload: serde_json::to_vec(&doc).expect("json"),
                truck: row[eq].clone(),
                at: end,
                line: i + 2,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.at, a.line).cmp(&(&b.at, b.line)));
    out
}

/// Cycles and refuels merged in sending-time order (cycles first on ties).
pub fn all_messages() -> Vec<Msg> {
    let mut all: Vec<(usize, Msg)> =
        cycle_messages().into_iter().map(|m| (0, m)).chain(fuel_messages().into_iter().map(|m| (1, m))).collect();
    all.sort_by(|a, b| (&a.1.at, a.0, a.1.line).cmp(&(&b.1.at, b.0, b.1.line)));
    all.into_iter().map(|(_, m)| m).collect()
}

pub fn manifest() -> toml::Table {
    let text = std::fs::read_to_string(crate_dir().join("service.toml")).expect("service.toml");
    toml::from_str(&text).expect("manifest TOML")
}

/// The manifest's `[bus] publish` list (the ACL the agent enforces).
pub fn publish_acl() -> Vec<String> {
    manifest()["bus"]["publish"]
        .as_array()
        .expect("publish list")
        .iter()
        .map(|v| v.as_str().expect("topic filter").to_owned())
        .collect()
}

/// The manifest's `[config]` as the JSON the agent passes to `init`.
pub fn manifest_config() -> String {
    serde_json::to_string(&manifest()["config"]).expect("config JSON")
}

pub fn harness(config: &str) -> Harness<WeightLoading> {
    let acl = publish_acl();
    let acl: Vec<&str> = acl.iter().map(String::as_str).collect();
    Harness::<WeightLoading>::with_acl(config, &acl).expect("init")
}

/// The latest documents published per topic kind.
#[derive(Default)]
pub struct Latest {
    /// (truck, shift) -> latest `svc/weight-loading/{truck}/shift`.
    pub truck_shift: BTreeMap<(String, String), Value>,
    /// shift -> latest site shift report.
    pub site_shift: BTreeMap<String, Value>,
    pub cycles: usize,
    pub advice: usize,
}

impl Latest {
    pub fn absorb(&mut self, published: Vec<(String, Vec<u8>)>) {
        for (topic, body) in published {
            let v: Value = serde_json::from_slice(&body).expect("published JSON");
            let segs: Vec<&str> = topic.split('/').collect();
            match segs.as_slice() {
                ["svc", "weight-loading", "site", _, "shift"] => {
                    self.site_shift.insert(v["shift"].as_str().expect("shift").to_owned(), v);
                }
                ["svc", "weight-loading", truck, "shift"] => {
                    assert_eq!(v["truck"], *truck);
                    self.truck_shift.insert((truck.to_string(), v["shift"].as_str().expect("shift").to_owned()), v);
                }
                ["svc", "weight-loading", _, "cycle"] => self.cycles += 1,
                ["svc", "weight-loading", _, "advice"] => self.advice += 1,
                _ => panic!("unexpected topic {topic}"),
            }
        }
    }
}

/// Sends `msgs` in batches; returns the latest reports.
pub fn feed(h: &mut Harness<WeightLoading>, msgs: &[Message], batch: usize, latest: &mut Latest) {
    for chunk in msgs.chunks(batch) {
        h.send_batch(chunk.to_vec()).expect("handle");
        latest.absorb(h.take_published());
    }
}

/// Deterministic pseudo-random numbers (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
