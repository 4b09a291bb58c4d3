//! A whole operations center over a real broker for tests and the bench:
//! keys, signed packages in the catalogue, a redb store with registered
//! gateways, the core with its MQTT link, optionally the HTTP server, and
//! simulated gateways with their own credentials.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_ops::artifacts::Artifacts;
use outpost_ops::center::{self, CenterConfig, CenterHandle, SharedStore};
use outpost_ops::http::{self, ApiState};
use outpost_ops::model::{Gates, Health, Phase, RolloutState, Selector, WaveSize};
use outpost_ops::sim::{self, Behaviour, SimConfig, SimFleet, SimGateway};
use outpost_ops::transport::LinkConfig;
use outpost_ops::{FleetStore, Gateway, PackageRecord, Plan, RedbStore};
use outpost_package::{ProviderKey, ProviderSigningKey, TrustStore};

use super::mosquitto::{make_tls, Mosquitto, TlsFiles};

pub const SVC: &str = "weight-loading";
pub const OPS_USER: &str = "ops";
pub const OPS_PASSWORD: &str = "ops-secret";

pub fn password(gw: &str) -> String {
    format!("pw-{gw}")
}

pub fn gateway_ids(n: usize) -> Vec<String> {
    let width = n.to_string().len().max(2);
    (0..n).map(|i| format!("gw-{i:0width$}")).collect()
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub tls: Option<TlsFiles>,
    pub store_path: PathBuf,
    pub store: Option<SharedStore>,
    pub ops_key: ProviderKey,
    ops_key_path: PathBuf,
    pub trust_dir: PathBuf,
    pub packages: BTreeMap<String, PackageRecord>,
    pub artifacts: Artifacts,
    pub center: Option<CenterHandle>,
    center_task: Option<tokio::task::JoinHandle<()>>,
    pub http_url: Option<String>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    pub gateways: Vec<SimGateway>,
    pub api_token: String,
}

pub fn pack(provider: &ProviderSigningKey, version: &str) -> Vec<u8> {
    let manifest =
        format!("[service]\nname = \"{SVC}\"\nversion = \"{version}\"\nprovider = \"{}\"\n", provider.provider);
    // A fake component of a realistic size, different per version.
    let component: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(31) as u8) ^ version.len() as u8 ^ version.as_bytes()[version.len() - 1])
        .collect();
    outpost_package::pack(manifest.as_bytes(), &component, Some(&provider.key)).expect("pack")
}

