//! Fleet storage behind one trait, so the engine does not care where state
//! lives. [`RedbStore`] is the embedded default (one file); [`MemStore`] is
//! for tests; [`crate::PgStore`] is for fleets shared by several
//! `outpost-ops` replicas: `put_rollout` takes the revision the writer read,
//! so two replicas cannot both commit a transition of the same rollout, and
//! [`FleetStore::try_lease`] elects the one replica that acts at all.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use outpost_fleet::DesiredState;

use crate::model::{AuditEntry, Gateway, PackageRecord, RolloutState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("fleet store: {0}")]
    Backend(String),
    #[error("fleet store: record `{key}` is not valid JSON: {err}")]
    Corrupt { key: String, err: String },
    #[error("rollout `{id}` changed under us: expected revision {expected}, found {found}")]
    Conflict { id: String, expected: u64, found: u64 },
}

/// A named lease and who holds it until when (ms since the epoch, the
/// clock of the replica that took it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_ms: u64,
}

/// The one lease rule every store applies inside its own transaction: the
/// lease goes to `holder` if it is free, expired, or already `holder`'s.
fn lease_after(current: Option<&Lease>, holder: &str, ttl_ms: u64, now_ms: u64) -> Option<Lease> {
    match current {
        Some(l) if l.holder != holder && l.expires_ms > now_ms => None,
        _ => Some(Lease { holder: holder.to_string(), expires_ms: now_ms.saturating_add(ttl_ms) }),
    }
}

pub trait FleetStore {
    fn put_gateway(&self, gw: &Gateway) -> Result<(), StoreError>;
    fn put_gateways(&self, gws: &[Gateway]) -> Result<(), StoreError> {
        gws.iter().try_for_each(|g| self.put_gateway(g))
    }
    fn gateway(&self, id: &str) -> Result<Option<Gateway>, StoreError>;
    /// Every gateway, ordered by id.
    fn gateways(&self) -> Result<Vec<Gateway>, StoreError>;
    /// Writes `state` (whose `revision` is already bumped) only if the stored
    /// revision is `state.revision - 1` (or absent for revision 1); appends
    /// `audit` in the same transaction.
    fn put_rollout(&self, state: &RolloutState, audit: &[AuditEntry]) -> Result<(), StoreError>;
    fn rollout(&self, id: &str) -> Result<Option<RolloutState>, StoreError>;
    /// Every rollout, ordered by id.
    fn rollouts(&self) -> Result<Vec<RolloutState>, StoreError>;
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The audit trail in the order written.
    fn audit(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// Records a package of the catalogue (keyed by service and version).
    fn put_package(&self, pkg: &PackageRecord) -> Result<(), StoreError>;
    /// The catalogue, ordered by service then version text.
    fn packages(&self) -> Result<Vec<PackageRecord>, StoreError>;
    /// Writes gateways' desired states (with their revisions) in one go.
    fn put_desired(&self, states: &[DesiredState]) -> Result<(), StoreError>;
    /// Every gateway's last desired state, ordered by gateway id.
    fn desired_states(&self) -> Result<Vec<DesiredState>, StoreError>;
    /// Takes or renews the lease `name` for `holder` until `now_ms + ttl_ms`
    /// if it is free, expired (`expires_ms <= now_ms`) or already
    /// `holder`'s, atomically; returns the lease as it stands afterwards
    /// (`holder` has it iff `lease.holder == holder`).
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Result<Lease, StoreError>;
    /// Gives the lease up if `holder` has it (a clean stop: the next replica
    /// need not wait for it to expire).
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// A shared store is a store: the transport's engine and the HTTP API read
/// the same one.
impl<T: FleetStore + ?Sized> FleetStore for std::sync::Arc<T> {
    fn put_gateway(&self, gw: &Gateway) -> Result<(), StoreError> {
        (**self).put_gateway(gw)
    }
    fn put_gateways(&self, gws: &[Gateway]) -> Result<(), StoreError> {
        (**self).put_gateways(gws)
    }
    fn gateway(&self, id: &str) -> Result<Option<Gateway>, StoreError> {
        (**self).gateway(id)
    }
    fn gateways(&self) -> Result<Vec<Gateway>, StoreError> {
        (**self).gateways()
    }
    fn put_rollout(&self, state: &RolloutState, audit: &[AuditEntry]) -> Result<(), StoreError> {
        (**self).put_rollout(state, audit)
    }
    fn rollout(&self, id: &str) -> Result<Option<RolloutState>, StoreError> {
        (**self).rollout(id)
    }
    fn rollouts(&self) -> Result<Vec<RolloutState>, StoreError> {
        (**self).rollouts()
    }
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        (**self).append_audit(entry)
    }
    fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        (**self).audit()
    }
    fn put_package(&self, pkg: &PackageRecord) -> Result<(), StoreError> {
        (**self).put_package(pkg)
    }
    fn packages(&self) -> Result<Vec<PackageRecord>, StoreError> {
        (**self).packages()
    }
    fn put_desired(&self, states: &[DesiredState]) -> Result<(), StoreError> {
        (**self).put_desired(states)
    }
    fn desired_states(&self) -> Result<Vec<DesiredState>, StoreError> {
        (**self).desired_states()
    }
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Result<Lease, StoreError> {
        (**self).try_lease(name, holder, ttl_ms, now_ms)
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        (**self).release_lease(name, holder)
    }
}

