//! What travels through the dispatcher: accepted messages, their MQTT
//! acknowledgement, and what caused them.

use std::sync::Arc;

/// Runs when dropped: the MQTT acknowledgement of an accepted message.
pub struct AckToken(Option<Box<dyn FnOnce() + Send + Sync>>);

impl AckToken {
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        AckToken(Some(Box::new(f)))
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f()
        }
    }
}

/// The inputs whose handling produced a message. Whatever holds a cause
/// (an in-agent message waiting in a queue, a publish waiting for the
/// broker's PUBACK) keeps those inputs unacknowledged: an input is
/// acknowledged only once everything it caused is safe.
pub type Cause = Arc<[Envelope]>;

/// A message accepted by the agent.
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub received_ms: u64,
    /// At-least-once input: never shed when a queue is full.
    pub reliable: bool,
    pub ack: Option<AckToken>,
    /// For a message published by a local service: the batch it came from.
    pub cause: Option<Cause>,
}

pub type Envelope = Arc<Inbound>;

impl Inbound {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Inbound {
        Inbound {
            topic: topic.into(),
            payload: payload.into(),
            received_ms: now_ms(),
            reliable: true,
            ack: None,
            cause: None,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where messages leave the dispatcher for the outside world.
pub trait Egress: Send {
    fn publish(&mut self, topic: &str, payload: &[u8]);

    /// Publishes a service output and keeps `cause` alive until the output
    /// is safe (the broker acknowledged it). Egresses with nothing to wait
    /// for (offline replay, benches) just publish.
    fn publish_caused(&mut self, topic: &str, payload: &[u8], cause: &Cause) {
        let _ = cause;
        self.publish(topic, payload)
    }
}

/// An egress that discards everything (before the link exists, in tests).
pub struct NullEgress;

impl Egress for NullEgress {
    fn publish(&mut self, _topic: &str, _payload: &[u8]) {}
}

/// Stable shard hash (FNV-1a, 64 bit): the same key lands on the same
/// instance and canary bucket on every build and Rust release, unlike
/// `DefaultHasher`.
pub fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::stable_hash;

    #[test]
    fn stable_hash_is_fnv1a() {
        // Reference values of FNV-1a 64 (draft-eastlake-fnv).
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