impl World {
    /// `n` gateways running `versions[0]`; every version is packaged,
    /// signed and catalogued. Nothing runs yet but the broker.
    pub fn new(n: usize, versions: &[&str], with_tls: bool) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let ops = outpost_package::keygen(&dir.path().join("ops-keys"), "ops-test").expect("ops key");
        let prov = outpost_package::keygen(&dir.path().join("provider-keys"), "acme").expect("provider key");
        let trust_dir = dir.path().join("trust");
        std::fs::create_dir_all(&trust_dir).unwrap();
        std::fs::copy(&prov.public_path, trust_dir.join("acme.pub")).unwrap();
        let provider = ProviderSigningKey::load(&prov.private_path).unwrap();
        let trust = TrustStore::load(&trust_dir).unwrap();
        let artifacts = Artifacts::open(&dir.path().join("artifacts")).unwrap();
        let store_path = dir.path().join("fleet.redb");
        // The bench can compare against the in-memory store (no restart then).
        let store: SharedStore = if std::env::var_os("OUTPOST_FLEET_BENCH_MEMSTORE").is_some() {
            Arc::new(outpost_ops::MemStore::default())
        } else {
            Arc::new(RedbStore::open(&store_path).expect("store"))
        };
        let mut packages = BTreeMap::new();
        for v in versions {
            let rec = artifacts.add(&format!("{SVC}-{v}.opkg"), &pack(&provider, v), &trust, 1).expect("package");
            store.put_package(&rec).unwrap();
            packages.insert(v.to_string(), rec);
        }
        let ids = gateway_ids(n);
        let mut gateways = Vec::new();
        let mut records = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let site = format!("site-{}", i % 3);
            let mut g = Gateway::new(id.clone(), site.clone());
            g.tags.insert("loader".into());
            g.services.insert(SVC.into(), versions[0].into());
            g.health = Health::Healthy;
            records.push(g);
            gateways.push(SimGateway {
                id: id.clone(),
                site,
                password: password(id),
                services: BTreeMap::from([(SVC.to_string(), versions[0].to_string())]),
                kpis: BTreeMap::from([(SVC.to_string(), BTreeMap::from([("latency_ms".to_string(), 10.0)]))]),
            });
        }
        store.put_gateways(&records).unwrap();
        let mut users = vec![(OPS_USER.to_string(), OPS_PASSWORD.to_string())];
        users.extend(ids.iter().map(|id| (id.clone(), password(id))));
        let tls = with_tls.then(|| make_tls(&dir.path().join("tls"), "fleet"));
        let broker = Mosquitto::start(&users, &outpost_fleet::acl::mosquitto_acl(OPS_USER), tls.as_ref());
        World {
            dir,
            broker,
            tls,
            store_path,
            store: Some(store),
            ops_key: ops.public.clone(),
            ops_key_path: ops.private_path,
            trust_dir,
            packages,
            artifacts,
            center: None,
            center_task: None,
            http_url: None,
            http_task: None,
            gateways,
            api_token: "test-token".into(),
        }
    }

    pub fn store(&self) -> &SharedStore {
        self.store.as_ref().expect("store open")
    }

    pub fn ops_link(&self) -> LinkConfig {
        let mut l = LinkConfig::new(&self.broker.url(), "outpost-ops", OPS_USER, OPS_PASSWORD);
        l.clean_session = false;
        l.inflight = 1000;
        l.channel_capacity = 20_000;
        l
    }

    /// Starts the core (and reopens the store if it was closed).
    pub fn start_center(&mut self) {
        if self.store.is_none() {
            self.store = Some(Arc::new(RedbStore::open(&self.store_path).expect("reopen store")));
        }
        let key = ProviderSigningKey::load(&self.ops_key_path).unwrap();
        let cfg = CenterConfig {
            ops_name: key.provider.clone(),
            key: key.key,
            link: self.ops_link(),
            tick: Duration::from_millis(50),
            replica_id: "ops-test".into(),
            lease_ttl: Duration::from_secs(5),
        };
        let (h, t) = center::spawn(self.store().clone(), cfg).expect("center");
        self.center = Some(h);
        self.center_task = Some(t);
    }

    /// Waits until the core's subscriptions are granted, so no report sent
    /// from now on is lost to a subscription not yet in place.
    pub async fn wait_subscribed(&self) {
        let want = outpost_fleet::topic::OPS_SUBSCRIPTIONS.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.center().counters.snapshot();
            if c.subscribed >= want {
                return;
            }
            assert!(Instant::now() < deadline, "the operations center is not subscribed after 10 s: {c:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the core, closes the store (nothing of it stays in memory).
    pub async fn stop_center(&mut self) {
        if let Some(h) = self.center.take() {
            h.shutdown().await;
        }
        if let Some(t) = self.center_task.take() {
            let _ = t.await;
        }
        self.stop_http();
        self.store = None;
    }

    pub fn center(&self) -> &CenterHandle {
        self.center.as_ref().expect("center running")
    }

    /// Serves the HTTP API and artifacts on a free port.
    pub async fn start_http(&mut self) -> String {
        let state = Arc::new(ApiState {
            store: self.store().clone(),
            center: self.center().clone(),
            artifacts: self.artifacts.clone(),
            trust_dir: self.trust_dir.clone(),
            token: self.api_token.clone(),
            gateway_password_file: Some(self.dir.path().join("gateways.passwd")),
            ops_user: OPS_USER.into(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = http::router(state);
        self.http_task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        self.http_url = Some(url.clone());
        url
    }

    pub fn stop_http(&mut self) {
        if let Some(t) = self.http_task.take() {
            t.abort();
        }
    }

    pub fn sim_config(&self, behaviour: Behaviour, download: bool) -> SimConfig {
        SimConfig {
            broker_url: self.broker.url(),
            tls_ca: None,
            ops_key: self.ops_key.clone(),
            artifacts_url: if download { self.http_url.clone() } else { None },
            report_every: None,
            behaviour,
        }
    }

    pub fn sim(&self, behaviour: Behaviour, download: bool, ramp: Duration) -> SimFleet {
        sim::spawn_fleet(&self.sim_config(behaviour, download), self.gateways.clone(), ramp).expect("sim fleet")
    }

    /// Waits until the operations center has a report from every gateway.
    pub async fn wait_all_seen(&self, timeout: Duration) {
        let n = self.gateways.len();
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.store().gateways().unwrap().iter().filter(|g| g.last_seen_ms > 0).count();
            if seen == n {
                return;
            }
            assert!(Instant::now() < deadline, "only {seen} of {n} gateways reported within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn plan(&self, id: &str, version: &str, waves: Vec<WaveSize>, gates: Gates) -> Plan {
        Plan {
            id: id.into(),
            service: SVC.into(),
            version: version.into(),
            digest: format!("sha256:{}", self.packages[version].digest),
            selector: Selector { sites: vec![], tags: vec!["loader".into()] },
            waves,
            gates: vec![gates],
        }
    }

    /// Polls the store until the rollout's phase satisfies `done`.
    pub async fn wait_rollout(&self, id: &str, timeout: Duration, done: impl Fn(&Phase) -> bool) -> RolloutState {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.store().rollout(id).unwrap() {
                if done(&r.phase) {
                    return r;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "rollout {id} still {:?} after {timeout:?}; wave {} counts {:?}",
                        r.phase,
                        r.current_wave,
                        outpost_ops::desired::wave_progress(&r)
                    );
                }
            } else {
                assert!(Instant::now() < deadline, "rollout {id} never stored");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
