//! The local management API (gRPC, `proto/outpost/agent/v1/agent.proto`):
//! status, and the lifecycle of services on a running gateway. Every call
//! carries the bearer token from the agent's token file.

use crate::control::{ControlError, Lifecycle, Outcome};
use crate::status::{AgentStatus, StatusBoard};
use outpost_proto::agent::v1 as pb;
use pb::agent_server::{Agent as AgentApi, AgentServer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// Largest package upload (a component plus its manifest and signature).
pub const MAX_UPLOAD: u64 = 64 << 20;

struct Api {
    board: StatusBoard,
    lifecycle: Arc<Lifecycle>,
    events: crate::events::Hub,
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
                    canary_version: v.canary.as_ref().map(|c| c.0.clone()),
                    canary_percent: v.canary.as_ref().map_or(0, |c| u32::from(c.1)),
                    shadow_version: v.shadow.clone(),
                    probation: v.probation,
                    code: v.code.as_str().to_owned(),
                })
                .collect(),
            rejected: s
                .rejected
                .iter()
                .map(|(name, reason)| pb::RejectedPackage { name: name.clone(), reason: reason.clone() })
                .collect(),
            uptime_s: s.uptime_s,
            ready_ms: s.ready_ms,
            refused_subscriptions: s.refused_subscriptions.clone(),
        }
    }
}

fn status_of(e: ControlError) -> Status {
    match e {
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::Conflict(m) => Status::failed_precondition(m),
        ControlError::Invalid(m) => Status::invalid_argument(m),
        ControlError::Failed(m) => Status::aborted(m),
        ControlError::Stopping => Status::unavailable(ControlError::Stopping.to_string()),
    }
}