fn check_revision(id: &str, stored: Option<u64>, new: u64) -> Result<(), StoreError> {
    let found = stored.unwrap_or(0);
    if found + 1 != new {
        return Err(StoreError::Conflict { id: id.to_string(), expected: new.saturating_sub(1), found });
    }
    Ok(())
}

/// In-memory store for tests and simulations.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Mem>,
}

#[derive(Default)]
struct Mem {
    gateways: BTreeMap<String, Gateway>,
    rollouts: BTreeMap<String, RolloutState>,
    audit: Vec<AuditEntry>,
    packages: BTreeMap<String, PackageRecord>,
    desired: BTreeMap<String, DesiredState>,
    leases: BTreeMap<String, Lease>,
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FleetStore for MemStore {
    fn put_gateway(&self, gw: &Gateway) -> Result<(), StoreError> {
        self.lock().gateways.insert(gw.id.clone(), gw.clone());
        Ok(())
    }
    fn gateway(&self, id: &str) -> Result<Option<Gateway>, StoreError> {
        Ok(self.lock().gateways.get(id).cloned())
    }
    fn gateways(&self) -> Result<Vec<Gateway>, StoreError> {
        Ok(self.lock().gateways.values().cloned().collect())
    }
    fn put_rollout(&self, state: &RolloutState, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let mut m = self.lock();
        let id = &state.plan.id;
        check_revision(id, m.rollouts.get(id).map(|r| r.revision), state.revision)?;
        m.rollouts.insert(id.clone(), state.clone());
        m.audit.extend_from_slice(audit);
        Ok(())
    }
    fn rollout(&self, id: &str) -> Result<Option<RolloutState>, StoreError> {
        Ok(self.lock().rollouts.get(id).cloned())
    }
    fn rollouts(&self) -> Result<Vec<RolloutState>, StoreError> {
        Ok(self.lock().rollouts.values().cloned().collect())
    }
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.lock().audit.push(entry.clone());
        Ok(())
    }
    fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.lock().audit.clone())
    }
    fn put_package(&self, pkg: &PackageRecord) -> Result<(), StoreError> {
        self.lock().packages.insert(pkg.key(), pkg.clone());
        Ok(())
    }
    fn packages(&self) -> Result<Vec<PackageRecord>, StoreError> {
        Ok(self.lock().packages.values().cloned().collect())
    }
    fn put_desired(&self, states: &[DesiredState]) -> Result<(), StoreError> {
        let mut m = self.lock();
        for s in states {
            m.desired.insert(s.gateway.clone(), s.clone());
        }
        Ok(())
    }
    fn desired_states(&self) -> Result<Vec<DesiredState>, StoreError> {
        Ok(self.lock().desired.values().cloned().collect())
    }
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Result<Lease, StoreError> {
        let mut m = self.lock();
        if let Some(l) = lease_after(m.leases.get(name), holder, ttl_ms, now_ms) {
            m.leases.insert(name.to_string(), l);
        }
        m.leases.get(name).cloned().ok_or_else(|| StoreError::Backend(format!("lease `{name}` vanished")))
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut m = self.lock();
        if m.leases.get(name).is_some_and(|l| l.holder == holder) {
            m.leases.remove(name);
        }
        Ok(())
    }
}

const GATEWAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("gateways");
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");

/// The embedded store: one redb file, records as JSON.
pub struct RedbStore {
    db: Database,
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), err: e.to_string() })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("fleet records serialise")
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(be)?;
        let w = db.begin_write().map_err(be)?;
        w.open_table(GATEWAYS).map_err(be)?;
        w.open_table(ROLLOUTS).map_err(be)?;
        w.open_table(AUDIT).map_err(be)?;
        w.open_table(PACKAGES).map_err(be)?;
        w.open_table(DESIRED).map_err(be)?;
        w.open_table(LEASES).map_err(be)?;
        w.commit().map_err(be)?;
        Ok(RedbStore { db })
    }

    fn append_audit_in(w: &redb::WriteTransaction, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut t = w.open_table(AUDIT).map_err(be)?;
        let first = t.last().map_err(be)?.map(|(k, _)| k.value() + 1).unwrap_or(0);
        for (key, e) in (first..).zip(entries) {
            t.insert(key, encode(e).as_slice()).map_err(be)?;
        }
        Ok(())
    }
}

