//! `outpostctl doctor`: one command for the site technician. Each check
//! gives one line: what is wrong, why it matters, the command that fixes
//! it. Exit code 0 only when nothing failed.
//!
//! It reads the agent's config file, its folders and, when the agent runs,
//! its local endpoints (`/status`, `/metrics`, the gRPC API with the
//! token); nothing here changes anything.

use anyhow::Context;
use outpost::config::{AgentConfig, BrokerMode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The agent's config file.
    #[arg(long, default_value = "/etc/outpost/outpost.toml")]
    config: PathBuf,
    /// Compare the clock with this NTP server (HOST or HOST:PORT, SNTP).
    #[arg(long)]
    ntp: Option<String>,
    /// Largest clock offset that passes, seconds.
    #[arg(long, default_value_t = 2.0)]
    max_clock_offset_s: f64,
    /// Least free space in the state folder's file system, MiB.
    #[arg(long, default_value_t = 512)]
    min_free_mib: u64,
    /// A TLS certificate must stay valid at least this many days.
    #[arg(long, default_value_t = 30)]
    cert_days: u64,
}

/// One line of the report.
#[derive(Debug)]
struct Finding {
    check: &'static str,
    ok: bool,
    what: String,
    /// Why it matters and the command that fixes it (failures only).
    why: &'static str,
    fix: String,
}

fn ok(check: &'static str, what: impl Into<String>) -> Finding {
    Finding { check, ok: true, what: what.into(), why: "", fix: String::new() }
}

fn fail(check: &'static str, what: impl Into<String>, why: &'static str, fix: impl Into<String>) -> Finding {
    Finding { check, ok: false, what: what.into(), why, fix: fix.into() }
}

pub fn run(args: DoctorArgs, json: bool) -> anyhow::Result<bool> {
    let findings = examine(&args);
    if json {
        let rows: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| serde_json::json!({"check": f.check, "ok": f.ok, "what": f.what, "why": f.why, "fix": f.fix}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for f in &findings {
            if f.ok {
                println!("ok    {:<10} {}", f.check, f.what);
            } else {
                println!("FAIL  {:<10} {}: {}; fix: {}", f.check, f.what, f.why, f.fix);
            }
        }
        let failed = findings.iter().filter(|f| !f.ok).count();
        println!("{} checks, {failed} failed", findings.len());
    }
    Ok(findings.iter().all(|f| f.ok))
}

fn examine(args: &DoctorArgs) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => {
            out.push(ok("config", format!("{} is valid", args.config.display())));
            c
        }
        Err(e) => {
            out.push(fail(
                "config",
                e.to_string().replace('\n', " "),
                "the agent will not start with it",
                format!("edit {}, then `outpost --check --config {}`", args.config.display(), args.config.display()),
            ));
            return out;
        }
    };
    let status = cfg.metrics.listen.and_then(|addr| http_get(addr, "/status").ok());
    let status: Option<serde_json::Value> = status.and_then(|body| serde_json::from_str(&body).ok());
    out.extend(agent_checks(&cfg, status.as_ref()));
    out.extend(package_checks(&cfg));
    out.push(token_check(&cfg, status.is_some()));
    if let Some(f) = tls_check(&cfg, args.cert_days) {
        out.push(f);
    }
    out.push(disk_check(&cfg.state_dir, args.min_free_mib));
    if status.is_none() {
        out.push(state_check(&cfg.state_dir));
        out.extend(port_checks(&cfg));
    }
    out.push(clock_check(args));
    if let Some(fleet) = &cfg.fleet {
        out.extend(fleet_checks(&cfg, fleet));
    }
    out
}

