//! `outpost`: the gateway agent.

use anyhow::Context;
use clap::Parser;
use outpost::agent::Agent;
use outpost::config::AgentConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Outpost agent: hosts WASM services on the site's MQTT bus")]
struct Args {
    /// Agent config file.
    #[arg(short, long, default_value = "/etc/outpost/outpost.toml", env = "OUTPOST_CONFIG")]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    outpost::telemetry::init_tracing();
    let args = Args::parse();
    let config = AgentConfig::load(&args.config)?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
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