impl FleetStore for RedbStore {
    fn put_gateway(&self, gw: &Gateway) -> Result<(), StoreError> {
        self.put_gateways(std::slice::from_ref(gw))
    }
    fn put_gateways(&self, gws: &[Gateway]) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(GATEWAYS).map_err(be)?;
            for g in gws {
                t.insert(g.id.as_str(), encode(g).as_slice()).map_err(be)?;
            }
        }
        w.commit().map_err(be)
    }
    fn gateway(&self, id: &str) -> Result<Option<Gateway>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(GATEWAYS).map_err(be)?;
        match t.get(id).map_err(be)? {
            Some(v) => decode(id, v.value()).map(Some),
            None => Ok(None),
        }
    }
    fn gateways(&self) -> Result<Vec<Gateway>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(GATEWAYS).map_err(be)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(be)? {
            let (k, v) = row.map_err(be)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
    fn put_rollout(&self, state: &RolloutState, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let id = state.plan.id.as_str();
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(ROLLOUTS).map_err(be)?;
            let stored = match t.get(id).map_err(be)? {
                Some(v) => Some(decode::<RolloutState>(id, v.value())?.revision),
                None => None,
            };
            check_revision(id, stored, state.revision)?;
            t.insert(id, encode(state).as_slice()).map_err(be)?;
        }
        Self::append_audit_in(&w, audit)?;
        w.commit().map_err(be)
    }
    fn rollout(&self, id: &str) -> Result<Option<RolloutState>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(ROLLOUTS).map_err(be)?;
        match t.get(id).map_err(be)? {
            Some(v) => decode(id, v.value()).map(Some),
            None => Ok(None),
        }
    }
    fn rollouts(&self) -> Result<Vec<RolloutState>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(ROLLOUTS).map_err(be)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(be)? {
            let (k, v) = row.map_err(be)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(be)?;
        Self::append_audit_in(&w, std::slice::from_ref(entry))?;
        w.commit().map_err(be)
    }
    fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(AUDIT).map_err(be)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(be)? {
            let (k, v) = row.map_err(be)?;
            out.push(decode(&format!("audit/{}", k.value()), v.value())?);
        }
        Ok(out)
    }
    fn put_package(&self, pkg: &PackageRecord) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(PACKAGES).map_err(be)?;
            t.insert(pkg.key().as_str(), encode(pkg).as_slice()).map_err(be)?;
        }
        w.commit().map_err(be)
    }
    fn packages(&self) -> Result<Vec<PackageRecord>, StoreError> {
        self.all(PACKAGES)
    }
    fn put_desired(&self, states: &[DesiredState]) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(DESIRED).map_err(be)?;
            for s in states {
                t.insert(s.gateway.as_str(), encode(s).as_slice()).map_err(be)?;
            }
        }
        w.commit().map_err(be)
    }
    fn desired_states(&self) -> Result<Vec<DesiredState>, StoreError> {
        self.all(DESIRED)
    }
    fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Result<Lease, StoreError> {
        let w = self.db.begin_write().map_err(be)?;
        let lease = {
            let mut t = w.open_table(LEASES).map_err(be)?;
            let current: Option<Lease> = match t.get(name).map_err(be)? {
                Some(v) => Some(decode(name, v.value())?),
                None => None,
            };
            match lease_after(current.as_ref(), holder, ttl_ms, now_ms) {
                Some(l) => {
                    t.insert(name, encode(&l).as_slice()).map_err(be)?;
                    l
                }
                None => current.ok_or_else(|| StoreError::Backend(format!("lease `{name}` vanished")))?,
            }
        };
        w.commit().map_err(be)?;
        Ok(lease)
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(be)?;
        {
            let mut t = w.open_table(LEASES).map_err(be)?;
            let ours = match t.get(name).map_err(be)? {
                Some(v) => decode::<Lease>(name, v.value())?.holder == holder,
                None => false,
            };
            if ours {
                t.remove(name).map_err(be)?;
            }
        }
        w.commit().map_err(be)
    }
}

