//! `outpost-ops`: the operations center (`serve`) and its CLI, which talks
//! to a running `serve` over the local HTTP API with the bearer token from
//! `http.token_file`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outpost_ops::artifacts::Artifacts;
use outpost_ops::center::{self, CenterConfig, SharedStore};
use outpost_ops::config::OpsConfig;
use outpost_ops::http::{self, ApiState, Credentials, RolloutSummary, RolloutView};
use outpost_ops::transport::LinkConfig;
use outpost_ops::{Gateway, PackageRecord, RedbStore};

#[derive(Parser)]
#[command(
    name = "outpost-ops",
    version,
    about = "The Outpost operations center: fleet, packages and rollouts over MQTT"
)]
struct Cli {
    /// The operations center's config (ops.toml).
    #[arg(long, global = true, env = "OUTPOST_OPS_CONFIG", default_value = "ops.toml")]
    config: PathBuf,
    /// Your name in the audit trail (default: $USER).
    #[arg(long, global = true, env = "OUTPOST_OPERATOR")]
    operator: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the operations center: MQTT transport, engine, HTTP API and page.
    Serve,
    /// Print the Mosquitto ACL for this fleet (one file serves every gateway).
    Acl,
    /// Gateways.
    Gateway {
        #[command(subcommand)]
        cmd: GatewayCmd,
    },
    /// The fleet: gateways, sites, tags, services with versions, health, last seen.
    Gateways,
    /// The package catalogue.
    Package {
        #[command(subcommand)]
        cmd: PackageCmd,
    },
    /// Rollouts.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
}

#[derive(Subcommand)]
enum GatewayCmd {
    /// Register a gateway and make its MQTT credentials (written to the
    /// broker's password file with mosquitto_passwd).
    Add {
        id: String,
        #[arg(long)]
        site: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Also write the credentials to this file (mode 0600).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PackageCmd {
    /// Verify a signed .opkg, store it content-addressed and catalogue it.
    Add { file: PathBuf },
    /// List the catalogue.
    List,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Start a rollout from a plan (JSON).
    Start {
        plan: PathBuf,
    },
    List,
    Show {
        id: String,
    },
    /// Print progress per wave, one line per change, until it ends.
    Watch {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = OpsConfig::load(&cli.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let operator = cli.operator.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "operator".into());
    match cli.cmd {
        Cmd::Serve => rt.block_on(serve(&cli.config, cfg)),
        Cmd::Acl => {
            print!("{}", outpost_fleet::acl::mosquitto_acl(&cfg.broker.user));
            Ok(())
        }
        cmd => {
            let api = Api::new(&cfg, operator)?;
            rt.block_on(run_client(&api, cmd))
        }
    }
}

/// Reads the API token, or makes one (mode 0600) on first start.
fn token(path: &Path, create: bool) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) | Err(_) if create => {
            let t = http::new_password();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("writing the API token to {}", path.display()))?;
            writeln!(f, "{t}")?;
            Ok(t)
        }
        Ok(_) => bail!("{} is empty; `outpost-ops serve` writes the API token there", path.display()),
        Err(e) => {
            bail!("cannot read the API token {}: {e} (`outpost-ops serve` writes it at first start)", path.display())
        }
    }
}

