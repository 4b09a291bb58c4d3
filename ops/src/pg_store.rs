//! [`FleetStore`] on PostgreSQL, for several `outpost-ops` replicas sharing
//! one fleet. A rollout is a row with a `revision` column, written with
//! `UPDATE ... WHERE revision = n - 1` (or an insert for revision 1), so of
//! two replicas acting on the same transition only one commits; the other
//! gets [`StoreError::Conflict`] and the engine reloads instead of handing
//! its actions out. A lease row (`ops_leases`) taken with one
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE` elects the one replica that
//! acts ([`FleetStore::try_lease`]).
//!
//! The client (`postgres`, the blocking face of tokio-postgres) lives on a
//! thread of its own: the trait is synchronous and is called from inside the
//! operations center's tokio runtime, where a nested runtime may not block.

use std::sync::mpsc;
use std::sync::Mutex;

use outpost_fleet::DesiredState;
use postgres::{Client, NoTls};

use crate::model::{AuditEntry, Gateway, PackageRecord, RolloutState};
use crate::store::{FleetStore, Lease, StoreError};

type Job = Box<dyn FnOnce(&mut Client) + Send>;

pub struct PgStore {
    jobs: Mutex<mpsc::Sender<Job>>,
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { key: key.to_string(), err: e.to_string() })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(be)
}

// Under an advisory lock: replicas starting together would otherwise race
// on CREATE TABLE IF NOT EXISTS (a unique violation in the catalogue).
const SCHEMA: &str = "
SELECT pg_advisory_lock(7419021);
CREATE TABLE IF NOT EXISTS ops_gateways (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops_rollouts (id TEXT PRIMARY KEY, revision BIGINT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops_audit (seq BIGSERIAL PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops_packages (key TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops_desired (gateway TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms BIGINT NOT NULL);
SELECT pg_advisory_unlock(7419021);
";

impl PgStore {
    /// Connects (`host=... port=... user=... dbname=...`) and creates the
    /// tables if they are missing.
    pub fn connect(params: &str) -> Result<PgStore, StoreError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StoreError>>();
        let (tx, rx) = mpsc::channel::<Job>();
        let params = params.to_string();
        std::thread::Builder::new()
            .name("outpost-ops-pg".into())
            .spawn(move || {
                let mut client =
                    match Client::connect(&params, NoTls).and_then(|mut c| c.batch_execute(SCHEMA).map(|_| c)) {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            c
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(be(e)));
                            return;
                        }
                    };
                for job in rx {
                    job(&mut client);
                }
            })
            .map_err(be)?;
        ready_rx.recv().map_err(be)??;
        Ok(PgStore { jobs: Mutex::new(tx) })
    }

    /// Runs `f` on the client's thread and waits for its answer.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| be("client thread ended"))?;
        rx.recv().map_err(|_| be("client thread ended"))?
    }

    fn all<T: serde::de::DeserializeOwned + Send + 'static>(&self, sql: &'static str) -> Result<Vec<T>, StoreError> {
        self.run(move |c| {
            let rows = c.query(sql, &[]).map_err(be)?;
            rows.iter()
                .map(|r| {
                    let key: String = r.get(0);
                    let text: String = r.get(1);
                    decode(&key, &text)
                })
                .collect()
        })
    }
}

fn insert_audit(t: &mut postgres::Transaction<'_>, entries: &[AuditEntry]) -> Result<(), StoreError> {
    for e in entries {
        t.execute("INSERT INTO ops_audit (record) VALUES ($1)", &[&encode(e)?]).map_err(be)?;
    }
    Ok(())
}

impl FleetStore for PgStore {
    fn put_gateway(&self, gw: &Gateway) -> Result<(), StoreError> {
        self.put_gateways(std::slice::from_ref(gw))
    }
    fn put_gateways(&self, gws: &[Gateway]) -> Result<(), StoreError> {
        let rows: Vec<(String, String)> =
            gws.iter().map(|g| Ok((g.id.clone(), encode(g)?))).collect::<Result<_, _>>()?;
        self.run(move |c| {
            let mut t = c.transaction().map_err(be)?;
            for (id, rec) in &rows {
                t.execute(
                    "INSERT INTO ops_gateways (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                    &[id, rec],
                )
                .map_err(be)?;
            }
            t.commit().map_err(be)
        })
    }
    fn gateway(&self, id: &str) -> Result<Option<Gateway>, StoreError> {
        let id = id.to_string();
        self.run(move |c| match c.query_opt("SELECT record FROM ops_gateways WHERE id = $1", &[&id]).map_err(be)? {
            Some(r) => decode(&id, &r.get::<_, String>(0)).map(Some),
            None => Ok(None),
        })
    }
    fn gateways(&self) -> Result<Vec<Gateway>, StoreError> {
        self.all("SELECT id, record FROM ops_gateways ORDER BY id")
    }
    fn put_rollout(&self, state: &RolloutState, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let id = state.plan.id.clone();
        let rec = encode(state)?;
        let revision = state.revision as i64;
        let audit = audit.to_vec();
        self.run(move |c| {
            let mut t = c.transaction().map_err(be)?;
            let written = if revision == 1 {
                t.execute(
                    "INSERT INTO ops_rollouts (id, revision, record) VALUES ($1, 1, $2) ON CONFLICT (id) DO NOTHING",
                    &[&id, &rec],
                )
                .map_err(be)?
            } else {
                t.execute(
                    "UPDATE ops_rollouts SET revision = $2, record = $3 WHERE id = $1 AND revision = $4",
                    &[&id, &revision, &rec, &(revision - 1)],
                )
                .map_err(be)?
            };
            if written != 1 {
                let found = t
                    .query_opt("SELECT revision FROM ops_rollouts WHERE id = $1", &[&id])
                    .map_err(be)?
                    .map(|r| r.get::<_, i64>(0) as u64)
                    .unwrap_or(0);
                return Err(StoreError::Conflict { id, expected: (revision as u64).saturating_sub(1), found });
            }
            insert_audit(&mut t, &audit)?;
            t.commit().map_err(be)
        })
    }
    fn rollout(&self, id: &str) -> Result<Option<RolloutState>, StoreError> {
        let id = id.to_string();
        self.run(move |c| match c.query_opt("SELECT record FROM ops_rollouts WHERE id = $1", &[&id]).map_err(be)? {
            Some(r) => decode(&id, &r.get::<_, String>(0)).map(Some),
            None => Ok(None),
        })
    }
    fn rollouts(&self) -> Result<Vec<RolloutState>, StoreError> {
        self.all("SELECT id, record FROM ops_rollouts ORDER BY id")
    }
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let entry = entry.clone();
        self.run(move |c| {
            let mut t = c.transaction().map_err(be)?;
            insert_audit(&mut t, std::slice::from_ref(&entry))?;
            t.commit().map_err(be)
        })
    }
    fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.all("SELECT 'audit/' || seq::text, record FROM ops_audit ORDER BY seq")
    }
    fn put_package(&self, pkg: &PackageRecord) -> Result<(), StoreError> {
        let (key, rec) = (pkg.key(), encode(pkg)?);
        self.run(move |c| {
            c.execute(
                "INSERT INTO ops_packages (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
                &[&key, &rec],
            )
            .map(|_| ())
            .map_err(be)
        })
    }
    fn packages(&self) -> Result<Vec<PackageRecord>, StoreError> {
        self.all("SELECT key, record FROM ops_packages ORDER BY key")
    }
    fn put_desired(&self, states: &[DesiredState]) -> Result<(), StoreError> {
        let rows: Vec<(String, String)> =
            states.iter().map(|s| Ok((s.gateway.clone(), encode(s)?))).collect::<Result<_, _>>()?;
        self.run(move |c| {
            let mut t = c.transaction().map_err(be)?;
            for (gw, rec) in &rows {
                t.execute(
                    "INSERT INTO ops_desired (gateway, record) VALUES ($1, $2) ON CONFLICT (gateway) DO UPDATE SET record = EXCLUDED.record",
                    &[gw, rec],
                )
                .map_err(be)?;
            }
            t.commit().map_err(be)
        })
    }
    fn desired_states(&self) -> Result<Vec<DesiredState>, StoreError> {
        self.all("SELECT gateway, record FROM ops_desired ORDER BY gateway")
    }
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Result<Lease, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let ms = |v: u64| i64::try_from(v).map_err(|_| be(format!("lease time {v} out of range")));
        let (now, expires) = (ms(now_ms)?, ms(now_ms.saturating_add(ttl_ms))?);
        self.run(move |c| {
            // One statement: taken if free, expired or ours; concurrent
            // attempts serialise on the row, so exactly one replica wins.
            let won = c
                .query_opt(
                    "INSERT INTO ops_leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_ms = EXCLUDED.expires_ms \
                     WHERE ops_leases.expires_ms <= $4 OR ops_leases.holder = $2 \
                     RETURNING holder, expires_ms",
                    &[&name, &holder, &expires, &now],
                )
                .map_err(be)?;
            let row = match won {
                Some(r) => r,
                None => c
                    .query_opt("SELECT holder, expires_ms FROM ops_leases WHERE name = $1", &[&name])
                    .map_err(be)?
                    .ok_or_else(|| be(format!("lease `{name}` vanished")))?,
            };
            Ok(Lease { holder: row.get(0), expires_ms: row.get::<_, i64>(1).max(0) as u64 })
        })
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.run(move |c| {
            c.execute("DELETE FROM ops_leases WHERE name = $1 AND holder = $2", &[&name, &holder])
                .map(|_| ())
                .map_err(be)
        })
    }
}
