//! `outpostctl` commands that change a running agent, over its gRPC API
//! with the bearer token: list, deploy, upgrade (showing what the new
//! version asks for), rollback, remove, scale, config, canary, shadow.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use outpost::client::{self, Client, Upload};
use outpost::manifest::Manifest;
use outpost_proto::agent::v1 as pb;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Where and how to reach the agent.
#[derive(Args, Clone)]
pub struct Target {
    /// The agent's management API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9465", env = "OUTPOST_AGENT")]
    pub agent: String,
    /// The agent's API token file ([api] token_file; readable by its user only).
    #[arg(long, global = true, default_value = "/var/lib/outpost/state/api.token", env = "OUTPOST_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// For an https:// agent: the CA certificate (PEM) that signed its
    /// certificate ([api] tls_cert).
    #[arg(long, global = true, env = "OUTPOST_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Manage {
    /// Installed services, their versions and the version each would roll back to.
    List,
    /// Install a new service from a signed package (.opkg).
    Deploy {
        package: PathBuf,
        /// Who approves (recorded by the agent); default $USER.
        #[arg(long)]
        approved_by: Option<String>,
    },
    /// Replace a running service with the package's version, without losing
    /// a message. Shows what the new version asks for beyond the installed
    /// one and asks to confirm.
    Upgrade {
        package: PathBuf,
        /// Apply without asking (scripts); the permissions are still printed.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        approved_by: Option<String>,
    },
    /// Go back to the version the last upgrade replaced.
    Rollback { service: String },
    /// Retire a service (what is queued for it is handled first).
    Remove { service: String },
    /// Run N instances of a service, sharded by its manifest's shard_by level.
    Scale { service: String, instances: u32 },
    /// Apply a site config (a TOML file of the service's config keys).
    Config { service: String, file: PathBuf },
    /// Route a share of shard keys to the package's version.
    Canary {
        package: PathBuf,
        #[arg(long)]
        percent: u8,
    },
    /// Make the running canary the serving version.
    Promote { service: String },
    /// Stop the canary; its keys go back to the serving version.
    Abort { service: String },
    /// Run the package's version on a copy of live traffic, outputs held aside.
    Shadow { package: PathBuf },
    /// Follow the agent's events (faults, dead letters, rollbacks, lifecycle changes).
    Events {
        /// Only this service's events.
        service: Option<String>,
        /// Stop after this many.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Follow log lines about services.
    Logs {
        service: Option<String>,
        #[arg(long)]
        count: Option<u64>,
    },
    /// Every service's KPIs as last reported.
    Kpis { service: Option<String> },
    /// How the shadow's outputs differ from the serving version's, per topic.
    ShadowReport {
        service: String,
        /// End the shadow run.
        #[arg(long)]
        stop: bool,
    },
}

impl Target {
    /// A client with the token, over TLS for an https:// agent.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let token = client::read_token(&self.token_file)?;
        let ca = match &self.ca_file {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read --ca-file {}", p.display()))?),
            None => None,
        };
        Ok(client::connect_with(&self.agent, &token, ca.as_deref()).await?)
    }
}

pub async fn run(target: Target, cmd: Manage) -> anyhow::Result<()> {
    let mut c = target.connect().await?;
    let result = match cmd {
        Manage::List => return list(&mut c, target.json).await,
        Manage::Deploy { package, approved_by } => {
            upload(&mut c, Upload::Deploy, &package, &approver(approved_by)).await?
        }
        Manage::Upgrade { package, yes, approved_by } => {
            confirm_permissions(&mut c, &package, yes).await?;
            upload(&mut c, Upload::Upgrade, &package, &approver(approved_by)).await?
        }
        Manage::Rollback { service } => {
            c.rollback(pb::ServiceRef { name: service }).await.map_err(client::ClientError::from)?.into_inner()
        }
        Manage::Remove { service } => {
            c.remove(pb::ServiceRef { name: service }).await.map_err(client::ClientError::from)?.into_inner()
        }
        Manage::Scale { service, instances } => c
            .scale(pb::ScaleRequest { name: service, instances })
            .await
            .map_err(client::ClientError::from)?
            .into_inner(),
        Manage::Config { service, file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            c.set_config(pb::SetConfigRequest { name: service, config_toml: text })
                .await
                .map_err(client::ClientError::from)?
                .into_inner()
        }
        Manage::Canary { package, percent } => {
            upload(&mut c, Upload::Canary(percent), &package, &approver(None)).await?
        }
        Manage::Promote { service } => {
            c.promote_canary(pb::ServiceRef { name: service }).await.map_err(client::ClientError::from)?.into_inner()
        }
        Manage::Abort { service } => {
            c.abort_canary(pb::ServiceRef { name: service }).await.map_err(client::ClientError::from)?.into_inner()
        }
        Manage::Shadow { package } => upload(&mut c, Upload::Shadow, &package, &approver(None)).await?,
        Manage::Events { service, count } => {
            let mut stream = c
                .stream_events(pb::StreamEventsRequest { service: service.unwrap_or_default() })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            let mut n = 0;
            while let Some(e) = stream.message().await.map_err(client::ClientError::from)? {
                println!(
                    "{}",
                    if target.json { serde_json::to_string(&e)? } else { format!("{} {}", e.topic, e.json) }
                );
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
            return Ok(());
        }
        Manage::Logs { service, count } => {
            let mut stream = c
                .stream_logs(pb::StreamLogsRequest { service: service.unwrap_or_default() })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            let mut n = 0;
            while let Some(l) = stream.message().await.map_err(client::ClientError::from)? {
                if target.json {
                    println!("{}", serde_json::to_string(&l)?);
                } else {
                    println!("{} {:<5} {}: {}", l.ts_ms, l.level, l.service, l.message);
                }
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
            return Ok(());
        }
        Manage::Kpis { service } => {
            let list = c
                .get_kpis(pb::GetKpisRequest { service: service.unwrap_or_default() })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            if target.json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!("{:<20} {:<28} {:<12} {:>14}", "SERVICE", "KPI", "SUBJECT", "VALUE");
                for k in &list.kpis {
                    println!("{:<20} {:<28} {:<12} {:>14.4}", k.service, k.name, k.subject, k.value);
                }
            }
            return Ok(());
        }
        Manage::ShadowReport { service, stop } => {
            let r = c
                .get_shadow_report(pb::ShadowReportRequest { name: service, stop })
                .await
                .map_err(client::ClientError::from)?
                .into_inner();
            return print_shadow(&r, target.json);
        }
    };
    if target.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{}@{}: {}", result.service, result.version, result.message);
    }
    Ok(())
}