async fn serve(path: &Path, cfg: OpsConfig) -> Result<()> {
    cfg.validate(path)?;
    let key = outpost_package::ProviderSigningKey::load(&cfg.ops.key)?;
    let password = std::fs::read_to_string(&cfg.broker.password_file)
        .with_context(|| format!("reading {}", cfg.broker.password_file.display()))?
        .trim()
        .to_string();
    // A postgresql:// URL selects the shared store (replicas); else a redb file.
    let store_text = cfg.ops.store.to_string_lossy().into_owned();
    let store: SharedStore = if store_text.starts_with("postgresql://") || store_text.starts_with("postgres://") {
        Arc::new(outpost_ops::PgStore::connect(&store_text)?)
    } else {
        Arc::new(RedbStore::open(&cfg.ops.store)?)
    };
    let artifacts = Artifacts::open(&cfg.ops.artifacts)?;
    let token = token(&cfg.http.token_file, true)?;
    let mut link = LinkConfig::new(&cfg.broker.url, &cfg.broker.client_id, &cfg.broker.user, &password);
    link.tls_ca = cfg.broker.tls_ca.clone();
    link.clean_session = false;
    link.inflight = 1000;
    link.channel_capacity = 20_000;
    let key_id = outpost_package::keys::key_id(&key.key.verifying_key());
    let ccfg = CenterConfig {
        ops_name: key.provider.clone(),
        key: key.key,
        link,
        tick: Duration::from_millis(cfg.ops.tick_ms),
        replica_id: cfg.ops.replica_id(),
        lease_ttl: Duration::from_millis(cfg.ops.lease_ttl_ms),
    };
    let (center, core) = center::spawn(store.clone(), ccfg)?;
    let state = Arc::new(ApiState {
        store,
        center: center.clone(),
        artifacts,
        trust_dir: cfg.ops.trust.clone(),
        token,
        gateway_password_file: cfg.broker.gateway_password_file.clone(),
        ops_user: cfg.broker.user.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.http.listen))?;
    tracing::info!(
        listen = %cfg.http.listen,
        broker = %cfg.broker.url,
        key_id = %key_id,
        replica = %cfg.ops.replica_id(),
        "outpost-ops serving; fleet page at http://{}/#token=<http.token_file>",
        cfg.http.listen
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping");
    };
    axum::serve(listener, http::router(state)).with_graceful_shutdown(shutdown).await?;
    center.shutdown().await;
    let _ = core.await;
    Ok(())
}

struct Api {
    base: String,
    token: String,
    operator: String,
}

impl Api {
    fn new(cfg: &OpsConfig, operator: String) -> Result<Api> {
        Ok(Api { base: cfg.api_url(), token: token(&cfg.http.token_file, false)?, operator })
    }

    async fn call(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Result<serde_json::Value> {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("Authorization", auth.as_str()), ("X-Outpost-Operator", self.operator.as_str())];
        headers.extend_from_slice(extra);
        let url = format!("{}{path}", self.base);
        let r = outpost_ops::client::request(method, &url, &headers, body, Duration::from_secs(120))
            .await
            .with_context(|| format!("is `outpost-ops serve` running on {}?", self.base))?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::String(r.text()));
        if r.status >= 400 {
            let msg = v.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or_else(|| r.text());
            bail!("{method} {path}: HTTP {}: {msg}", r.status);
        }
        Ok(v)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let v = self.call("GET", path, &[], b"").await?;
        serde_json::from_value(v).with_context(|| format!("unexpected answer from GET {path}"))
    }
}

async fn run_client(api: &Api, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Serve | Cmd::Acl => unreachable!("handled in main"),
        Cmd::Gateway { cmd: GatewayCmd::Add { id, site, tags, out } } => {
            let body = serde_json::to_vec(&http::NewGateway { id, site, tags })?;
            let v = api.call("POST", "/api/gateways", &[("Content-Type", "application/json")], &body).await?;
            let c: Credentials = serde_json::from_value(v)?;
            let text = format!("gateway = \"{}\"\nuser = \"{}\"\npassword = \"{}\"\n", c.gateway, c.user, c.password);
            print!("{text}");
            match &c.password_file {
                Some(f) => eprintln!("written to {} (reload the broker: systemctl reload mosquitto)", f.display()),
                None => eprintln!("no broker.gateway_password_file configured: add the user to the broker yourself"),
            }
            if let Some(out) = out {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&out)
                    .with_context(|| format!("writing {}", out.display()))?;
                f.write_all(text.as_bytes())?;
            }
        }
        Cmd::Gateways => {
            let gws: Vec<Gateway> = api.get("/api/gateways").await?;
            print_gateways(&gws);
        }
        Cmd::Package { cmd: PackageCmd::Add { file } } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let v = api.call("POST", "/api/packages", &[("X-Package-Name", &name)], &bytes).await?;
            let p: PackageRecord = serde_json::from_value(v)?;
            println!("{} {} sha256:{} ({} bytes, signed by {})", p.service, p.version, p.digest, p.size, p.signer);
        }
        Cmd::Package { cmd: PackageCmd::List } => {
            let ps: Vec<PackageRecord> = api.get("/api/packages").await?;
            for p in ps {
                println!("{:<24} {:<12} sha256:{} {:>9} B  {}", p.service, p.version, p.digest, p.size, p.signer);
            }
        }
        Cmd::Rollout { cmd } => rollout(api, cmd).await?,
    }
    Ok(())
}

