//! The local management API (gRPC, `proto/outpost/agent/v1/agent.proto`):
//! what `outpostctl status` and remote tooling ask the agent.

use crate::agent::AgentStatus;
use crate::telemetry::Metrics;
use outpost_proto::agent::v1 as pb;
use pb::agent_server::{Agent as AgentApi, AgentServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

struct Api {
    status: Arc<Mutex<AgentStatus>>,
    metrics: Arc<Metrics>,
}

impl From<&AgentStatus> for pb::AgentStatus {
    fn from(s: &AgentStatus) -> Self {
        pb::AgentStatus {
            gateway: s.gateway.clone(),
            site: s.site.clone(),
            state: s.state.to_owned(),
            broker: s.broker.clone(),
            mqtt_connected: s.mqtt_connected,
            services: s
                .services
                .iter()
                .map(|v| pb::ServiceStatus {
                    name: v.name.clone(),
                    version: v.version.clone(),
                    digest: v.digest.clone(),
                    instances: v.instances as u32,
                    running: v.running as u32,
                    queued: v.queued as u64,
                    restarts: v.restarts,
                    uptime_s: v.uptime_s,
                })
                .collect(),
            rejected: s
                .rejected
                .iter()
                .map(|(name, reason)| pb::RejectedPackage { name: name.clone(), reason: reason.clone() })
                .collect(),
            uptime_s: s.uptime_s,
            ready_ms: s.ready_ms,
        }
    }
}

#[tonic::async_trait]
impl AgentApi for Api {
    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Result<Response<pb::AgentStatus>, Status> {
        let s = AgentStatus::snapshot(&self.status, &self.metrics)
            .ok_or_else(|| Status::internal("status lock poisoned"))?;
        Ok(Response::new(pb::AgentStatus::from(&s)))
    }

    async fn get_metrics(&self, _: Request<pb::GetMetricsRequest>) -> Result<Response<pb::MetricsText>, Status> {
        Ok(Response::new(pb::MetricsText { text: self.metrics.encode() }))
    }
}

/// Binds `addr` (failing early if taken) and serves in the background.
pub async fn serve(addr: SocketAddr, status: Arc<Mutex<AgentStatus>>, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tracing::info!(%addr, "management API (gRPC) listening");
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(AgentServer::new(Api { status, metrics }))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "management API stopped");
        }
    });
    Ok(())
}
