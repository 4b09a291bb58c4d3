//! Per-service persistent key-value state, in one redb file per agent.
//! Keys are namespaced by service name (not version), so an upgrade or a
//! restart finds the state where the previous instance left it.

use redb::{Database, ReadableDatabase, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;

const STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("service_state");
/// The agent's own records (desired state, approvals), apart from services'.
const AGENT: TableDefinition<&str, &[u8]> = TableDefinition::new("agent_meta");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {message}")]
    Open { path: String, message: String },
    #[error("state database: {0}")]
    Io(String),
}

fn io<E: std::fmt::Display>(e: E) -> StateError {
    StateError::Io(e.to_string())
}

pub struct StateStore {
    db: Database,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let open_err = |e: &dyn std::fmt::Display| StateError::Open {
            path: path.display().to_string(),
            message: format!("{e} (if the file is corrupt, move it aside; the agent starts with empty state)"),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        }
        let t0 = std::time::Instant::now();
        let db = Database::create(path).map_err(|e| open_err(&e))?;
        let opened = t0.elapsed();
        // Creating the tables is a durable commit (an fsync): only on the
        // first start, not on every one.
        let missing = {
            let read = db.begin_read().map_err(|e| open_err(&e))?;
            read.open_table(STATE).is_err() || read.open_table(AGENT).is_err()
        };
        if missing {
            let mut txn = db.begin_write().map_err(|e| open_err(&e))?;
            txn.set_quick_repair(true);
            txn.open_table(STATE).map_err(|e| open_err(&e))?;
            txn.open_table(AGENT).map_err(|e| open_err(&e))?;
            txn.commit().map_err(|e| open_err(&e))?;
        }
        let ms = |d: std::time::Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        tracing::debug!(
            open_ms = ms(opened),
            tables_ms = ms(t0.elapsed() - opened),
            created = missing,
            "state store opened"
        );
        Ok(StateStore { db })
    }

    pub fn get(&self, service: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(STATE).map_err(io)?;
        Ok(table.get((service, key)).map_err(io)?.map(|v| v.value().to_vec()))
    }

    /// Applies one call's writes atomically.
    pub fn commit(&self, service: &str, txn: StateTxn) -> Result<(), StateError> {
        if txn.writes.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(io)?;
        {
            let mut table = w.open_table(STATE).map_err(io)?;
            for (key, value) in &txn.writes {
                match value {
                    Some(v) => {
                        table.insert((service, key.as_str()), v.as_slice()).map_err(io)?;
                    }
                    None => {
                        table.remove((service, key.as_str())).map_err(io)?;
                    }
                }
            }
        }
        w.commit().map_err(io)
    }

    /// One of the agent's own records.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(AGENT).map_err(io)?;
        Ok(table.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    /// Writes one of the agent's own records durably (committed before it returns).
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        let mut w = self.db.begin_write().map_err(io)?;
        // These records are rare (lifecycle changes): they also save redb's
        // allocator state, so that reopening after a crash with no service
        // write since loads it instead of rebuilding it from the whole file.
        w.set_quick_repair(true);
        {
            let mut table = w.open_table(AGENT).map_err(io)?;
            table.insert(key, value).map_err(io)?;
        }
        w.commit().map_err(io)
    }

    /// All keys of a service (for `outpostctl` and tests).
    pub fn keys(&self, service: &str) -> Result<Vec<String>, StateError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(STATE).map_err(io)?;
        let mut out = Vec::new();
        for item in table.range((service, "")..).map_err(io)? {
            let (k, _) = item.map_err(io)?;
            let (svc, key) = k.value();
            if svc != service {
                break;
            }
            out.push(key.to_owned());
        }
        Ok(out)
    }
}

/// Writes made during one call; `None` is a delete.
#[derive(Debug, Default)]
pub struct StateTxn {
    writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl StateTxn {
    /// `Some(value)` if this call wrote or deleted the key.
    pub fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.writes.get(key).cloned()
    }
    pub fn set(&mut self, key: String, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }
    pub fn delete(&mut self, key: String) {
        self.writes.insert(key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen_and_is_per_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = StateStore::open(&path).expect("open");
            let mut t = StateTxn::default();
            t.set("k".into(), b"v1".to_vec());
            t.set("gone".into(), b"x".to_vec());
            store.commit("a", t).expect("commit");
            let mut t = StateTxn::default();
            t.delete("gone".into());
            store.commit("a", t).expect("commit");
        }
        let store = StateStore::open(&path).expect("reopen");
        assert_eq!(store.get("a", "k").expect("get"), Some(b"v1".to_vec()));
        assert_eq!(store.get("b", "k").expect("get"), None);
        assert_eq!(store.keys("a").expect("keys"), vec!["k".to_string()]);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"this is not a redb file at all, just garbage bytes").expect("write");
        let err = StateStore::open(&path).err().expect("must fail").to_string();
        assert!(err.contains("state.redb"), "{err}");
    }
}
