//! `outpostctl run`: one service in the real host, fed from a recorded file,
//! no broker. What it publishes is printed as JSON lines.
//!
//! The input is either a raw capture (one message per line, or binary
//! pieces) all on one `--topic`, or a recording of live bus traffic
//! (`outpostctl record`, see [`crate::sim::recording`]) where each message
//! keeps its own topic; messages on topics the service does not subscribe
//! to are skipped and counted.

use outpost::config::DispatchConfig;
use outpost::dispatch::{Dispatcher, Egress, Inbound, ServiceSpec};
use outpost::host::{EngineOptions, HostEngine, ServiceContext};
use outpost::package::{effective_config, Package, PackageError};
use outpost::state::StateStore;
use outpost::telemetry::Metrics;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// How far after the last input the closing tick is (see `run`).
pub const QUIET_AFTER_END_MS: u64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub package: PathBuf,
    pub input: PathBuf,
    /// Topic of every message of a raw capture; `None` for a recording.
    pub topic: Option<String>,
    /// The input is a recording (also assumed for a `.jsonl` file).
    pub recording: bool,
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
    Load(#[from] outpost::host::LoadError),
    #[error("service init failed: {0}")]
    Init(#[from] outpost::host::CallError),
    #[error(transparent)]
    State(#[from] outpost::state::StateError),
    #[error("cannot read {path}: {source}")]
    Input { path: PathBuf, source: std::io::Error },
    #[error("topic '{0}' is not one the service subscribes to ({1})")]
    Topic(String, String),
    #[error("--chunk must be at least 1")]
    Chunk,
    #[error(transparent)]
    Recording(#[from] crate::sim::recording::RecordingError),
    #[error("{0} is a recording: each message has its own topic, so --topic and --chunk do not apply")]
    RecordingOptions(PathBuf),
    #[error(
        "give --topic for {0}: a raw capture has no topics (a recording from `outpostctl record` is a .jsonl file)"
    )]
    NoTopic(PathBuf),
    #[error("none of the {count} messages of {path} is on a topic the service subscribes to ({subscribe}); recorded topics: {topics}")]
    NothingSubscribed { path: PathBuf, count: usize, subscribe: String, topics: String },
}

/// What a replay did, for the closing summary on stderr.
#[derive(Debug, Default, Clone)]
pub struct ReplaySummary {
    pub messages_in: u64,
    pub messages_out: u64,
    pub faults: u64,
    pub dead_letters: u64,
    /// Messages of a recording on topics the service does not subscribe to.
    pub skipped: u64,
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

impl<W: Write + Send> Egress for JsonLines<W> {
    fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.count += 1;
        if writeln!(self.out, "{}", crate::render::render_line(topic, payload)).is_err() {
            // Reader went away (e.g. `| head`); keep running quietly.
        }
    }
}

pub fn run(opts: &ReplayOptions, egress: Box<dyn Egress>) -> Result<ReplaySummary, ReplayError> {
    let pkg = Package::load(&opts.package)?;
    let subscribed = |topic: &str| pkg.manifest.bus.subscribe.iter().any(|f| outpost::topic::matches(f, topic));
    let recorded = if opts.recording || crate::sim::recording::is_recording(&opts.input) {
        if opts.topic.is_some() || opts.chunk.is_some() {
            return Err(ReplayError::RecordingOptions(opts.input.clone()));
        }
        let all = crate::sim::recording::read(&opts.input)?;
        let count = all.len();
        let kept: Vec<_> = all.iter().filter(|m| subscribed(&m.topic)).cloned().collect();
        if kept.is_empty() {
            let topics: std::collections::BTreeSet<&str> = all.iter().map(|m| m.topic.as_str()).collect();
            let mut shown: Vec<&str> = topics.iter().take(5).copied().collect();
            if topics.len() > shown.len() {
                shown.push("...");
            }
            return Err(ReplayError::NothingSubscribed {
                path: opts.input.clone(),
                count,
                subscribe: pkg.manifest.bus.subscribe.join(", "),
                topics: shown.join(", "),
            });
        }
        Some((kept, count))
    } else {
        let topic = opts.topic.as_ref().ok_or_else(|| ReplayError::NoTopic(opts.input.clone()))?;
        if !subscribed(topic) {
            return Err(ReplayError::Topic(topic.clone(), pkg.manifest.bus.subscribe.join(", ")));
        }
        None
    };
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

    let batch = opts.max_batch.max(1);
    let mut pending = 0usize;
    let mut feed = |d: &mut Dispatcher, inbound: Inbound| {
        d.accept(Arc::new(inbound));
        pending += 1;
        if pending >= batch {
            d.run_until_idle();
            pending = 0;
        }
    };
    let mut skipped = 0u64;
    let mut end_ms = outpost::dispatch::now_ms();
    if let Some((messages, count)) = recorded {
        // Messages keep their recorded offsets as their receive times.
        let start = end_ms;
        skipped = (count - messages.len()) as u64;
        for m in messages {
            let mut inbound = Inbound::new(m.topic, m.payload);
            inbound.received_ms = start.saturating_add(m.t_ms);
            end_ms = end_ms.max(inbound.received_ms);
            feed(&mut d, inbound);
        }
        return Ok(finish(d, end_ms, &svc_metrics, skipped));
    }
    let topic = opts.topic.clone().unwrap_or_default();
    let file =
        std::fs::File::open(&opts.input).map_err(|source| ReplayError::Input { path: opts.input.clone(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let read_err = |source| ReplayError::Input { path: opts.input.clone(), source };
    match opts.chunk {
        Some(n) => loop {
            let mut buf = vec![0u8; n];
            let got = read_full(&mut reader, &mut buf).map_err(read_err)?;
            if got == 0 {
                break;
            }
            buf.truncate(got);
            feed(&mut d, Inbound::new(topic.clone(), buf));
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
                feed(&mut d, Inbound::new(topic.clone(), line.clone()));
            }
        }
    }
    end_ms = end_ms.max(outpost::dispatch::now_ms());
    Ok(finish(d, end_ms, &svc_metrics, skipped))
}

/// Drains the dispatcher after the last input and sums up.
fn finish(
    mut d: Dispatcher,
    end_ms: u64,
    svc_metrics: &outpost::telemetry::ServiceMetrics,
    skipped: u64,
) -> ReplaySummary {
    d.run_until_idle();
    // The end of the recording is a live feed going quiet: services see one
    // last tick an hour after it, so whatever waits for more input or for
    // an idle timeout (positioning's open epoch) comes out now.
    d.tick_all(end_ms.saturating_add(QUIET_AFTER_END_MS));
    d.run_until_idle();
    // Instances in backoff get their turn before we give up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.queued() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(d.next_wakeup().min(std::time::Duration::from_millis(50)));
        d.run_until_idle();
    }
    ReplaySummary {
        messages_in: svc_metrics.messages_in.get(),
        messages_out: svc_metrics.messages_out.get(),
        faults: svc_metrics.traps.get(),
        dead_letters: svc_metrics.dead_letters.get(),
        skipped,
    }
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
    let dir = std::env::temp_dir().join(format!("outpost-replay-{}-{}", std::process::id(), outpost::dispatch::now_ms()));
    std::fs::create_dir_all(&dir).map_err(|source| ReplayError::Input { path: dir.clone(), source })?;
    Ok(TempDir(dir))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
