//! The release agent as a process: start it, read its memory, status and metrics.

use crate::env_dir;
use crate::mqtt::{free_port, Proc};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of the resident set (heap, stacks, compiled guests).
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// A `kB` field of `/proc/{pid}/status` (0 when unreadable).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

pub fn http_status(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /status HTTP/1.0\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    serde_json::from_str(raw.split_once("\r\n\r\n")?.1).ok()
}

/// Starts the release agent binary; returns it with (wall ms to ready, agent's own ready_ms).
pub fn start_agent(dir: &Path, extra: &str) -> (Proc, f64, f64) {
    let (proc_, _, wall, ready) = start_agent_env(dir, extra, &[]);
    (proc_, wall, ready)
}

/// Starts the agent once, to fill its precompiled cache, and stops it once
/// every service runs optimized code (so later starts measure cached starts).
pub fn fill_cache(dir: &Path) {
    let (agent, http, _, _) = start_agent_env(dir, "", &[]);
    until_optimized(http);
    drop(agent);
}

/// How long until `/status` on `http` shows every service on optimized code.
pub fn until_optimized(http: u16) -> Duration {
    let t = Instant::now();
    loop {
        let all = http_status(http).and_then(|s| {
            s["services"].as_array().map(|v| !v.is_empty() && v.iter().all(|s| s["code"] == "optimized"))
        });
        if all == Some(true) {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "services not on optimized code after 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// As [`start_agent`], with extra environment variables for the agent, also
/// returning its HTTP port.
pub fn start_agent_env(dir: &Path, extra: &str, envs: &[(&str, &str)]) -> (Proc, u16, f64, f64) {
    let (mqtt, http, api) = (free_port(), free_port(), free_port());
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"bench\"\nsite = \"b\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n{extra}",
            dir.join("services").display(),
            dir.join("state").display()
        ),
    )
    .expect("config");
    let (proc_, elapsed, status) = spawn_ready_with(&config, http, envs);
    (proc_, http, elapsed.as_secs_f64() * 1e3, status["ready_ms"].as_f64().unwrap_or(f64::NAN))
}

/// Starts the release agent on `config` and waits until `/status` on
/// `http` says ready; returns it, the time that took, and that status.
pub fn spawn_ready(config: &Path, http: u16) -> (Proc, Duration, serde_json::Value) {
    spawn_ready_with(config, http, &[])
}

fn spawn_ready_with(config: &Path, http: u16, envs: &[(&str, &str)]) -> (Proc, Duration, serde_json::Value) {
    let bin = env_dir("OUTPOST_BIN_DIR", "target/release").join("outpost");
    let t = Instant::now();
    let child = Command::new(&bin)
        .envs(envs.iter().copied())
        .arg("--config")
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let proc_ = Proc(child);
    loop {
        if let Some(s) = http_status(http) {
            if s["state"] == "ready" {
                return (proc_, t.elapsed(), s);
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "agent not ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn install(dir: &Path, package: &Path, name: &str) {
    let dest = dir.join("services").join(name);
    std::fs::create_dir_all(&dest).expect("mkdir");
    std::fs::copy(package.join("service.wasm"), dest.join("service.wasm")).expect("copy");
    let manifest = std::fs::read_to_string(package.join("service.toml")).expect("manifest");
    let manifest = manifest.replacen(
        &format!("name = \"{}\"", package.file_name().and_then(|n| n.to_str()).unwrap_or("")),
        &format!("name = \"{name}\""),
        1,
    );
    std::fs::write(dest.join("service.toml"), manifest).expect("write");
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw.split_once("\r\n\r\n")?.1.to_owned())
}

/// `outpost_queue_depth` summed over the agent's services (from /metrics).
pub fn queue_depth(http: u16) -> f64 {
    http_get(http, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("outpost_queue_depth"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