fn approver(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into())
}

async fn upload(c: &mut Client, kind: Upload, path: &Path, approved_by: &str) -> anyhow::Result<pb::ChangeResult> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read package {}", path.display()))?;
    let bar = indicatif::ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("uploading {}", path.display()));
    let b = bar.clone();
    let result = client::upload(c, kind, bytes, approved_by, move |sent, _| b.set_position(sent)).await;
    bar.finish_and_clear();
    result.with_context(|| format!("{} was not applied", path.display()))
}

/// Prints what the package's version asks for beyond the installed one and
/// asks to go on (like a phone app's update).
async fn confirm_permissions(c: &mut Client, package: &Path, yes: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(package).with_context(|| format!("cannot read package {}", package.display()))?;
    let opkg = outpost_package::Opkg::parse(&package.display().to_string(), &bytes)?;
    let text = String::from_utf8_lossy(&opkg.manifest);
    let new = Manifest::parse(&text, package)?;
    let list = c.list_services(pb::ListServicesRequest {}).await.map_err(client::ClientError::from)?.into_inner();
    let installed = list
        .services
        .iter()
        .find(|s| s.name == new.service.name && !s.removed)
        .with_context(|| format!("{} is not installed on this agent; use `outpostctl deploy`", new.service.name))?;
    let old = Manifest::parse(&installed.manifest_toml, Path::new("installed service.toml"))?;
    let changes = client::permission_changes(&old, &new);
    println!("upgrade {} {} -> {}", new.service.name, old.service.version, new.service.version);
    if changes.is_empty() {
        println!("  asks for nothing beyond the installed version");
        return Ok(());
    }
    for c in &changes {
        println!("  + {c}");
    }
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("the new version asks for more (above); confirm with --yes to apply");
    }
    print!("apply? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("not applied");
    }
    Ok(())
}

async fn list(c: &mut Client, json: bool) -> anyhow::Result<()> {
    let list = c.list_services(pb::ListServicesRequest {}).await.map_err(client::ClientError::from)?.into_inner();
    if json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    println!("{:<20} {:<10} {:<10} {:>9}  STATE", "SERVICE", "VERSION", "PREVIOUS", "INSTANCES");
    for s in &list.services {
        println!(
            "{:<20} {:<10} {:<10} {:>9}  {}",
            s.name,
            s.version,
            s.previous_version.as_deref().unwrap_or("-"),
            s.instances.map_or("-".to_string(), |n| n.to_string()),
            if s.removed { "removed" } else { "installed" }
        );
    }
    Ok(())
}

fn print_shadow(r: &pb::ShadowReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "{}: shadow {} vs live {}: {:.1}% of paired outputs identical",
        r.service,
        r.shadow_version,
        r.live_version,
        r.agreement * 100.0
    );
    println!("{:<40} {:>8} {:>8} {:>8} {:>9}", "TOPIC", "LIVE", "SHADOW", "SAME", "DIFFERENT");
    for t in &r.topics {
        println!("{:<40} {:>8} {:>8} {:>8} {:>9}", t.topic, t.live, t.shadow, t.same, t.different);
        if let (Some(a), Some(b)) = (&t.example_live, &t.example_shadow) {
            println!("    live:   {a}\n    shadow: {b}");
        }
    }
    Ok(())
}