fn result(o: Result<Outcome, ControlError>) -> Result<Response<pb::ChangeResult>, Status> {
    match o {
        Ok(o) => {
            tracing::info!(service = %o.service, version = %o.version, message = %o.message, "lifecycle change");
            Ok(Response::new(pb::ChangeResult { service: o.service, version: o.version, message: o.message }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "lifecycle change refused");
            Err(status_of(e))
        }
    }
}

/// A package upload: the first chunk's options and every byte, capped.
struct Upload {
    bytes: Vec<u8>,
    canary_percent: u32,
    approved_by: String,
}

async fn receive(mut stream: Streaming<pb::PackageChunk>) -> Result<Upload, Status> {
    let mut up = Upload { bytes: Vec::new(), canary_percent: 0, approved_by: String::new() };
    let mut first = true;
    while let Some(chunk) = stream.message().await? {
        if first {
            if chunk.total_size > MAX_UPLOAD {
                return Err(Status::invalid_argument(format!(
                    "package of {} bytes is larger than the {MAX_UPLOAD}-byte limit",
                    chunk.total_size
                )));
            }
            up.canary_percent = chunk.canary_percent;
            up.approved_by = chunk.approved_by.clone();
            first = false;
        }
        if up.bytes.len() as u64 + chunk.data.len() as u64 > MAX_UPLOAD {
            return Err(Status::invalid_argument(format!("package upload exceeds the {MAX_UPLOAD}-byte limit")));
        }
        up.bytes.extend_from_slice(&chunk.data);
    }
    if up.bytes.is_empty() {
        return Err(Status::invalid_argument("empty package upload: send the .opkg file's bytes"));
    }
    Ok(up)
}

fn name_of(r: &pb::ServiceRef) -> Result<&str, Status> {
    if r.name.is_empty() {
        return Err(Status::invalid_argument("service name is empty"));
    }
    Ok(&r.name)
}

#[tonic::async_trait]
impl AgentApi for Api {
    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Result<Response<pb::AgentStatus>, Status> {
        let s = self.board.snapshot().ok_or_else(|| Status::internal("status lock poisoned"))?;
        Ok(Response::new(pb::AgentStatus::from(&s)))
    }

    async fn get_metrics(&self, _: Request<pb::GetMetricsRequest>) -> Result<Response<pb::MetricsText>, Status> {
        Ok(Response::new(pb::MetricsText { text: self.board.metrics().encode() }))
    }

    async fn list_services(&self, _: Request<pb::ListServicesRequest>) -> Result<Response<pb::ServiceList>, Status> {
        let desired = self.lifecycle.desired().await;
        let services = desired
            .services
            .into_iter()
            .map(|(name, s)| pb::InstalledService {
                manifest_toml: std::fs::read_to_string(s.package.join(crate::package::MANIFEST_FILE))
                    .unwrap_or_default(),
                name,
                version: s.version,
                previous_version: s.previous.map(|p| p.version),
                instances: s.instances,
                removed: s.removed,
                config_toml: s.config.map(|c| c.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ServiceList { services }))
    }

    async fn deploy(&self, req: Request<Streaming<pb::PackageChunk>>) -> Result<Response<pb::ChangeResult>, Status> {
        let up = receive(req.into_inner()).await?;
        let dir = self.lifecycle.intake(&up.bytes).await.map_err(status_of)?;
        result(self.lifecycle.install(&dir, &up.approved_by).await)
    }

    async fn upgrade(&self, req: Request<Streaming<pb::PackageChunk>>) -> Result<Response<pb::ChangeResult>, Status> {
        let up = receive(req.into_inner()).await?;
        let dir = self.lifecycle.intake(&up.bytes).await.map_err(status_of)?;
        result(self.lifecycle.upgrade(&dir, &up.approved_by).await)
    }

    async fn rollback(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ChangeResult>, Status> {
        result(self.lifecycle.rollback(name_of(req.get_ref())?).await)
    }

    async fn remove(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ChangeResult>, Status> {
        result(self.lifecycle.remove(name_of(req.get_ref())?).await)
    }

    async fn scale(&self, req: Request<pb::ScaleRequest>) -> Result<Response<pb::ChangeResult>, Status> {
        let r = req.get_ref();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("service name is empty"));
        }
        result(self.lifecycle.scale(&r.name, r.instances).await)
    }

    async fn set_config(&self, req: Request<pb::SetConfigRequest>) -> Result<Response<pb::ChangeResult>, Status> {
        let r = req.get_ref();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("service name is empty"));
        }
        let table: toml::Table = toml::from_str(&r.config_toml)
            .map_err(|e| Status::invalid_argument(format!("config for {} is not a TOML table: {e}", r.name)))?;
        result(self.lifecycle.set_config(&r.name, table).await)
    }

    async fn start_canary(
        &self,
        req: Request<Streaming<pb::PackageChunk>>,
    ) -> Result<Response<pb::ChangeResult>, Status> {
        let up = receive(req.into_inner()).await?;
        let percent = u8::try_from(up.canary_percent)
            .ok()
            .filter(|p| (1..=99).contains(p))
            .ok_or_else(|| Status::invalid_argument("canary_percent must be 1 to 99"))?;
        let dir = self.lifecycle.intake(&up.bytes).await.map_err(status_of)?;
        result(self.lifecycle.canary(&dir, percent).await)
    }

    async fn promote_canary(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ChangeResult>, Status> {
        result(self.lifecycle.promote(name_of(req.get_ref())?).await)
    }

    async fn abort_canary(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::ChangeResult>, Status> {
        result(self.lifecycle.abort_canary(name_of(req.get_ref())?).await)
    }

    async fn start_shadow(
        &self,
        req: Request<Streaming<pb::PackageChunk>>,
    ) -> Result<Response<pb::ChangeResult>, Status> {
        let up = receive(req.into_inner()).await?;
        let dir = self.lifecycle.intake(&up.bytes).await.map_err(status_of)?;
        result(self.lifecycle.shadow(&dir).await)
    }

    type StreamEventsStream = Feed<pb::AgentEvent>;

    async fn stream_events(
        &self,
        req: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let service = req.into_inner().service;
        let needle = format!("\"service\":\"{service}\"");
        Ok(Response::new(feed(
            self.events.subscribe(),
            move |e| {
                (service.is_empty() || e.json.contains(&needle))
                    .then_some(pb::AgentEvent { topic: e.topic, json: e.json })
            },
            |n| pb::AgentEvent { topic: String::new(), json: format!("{{\"event\":\"missed\",\"count\":{n}}}") },
        )))
    }

    type StreamLogsStream = Feed<pb::LogLine>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let service = req.into_inner().service;
        Ok(Response::new(feed(
            crate::events::subscribe_logs(),
            move |l| {
                (service.is_empty() || l.service == service).then_some(pb::LogLine {
                    ts_ms: l.ts_ms,
                    level: l.level,
                    service: l.service,
                    message: l.message,
                })
            },
            |n| pb::LogLine {
                ts_ms: crate::dispatch::now_ms(),
                level: "WARN".into(),
                service: String::new(),
                message: format!("{n} log lines missed (reader too slow)"),
            },
        )))
    }

    async fn get_kpis(&self, req: Request<pb::GetKpisRequest>) -> Result<Response<pb::KpiList>, Status> {
        let service = req.into_inner().service;
        let kpis = crate::events::kpis_from_metrics(&self.board.metrics().encode())
            .into_iter()
            .filter(|k| service.is_empty() || k.service == service)
            .map(|k| pb::Kpi { service: k.service, name: k.name, subject: k.subject, value: k.value })
            .collect();
        Ok(Response::new(pb::KpiList { kpis }))
    }

    async fn get_shadow_report(
        &self,
        req: Request<pb::ShadowReportRequest>,
    ) -> Result<Response<pb::ShadowReport>, Status> {
        let r = req.get_ref();
        let report = self.lifecycle.shadow_report(&r.name, r.stop).await.map_err(status_of)?;
        Ok(Response::new(pb::ShadowReport {
            agreement: report.agreement(),
            service: report.service,
            live_version: report.live_version,
            shadow_version: report.shadow_version,
            topics: report
                .topics
                .into_iter()
                .map(|(topic, d)| pb::TopicDiff {
                    topic,
                    live: d.live,
                    shadow: d.shadow,
                    same: d.same,
                    different: d.different,
                    example_live: d.example.as_ref().map(|e| e.0.clone()),
                    example_shadow: d.example.map(|e| e.1),
                })
                .collect(),
        }))
    }
}

type Feed<T> = std::pin::Pin<Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// A broadcast receiver as a gRPC stream; a reader that falls behind is
/// told how many items it missed instead of being cut off.
fn feed<T: Clone + Send + 'static, U: Send + 'static>(
    mut rx: tokio::sync::broadcast::Receiver<T>,
    map: impl Fn(T) -> Option<U> + Send + 'static,
    lagged: impl Fn(u64) -> U + Send + 'static,
) -> Feed<U> {
    let (tx, out) = tokio::sync::mpsc::channel::<Result<U, Status>>(64);
    tokio::spawn(async move {
        loop {
            let item = match rx.recv().await {
                Ok(v) => match map(v) {
                    Some(u) => u,
                    None => continue,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => lagged(n),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(Ok(item)).await.is_err() {
                break; // the reader went away
            }
        }
    });
    Box::pin(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(out))
}

/// A random token (32 bytes from the OS, hex).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to a hash of time and pid, never a constant.
        use sha2::{Digest, Sha256};
        let seed = format!("{:?}-{}", std::time::SystemTime::now(), std::process::id());
        bytes.copy_from_slice(&Sha256::digest(seed));
    }
    hex::encode(bytes)
}

/// Writes a file only the agent's user can read (created with mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The API token: read from `path`, or created there on first start.
pub fn load_or_create_token(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 16 => Ok(t.trim().to_owned()),
        Ok(_) => Err(format!("token file {} holds no token of at least 16 characters", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_token();
            write_private(path, format!("{token}\n").as_bytes())
                .map_err(|e| format!("cannot create token file {}: {e}", path.display()))?;
            tracing::info!(token_file = %path.display(), "created the management API token");
            Ok(token)
        }
        Err(e) => Err(format!("cannot read token file {}: {e}", path.display())),
    }
}

/// Checks `authorization: Bearer <token>` in constant time; refusals are logged.
#[derive(Clone)]
struct BearerAuth {
    expected: Arc<Vec<u8>>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        match given {
            Some(token) if constant_time_eq(token.trim().as_bytes(), &self.expected) => Ok(req),
            Some(_) => {
                tracing::warn!(%peer, "management API call with a wrong token refused");
                Err(Status::unauthenticated("wrong API token (see the agent's [api] token_file)"))
            }
            None => {
                tracing::warn!(%peer, "management API call without a token refused");
                Err(Status::unauthenticated(
                    "missing API token: send `authorization: Bearer <token>` (outpostctl reads --token-file)",
                ))
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds `addr` (failing early if taken) and serves in the background,
/// over TLS when `tls` holds a certificate chain and key (PEM).
pub async fn serve(
    addr: SocketAddr,
    board: StatusBoard,
    lifecycle: Arc<Lifecycle>,
    events: crate::events::Hub,
    token: String,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> std::io::Result<()> {
    let mut builder = tonic::transport::Server::builder();
    let secure = tls.is_some();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("api.tls_cert / api.tls_key: {e}"))
        })?;
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tracing::info!(%addr, tls = secure, "management API (gRPC) listening");
    let auth = BearerAuth { expected: Arc::new(token.into_bytes()) };
    let server = AgentServer::new(Api { board, lifecycle, events }).max_decoding_message_size(8 << 20);
    let svc = tonic::service::interceptor::InterceptedService::new(server, auth);
    tokio::spawn(async move {
        let result = builder.add_service(svc).serve_with_incoming(incoming).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "management API stopped");
        }
    });
    Ok(())
}
