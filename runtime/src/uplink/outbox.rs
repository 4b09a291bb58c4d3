//! The store-and-forward outbox: everything the gateway sends to its
//! operations center (reports, events, approved site data) is first
//! committed here, in order, and removed only when the broker has
//! acknowledged it. A restart or a week offline loses nothing within the
//! bounds; beyond them the *oldest* messages are dropped (the newest say
//! most about the gateway now) and every drop is counted, persisted and
//! reported to the operations center.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
const DROPPED: &str = "dropped";
const BYTES: &str = "bytes";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("uplink outbox {path}: {message} (is the disk full or the state folder not writable?)")]
    Store { path: String, message: String },
    #[error("uplink outbox {path}: entry {seq} is corrupt; move the file aside to start a new outbox")]
    Corrupt { path: String, seq: u64 },
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct Outbox {
    db: Database,
    path: String,
    max_messages: u64,
    max_bytes: u64,
}

fn encode(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + topic.len() + payload.len());
    v.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    v.extend_from_slice(topic.as_bytes());
    v.extend_from_slice(payload);
    v
}

fn decode(seq: u64, raw: &[u8]) -> Option<Queued> {
    let len = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(raw.get(4..4 + len)?).ok()?.to_owned();
    Some(Queued { seq, topic, payload: raw[4 + len..].to_vec() })
}

impl Outbox {
    pub fn open(path: &Path, max_messages: u64, max_bytes: u64) -> Result<Outbox, OutboxError> {
        let p = path.display().to_string();
        let db = Database::create(path).map_err(|e| OutboxError::Store { path: p.clone(), message: e.to_string() })?;
        let outbox = Outbox { db, path: p, max_messages, max_bytes };
        // Create the tables so readers never meet a missing one.
        let w = outbox.begin()?;
        {
            w.open_table(QUEUE).map_err(|e| outbox.err(e))?;
            w.open_table(META).map_err(|e| outbox.err(e))?;
        }
        w.commit().map_err(|e| outbox.err(e))?;
        Ok(outbox)
    }

    fn err(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError::Store { path: self.path.clone(), message: e.to_string() }
    }

    fn begin(&self) -> Result<redb::WriteTransaction, OutboxError> {
        self.db.begin_write().map_err(|e| self.err(e))
    }

