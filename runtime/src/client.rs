//! The management API's client side, for `outpostctl` and tests: connects
//! with the bearer token, streams packages with progress, and tells what an
//! upgrade asks for beyond the installed version.

use crate::manifest::Manifest;
use outpost_proto::agent::v1 as pb;
use pb::agent_client::AgentClient;
use std::path::Path;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Chunk size of a package upload.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the API token {path}: {message} (the agent creates it at first start; pass --token-file)")]
    Token { path: String, message: String },
    #[error("cannot reach the agent at {addr}: {message} (is it running? is [api] listen set?)")]
    Connect { addr: String, message: String },
    #[error("{0}")]
    Status(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let hint = match s.code() {
            tonic::Code::Unauthenticated => " (check --token-file: it must be the agent's [api] token_file)",
            tonic::Code::NotFound => " (see `outpostctl list`)",
            tonic::Code::FailedPrecondition => "",
            tonic::Code::Unavailable => " (the agent is stopping or unreachable; retry)",
            _ => "",
        };
        ClientError::Status(format!("{}{hint}", s.message()))
    }
}

#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

pub fn read_token(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Token { path: path.display().to_string(), message: e.to_string() })?;
    Ok(text.trim().to_owned())
}

/// Connects to `addr` (`http://127.0.0.1:9465`) with `token`.
pub async fn connect(addr: &str, token: &str) -> Result<Client, ClientError> {
    connect_with(addr, token, None).await
}

/// Like [`connect`]; an `https://` address is verified against `ca` (the
/// PEM certificate of the CA that signed the agent's certificate).
pub async fn connect_with(addr: &str, token: &str, ca: Option<&[u8]>) -> Result<Client, ClientError> {
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::Token { path: "(token)".into(), message: "not valid in a header".into() })?;
    let connect_error = |message: String| ClientError::Connect { addr: addr.into(), message };
    let mut endpoint = Channel::from_shared(addr.to_owned()).map_err(|e| connect_error(e.to_string()))?;
    if addr.starts_with("https://") {
        let ca = ca.ok_or_else(|| {
            connect_error("an https:// agent needs the CA that signed its certificate: pass --ca-file".into())
        })?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls).map_err(|e| connect_error(e.to_string()))?;
    } else if ca.is_some() {
        return Err(connect_error("--ca-file is for an https:// agent address".into()));
    }
    let channel =
        endpoint.connect().await.map_err(|e| ClientError::Connect { addr: addr.into(), message: e.to_string() })?;
    Ok(AgentClient::with_interceptor(channel, Bearer(header)).max_decoding_message_size(16 << 20))
}

/// Which streamed call a package goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Deploy,
    Upgrade,
    Canary(u8),
    Shadow,
}

/// Streams a package in chunks; `progress(sent, total)` after each chunk.
pub async fn upload(
    client: &mut Client,
    kind: Upload,
    opkg: Vec<u8>,
    approved_by: &str,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<pb::ChangeResult, ClientError> {
    let total = opkg.len() as u64;
    let canary_percent = match kind {
        Upload::Canary(p) => u32::from(p),
        _ => 0,
    };
    let approved_by = approved_by.to_owned();
    let chunks: Vec<pb::PackageChunk> = opkg
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| pb::PackageChunk {
            data: c.to_vec(),
            total_size: if i == 0 { total } else { 0 },
            canary_percent: if i == 0 { canary_percent } else { 0 },
            approved_by: if i == 0 { approved_by.clone() } else { String::new() },
        })
        .collect();
    let mut sent = 0u64;
    let stream = tokio_stream_iter(chunks.into_iter().inspect(move |c| {
        sent += c.data.len() as u64;
        progress(sent, total);
    }));
    let reply = match kind {
        Upload::Deploy => client.deploy(stream).await,
        Upload::Upgrade => client.upgrade(stream).await,
        Upload::Canary(_) => client.start_canary(stream).await,
        Upload::Shadow => client.start_shadow(stream).await,
    }?;
    Ok(reply.into_inner())
}

fn tokio_stream_iter<I: Iterator<Item = pb::PackageChunk> + Send + 'static>(
    it: I,
) -> impl tonic::codegen::tokio_stream::Stream<Item = pb::PackageChunk> + Send + 'static {
    tonic::codegen::tokio_stream::iter(it)
}

/// What `new` asks for that `installed` did not: topics, memory, deadline,
/// instances, config keys. Shown before an upgrade is applied.
pub fn permission_changes(installed: &Manifest, new: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for f in &new.bus.subscribe {
        if !installed.bus.subscribe.contains(f) {
            out.push(format!("reads a new topic: {f}"));
        }
    }
    for f in &new.bus.publish {
        if !installed.bus.publish.contains(f) {
            out.push(format!("may publish to a new topic: {f}"));
        }
    }
    if new.bus.mirror && !installed.bus.mirror {
        out.push("mirrors its outputs to the broker (others on the site bus can read them)".into());
    }
    let (a, b) = (&installed.limits, &new.limits);
    if b.memory_mib > a.memory_mib {
        out.push(format!("more memory: {} MiB (was {})", b.memory_mib, a.memory_mib));
    }
    if b.call_deadline_ms > a.call_deadline_ms {
        out.push(format!("longer call deadline: {} ms (was {})", b.call_deadline_ms, a.call_deadline_ms));
    }
    if b.max_payload_bytes > a.max_payload_bytes {
        out.push(format!("larger payloads: {} bytes (was {})", b.max_payload_bytes, a.max_payload_bytes));
    }
    if new.scale.instances > installed.scale.instances {
        out.push(format!("more instances by default: {} (was {})", new.scale.instances, installed.scale.instances));
    }
    for k in new.config.keys() {
        if !installed.config.contains_key(k) {
            out.push(format!("new config key: {k}"));
        }
    }
    if new.service.provider != installed.service.provider {
        out.push(format!("another provider: {} (was {})", new.service.provider, installed.service.provider));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(extra: &str) -> Manifest {
        let text = format!(
            "[service]\nname = \"s\"\nversion = \"1.0.0\"\nprovider = \"p\"\nworld = \"outpost:service@1.0.0\"\n\
             [bus]\nsubscribe = [\"a/+\"]\npublish = [\"b/+\"]\n{extra}"
        );
        Manifest::parse(&text, Path::new("t.toml")).expect("manifest")
    }

    #[test]
    fn upgrade_permissions_name_what_is_new() {
        let old = m("[limits]\nmemory_mib = 16\n[config]\nx = 1\n");
        let new = m("[limits]\nmemory_mib = 64\ncall_deadline_ms = 50\n[config]\nx = 1\ny = 2\n");
        let changes = permission_changes(&old, &new);
        assert_eq!(changes, vec!["more memory: 64 MiB (was 16)".to_string(), "new config key: y".to_string()]);
        assert!(permission_changes(&old, &old).is_empty());
    }
}
