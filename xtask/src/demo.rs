//! `cargo xtask demo`: the agent with its embedded broker, the positioning
//! service deployed, and real GNSS captures replayed through it.

use crate::{build_packages, cargo, done, packages_dir, run as run_cmd, step, toolchain};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Real captures shipped in tests/data: (asset, kind, file).
const CAPTURES: [(&str, &str, &str); 3] = [
    ("haul-truck-7", "nmea", "tests/data/gpsd-nmea-logs/ublox-lea-5h.log"),
    ("dozer-2", "nmea", "tests/data/gpsd-nmea-logs/bu353s4.log"),
    ("loader-1", "ubx", "tests/data/gpsd-nmea-logs/ubx-binary/ublox-neo-m8n.log"),
];

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A bare HTTP/1.0 GET (no client library needed for a local status check).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let code = body.split_whitespace().nth(1)?.parse().ok()?;
    let body = body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn build_bins(release: bool) -> Result<()> {
    let t =
        step(&format!("building outpost, outpostctl and outpost-sim ({})", if release { "release" } else { "debug" }));
    let mut cmd = cargo();
    cmd.args(["build", "-p", "outpost-runtime", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    done(t);
    Ok(())
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let speed = match args.iter().position(|a| a == "--speed") {
        Some(i) => {
            args.get(i + 1).context("--speed needs a number")?.parse::<f64>().context("--speed needs a number")?
        }
        None => 30.0,
    };
    let guest = toolchain::setup(false)?;
    build_packages(root, &guest)?;
    build_bins(false)?;
    let bin = crate::host_target_dir(root).join("debug");

    let t = step("starting the agent with its embedded broker");
    let work = root.join("target/outpost/demo");
    let _ = std::fs::remove_dir_all(&work);
    let services = work.join("services/positioning");
    std::fs::create_dir_all(&services)?;
    for f in ["service.toml", "service.wasm"] {
        std::fs::copy(packages_dir(root).join("positioning").join(f), services.join(f))?;
    }
    let (mqtt, http, api) = (free_port()?, free_port()?, free_port()?);
    let config = work.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"demo-gw\"\nsite = \"demo\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n\n[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\n\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            work.join("services").display(),
            work.join("state").display()
        ),
    )?;
    let log = std::fs::File::create(work.join("agent.log"))?;
    let agent = KillOnDrop(
        Command::new(bin.join("outpost"))
            .arg("--config")
            .arg(&config)
            .stderr(log)
            .spawn()
            .context("cannot start outpost")?,
    );
    let http_addr = format!("127.0.0.1:{http}");
    let started = Instant::now();
    loop {
        if let Some((200, body)) = http_get(&http_addr, "/status") {
            if body.contains("\"ready\"") {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("agent not ready after 60 s; see {}", work.join("agent.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "    agent ready: MQTT on 127.0.0.1:{mqtt}, status page http://{http_addr}/ , log {}",
        work.join("agent.log").display()
    );
    run_cmd(Command::new(bin.join("outpostctl")).args(["status", "--agent", &format!("http://127.0.0.1:{api}")]))?;
    done(t);

    let t = step(&format!("replaying {} real GNSS captures at {speed}x; fixes as they arrive:", CAPTURES.len()));
    let watch = KillOnDrop(
        Command::new(bin.join("outpostctl"))
            .args(["watch", "--fixes", "--broker", &format!("mqtt://127.0.0.1:{mqtt}"), "svc/positioning/+/fix"])
            .stdout(Stdio::inherit())
            .spawn()
            .context("cannot start outpostctl watch")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut sim = Command::new(bin.join("outpost-sim"));
    sim.args(["--broker", &format!("mqtt://127.0.0.1:{mqtt}"), "--site", "demo", "--speed", &speed.to_string()]);
    for (asset, kind, file) in CAPTURES {
        sim.arg(format!("--{kind}")).arg(format!("{asset}={}", root.join(file).display()));
    }
    run_cmd(&mut sim)?;
    std::thread::sleep(Duration::from_secs(1));
    drop(watch);
    done(t);

    let t = step("agent metrics after the replay");
    if let Some((_, metrics)) = http_get(&http_addr, "/metrics") {
        for line in metrics.lines().filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("outpost_messages_")
                    || l.starts_with("outpost_traps")
                    || l.starts_with("outpost_service_events")
                    || l.starts_with("outpost_handle_seconds_count"))
        }) {
            println!("    {line}");
        }
    }
    let pid = agent.0.id().to_string();
    run_cmd(Command::new("kill").args(["-TERM", &pid]))?;
    let mut agent = agent;
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("    agent stopped (SIGTERM, drained)");
    done(t);
    Ok(())
}
