//! What a service can ask of the agent: publish, state, logs, metrics.
//!
//! In a component these call the host's imports; natively they go to the
//! thread-local fake installed by [`crate::testing::Harness`].

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::Level;
    use crate::guest::bindings::outpost::service::{bus, log as wlog, metrics, state};

    pub fn publish(topic: &str, payload: &[u8]) -> Result<(), String> {
        bus::publish(topic, payload)
    }
    pub fn state_get(key: &str) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub fn state_set(key: &str, value: &[u8]) {
        state::set(key, value)
    }
    pub fn state_delete(key: &str) {
        state::delete(key)
    }
    pub fn log(level: Level, msg: &str) {
        let level = match level {
            Level::Trace => wlog::Level::Trace,
            Level::Debug => wlog::Level::Debug,
            Level::Info => wlog::Level::Info,
            Level::Warn => wlog::Level::Warn,
            Level::Error => wlog::Level::Error,
        };
        wlog::log(level, msg)
    }
    pub fn kpi(name: &str, value: f64) {
        metrics::kpi(name, value)
    }
    pub fn counter(name: &str, delta: u64) {
        metrics::counter(name, delta)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::Level;
    use crate::testing::with_fake;

    pub fn publish(topic: &str, payload: &[u8]) -> Result<(), String> {
        with_fake(|h| h.publish(topic, payload))
    }
    pub fn state_get(key: &str) -> Option<Vec<u8>> {
        with_fake(|h| h.state.get(key).cloned())
    }
    pub fn state_set(key: &str, value: &[u8]) {
        with_fake(|h| {
            h.state.insert(key.to_owned(), value.to_vec());
        })
    }
    pub fn state_delete(key: &str) {
        with_fake(|h| {
            h.state.remove(key);
        })
    }
    pub fn log(level: Level, msg: &str) {
        with_fake(|h| h.logs.push((level, msg.to_owned())))
    }
    pub fn kpi(name: &str, value: f64) {
        with_fake(|h| {
            h.kpis.insert(name.to_owned(), value);
        })
    }
    pub fn counter(name: &str, delta: u64) {
        with_fake(|h| *h.counters.entry(name.to_owned()).or_insert(0) += delta)
    }
}

pub use imp::{counter, kpi, log, publish, state_delete, state_get, state_set};

/// Separates a KPI's name from its subject in the name passed to the host.
pub const KPI_SUBJECT_SEPARATOR: char = '/';

/// Sets a KPI for one subject (a truck, a loader, a zone...): the agent
/// exports it as `outpost_service_kpi{name="...", subject="..."}`. The plain
/// [`kpi`] is the site-wide value (empty subject). Keep the set of subjects
/// bounded (the agent caps series per service).
pub fn kpi_for(name: &str, subject: &str, value: f64) {
    kpi(&format!("{name}{KPI_SUBJECT_SEPARATOR}{subject}"), value)
}

pub fn info(msg: &str) {
    log(Level::Info, msg)
}
pub fn warn(msg: &str) {
    log(Level::Warn, msg)
}
pub fn debug(msg: &str) {
    log(Level::Debug, msg)
}