/// The operations center's link and the customer's sharing policy: the
/// files the uplink needs, the policy valid, the export audit intact, and
/// (with the agent running) the link up with nothing piling up.
fn fleet_checks(cfg: &AgentConfig, fleet: &outpost::config::FleetConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    match outpost_package::ProviderKey::load(&fleet.ops_key) {
        Ok(k) => out.push(ok(
            "fleet",
            format!("operations center key {} ({}, key {})", fleet.ops_key.display(), k.provider, k.key_id),
        )),
        Err(e) => out.push(fail(
            "fleet",
            e.to_string(),
            "without it every desired state is refused: no rollout reaches this gateway",
            format!("copy the operations center's public key to {} (outpost-ops prints it)", fleet.ops_key.display()),
        )),
    }
    match std::fs::read_to_string(&fleet.credentials_file) {
        Ok(t) if t.lines().any(|l| l.contains(':')) => {
            out.push(ok("fleet", format!("credentials {}", fleet.credentials_file.display())))
        }
        Ok(_) | Err(_) => out.push(fail(
            "fleet",
            format!("{} is missing or not `user:password`", fleet.credentials_file.display()),
            "the operations center's broker refuses the gateway; reports pile up in the outbox",
            format!("write this gateway's credentials from `outpost-ops gateway add {}` into it", cfg.gateway),
        )),
    }
    match &fleet.sharing_policy {
        Some(path) if path.exists() => match outpost_sharing::Policy::load(path) {
            Ok(p) => out.push(ok(
                "sharing",
                format!(
                    "policy {} is valid ({} export rules, sha256 {})",
                    path.display(),
                    p.rules().len(),
                    &p.sha256()[..12]
                ),
            )),
            Err(e) => out.push(fail(
                "sharing",
                e.to_string().replace('\n', " "),
                "the agent keeps all site data on site until the customer's policy is valid",
                format!("edit {} (see sharing/README.md)", path.display()),
            )),
        },
        Some(path) => out.push(ok("sharing", format!("no policy file at {}: no site data leaves", path.display()))),
        None => out.push(ok("sharing", "no sharing policy configured: no site data leaves")),
    }
    let audit = cfg.state_dir.join("sharing-audit.jsonl");
    if audit.exists() {
        match outpost_sharing::verify(&audit) {
            Ok(s) => {
                out.push(ok("audit", format!("export audit intact: {} batches, head {}", s.entries, &s.head[..16])))
            }
            Err(e) => out.push(fail(
                "audit",
                e.to_string(),
                "the record of what left the site can no longer be trusted past the line named",
                format!(
                    "keep {} as evidence, tell the customer, and run `outpostctl audit verify --file {}`",
                    audit.display(),
                    audit.display()
                ),
            )),
        }
    }
    if let Some(addr) = cfg.metrics.listen {
        if let Ok(text) = http_get(addr, "/metrics") {
            let value = |name: &str| metric_sum(&text, name, None);
            let (connected, queued, dropped) = (
                value("outpost_fleet_connected"),
                value("outpost_uplink_queued"),
                value("outpost_uplink_dropped_total"),
            );
            if connected >= 1.0 {
                out.push(ok("fleet", format!("connected to {} ({queued} queued)", fleet.broker)));
            } else {
                out.push(fail(
                    "fleet",
                    format!("not connected to {} ({queued} messages queued in the outbox)", fleet.broker),
                    "reports and approved data wait on the gateway; the oldest are dropped when the outbox is full",
                    "check the uplink (`ping`), the broker address in [fleet] broker, the credentials and the CA file"
                        .to_string(),
                ));
            }
            if dropped > 0.0 {
                out.push(fail(
                    "fleet",
                    format!("{dropped} uplink messages were dropped by the outbox bound"),
                    "the operations center misses reports from that time",
                    "raise [fleet] outbox_max_messages / outbox_max_bytes, or restore the uplink sooner",
                ));
            }
        }
    }
    out
}