fn print_gateways(gws: &[Gateway]) {
    let now = outpost_ops::rollout::Clock::now_ms(&outpost_ops::rollout::SystemClock);
    let rows: Vec<[String; 6]> = gws
        .iter()
        .map(|g| {
            let tags = g.tags.iter().cloned().collect::<Vec<_>>().join(",");
            let svcs = g.services.iter().map(|(s, v)| format!("{s}={v}")).collect::<Vec<_>>().join(" ");
            let seen = if g.last_seen_ms == 0 {
                "never".to_string()
            } else {
                format!("{}s ago", now.saturating_sub(g.last_seen_ms) / 1000)
            };
            [g.id.clone(), g.site.clone(), tags, svcs, format!("{:?}", g.health).to_lowercase(), seen]
        })
        .collect();
    let head = ["GATEWAY", "SITE", "TAGS", "SERVICES", "HEALTH", "LAST SEEN"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(head.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn wave_line(total: usize, w: &outpost_ops::desired::WaveProgress) -> String {
    let counts = w.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let state = w.verdict.clone().unwrap_or_else(|| if w.started { "running".into() } else { "waiting".into() });
    format!("wave {}/{total}: {} gateways: {counts} [{state}]", w.wave, w.targets)
}

async fn rollout(api: &Api, cmd: RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Start { plan } => {
            let body = std::fs::read(&plan).with_context(|| format!("reading {}", plan.display()))?;
            let v = api.call("POST", "/api/rollouts", &[("Content-Type", "application/json")], &body).await?;
            println!("started {}", v["id"].as_str().unwrap_or("?"));
        }
        RolloutCmd::List => {
            let all: Vec<RolloutSummary> = api.get("/api/rollouts").await?;
            for r in all {
                println!(
                    "{:<20} {:<20} {:<10} {:<12} wave {}/{} {} gateways",
                    r.id,
                    r.service,
                    r.version,
                    r.phase,
                    (r.current_wave + 1).min(r.waves),
                    r.waves,
                    r.gateways
                );
            }
        }
        RolloutCmd::Show { id } => {
            let v: RolloutView = api.get(&format!("/api/rollouts/{id}")).await?;
            let s = &v.summary;
            println!("{} {} {}: {}", s.id, s.service, s.version, s.phase);
            if let Some(r) = &s.reason {
                println!("  reason: {r}");
            }
            for w in &v.waves {
                println!("  {}", wave_line(v.waves.len(), w));
            }
            for (gw, why) in &v.failures {
                println!("  failed: {gw}: {why}");
            }
        }
        RolloutCmd::Watch { id } => {
            let mut last: BTreeMap<usize, String> = BTreeMap::new();
            let mut last_phase = String::new();
            loop {
                let v: RolloutView = api.get(&format!("/api/rollouts/{id}")).await?;
                for w in &v.waves {
                    let line = wave_line(v.waves.len(), w);
                    if w.started && last.get(&w.wave) != Some(&line) {
                        println!("{line}");
                        last.insert(w.wave, line);
                    }
                }
                if v.summary.phase != last_phase {
                    let reason = v.summary.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    println!("rollout {} {}{reason}", v.summary.id, v.summary.phase);
                    last_phase = v.summary.phase.clone();
                }
                match v.summary.phase.as_str() {
                    "succeeded" => return Ok(()),
                    "rolled_back" => bail!("rollout {id} was rolled back"),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        RolloutCmd::Pause { id } => {
            api.call("POST", &format!("/api/rollouts/{id}/pause"), &[], b"").await?;
            println!("paused {id}");
        }
        RolloutCmd::Resume { id } => {
            api.call("POST", &format!("/api/rollouts/{id}/resume"), &[], b"").await?;
            println!("resumed {id}");
        }
        RolloutCmd::Abort { id, reason } => {
            let body = serde_json::to_vec(&serde_json::json!({ "reason": reason }))?;
            api.call("POST", &format!("/api/rollouts/{id}/abort"), &[("Content-Type", "application/json")], &body)
                .await?;
            println!("aborted {id}: rolling back");
        }
    }
    Ok(())
}
