//! Shadow runs: a new version handles a copy of the live input; its outputs
//! are held aside and compared with the serving version's, topic by topic,
//! before anyone promotes it.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};

/// How far the two versions' outputs agree on one topic. Outputs are
/// paired in the order each version produced them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TopicDiff {
    pub live: u64,
    pub shadow: u64,
    /// Pairs with byte-identical payloads.
    pub same: u64,
    /// Pairs whose payloads differ.
    pub different: u64,
    /// One differing pair (live, shadow), for a look.
    pub example: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShadowReport {
    pub service: String,
    pub live_version: String,
    pub shadow_version: String,
    pub topics: BTreeMap<String, TopicDiff>,
    #[serde(skip)]
    pending: BTreeMap<String, (VecDeque<Held>, VecDeque<Held>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    digest: [u8; 32],
    preview: String,
}

/// Unpaired outputs kept per topic and side; older ones are let go.
const MAX_PENDING: usize = 10_000;

impl ShadowReport {
    pub fn new(service: &str, live: &str, shadow: &str) -> ShadowReport {
        ShadowReport {
            service: service.into(),
            live_version: live.into(),
            shadow_version: shadow.into(),
            topics: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    pub fn record_live(&mut self, outputs: &[(String, Vec<u8>)]) {
        for (t, p) in outputs {
            self.record(t, p, true);
        }
    }

    pub fn record_shadow(&mut self, outputs: &[(String, Vec<u8>)]) {
        for (t, p) in outputs {
            self.record(t, p, false);
        }
    }

    fn record(&mut self, topic: &str, payload: &[u8], live: bool) {
        let held = Held {
            digest: Sha256::digest(payload).into(),
            preview: String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned(),
        };
        let diff = self.topics.entry(topic.to_owned()).or_default();
        if live {
            diff.live += 1;
        } else {
            diff.shadow += 1;
        }
        let (lq, sq) = self.pending.entry(topic.to_owned()).or_default();
        let (mine, other) = if live { (lq, sq) } else { (sq, lq) };
        match other.pop_front() {
            Some(o) => {
                if o.digest == held.digest {
                    diff.same += 1;
                } else {
                    diff.different += 1;
                    if diff.example.is_none() {
                        diff.example = Some(if live { (held.preview, o.preview) } else { (o.preview, held.preview) });
                    }
                }
            }
            None => {
                if mine.len() >= MAX_PENDING {
                    mine.pop_front();
                }
                mine.push_back(held);
            }
        }
    }

    /// Share of paired outputs that are identical, over all topics.
    pub fn agreement(&self) -> f64 {
        let (same, all) = self.topics.values().fold((0u64, 0u64), |(s, a), d| (s + d.same, a + d.same + d.different));
        if all == 0 {
            1.0
        } else {
            same as f64 / all as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(t: &str, p: &str) -> Vec<(String, Vec<u8>)> {
        vec![(t.to_owned(), p.as_bytes().to_vec())]
    }

    #[test]
    fn pairs_in_order_per_topic() {
        let mut r = ShadowReport::new("svc", "1.0.0", "2.0.0");
        r.record_live(&out("a", "1"));
        r.record_live(&out("a", "2"));
        r.record_shadow(&out("a", "1"));
        r.record_shadow(&out("a", "3"));
        r.record_shadow(&out("b", "x"));
        let a = &r.topics["a"];
        assert_eq!((a.live, a.shadow, a.same, a.different), (2, 2, 1, 1));
        assert_eq!(a.example, Some(("2".into(), "3".into())));
        let b = &r.topics["b"];
        assert_eq!((b.live, b.shadow, b.same, b.different), (0, 1, 0, 0));
        assert!((r.agreement() - 0.5).abs() < 1e-9);
    }
}