/// Link, subscriptions, services and their faults, from the running agent.
fn agent_checks(cfg: &AgentConfig, status: Option<&serde_json::Value>) -> Vec<Finding> {
    let Some(addr) = cfg.metrics.listen else {
        return vec![fail(
            "agent",
            "[metrics] listen is off, so the agent's health cannot be read",
            "broker link, services and faults go unchecked",
            "set [metrics] listen = \"127.0.0.1:9464\" and restart: systemctl restart outpost",
        )];
    };
    let Some(s) = status else {
        return vec![fail(
            "agent",
            format!("no agent answers on http://{addr}/status"),
            "no service runs and nothing on the bus is handled",
            "systemctl start outpost; if it stops again: journalctl -u outpost -n 50",
        )];
    };
    let mut out = vec![ok(
        "agent",
        format!(
            "{} is {} (up {} s)",
            s["gateway"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["uptime_s"]
        ),
    )];
    let broker = s["broker"].as_str().unwrap_or("?");
    if s["mqtt_connected"].as_bool() == Some(true) {
        out.push(ok("broker", format!("linked to {broker}")));
    } else {
        let fix = match cfg.broker.mode {
            BrokerMode::External => "systemctl status mosquitto; check [broker] url in the config".to_owned(),
            BrokerMode::Embedded => "journalctl -u outpost -n 50 (the embedded broker runs in the agent)".to_owned(),
        };
        out.push(fail("broker", format!("no link to {broker}"), "nothing reaches the services or leaves them", fix));
    }
    if let Some(refused) = s["refused_subscriptions"].as_array().filter(|r| !r.is_empty()) {
        out.push(fail(
            "broker",
            format!("subscriptions refused by the broker: {}", join(refused)),
            "those topics never reach their services",
            "allow them in the broker's ACL (e.g. /etc/mosquitto/acl), then systemctl restart outpost",
        ));
    }
    for r in s["rejected"].as_array().into_iter().flatten() {
        out.push(fail(
            "services",
            format!("package {} not loaded: {}", r[0].as_str().unwrap_or("?"), r[1].as_str().unwrap_or("?")),
            "the service it holds does not run",
            "outpostctl check FOLDER, then reinstall it: outpostctl deploy PACKAGE.opkg",
        ));
    }
    let metrics = http_get(addr, "/metrics").unwrap_or_default();
    for svc in s["services"].as_array().into_iter().flatten() {
        let name = svc["name"].as_str().unwrap_or("?");
        let (instances, running) = (svc["instances"].as_u64().unwrap_or(0), svc["running"].as_u64().unwrap_or(0));
        let traps = metric_sum(&metrics, "outpost_traps_total", Some(name));
        let dead = metric_sum(&metrics, "outpost_dead_letters_total", Some(name));
        let restarts = svc["restarts"].as_u64().unwrap_or(0);
        if running < instances {
            out.push(fail(
                "services",
                format!(
                    "{name}@{}: {running} of {instances} instances running",
                    svc["version"].as_str().unwrap_or("?")
                ),
                "its share of the messages waits",
                format!("outpostctl logs {name}; outpostctl rollback {name} if an upgrade caused it"),
            ));
        } else if traps > 0.0 || dead > 0.0 {
            out.push(fail(
                "faults",
                format!("{name}: {traps} faults, {dead} messages dead-lettered, {restarts} restarts since the agent started"),
                "a faulting service loses the messages it cannot handle",
                format!("outpostctl logs {name} and outpostctl events {name} say which messages and why"),
            ));
        } else {
            out.push(ok(
                "services",
                format!("{name}@{}: {running}/{instances} running, no faults", svc["version"].as_str().unwrap_or("?")),
            ));
        }
    }
    out
}

/// Every package in `services_dir` and in the agent's store: loadable,
/// a real component, signed by a trusted provider (store), and their
/// contracts compatible with each other.
fn package_checks(cfg: &AgentConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut manifests = Vec::new();
    let dirs = match outpost::package::Package::discover(&cfg.services_dir) {
        Ok(d) => d,
        Err(e) => {
            return vec![fail(
                "packages",
                format!("services_dir {}: {e}", cfg.services_dir.display()),
                "no service can be installed there",
                format!("install -d -o outpost {}", cfg.services_dir.display()),
            )]
        }
    };
    for dir in dirs {
        let loaded = outpost::package::Package::load(&dir).map_err(|e| e.to_string()).and_then(|p| {
            outpost::host::check_component_bytes(&p.wasm).map_err(|e| format!("{}: {e}", p.wasm_path.display()))?;
            Ok(p)
        });
        match loaded {
            Ok(p) => {
                out.push(ok("packages", format!("{} in {}", p.manifest.id(), dir.display())));
                manifests.push(p.manifest);
            }
            Err(e) => out.push(fail(
                "packages",
                e.replace('\n', " "),
                "the agent skips this package, so its service does not run",
                format!(
                    "reinstall it from its signed package: outpostctl deploy SERVICE.opkg (then remove {})",
                    dir.display()
                ),
            )),
        }
    }
    let store_root = cfg.state_dir.join("store");
    if store_root.is_dir() {
        let trust = outpost_package::TrustStore::load(&cfg.trust_dir());
        match (outpost_package::ContentStore::open(&store_root), trust) {
            (Ok(store), Ok(trust)) => {
                for digest in store.list().unwrap_or_default() {
                    match store.get(&digest, &trust) {
                        Ok(p) => out.push(ok("packages", format!("{} (store, signed by {})", p.label, p.key_id))),
                        Err(e) => out.push(fail(
                            "packages",
                            format!("store package {digest}: {e}"),
                            "a package that fails verification is refused at start and for rollback",
                            "deploy a good copy again (outpostctl deploy SERVICE.opkg); trust its provider's key in the trust_dir",
                        )),
                    }
                }
            }
            (Err(e), _) => out.push(fail(
                "packages",
                e.to_string(),
                "installed packages cannot be read",
                "check the state folder's owner: chown -R outpost: STATE_DIR",
            )),
            (_, Err(e)) => out.push(fail(
                "packages",
                format!("trust store {}: {e}", cfg.trust_dir().display()),
                "no signed package can be verified",
                "outpostctl keygen gives a provider key; copy its .pub into the trust_dir",
            )),
        }
    }
    let broken: Vec<String> = manifests
        .iter()
        .flat_map(|m| {
            let others: Vec<_> = manifests.iter().filter(|o| o.service.name != m.service.name).cloned().collect();
            outpost::contract::check_deploy(m, &others)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if broken.is_empty() {
        out.push(ok("contracts", format!("{} packages' contracts agree", manifests.len())));
    } else {
        out.push(fail(
            "contracts",
            broken.join("; "),
            "a consumer gets payloads it cannot read",
            "install versions whose contracts agree (outpostctl upgrade names the mismatch)",
        ));
    }
    out
}

fn token_check(cfg: &AgentConfig, agent_up: bool) -> Finding {
    let path = cfg.token_file();
    let fix_perm = format!("chown outpost: {0}; chmod 600 {0}", path.display());
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                "token",
                format!("{}: {e}", path.display()),
                "outpostctl cannot manage the agent",
                "systemctl restart outpost (the agent creates it at start)",
            )
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return fail(
            "token",
            format!("{} has mode {mode:o}", path.display()),
            "anyone who can read it can deploy code to this gateway",
            fix_perm,
        );
    }
    let token = match outpost::client::read_token(&path) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                "token",
                e.to_string(),
                "outpostctl cannot manage the agent",
                "rm it and systemctl restart outpost",
            )
        }
    };
    let (Some(addr), true) = (cfg.api.listen, agent_up) else {
        return ok("token", format!("{} is private (mode {mode:o})", path.display()));
    };
    let scheme = if cfg.api.tls_cert.is_some() { "https" } else { "http" };
    if scheme == "https" {
        return ok("token", format!("{} is private (mode {mode:o}); API over TLS not called", path.display()));
    }
    let url = format!("http://{addr}");
    let answer =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(async {
                let mut c = outpost::client::connect(&url, &token).await.map_err(|e| e.to_string())?;
                c.get_status(outpost_proto::agent::v1::GetStatusRequest {}).await.map_err(|e| e.message().to_owned())
            })
        });
    match answer {
        Ok(_) => ok("token", format!("{} is private and the API at {url} accepts it", path.display())),
        Err(e) => fail(
            "token",
            format!("the API at {url} refuses {}: {e}", path.display()),
            "outpostctl cannot manage the agent",
            "systemctl restart outpost (it reads the token file at start)",
        ),
    }
}

