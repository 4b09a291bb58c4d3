//! `outpost`: the gateway agent.

use anyhow::Context;
use clap::Parser;
use outpost::agent::Agent;
use outpost::config::AgentConfig;
use std::path::PathBuf;

outpost::install_allocator!();

#[derive(Parser)]
#[command(version, about = "Outpost agent: hosts WASM services on the site's MQTT bus")]
struct Args {
    /// Agent config file.
    #[arg(short, long, default_value = "/etc/outpost/outpost.toml", env = "OUTPOST_CONFIG")]
    config: PathBuf,
    /// Validate the config and every installed package, then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    outpost::telemetry::init_tracing();
    let args = Args::parse();
    let config = AgentConfig::load(&args.config)?;
    if args.check {
        println!("{}: ok", args.config.display());
        return check_packages(&config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        Agent::new(config).run(shutdown_signal()).await?;
        Ok(())
    })
}

/// SIGTERM (systemd stop) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loads and contract-checks every package in `services_dir`, then starts
/// one instance of each with the site's effective config, so a typo in a
/// service's site calibration shows here and not at the next start.
fn check_packages(config: &AgentConfig) -> anyhow::Result<()> {
    use outpost::host::{EngineOptions, HostEngine, ServiceContext};
    use outpost::package::{effective_config, Package};
    let dirs = match Package::discover(&config.services_dir) {
        Ok(d) => d,
        Err(e) => {
            println!("{}: {e} (no services installed yet)", config.services_dir.display());
            return Ok(());
        }
    };
    let host = HostEngine::new(&EngineOptions { pooling: false, max_instances: 1 })?;
    let metrics = outpost::telemetry::Metrics::new();
    let mut bad = 0;
    for dir in &dirs {
        match Package::load(dir).map_err(anyhow::Error::from).and_then(|p| {
            let loaded = host.load(&p.wasm_path, &p.wasm, None)?;
            let site = config.services.get(&p.manifest.service.name);
            let context = ServiceContext {
                service: p.manifest.service.name.as_str().into(),
                publish_acl: p.manifest.bus.publish.clone().into(),
                state: None,
                metrics: metrics.service(&p.manifest.service.name),
            };
            let json = effective_config(&p.manifest.config, site.map(|s| &s.config));
            host.instantiate(&loaded, &p.manifest, context, &json)
                .with_context(|| format!("{} refused the site's effective config", p.manifest.service.name))?;
            Ok(p.manifest.id())
        }) {
            Ok(id) => println!("{}: {id} ok", dir.display()),
            Err(e) => {
                bad += 1;
                println!("{}: {e:#}", dir.display());
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} packages cannot run; the agent would start without them", dirs.len());
    }
    Ok(())
}
