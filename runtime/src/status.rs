//! One status model that the agent writes and the status page, `/status`,
//! `/healthz` and the gRPC API read (none of them imports the agent).

use crate::telemetry::Metrics;
use std::sync::{Arc, Mutex};

/// A row of the agent's status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub version: String,
    pub digest: String,
    /// Which compiler made the serving instances' code: `baseline` just
    /// after a start that had to compile, `optimized` once replaced.
    pub code: crate::host::CodeTier,
    pub instances: usize,
    pub running: usize,
    pub queued: usize,
    pub restarts: u64,
    pub uptime_s: u64,
    /// A canary of a new version: (version, share of keys in %).
    pub canary: Option<(String, u8)>,
    /// A shadow run of a new version.
    pub shadow: Option<String>,
    /// On probation after an upgrade (rolls back by itself on a crash loop).
    pub probation: bool,
    /// The KPIs its manifest declares (`[kpis]`).
    pub kpis: Vec<DeclaredKpi>,
}

/// A KPI a service declares: the status page shows it with its unit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeclaredKpi {
    pub name: String,
    pub unit: String,
    /// `higher` or `lower`.
    pub better: String,
    pub description: Option<String>,
}

impl DeclaredKpi {
    pub fn new(name: &str, spec: &crate::manifest::KpiSpec) -> DeclaredKpi {
        let better = format!("{:?}", spec.better).to_lowercase();
        DeclaredKpi { name: name.to_owned(), unit: spec.unit.clone(), better, description: spec.description.clone() }
    }
}

/// What the status page and `/status` show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentStatus {
    pub gateway: String,
    pub site: String,
    /// starting | ready | draining | stopped | failed
    pub state: &'static str,
    pub broker: String,
    pub mqtt_connected: bool,
    /// Filters the broker refused to subscribe (the agent is degraded then).
    pub refused_subscriptions: Vec<String>,
    pub services: Vec<ServiceStatus>,
    /// Services that could not be loaded, with the reason.
    pub rejected: Vec<(String, String)>,
    pub uptime_s: u64,
    /// Milliseconds from start to ready (services loaded, subscribed).
    pub ready_ms: Option<f64>,
}

impl AgentStatus {
    /// Healthy: ready, connected to the broker, every subscription taken
    /// and every service with all its instances running.
    pub fn healthy(&self) -> bool {
        self.state == "ready"
            && self.mqtt_connected
            && self.refused_subscriptions.is_empty()
            && self.services.iter().all(|s| s.running == s.instances && s.instances > 0)
    }

    /// Why not healthy, one reason per line.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.state != "ready" {
            p.push(format!("agent is {}", self.state));
        }
        if !self.mqtt_connected {
            p.push(format!("broker link down ({})", self.broker));
        }
        for f in &self.refused_subscriptions {
            p.push(format!("broker refused subscription {f}"));
        }
        for s in &self.services {
            if s.running < s.instances {
                p.push(format!("{}@{}: {}/{} instances running", s.name, s.version, s.running, s.instances));
            }
        }
        p
    }
}

/// The shared, live status: written by the agent's I/O thread, read by
/// the HTTP and gRPC servers.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<AgentStatus>>,
    metrics: Arc<Metrics>,
}

impl StatusBoard {
    pub fn new(initial: AgentStatus, metrics: Arc<Metrics>) -> StatusBoard {
        StatusBoard { inner: Arc::new(Mutex::new(initial)), metrics }
    }

    /// A copy for readers, with the link state as the metrics see it now.
    pub fn snapshot(&self) -> Option<AgentStatus> {
        self.inner
            .lock()
            .ok()
            .map(|st| AgentStatus { mqtt_connected: self.metrics.mqtt_connected.get() == 1, ..st.clone() })
    }

    pub fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        if let Ok(mut s) = self.inner.lock() {
            f(&mut s)
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
