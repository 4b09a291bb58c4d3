//! Persistence through the agent's key-value state. The store has no key
//! listing, so an index names every record:
//!
//! - `index`: site, which (truck, shift) and (loader, shift) records exist,
//!   loaders with recent loads, expired shifts, unattributed rejections;
//!   rewritten only when one of those changes;
//! - `t/{truck}/{shift}`: a [`TruckShift`] (also its dedup keys);
//! - `l/{loader}/{shift}`: a [`LoaderShift`];
//! - `r/{loader}`: a [`LoaderRecent`] (recent loads, open bucket session).
//!
//! A call writes one record per (truck, shift), (loader, shift) and loader
//! it touched, and the index if needed.

use crate::aggregate::{LoaderRecent, LoaderShift, TruckShift};
use outpost_sdk::host;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

pub const INDEX: &str = "index";
const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Index {
    pub v: u32,
    pub site: String,
    /// truck -> shifts with a record.
    pub trucks: BTreeMap<String, Vec<String>>,
    /// loader -> shifts with a record.
    pub loaders: BTreeMap<String, Vec<String>>,
    /// Loaders with an `r/` record.
    pub recent: Vec<String>,
    pub expired: Vec<String>,
    pub unattributed: BTreeMap<String, u64>,
}

pub fn truck_key(truck: &str, shift: &str) -> String {
    format!("t/{truck}/{shift}")
}

pub fn loader_key(loader: &str, shift: &str) -> String {
    format!("l/{loader}/{shift}")
}

pub fn recent_key(loader: &str) -> String {
    format!("r/{loader}")
}

/// Reads one record; a missing or unreadable one is logged and skipped.
pub fn get<T: DeserializeOwned>(key: &str) -> Option<T> {
    let bytes = host::state_get(key)?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            host::log(host::Level::Error, &format!("state record {key} is unreadable, dropped: {e}"));
            None
        }
    }
}

pub fn put<T: Serialize>(key: &str, value: &T) {
    match serde_json::to_vec(value) {
        Ok(b) => host::state_set(key, &b),
        Err(e) => host::log(host::Level::Error, &format!("state record {key} not saved: {e}")),
    }
}

/// Everything kept, as read back at init.
#[derive(Debug, Default)]
pub struct Loaded {
    pub index: Index,
    pub trucks: BTreeMap<String, BTreeMap<String, TruckShift>>,
    pub loaders: BTreeMap<String, BTreeMap<String, LoaderShift>>,
    pub recent: BTreeMap<String, LoaderRecent>,
}

pub fn load() -> Loaded {
    let Some(index) = get::<Index>(INDEX) else {
        return Loaded::default();
    };
    if index.v != VERSION {
        host::log(host::Level::Error, &format!("state index version {} is not {VERSION}; starting empty", index.v));
        return Loaded::default();
    }
    let mut out = Loaded::default();
    for (truck, shifts) in &index.trucks {
        for shift in shifts {
            if let Some(r) = get(&truck_key(truck, shift)) {
                out.trucks.entry(truck.clone()).or_default().insert(shift.clone(), r);
            }
        }
    }
    for (loader, shifts) in &index.loaders {
        for shift in shifts {
            if let Some(r) = get(&loader_key(loader, shift)) {
                out.loaders.entry(loader.clone()).or_default().insert(shift.clone(), r);
            }
        }
    }
    for loader in &index.recent {
        if let Some(r) = get(&recent_key(loader)) {
            out.recent.insert(loader.clone(), r);
        }
    }
    out.index = index;
    out
}

pub fn index_of(
    site: &str,
    trucks: &BTreeMap<String, BTreeMap<String, TruckShift>>,
    loaders: &BTreeMap<String, BTreeMap<String, LoaderShift>>,
    recent: &BTreeMap<String, LoaderRecent>,
    expired: &[String],
    unattributed: &BTreeMap<String, u64>,
) -> Index {
    Index {
        v: VERSION,
        site: site.to_owned(),
        trucks: trucks.iter().map(|(t, s)| (t.clone(), s.keys().cloned().collect())).collect(),
        loaders: loaders.iter().map(|(l, s)| (l.clone(), s.keys().cloned().collect())).collect(),
        recent: recent.keys().cloned().collect(),
        expired: expired.to_vec(),
        unattributed: unattributed.clone(),
    }
}
