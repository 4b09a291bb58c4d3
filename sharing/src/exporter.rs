//! Per-message decisions: export (transformed), fold into an aggregate, or hold on site.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::fields::{round_pair, RoundFailure};
use crate::policy::{ExportRule, Policy};
use crate::topic::is_valid_topic;

/// Most aggregation windows open at once (all providers); a message needing one more is held.
pub const MAX_OPEN_WINDOWS: usize = 10_000;

/// Most distinct topics counted one by one in [`Counters::held_by_topic`]; the rest share
/// [`OTHER_TOPICS`], so a peer inventing topics cannot grow memory.
pub const MAX_COUNTED_TOPICS: usize = 1_000;

/// Key in [`Counters::held_by_topic`] for topics beyond [`MAX_COUNTED_TOPICS`], or longer
/// than [`MAX_COUNTED_TOPIC_LEN`] bytes.
pub const OTHER_TOPICS: &str = "(other topics)";

/// Key in [`Counters::held_by_topic`] for topics that are not valid topic names.
pub const INVALID_TOPIC: &str = "(invalid topic)";

/// Longest topic counted under its own name.
pub const MAX_COUNTED_TOPIC_LEN: usize = 256;

/// A message (or aggregate summary) released for one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// Topic to publish on: the original message's topic.
    pub topic: String,
    /// The bytes to send: the original payload for a rule without transformations,
    /// otherwise the transformed JSON object written compactly with keys sorted.
    pub payload: Vec<u8>,
    /// Index of the policy rule that allowed it.
    pub rule: usize,
    /// That rule's purpose, for the audit log.
    pub purpose: String,
}

/// What happened to one offered message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send this now.
    Export(Export),
    /// Folded into an aggregation window of `rule`; [`Exporter::flush_due`] releases it later.
    Aggregated {
        /// The aggregating rule.
        rule: usize,
    },
    /// Stays on site.
    Held(HeldReason),
}

/// Why a message stays on site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldReason {
    /// No rule for this provider covers the topic (the default for everything).
    NoRule,
    /// The topic is empty or contains wildcards or NUL.
    InvalidTopic,
    /// The rule reads fields but the payload is not a JSON object.
    NotJsonObject {
        /// The matching rule.
        rule: usize,
    },
    /// A position pair is half present, not numeric or out of range, so it cannot be rounded.
    BadPosition {
        /// The matching rule.
        rule: usize,
        /// The offending field path.
        field: String,
    },
    /// A field to summarise holds something other than a number.
    NotANumber {
        /// The matching rule.
        rule: usize,
        /// The offending field path.
        field: String,
    },
    /// A group-by field holds an object or array.
    BadGroupValue {
        /// The matching rule.
        rule: usize,
        /// The offending field path.
        field: String,
    },
    /// [`MAX_OPEN_WINDOWS`] aggregation windows are already open.
    TooManyWindows {
        /// The matching rule.
        rule: usize,
    },
}

impl std::fmt::Display for HeldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeldReason::NoRule => f.write_str("no sharing rule covers this topic for this provider"),
            HeldReason::InvalidTopic => f.write_str("not a valid topic name"),
            HeldReason::NotJsonObject { rule } => {
                write!(f, "export[{rule}] reads fields but the payload is not a JSON object")
            }
            HeldReason::BadPosition { rule, field } => {
                write!(f, "export[{rule}] rounds positions but `{field}` is missing, not a number or out of range")
            }
            HeldReason::NotANumber { rule, field } => {
                write!(f, "export[{rule}] summarises `{field}` but it is not a number")
            }
            HeldReason::BadGroupValue { rule, field } => {
                write!(f, "export[{rule}] groups by `{field}` but it is an object or array")
            }
            HeldReason::TooManyWindows { rule } => {
                write!(f, "export[{rule}]: {MAX_OPEN_WINDOWS} aggregation windows are already open")
            }
        }
    }
}

impl HeldReason {
    /// A stable short name, used as the key in [`Counters::held_by_reason`].
    pub fn kind(&self) -> &'static str {
        match self {
            HeldReason::NoRule => "no_rule",
            HeldReason::InvalidTopic => "invalid_topic",
            HeldReason::NotJsonObject { .. } => "not_json_object",
            HeldReason::BadPosition { .. } => "bad_position",
            HeldReason::NotANumber { .. } => "not_a_number",
            HeldReason::BadGroupValue { .. } => "bad_group_value",
            HeldReason::TooManyWindows { .. } => "too_many_windows",
        }
    }
}

/// What the exporter has done since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages released: by `offer` and aggregate summaries from `flush_due`.
    pub exported_messages: u64,
    /// Payload bytes of those messages.
    pub exported_bytes: u64,
    /// Messages folded into aggregation windows.
    pub aggregated_inputs: u64,
    /// Aggregate summaries released by `flush_due` (also in `exported_messages`).
    pub aggregates_flushed: u64,
    /// Windows thrown away because `set_policy` removed or changed their rule.
    pub aggregates_discarded: u64,
    /// Inputs in those discarded windows.
    pub aggregated_inputs_discarded: u64,
    /// Messages held, all reasons.
    pub held: u64,
    /// Messages held per [`HeldReason::kind`].
    pub held_by_reason: BTreeMap<&'static str, u64>,
    /// Messages held per topic (see [`MAX_COUNTED_TOPICS`]).
    pub held_by_topic: BTreeMap<String, u64>,
}

