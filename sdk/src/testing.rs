//! Native test harness: runs a [`Service`] without WASM, with an in-memory
//! fake of the agent (bus ACL, state, logs, metrics).

use crate::host::Level;
use crate::{Message, Service, ServiceError};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// What the fake agent recorded.
#[derive(Debug, Default, Clone)]
pub struct FakeHost {
    /// Topic filters the service may publish to (MQTT wildcards); empty = any.
    pub publish_acl: Vec<String>,
    pub published: Vec<(String, Vec<u8>)>,
    pub denied: Vec<String>,
    pub state: BTreeMap<String, Vec<u8>>,
    pub logs: Vec<(Level, String)>,
    pub kpis: BTreeMap<String, f64>,
    pub counters: BTreeMap<String, u64>,
}

impl FakeHost {
    pub(crate) fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        if !self.publish_acl.is_empty() && !self.publish_acl.iter().any(|f| topic_matches(f, topic)) {
            self.denied.push(topic.to_owned());
            return Err(format!("publish to '{topic}' is not allowed by the manifest"));
        }
        self.published.push((topic.to_owned(), payload.to_vec()));
        Ok(())
    }
}

thread_local! {
    static FAKE: RefCell<FakeHost> = RefCell::new(FakeHost::default());
}

pub(crate) fn with_fake<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    FAKE.with(|h| f(&mut h.borrow_mut()))
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Drives one service natively. Each harness resets the thread's fake host.
pub struct Harness<S: Service> {
    service: S,
}

impl<S: Service> Harness<S> {
    /// Initialises the service with `config` (JSON).
    pub fn new(config: &str) -> Result<Self, ServiceError> {
        with_fake(|h| *h = FakeHost::default());
        Ok(Harness { service: S::init(config)? })
    }

    /// Like [`Harness::new`], with the manifest's publish ACL enforced.
    pub fn with_acl(config: &str, publish_acl: &[&str]) -> Result<Self, ServiceError> {
        let harness = Self::new(config)?;
        with_fake(|h| h.publish_acl = publish_acl.iter().map(|s| s.to_string()).collect());
        Ok(harness)
    }

    /// Handles one message.
    pub fn send(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<(), ServiceError> {
        self.service.handle(vec![Message::new(topic, payload)])
    }

    /// Handles a batch.
    pub fn send_batch(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        self.service.handle(batch)
    }

    pub fn tick(&mut self, now_ms: u64) -> Result<(), ServiceError> {
        self.service.tick(now_ms)
    }

    /// Runs `migrate` as the agent does on an upgrade from `from_version`
    /// (the fake state is kept as the old version left it; writes are not
    /// rolled back on an error here).
    pub fn migrate(&mut self, from_version: &str) -> Result<(), ServiceError> {
        self.service.migrate(from_version)
    }

    /// Takes everything published so far.
    pub fn take_published(&mut self) -> Vec<(String, Vec<u8>)> {
        with_fake(|h| std::mem::take(&mut h.published))
    }

    /// A snapshot of what the fake host recorded.
    pub fn host(&self) -> FakeHost {
        with_fake(|h| h.clone())
    }

    pub fn service(&mut self) -> &mut S {
        &mut self.service
    }

    /// Re-initialises the service as after an agent restart, keeping state.
    pub fn restart(&mut self, config: &str) -> Result<(), ServiceError> {
        self.service = S::init(config)?;
        Ok(())
    }
}
