//! The PostgreSQL store against a server this test starts (initdb + pg_ctl
//! on a free port in a temp folder): the store contract, and two engines
//! sharing one rollout where the revision check lets only one of them act.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_ops::model::{AuditEntry, Gates, Health, Selector, WaveSize};
use outpost_ops::store::StoreError;
use outpost_ops::{Action, Engine, FleetStore, Gateway, ManualClock, PackageRecord, PgStore, Plan, Report};

const HINT: &str = "`cargo xtask setup` installs PostgreSQL (Debian package `postgresql`)";

fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("no {} ({e}): {HINT}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no initdb under {}: {HINT}", root.display()))
}

struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    root: bool,
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root
/// (initdb refuses to run as root).
fn pg(root: bool, bin: &Path, args: &[&str]) {
    let out = if root {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(bin).args(args).output()
    } else {
        Command::new(bin).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {} ({e}): {HINT}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let st = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status().unwrap();
            assert!(st.success(), "chown the data folder to postgres");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = data.to_str().unwrap();
        pg(root, &bin.join("initdb"), &["-D", d, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let opts = format!("-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off");
        let log = format!("{d}/log");
        pg(root, &bin.join("pg_ctl"), &["-D", d, "-o", &opts, "-l", &log, "-w", "start"]);
        Postgres { _dir: dir, data, bin, port, root }
    }

    fn params(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let d = self.data.to_str().unwrap_or_default().to_string();
        let bin = self.bin.join("pg_ctl");
        let args = ["-D", d.as_str(), "-m", "immediate", "stop"];
        let _ = if self.root {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&bin).args(args).output()
        } else {
            Command::new(&bin).args(args).output()
        };
    }
}

fn fleet(n: usize) -> Vec<Gateway> {
    (0..n)
        .map(|i| {
            let mut g = Gateway::new(format!("gw-{i:02}"), "site");
            g.services.insert("svc".into(), "1".into());
            g.health = Health::Healthy;
            g
        })
        .collect()
}

fn plan() -> Plan {
    Plan {
        id: "shared".into(),
        service: "svc".into(),
        version: "2".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        selector: Selector::default(),
        waves: vec![WaveSize::Count(2), WaveSize::Percent(100.0)],
        gates: vec![Gates::default()],
    }
}

fn applies(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply { gateway, .. } => Some(gateway.clone()),
            _ => None,
        })
        .collect()
}

fn report(gw: &str, v: &str) -> Report {
    Report {
        gateway: gw.into(),
        service: "svc".into(),
        version: Some(v.into()),
        health: Health::Healthy,
        crash_loop: false,
        apply_error: None,
        kpis: BTreeMap::new(),
    }
}

#[test]
fn postgres_store_keeps_the_contract_and_two_engines_never_both_act() {
    let pg = Postgres::start();
    let a_store = PgStore::connect(&pg.params()).expect("connect");
    let b_store = PgStore::connect(&pg.params()).expect("second connection");

    // The store contract: records round-trip, revisions are checked.
    a_store.put_gateways(&fleet(10)).unwrap();
    assert_eq!(b_store.gateways().unwrap().len(), 10);
    assert_eq!(b_store.gateway("gw-03").unwrap().unwrap().services["svc"], "1");
    assert_eq!(b_store.gateway("nope").unwrap(), None);
    let pkg = PackageRecord {
        service: "svc".into(),
        version: "2".into(),
        digest: "ab".repeat(32),
        size: 5,
        signer: "acme".into(),
        added_ms: 1,
    };
    a_store.put_package(&pkg).unwrap();
    assert_eq!(b_store.packages().unwrap(), vec![pkg]);
    let d =
        outpost_fleet::DesiredState { gateway: "gw-01".into(), revision: 4, issued_ms: 9, services: BTreeMap::new() };
    a_store.put_desired(std::slice::from_ref(&d)).unwrap();
    assert_eq!(b_store.desired_states().unwrap(), vec![d]);
    let entry =
        AuditEntry { at_ms: 1, actor: "me".into(), rollout: None, action: "note".into(), detail: String::new() };
    a_store.append_audit(&entry).unwrap();
    assert_eq!(b_store.audit().unwrap(), vec![entry]);

    // Two engines, one rollout.
    let clock = ManualClock::new(1_000);
    let mut a = Engine::resume(a_store, &clock).unwrap();
    a.start(plan(), "alice").unwrap();
    let mut b = Engine::resume(b_store, &clock).unwrap();
    assert!(b.rollout("shared").is_some(), "B sees the rollout A started");
    let first = applies(&a.tick().unwrap());
    assert_eq!(first.len(), 2, "wave 1 is two gateways");
    // B, still at the revision before, loses the race and hands nothing out.
    match b.tick() {
        Err(StoreError::Conflict { expected: 1, found: 2, .. }) => {}
        other => panic!("B must hit the revision check, got {other:?}"),
    }
    // Reloaded, B knows wave 1 was asked: it does not ask again.
    assert!(applies(&b.tick().unwrap()).is_empty());
    // B takes the reports; A, now behind, cannot act on a stale state.
    let reports: Vec<Report> = first.iter().map(|g| report(g, "2")).collect();
    for v in b.on_reports_from(reports.iter().map(|r| (r.gateway.as_str(), r))).unwrap() {
        v.unwrap();
    }
    let second = applies(&b.tick().unwrap());
    assert_eq!(second.len(), 8, "wave 2: the other eight");
    // A, behind, takes the same reports: its write loses and it reloads.
    let again = a.on_reports_from(reports.iter().map(|r| (r.gateway.as_str(), r)));
    assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
    assert!(applies(&a.tick().unwrap()).is_empty(), "reloaded A asks nobody again");
    let all: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(all.len(), 10, "each gateway asked exactly once");
    let audit: Vec<String> = b.store().audit().unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(audit.iter().filter(|a| *a == "wave_started").count(), 2, "{audit:?}");
}
