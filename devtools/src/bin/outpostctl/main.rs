//! `outpostctl`: the developer's and technician's command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost::host::{EngineOptions, HostEngine};
use outpost::package::Package;
use outpost_devtools::replay::{JsonLines, ReplayOptions};
use std::path::PathBuf;

mod audit;
mod doctor;
mod manage;
mod record;
mod scaffold;

#[derive(Parser)]
#[command(version, about = "Outpost command line: build, package, deploy, upgrade and inspect services")]
struct Args {
    #[command(flatten)]
    target: manage::Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service in the real host on a recorded file, without a broker;
    /// print each message it publishes as a JSON line.
    Run {
        /// Package folder (service.toml + service.wasm).
        package: PathBuf,
        /// Recorded input: one message per line, or binary with --chunk; or
        /// a recording from `outpostctl record` (.jsonl), each message on its
        /// own topic.
        #[arg(long)]
        replay: PathBuf,
        /// Topic the messages of a raw capture arrive on, e.g.
        /// site/demo/truck1/gnss/nmea (not for a recording).
        #[arg(long)]
        topic: Option<String>,
        /// The --replay file is a recording even without the .jsonl extension.
        #[arg(long)]
        recording: bool,
        /// Send the file as binary pieces of N bytes instead of lines.
        #[arg(long)]
        chunk: Option<usize>,
        /// Site calibration overriding the manifest's [config] (TOML file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep service state in this folder (default: a temporary one).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Most messages per handle call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Check a package: manifest, component format and WIT contract.
    Check { package: PathBuf },
    /// Scaffold a service crate in its own folder: Cargo.toml (on the SDK),
    /// src/lib.rs with a native test, service.toml, a sample replay file.
    New(scaffold::NewArgs),
    /// Compile a service crate to a component (wasm32-wasip2, the toolchain
    /// `cargo xtask build` uses) into DIR/target/outpost/NAME/.
    Build(scaffold::BuildArgs),
    /// Show a running agent's state and services (gRPC management API).
    Status,
    /// Check this gateway: config, packages, broker link, services' faults,
    /// token, certificate, disk, state store, ports, clock. One line per
    /// finding with the command that fixes it; exit 0 only when all is well.
    Doctor(doctor::DoctorArgs),
    #[command(flatten)]
    Manage(manage::Manage),
    /// What left the site under the customer's sharing policy: verify the
    /// gateway's hash-chained export log, show batches per provider.
    Audit(audit::Audit),
    /// Record live bus traffic of chosen topics to a file (JSON lines with
    /// each message's offset, topic and payload) for `run --replay` and
    /// `outpost-sim --recording`.
    Record(record::Record),
    /// Print messages from the bus as JSON lines (e.g. a service's outputs).
    /// Publishes one message (a command, a calibration, a network model) and
    /// waits for the broker to acknowledge it.
    Publish {
        topic: String,
        /// The payload, as text.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        message: Option<String>,
        /// The payload, read from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Ask the broker to keep it for later subscribers.
        #[arg(long)]
        retain: bool,
    },
    Watch {
        /// Topic filters (MQTT wildcards allowed).
        #[arg(required = true)]
        topics: Vec<String>,
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// One readable line per known output (GNSS fixes, traffic warnings
        /// and zone violations, haul-cycle summaries, loader advice) instead of JSON.
        #[arg(long, visible_alias = "fixes")]
        pretty: bool,
    },
    /// Generate a provider's ed25519 key pair: DIR/NAME.key (private, mode
    /// 0600) and DIR/NAME.pub (copy it to each gateway's trust folder).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// The provider the key signs for (the manifests' `service.provider`).
        #[arg(long)]
        name: String,
    },
    /// Build a signed package (.opkg) from a package folder (service.toml +
    /// service.wasm, e.g. target/outpost/packages/positioning) or a service
    /// crate folder with --wasm. The manifest is validated first.
    Package {
        source: PathBuf,
        /// Private key (from keygen); without it the package is unsigned
        /// and must be signed with `outpostctl sign` before agents take it.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The component, when it is not SOURCE/service.wasm.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Output file (default NAME-VERSION.opkg).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign (or re-sign) a package with a provider key; manifest and
    /// component are kept byte for byte.
    Sign {
        package: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Output file (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a package as an agent would: signature, digests, a trusted key
    /// of the manifest's provider, and the manifest itself.
    Verify {
        package: PathBuf,
        /// Folder of trusted provider keys (*.pub).
        #[arg(long, default_value = "/etc/outpost/trust")]
        trust: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    outpost::telemetry::init_tracing();
    let args = Args::parse();
    match args.command {
        Command::Status => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(status(args.target))
        }
        Command::Doctor(d) => {
            if !doctor::run(d, args.target.json)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Audit(a) => {
            if !audit::run(a)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Manage(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(manage::run(args.target, cmd))
        }
        Command::Publish { topic, message, file, broker, retain } => {
            let payload = match (message, file) {
                (Some(m), _) => m.into_bytes(),
                (None, Some(f)) => std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?,
                (None, None) => anyhow::bail!("give --message TEXT or --file PATH"),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(publish(topic, payload, broker, retain))
        }
        Command::Watch { topics, broker, count, timeout, pretty } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(watch(topics, broker, count, timeout, pretty))
        }
        Command::Record(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(record::run(cmd))
        }
        Command::Run { package, replay, topic, recording, chunk, config, state, batch } => {
            let config = match config {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        toml::from_str::<toml::Table>(&text)
                            .with_context(|| format!("{} is not TOML", path.display()))?,
                    )
                }
                None => None,
            };
            let opts = ReplayOptions {
                package,
                input: replay,
                topic,
                recording,
                chunk,
                config,
                state_dir: state,
                max_batch: batch,
            };
            let summary = outpost_devtools::replay::run(&opts, Box::new(JsonLines::new(std::io::stdout())))?;
            eprintln!(
                "outpostctl run: {} messages handled, {} published, {} instance faults, {} dead-lettered",
                summary.messages_in, summary.messages_out, summary.faults, summary.dead_letters
            );
            if summary.skipped > 0 {
                eprintln!(
                    "outpostctl run: {} recorded messages on topics the service does not subscribe to",
                    summary.skipped
                );
            }
            Ok(())
        }
        Command::New(a) => scaffold::new_service(&a).map(drop),
        Command::Build(a) => scaffold::build(&a).map(drop),
        Command::Keygen { out, name } => {
            let g = outpost_package::keygen(&out, &name)?;
            println!("private key {} (keep it secret)", g.private_path.display());
            println!("public key  {} (key id {})", g.public_path.display(), g.public.key_id);
            println!("to trust it, copy the public key into each gateway's trust folder (/etc/outpost/trust/)");
            Ok(())
        }
        Command::Package { source, key, wasm, out } => {
            let key = key.map(|k| outpost_package::ProviderSigningKey::load(&k)).transpose()?;
            let w = outpost_package::tool::package(
                &source,
                wasm.as_deref(),
                key.as_ref(),
                out.as_deref(),
                &validate_contents,
            )?;
            print_written("packaged", &w);
            if w.signed_by.is_none() {
                eprintln!(
                    "warning: {} is unsigned; agents refuse it until `outpostctl sign` signs it",
                    w.path.display()
                );
            }
            Ok(())
        }
        Command::Sign { package, key, out } => {
            let key = outpost_package::ProviderSigningKey::load(&key)?;
            print_written("signed", &outpost_package::tool::sign_file(&package, &key, out.as_deref())?);
            Ok(())
        }
        Command::Verify { package, trust } => {
            let p = outpost_package::tool::verify_file(&package, &trust, &validate_contents)?;
            println!(
                "{} ok: signed by {} (key {}), package sha256 {}, component sha256 {}",
                p.label, p.signer, p.key_id, p.digest, p.component_digest
            );
            Ok(())
        }
        Command::Check { package } => {
            let pkg = Package::load(&package)?;
            let host = HostEngine::new(&EngineOptions { pooling: false, max_instances: 1 })?;
            let loaded = host.load(&pkg.wasm_path, &pkg.wasm, None)?;
            outpost::host::check_capabilities(&loaded, &pkg.manifest, &pkg.wasm_path)?;
            println!(
                "{} ok: world {}, component sha256 {}, subscribes {:?}, publishes {:?}",
                pkg.manifest.id(),
                pkg.manifest.service.world,
                loaded.digest,
                pkg.manifest.bus.subscribe,
                pkg.manifest.bus.publish
            );
            Ok(())
        }
    }
}

/// The agent's own checks, for `package` and `verify`: the manifest parser
/// and the component's format.
fn validate_contents(c: &outpost_package::tool::Contents<'_>) -> Result<(), String> {
    outpost::manifest::Manifest::parse(c.manifest, c.manifest_path).map_err(|e| e.to_string())?;
    outpost::host::check_component_bytes(c.component).map_err(|e| format!("{} {e}", c.component_path.display()))
}

fn print_written(what: &str, w: &outpost_package::tool::Written) {
    let by = w.signed_by.as_deref().unwrap_or("nobody (unsigned)");
    println!(
        "{what} {} {} into {} ({} bytes), signed by {by}, package sha256 {}",
        w.service,
        w.version,
        w.path.display(),
        w.bytes,
        w.digest
    );
}

async fn status(target: manage::Target) -> anyhow::Result<()> {
    use outpost_proto::agent::v1::GetStatusRequest;
    let json = target.json;
    let mut client = target.connect().await?;
    let s = client
        .get_status(GetStatusRequest {})
        .await
        .map_err(outpost::client::ClientError::from)
        .context("status request failed")?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!(
        "gateway {}  site {}  state {}  broker {} ({})  up {}s",
        s.gateway,
        s.site,
        s.state,
        s.broker,
        if s.mqtt_connected { "connected" } else { "DISCONNECTED" },
        s.uptime_s
    );
    println!("{:<20} {:<10} {:>9} {:>7} {:>8}  HEALTH", "SERVICE", "VERSION", "INSTANCES", "QUEUED", "RESTARTS");
    for f in &s.refused_subscriptions {
        println!("broker REFUSED subscription {f}");
    }
    for v in &s.services {
        let health = if v.running == v.instances { "ok" } else { "DEGRADED" };
        // Baseline code is fast start's, until optimized code replaces it.
        let health = if v.code == "baseline" { format!("{health} (baseline code)") } else { health.to_owned() };
        println!(
            "{:<20} {:<10} {:>4}/{:<4} {:>7} {:>8}  {health}",
            v.name, v.version, v.running, v.instances, v.queued, v.restarts
        );
    }
    for r in &s.rejected {
        println!("{:<20} NOT LOADED: {}", r.name, r.reason);
    }
    Ok(())
}

async fn publish(topic: String, payload: Vec<u8>, broker: String, retain: bool) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    outpost::topic::validate_topic(&topic).map_err(anyhow::Error::msg)?;
    let (host, port) = outpost::config::parse_mqtt_url(&broker).map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new(format!("outpostctl-publish-{}", std::process::id()), host, port);
    opts.set_max_packet_size(outpost::bus::MAX_PACKET, outpost::bus::MAX_PACKET);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let size = payload.len();
    client.publish(topic.clone(), QoS::AtLeastOnce, retain, payload).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("connection to {broker} failed: {e} (is the agent or broker running?)"),
            Err(_) => anyhow::bail!("{broker} did not acknowledge within 10 s"),
        }
    }
    let _ = client.disconnect().await;
    eprintln!("published {size} bytes on {topic}");
    Ok(())
}

async fn watch(
    topics: Vec<String>,
    broker: String,
    count: Option<u64>,
    timeout: Option<f64>,
    pretty: bool,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use std::io::Write;
    for t in &topics {
        outpost::topic::validate_filter(t).map_err(anyhow::Error::msg)?;
    }
    let (host, port) = outpost::config::parse_mqtt_url(&broker).map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new(format!("outpostctl-watch-{}", std::process::id()), host, port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let deadline = timeout.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs_f64(s));
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let event = match deadline {
            Some(d) => match tokio::time::timeout_at(d, eventloop.poll()).await {
                Ok(e) => e,
                Err(_) => break,
            },
            None => eventloop.poll().await,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for t in &topics {
                    client.subscribe(t.clone(), QoS::AtLeastOnce).await?;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let line = if pretty {
                    outpost_devtools::render::pretty_line(&p.topic, &p.payload)
                } else {
                    outpost_devtools::render::render_line(&p.topic, &p.payload)
                };
                if writeln!(stdout, "{line}").is_err() {
                    break;
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("connection to {broker} failed: {e}"),
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}