    /// Appends messages in order, in one durable transaction, dropping the
    /// oldest beyond the bounds. Returns how many were dropped now.
    pub fn push(&self, items: &[(String, Vec<u8>)]) -> Result<u64, OutboxError> {
        if items.is_empty() {
            return Ok(0);
        }
        let w = self.begin()?;
        let dropped_now;
        {
            let mut q = w.open_table(QUEUE).map_err(|e| self.err(e))?;
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let get = |m: &redb::Table<&str, u64>, k: &str| -> Result<u64, OutboxError> {
                Ok(m.get(k).map_err(|e| self.err(e))?.map(|v| v.value()).unwrap_or(0))
            };
            let (mut next, mut bytes, dropped) = (get(&meta, NEXT_SEQ)?, get(&meta, BYTES)?, get(&meta, DROPPED)?);
            for (topic, payload) in items {
                q.insert(next, encode(topic, payload).as_slice()).map_err(|e| self.err(e))?;
                bytes += payload.len() as u64;
                next += 1;
            }
            let mut len = q.len().map_err(|e| self.err(e))?;
            let mut n = 0;
            while len > self.max_messages || bytes > self.max_bytes {
                let Some((seq, raw)) = q.pop_first().map_err(|e| self.err(e))? else { break };
                let size = decode(seq.value(), raw.value()).map(|m| m.payload.len() as u64).unwrap_or(0);
                bytes = bytes.saturating_sub(size);
                len -= 1;
                n += 1;
            }
            dropped_now = n;
            meta.insert(NEXT_SEQ, next).map_err(|e| self.err(e))?;
            meta.insert(BYTES, bytes).map_err(|e| self.err(e))?;
            meta.insert(DROPPED, dropped + n).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))?;
        Ok(dropped_now)
    }

    /// Up to `n` queued messages with a sequence number above `after`, oldest first.
    pub fn peek(&self, after: Option<u64>, n: usize) -> Result<Vec<Queued>, OutboxError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let q = r.open_table(QUEUE).map_err(|e| self.err(e))?;
        let from = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        let mut out = Vec::new();
        for entry in q.range(from..).map_err(|e| self.err(e))?.take(n) {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let seq = k.value();
            out.push(decode(seq, v.value()).ok_or(OutboxError::Corrupt { path: self.path.clone(), seq })?);
        }
        Ok(out)
    }

    /// The broker has every message up to `seq`: forget them.
    pub fn delivered(&self, seq: u64) -> Result<(), OutboxError> {
        let w = self.begin()?;
        {
            let mut q = w.open_table(QUEUE).map_err(|e| self.err(e))?;
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let mut bytes = meta.get(BYTES).map_err(|e| self.err(e))?.map(|v| v.value()).unwrap_or(0);
            loop {
                let first = q.first().map_err(|e| self.err(e))?.map(|(k, v)| (k.value(), v.value().len()));
                match first {
                    Some((s, raw_len)) if s <= seq => {
                        q.remove(s).map_err(|e| self.err(e))?;
                        bytes = bytes.saturating_sub(raw_len.saturating_sub(4) as u64);
                    }
                    _ => break,
                }
            }
            // Topic bytes were never counted; recount exactly when empty.
            if q.is_empty().map_err(|e| self.err(e))? {
                bytes = 0;
            }
            meta.insert(BYTES, bytes).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// (queued messages, queued payload bytes, dropped since the outbox was created)
    pub fn stats(&self) -> Result<(u64, u64, u64), OutboxError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let q = r.open_table(QUEUE).map_err(|e| self.err(e))?;
        let meta = r.open_table(META).map_err(|e| self.err(e))?;
        let get = |k: &str| -> Result<u64, OutboxError> {
            Ok(meta.get(k).map_err(|e| self.err(e))?.map(|v| v.value()).unwrap_or(0))
        };
        Ok((q.len().map_err(|e| self.err(e))?, get(BYTES)?, get(DROPPED)?))
    }

    /// A small durable value beside the queue (the last applied desired revision).
    pub fn get_meta(&self, key: &str) -> Result<Option<u64>, OutboxError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = r.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta.get(key).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), OutboxError> {
        let w = self.begin()?;
        {
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(key, value).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> (String, Vec<u8>) {
        (format!("t/{i}"), format!("payload {i}").into_bytes())
    }

    #[test]
    fn messages_come_out_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("uplink.redb");
        {
            let o = Outbox::open(&path, 100, 1 << 20).expect("open");
            o.push(&(0..5).map(msg).collect::<Vec<_>>()).expect("push");
            let first = o.peek(None, 2).expect("peek");
            assert_eq!(first.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![0, 1]);
            o.delivered(1).expect("delivered");
        }
        let o = Outbox::open(&path, 100, 1 << 20).expect("reopen");
        let rest = o.peek(None, 10).expect("peek");
        assert_eq!(rest.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(), vec!["t/2", "t/3", "t/4"]);
        assert_eq!(o.peek(Some(3), 10).expect("peek").len(), 1);
        o.push(&[msg(9)]).expect("push");
        assert_eq!(o.peek(Some(4), 10).expect("peek")[0].seq, 5, "sequence numbers never repeat");
        assert_eq!(o.stats().expect("stats").0, 4);
    }

    #[test]
    fn beyond_its_bounds_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(&dir.path().join("u.redb"), 3, 1 << 20).expect("open");
        o.push(&(0..5).map(msg).collect::<Vec<_>>()).expect("push");
        let (len, _, dropped) = o.stats().expect("stats");
        assert_eq!((len, dropped), (3, 2));
        assert_eq!(o.peek(None, 10).expect("peek")[0].topic, "t/2");
        // A byte bound too.
        let o = Outbox::open(&dir.path().join("b.redb"), 100, 20).expect("open");
        o.push(&[("a".into(), vec![0; 15]), ("b".into(), vec![0; 15])]).expect("push");
        assert_eq!(o.stats().expect("stats"), (1, 15, 1));
        o.delivered(1).expect("delivered");
        assert_eq!(o.stats().expect("stats"), (0, 0, 1));
    }
}