/// The API certificate's expiry, by `openssl x509 -checkend`.
fn tls_check(cfg: &AgentConfig, days: u64) -> Option<Finding> {
    let cert = cfg.api.tls_cert.as_ref()?;
    let secs = (days * 86_400).to_string();
    let run = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-checkend", &secs, "-in"])
        .arg(cert)
        .output();
    Some(match run {
        Err(e) => fail(
            "tls",
            format!("cannot run openssl to read {}: {e}", cert.display()),
            "an expired certificate locks operators out",
            "apt-get install openssl",
        ),
        Ok(o) => {
            let end = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("notAfter=")
                .to_owned();
            if o.status.success() {
                ok("tls", format!("{} valid until {end}", cert.display()))
            } else if end.is_empty() {
                fail(
                    "tls",
                    format!("{} is not a PEM certificate", cert.display()),
                    "the API will not start with it",
                    "put the PEM certificate chain in api.tls_cert",
                )
            } else {
                fail(
                    "tls",
                    format!("{} expires {end}, within {days} days", cert.display()),
                    "clients refuse an expired certificate and operators are locked out",
                    "issue a new certificate from the site CA into api.tls_cert / tls_key, then systemctl restart outpost",
                )
            }
        }
    })
}

/// Free space where the state lives, by `df -Pk`.
fn disk_check(state_dir: &Path, min_free_mib: u64) -> Finding {
    let out = std::process::Command::new("df").arg("-Pk").arg(state_dir).output();
    let free_kib = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok()
    });
    match free_kib {
        None => fail(
            "disk",
            format!("cannot read the free space of {}", state_dir.display()),
            "a full disk stops state commits",
            format!("install -d -o outpost {}", state_dir.display()),
        ),
        Some(kib) if kib / 1024 < min_free_mib => fail(
            "disk",
            format!("{} MiB free for {}, under {min_free_mib} MiB", kib / 1024, state_dir.display()),
            "a full disk makes every state commit fail, and with it every call",
            format!("free space: du -sh {}/* ; journalctl --vacuum-size=100M", state_dir.display()),
        ),
        Some(kib) => ok("disk", format!("{} MiB free for {}", kib / 1024, state_dir.display())),
    }
}