/// An open aggregation window, ordered so that flushes come out oldest period first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WindowKey {
    provider: String,
    start_ms: u64,
    rule: usize,
    topic: String,
    /// Canonical JSON of the group values, in `group_by` order.
    group: String,
}

#[derive(Debug, Clone)]
struct Window {
    end_ms: u64,
    count: u64,
    fields: Vec<FieldStats>,
    group: Vec<Value>,
}

#[derive(Debug, Clone, Default)]
struct FieldStats {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// The customer's policy applied to a stream of messages, with open aggregation windows
/// and counters. Pure: no I/O, and time comes only from the `now_ms` arguments.
///
/// When several rules of one provider match a topic, the first in file order applies.
/// Validation only accepts such overlaps when the rules treat messages identically, so the
/// choice never widens what leaves.
#[derive(Debug, Clone, Default)]
pub struct Exporter {
    policy: Policy,
    windows: BTreeMap<WindowKey, Window>,
    counters: Counters,
}

impl Exporter {
    /// An exporter applying `policy`.
    pub fn new(policy: Policy) -> Self {
        Exporter { policy, windows: BTreeMap::new(), counters: Counters::default() }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy; the next `offer` uses it.
    ///
    /// Open windows whose rule is still present unchanged (same provider, filters and
    /// transformation, wherever it now sits in the file) stay open; all others are discarded
    /// and counted, never exported under a policy that no longer allows them.
    pub fn set_policy(&mut self, policy: Policy) {
        let old = std::mem::replace(&mut self.policy, policy);
        let windows = std::mem::take(&mut self.windows);
        for (mut key, window) in windows {
            let kept = old
                .rules()
                .get(key.rule)
                .and_then(|old_rule| self.policy.rules().iter().position(|r| r.same_treatment(old_rule)));
            match kept {
                Some(new_index) => {
                    key.rule = new_index;
                    self.windows.insert(key, window);
                }
                None => {
                    self.counters.aggregates_discarded += 1;
                    self.counters.aggregated_inputs_discarded += window.count;
                    tracing::info!(
                        provider = %key.provider, topic = %key.topic, inputs = window.count,
                        "sharing policy changed: open aggregate discarded, not exported"
                    );
                }
            }
        }
    }

    /// Decides what happens to one message on `topic` for `provider`, received at `now_ms`.
    pub fn offer(&mut self, provider: &str, topic: &str, payload: &[u8], now_ms: u64) -> Decision {
        let decision = self.decide(provider, topic, payload, now_ms);
        match &decision {
            Decision::Export(e) => {
                self.counters.exported_messages += 1;
                self.counters.exported_bytes += e.payload.len() as u64;
            }
            Decision::Aggregated { .. } => self.counters.aggregated_inputs += 1,
            Decision::Held(reason) => self.count_held(topic, reason),
        }
        decision
    }

    fn count_held(&mut self, topic: &str, reason: &HeldReason) {
        let c = &mut self.counters;
        c.held += 1;
        *c.held_by_reason.entry(reason.kind()).or_default() += 1;
        let key = if *reason == HeldReason::InvalidTopic {
            INVALID_TOPIC
        } else if topic.len() <= MAX_COUNTED_TOPIC_LEN
            && (c.held_by_topic.contains_key(topic) || c.held_by_topic.len() < MAX_COUNTED_TOPICS)
        {
            topic
        } else {
            OTHER_TOPICS
        };
        *c.held_by_topic.entry(key.to_owned()).or_default() += 1;
    }

    fn decide(&mut self, provider: &str, topic: &str, payload: &[u8], now_ms: u64) -> Decision {
        if !is_valid_topic(topic) {
            return Decision::Held(HeldReason::InvalidTopic);
        }
        let Some((index, rule)) = self.policy.rule_for(provider, topic) else {
            return Decision::Held(HeldReason::NoRule);
        };
        if !rule.needs_fields() {
            return Decision::Export(export(topic, payload.to_vec(), index, rule));
        }
        let mut object = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            _ => return Decision::Held(HeldReason::NotJsonObject { rule: index }),
        };
        for path in &rule.drop {
            path.remove(&mut object);
        }
        if let Some(round) = &rule.round_position {
            for (lat, lon) in &round.fields {
                if let Err(RoundFailure::Field(field)) = round_pair(&mut object, lat, lon, round.metres) {
                    return Decision::Held(HeldReason::BadPosition { rule: index, field });
                }
            }
        }
        if rule.aggregate.is_none() {
            // Serialising a Value cannot fail (its keys are strings).
            let bytes = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
            return Decision::Export(export(topic, bytes, index, rule));
        }
        match fold(&mut self.windows, provider, topic, &object, index, rule, now_ms) {
            Ok(()) => Decision::Aggregated { rule: index },
            Err(reason) => Decision::Held(reason),
        }
    }
}

fn fold(
    windows: &mut BTreeMap<WindowKey, Window>,
    provider: &str,
    topic: &str,
    object: &Map<String, Value>,
    index: usize,
    rule: &ExportRule,
    now_ms: u64,
) -> Result<(), HeldReason> {
    let Some(agg) = &rule.aggregate else { return Ok(()) };
    // Check every value before touching the window, so a held message leaves no trace.
    let mut values = Vec::with_capacity(agg.fields.len());
    for path in &agg.fields {
        match path.get(object) {
            None | Some(Value::Null) => values.push(None),
            Some(Value::Number(n)) => values.push(n.as_f64()),
            Some(_) => return Err(HeldReason::NotANumber { rule: index, field: path.to_string() }),
        }
    }
    let mut group = Vec::with_capacity(agg.group_by.len());
    for path in &agg.group_by {
        match path.get(object) {
            None => group.push(Value::Null),
            Some(Value::Array(_) | Value::Object(_)) => {
                return Err(HeldReason::BadGroupValue { rule: index, field: path.to_string() })
            }
            Some(v) => group.push(v.clone()),
        }
    }
    let period = agg.period_ms.max(1);
    let start_ms = now_ms - now_ms % period;
    let key = WindowKey {
        provider: provider.to_owned(),
        start_ms,
        rule: index,
        topic: topic.to_owned(),
        group: serde_json::to_string(&group).unwrap_or_default(),
    };
    if !windows.contains_key(&key) && windows.len() >= MAX_OPEN_WINDOWS {
        return Err(HeldReason::TooManyWindows { rule: index });
    }
    let window = windows.entry(key).or_insert_with(|| Window {
        end_ms: start_ms.saturating_add(period),
        count: 0,
        fields: vec![FieldStats::default(); agg.fields.len()],
        group,
    });
    window.count += 1;
    for (stats, value) in window.fields.iter_mut().zip(values) {
        if let Some(v) = value {
            if stats.count == 0 {
                stats.min = v;
                stats.max = v;
            } else {
                stats.min = stats.min.min(v);
                stats.max = stats.max.max(v);
            }
            stats.count += 1;
            stats.sum += v;
        }
    }
    Ok(())
}

impl Exporter {
    /// Closes and returns `provider`'s windows whose period ended at or before `now_ms`,
    /// oldest period first, then by rule, topic and group.
    ///
    /// Each is a JSON object on the original topic:
    /// `{"period_start_ms", "period_end_ms", "count", "fields": {"<path>": {"count", "mean",
    /// "min", "max", "sum"}}, "group": {"<path>": value}}`. A field missing from some messages
    /// has a smaller `count`; mean, min and max are `null` when it never appeared.
    pub fn flush_due(&mut self, provider: &str, now_ms: u64) -> Vec<Export> {
        let due: Vec<WindowKey> = self
            .windows
            .iter()
            .filter(|(k, w)| k.provider == provider && w.end_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            let Some(window) = self.windows.remove(&key) else { continue };
            let Some(rule) = self.policy.rules().get(key.rule) else { continue };
            let Some(agg) = &rule.aggregate else { continue };
            let mut fields = Map::new();
            for (path, s) in agg.fields.iter().zip(&window.fields) {
                let (mean, min, max) = if s.count == 0 {
                    (None, None, None)
                } else {
                    (Some(s.sum / s.count as f64), Some(s.min), Some(s.max))
                };
                fields.insert(
                    path.to_string(),
                    json!({"count": s.count, "mean": mean, "min": min, "max": max, "sum": s.sum}),
                );
            }
            let group: Map<String, Value> =
                agg.group_by.iter().map(ToString::to_string).zip(window.group.iter().cloned()).collect();
            let body = json!({
                "period_start_ms": key.start_ms,
                "period_end_ms": window.end_ms,
                "count": window.count,
                "fields": fields,
                "group": group,
            });
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            self.counters.exported_messages += 1;
            self.counters.exported_bytes += payload.len() as u64;
            self.counters.aggregates_flushed += 1;
            out.push(export(&key.topic, payload, key.rule, rule));
        }
        out
    }

    /// The earliest end of an open window, so the caller knows when to call `flush_due` next.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.windows.values().map(|w| w.end_ms).min()
    }

    /// Number of aggregation windows open (all providers).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Whether `provider` may read KPI `kpi` of `service` under the policy in force.
    pub fn kpi_allowed(&self, provider: &str, service: &str, kpi: &str) -> bool {
        self.policy.kpi_allowed(provider, service, kpi)
    }

    /// The counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

fn export(topic: &str, payload: Vec<u8>, rule: usize, r: &ExportRule) -> Export {
    Export { topic: topic.to_owned(), payload, rule, purpose: r.purpose.clone() }
}