impl RedbStore {
    fn all<T: serde::de::DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>, StoreError> {
        let r = self.db.begin_read().map_err(be)?;
        let t = r.open_table(table).map_err(be)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(be)? {
            let (k, v) = row.map_err(be)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gates, Plan, Selector, WaveSize};
    use crate::rollout::Rollout;

    fn state() -> RolloutState {
        let plan = Plan {
            id: "r".into(),
            service: "svc".into(),
            version: "2".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            selector: Selector::default(),
            waves: vec![WaveSize::Percent(100.0)],
            gates: vec![Gates::default()],
        };
        Rollout::start(plan, &[Gateway::new("gw-1", "s")], 0).unwrap().state
    }

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at_ms: 1,
            actor: "me".into(),
            rollout: Some("r".into()),
            action: action.into(),
            detail: String::new(),
        }
    }

    fn revisions_are_checked(store: &dyn FleetStore) {
        let mut s = state();
        s.revision = 1;
        store.put_rollout(&s, &[entry("start")]).unwrap();
        // A second writer that read revision 0 loses, and writes no audit.
        let err = store.put_rollout(&s, &[entry("lost")]).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 0, found: 1, .. }), "{err}");
        s.revision = 2;
        store.put_rollout(&s, &[entry("next")]).unwrap();
        assert_eq!(store.rollout("r").unwrap().unwrap(), s);
        let actions: Vec<String> = store.audit().unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, vec!["start", "next"]);
        let mut g = Gateway::new("gw-2", "s");
        g.tags.insert("t".into());
        store.put_gateway(&g).unwrap();
        store.put_gateway(&Gateway::new("gw-1", "s")).unwrap();
        assert_eq!(store.gateway("gw-2").unwrap(), Some(g));
        let ids: Vec<String> = store.gateways().unwrap().into_iter().map(|g| g.id).collect();
        assert_eq!(ids, vec!["gw-1", "gw-2"]);
        assert_eq!(store.rollouts().unwrap().len(), 1);
    }

    /// The lease contract every store keeps (tests/postgres.rs checks the
    /// same on a live PostgreSQL).
    fn leases_elect_one_holder(store: &dyn FleetStore) {
        let l = store.try_lease("core", "a", 1_000, 10_000).unwrap();
        assert_eq!(l, Lease { holder: "a".into(), expires_ms: 11_000 });
        // B cannot take a lease A holds, and is told who holds it.
        let l = store.try_lease("core", "b", 1_000, 10_500).unwrap();
        assert_eq!(l, Lease { holder: "a".into(), expires_ms: 11_000 });
        // A renews before expiry: the lease moves forward.
        let l = store.try_lease("core", "a", 1_000, 10_900).unwrap();
        assert_eq!(l, Lease { holder: "a".into(), expires_ms: 11_900 });
        assert_eq!(store.try_lease("core", "b", 1_000, 11_899).unwrap().holder, "a");
        // Another name is another lease.
        assert_eq!(store.try_lease("other", "b", 1_000, 11_000).unwrap().holder, "b");
        // Expired (at its expiry instant): B takes it; A's late renewal fails.
        let l = store.try_lease("core", "b", 1_000, 11_900).unwrap();
        assert_eq!(l, Lease { holder: "b".into(), expires_ms: 12_900 });
        assert_eq!(store.try_lease("core", "a", 1_000, 12_000).unwrap().holder, "b");
        // A release by someone else changes nothing; B's own frees it at once.
        store.release_lease("core", "a").unwrap();
        assert_eq!(store.try_lease("core", "a", 1_000, 12_100).unwrap().holder, "b");
        store.release_lease("core", "b").unwrap();
        assert_eq!(store.try_lease("core", "a", 1_000, 12_100).unwrap().holder, "a");
    }

    #[test]
    fn mem_store_checks_revisions() {
        revisions_are_checked(&MemStore::default());
    }

    #[test]
    fn mem_store_leases() {
        leases_elect_one_holder(&MemStore::default());
    }

    #[test]
    fn redb_store_leases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.redb");
        leases_elect_one_holder(&RedbStore::open(&path).unwrap());
        let again = RedbStore::open(&path).unwrap();
        assert_eq!(again.try_lease("core", "b", 1_000, 12_200).unwrap().holder, "a", "held across reopen");
    }

    #[test]
    fn redb_store_checks_revisions_and_keeps_records_across_reopen() {
        let dir = std::env::temp_dir().join(format!("outpost-ops-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.redb");
        revisions_are_checked(&RedbStore::open(&path).unwrap());
        let again = RedbStore::open(&path).unwrap();
        assert_eq!(again.rollout("r").unwrap().unwrap().revision, 2);
        assert_eq!(again.audit().unwrap().len(), 2);
        again.append_audit(&entry("later")).unwrap();
        assert_eq!(again.audit().unwrap().last().unwrap().action, "later");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