/// With the agent stopped: its state store opens and reads.
fn state_check(state_dir: &Path) -> Finding {
    let path = state_dir.join("state.redb");
    if !path.exists() {
        return ok("state", format!("{} not created yet (first start makes it)", path.display()));
    }
    match outpost::state::StateStore::open(&path) {
        Ok(_) => ok("state", format!("{} opens", path.display())),
        Err(e) => fail(
            "state",
            e.to_string(),
            "the agent cannot start, and services lose their state",
            format!(
                "move it aside (mv {0} {0}.broken) and start the agent; services re-learn their state",
                path.display()
            ),
        ),
    }
}

/// With the agent stopped: the addresses it will listen on are free.
fn port_checks(cfg: &AgentConfig) -> Vec<Finding> {
    let mut wanted: Vec<(&'static str, SocketAddr)> = Vec::new();
    if cfg.broker.mode == BrokerMode::Embedded {
        wanted.push(("broker", cfg.broker.listen));
    }
    wanted.extend(cfg.metrics.listen.map(|a| ("metrics", a)));
    wanted.extend(cfg.api.listen.map(|a| ("api", a)));
    wanted
        .into_iter()
        .map(|(what, addr)| match std::net::TcpListener::bind(addr) {
            Ok(_) => ok("ports", format!("{what} {addr} is free")),
            Err(e) => fail(
                "ports",
                format!("{what} {addr}: {e}"),
                "the agent cannot start while another program holds it",
                format!("ss -ltnp 'sport = :{}' names it; stop it or change {what} listen in the config", addr.port()),
            ),
        })
        .collect()
}

/// Against an NTP server (SNTP) when one is given.
fn clock_check(args: &DoctorArgs) -> Finding {
    let Some(server) = &args.ntp else {
        return ok("clock", "not compared with a time source (pass --ntp HOST)");
    };
    match sntp_offset(server) {
        Err(e) => fail(
            "clock",
            format!("NTP server {server}: {e}"),
            "the clock cannot be checked",
            "check the server name and UDP port 123, or timedatectl",
        ),
        Ok(offset) if offset.abs() > args.max_clock_offset_s => fail(
            "clock",
            format!("this clock is {offset:+.1} s off {server}"),
            "timestamps in outputs, KPIs and logs are wrong, and TLS certificates may look expired",
            "timedatectl set-ntp true (or chronyc makestep)",
        ),
        Ok(offset) => ok("clock", format!("{offset:+.3} s from {server}")),
    }
}

/// Offset of the server's clock from ours, seconds (RFC 4330 SNTP).
fn sntp_offset(server: &str) -> anyhow::Result<f64> {
    let addr = if server.contains(':') { server.to_owned() } else { format!("{server}:123") };
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut request = [0u8; 48];
    request[0] = 0x23; // LI 0, version 4, mode 3 (client)
    let t1 = now_s();
    socket.send_to(&request, &addr).with_context(|| format!("cannot send to {addr}"))?;
    let mut reply = [0u8; 48];
    let (n, _) = socket.recv_from(&mut reply).context("no answer within 3 s")?;
    let t4 = now_s();
    anyhow::ensure!(n >= 48 && reply[0] & 0x07 == 4, "not an NTP server reply");
    let ts = |at: usize| {
        let secs = u32::from_be_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]]) as f64;
        let frac = u32::from_be_bytes([reply[at + 4], reply[at + 5], reply[at + 6], reply[at + 7]]) as f64;
        secs + frac / 4_294_967_296.0 - 2_208_988_800.0
    };
    let (t2, t3) = (ts(32), ts(40));
    Ok(((t2 - t1) + (t3 - t4)) / 2.0)
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 503") {
        return Err(std::io::Error::other(head.lines().next().unwrap_or("no answer").to_owned()));
    }
    Ok(body.to_owned())
}

/// Sum of a counter family's samples for one service (all versions).
/// Sum of a metric family's samples, of one service's when `service` is given.
fn metric_sum(text: &str, family: &str, service: Option<&str>) -> f64 {
    let label = service.map(|s| format!("service=\"{s}\""));
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(family))
        .filter(|l| label.as_ref().is_none_or(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn join(values: &[serde_json::Value]) -> String {
    values.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(", ")
}
