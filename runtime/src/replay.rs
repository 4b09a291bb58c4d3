//! `outpostctl run`: one service in the real host, fed from a recorded file,
//! no broker. What it publishes is printed as JSON lines.

use crate::config::DispatchConfig;
use crate::dispatch::{Dispatcher, Egress, Inbound, ServiceSpec};
use crate::host::{EngineOptions, HostEngine, ServiceContext};
use crate::package::{effective_config, Package, PackageError};
use crate::state::StateStore;
use crate::telemetry::Metrics;
use base64::Engine as _;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// How far after the last input the closing tick is (see `run`).
pub const QUIET_AFTER_END_MS: u64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub package: PathBuf,
    pub input: PathBuf,
    pub topic: String,
    /// Binary input in pieces of this many bytes; otherwise one message per line.
    pub chunk: Option<usize>,
    /// Site overrides of the manifest's `[config]`, as a TOML table.
    pub config: Option<toml::Table>,
    /// Persistent state folder; a temporary one when absent.
    pub state_dir: Option<PathBuf>,
    pub max_batch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Load(#[from] crate::host::LoadError),
    #[error("service init failed: {0}")]
    Init(#[from] crate::host::CallError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot read {path}: {source}")]
    Input { path: PathBuf, source: std::io::Error },
    #[error("topic '{0}' is not one the service subscribes to ({1})")]
    Topic(String, String),
    #[error("--chunk must be at least 1")]
    Chunk,
}

/// What a replay did, for the closing summary on stderr.
#[derive(Debug, Default, Clone)]
pub struct ReplaySummary {
    pub messages_in: u64,
    pub messages_out: u64,
    pub faults: u64,
    pub dead_letters: u64,
}

/// Prints each output as `{"topic": ..., "payload": ...}`.
pub struct JsonLines<W: Write + Send> {
    out: W,
    pub count: u64,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out, count: 0 }
    }
}

/// Payload as JSON when it parses, else as a base64 string.
pub fn render_line(topic: &str, payload: &[u8]) -> String {
    let value = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
    };
    serde_json::json!({"topic": topic, "payload": value}).to_string()
}

impl<W: Write + Send> Egress for JsonLines<W> {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.count += 1;
        if writeln!(self.out, "{}", render_line(topic, payload)).is_err() {
            // Reader went away (e.g. `| head`); keep running quietly.
        }
    }
}

pub fn run(opts: &ReplayOptions, egress: Box<dyn Egress>) -> Result<ReplaySummary, ReplayError> {
    let pkg = Package::load(&opts.package)?;
    if !pkg.manifest.bus.subscribe.iter().any(|f| crate::topic::matches(f, &opts.topic)) {
        return Err(ReplayError::Topic(opts.topic.clone(), pkg.manifest.bus.subscribe.join(", ")));
    }
    if opts.chunk == Some(0) {
        return Err(ReplayError::Chunk);
    }
    let host = Arc::new(HostEngine::new(&EngineOptions { pooling: false, max_instances: 1 })?);
    let loaded = host.load(&pkg.wasm_path, &pkg.wasm, None)?;
    let tmp;
    let state_dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempdir()?;
            tmp.0.clone()
        }
    };
    let state = Arc::new(StateStore::open(&state_dir.join("state.redb"))?);
    let metrics = Metrics::new();
    let name = pkg.manifest.service.name.clone();
    let svc_metrics = metrics.service(&name);
    let context = ServiceContext {
        service: name.as_str().into(),
        publish_acl: pkg.manifest.bus.publish.clone().into(),
        state: Some(state),
        metrics: svc_metrics.clone(),
    };
    let config = DispatchConfig { max_batch: opts.max_batch.max(1), ..DispatchConfig::default() };
    let mut d = Dispatcher::new(host, config, "replay", egress);
    d.set_mirror_all(true);
    d.add_service(ServiceSpec {
        config_json: effective_config(&pkg.manifest.config, opts.config.as_ref()),
        instances: 1,
        manifest: pkg.manifest,
        loaded,
        context,
    })?;

    let file =
        std::fs::File::open(&opts.input).map_err(|source| ReplayError::Input { path: opts.input.clone(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let batch = opts.max_batch.max(1);
    let mut pending = 0usize;
    let mut feed = |d: &mut Dispatcher, payload: Vec<u8>| {
        d.accept(Arc::new(Inbound::new(opts.topic.clone(), payload)));
        pending += 1;
        if pending >= batch {
            d.run_until_idle();
            pending = 0;
        }
    };
    let read_err = |source| ReplayError::Input { path: opts.input.clone(), source };
    match opts.chunk {
        Some(n) => loop {
            let mut buf = vec![0u8; n];
            let got = read_full(&mut reader, &mut buf).map_err(read_err)?;
            if got == 0 {
                break;
            }
            buf.truncate(got);
            feed(&mut d, buf);
        },
        None => {
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).map_err(read_err)? == 0 {
                    break;
                }
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                feed(&mut d, line.clone());
            }
        }
    }
    d.run_until_idle();
    // The end of the recording is a live feed going quiet: services see one
    // last tick an hour after it, so whatever waits for more input or for
    // an idle timeout (positioning's open epoch) comes out now.
    d.tick_all(crate::dispatch::now_ms().saturating_add(QUIET_AFTER_END_MS));
    d.run_until_idle();
    // Instances in backoff get their turn before we give up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.queued() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(d.next_wakeup().min(std::time::Duration::from_millis(50)));
        d.run_until_idle();
    }
    Ok(ReplaySummary {
        messages_in: svc_metrics.messages_in.get(),
        messages_out: svc_metrics.messages_out.get(),
        faults: svc_metrics.traps.get(),
        dead_letters: svc_metrics.dead_letters.get(),
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A temporary folder removed on drop (no extra dependency for one use).
struct TempDir(PathBuf);

fn tempdir() -> Result<TempDir, ReplayError> {
    let dir = std::env::temp_dir().join(format!("outpost-replay-{}-{}", std::process::id(), crate::dispatch::now_ms()));
    std::fs::create_dir_all(&dir).map_err(|source| ReplayError::Input { path: dir.clone(), source })?;
    Ok(TempDir(dir))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
