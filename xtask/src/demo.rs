//! `cargo xtask demo`: the agent with its embedded broker and every shipped
//! service deployed; real GNSS captures, the mine's real haul cycles and
//! refuels, and a scene of vehicles and a person around a pit replayed
//! through it, with traffic warnings printed live; then a water network
//! (L-Town, simulated with EPANET) calibrated and a burst found; KPIs; and
//! last a small fleet rolled out from `outpost-ops` (`fleet_demo.rs`).

use crate::{build_packages, cargo, done, packages_dir, run as run_cmd, step, toolchain};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Services deployed by the demo (built from plugins/).
const SERVICES: [&str; 4] = ["positioning", "weight-loading", "traffic-awareness", "leak-detection"];

/// The water network part: L-Town simulated with EPANET (cached outside git
/// like the leak tests' windows): ten leak-free January days to calibrate on,
/// then four days around the abrupt leak on pipe p523 (2019-01-15 23:00).
const LEAK_CACHE: &str = "/var/tmp/outpost-data/battledim";
const LEAK_CALIBRATION: (&str, &str) = ("2019-01-02 00:00", "2019-01-11 23:55");
const LEAK_WINDOW: (&str, &str) = ("2019-01-14 00:00", "2019-01-17 23:55");

/// Simulates what the water-network part needs unless cached; returns
/// (calibration dir, leak window dir, network model file).
fn leak_inputs(root: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let tools = root.join("plugins/leak-detection/tools");
    let cache = Path::new(LEAK_CACHE);
    let cal = cache.join("demo-leakfree");
    let window = cache.join("demo-p523");
    let model = cache.join("demo-leak-model.json");
    for (dir, config, (start, end)) in [(&cal, "leakfree", LEAK_CALIBRATION), (&window, "evaluation", LEAK_WINDOW)] {
        if !dir.join("levels.csv").is_file() {
            let t = step(&format!(
                "simulating L-Town {start} .. {end} ({config}) with EPANET, cached in {}",
                dir.display()
            ));
            run_cmd(
                Command::new("python3")
                    .current_dir(&tools)
                    .args(["simulate_ltown.py", "--config", config, "--start", start, "--end", end, "--out"])
                    .arg(dir),
            )?;
            done(t);
        }
    }
    if !model.is_file() {
        let t = step("building the L-Town network model (pressure sensitivities)");
        run_cmd(Command::new("python3").current_dir(&tools).args(["leak_model.py", "--out"]).arg(&model))?;
        done(t);
    }
    Ok((cal, window, model))
}

/// The demo site's calibration: asset classes and zones around the pit
/// (origin -23.44, -70.25; the scene below is in metres from it).
const SITE_CONFIG: &str = r#"
[services.traffic-awareness.config]
site = "demo"
origin = { lat = -23.44, lon = -70.25 }
classes = [
  { name = "haul truck", prefix = "haul-", radius_m = 6.0 },
  { name = "light vehicle", prefix = "lv-", radius_m = 2.5 },
  { name = "person", prefix = "p-", radius_m = 0.5 },
]
zones = [
  { name = "crusher-road", kind = "speed_limit", max_speed_mps = 8.3, polygon = [[-23.44027, -70.25147], [-23.44027, -70.24853], [-23.43973, -70.24853], [-23.43973, -70.25147]] },
  { name = "blast-area", kind = "no_go", polygon = [[-23.44117, -70.25020], [-23.44117, -70.24980], [-23.44081, -70.24980], [-23.44081, -70.25020]] },
]
"#;

/// A minute around the pit at 10 Hz, in local metres: four haul trucks
/// clockwise on a 250 m ring road, one counter-clockwise in the other lane
/// (8 m over), a light vehicle crossing the crusher road too fast, and a
/// surveyor walking into the blast area.
fn mine_scene() -> String {
    let mut csv = String::from("track_id,object_type,timestep,position_x,position_y,velocity_x,velocity_y\n");
    let ring = |r: f64, phase: f64, omega: f64, t: f64| {
        let a = phase + omega * t;
        (r * a.cos(), r * a.sin(), -r * omega * a.sin(), r * omega * a.cos())
    };
    for step in 0..600 {
        let t = f64::from(step) * 0.1;
        let mut rows = Vec::new();
        for k in 0..4 {
            rows.push((format!("haul-{}", k + 1), ring(250.0, f64::from(k) * std::f64::consts::FRAC_PI_2, -0.04, t)));
        }
        rows.push(("haul-5".to_owned(), ring(258.0, 0.3, 8.0 / 258.0, t)));
        rows.push(("lv-1".to_owned(), (-160.0 + 12.0 * t, 0.0, 12.0, 0.0)));
        rows.push(("p-1".to_owned(), (0.0, -60.0 - 1.2 * t.min(50.0), 0.0, if t < 50.0 { -1.2 } else { 0.0 })));
        for (id, (x, y, vx, vy)) in rows {
            csv += &format!("{id},vehicle,{step},{x:.3},{y:.3},{vx:.4},{vy:.4}\n");
        }
    }
    csv
}

/// One row per shift from the site shift reports `outpostctl watch`
/// collected (the last report of a shift is its final state).
fn print_shift_table(log: &str) {
    let mut last: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for line in log.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            let report = v["payload"].clone();
            if let Some(shift) = report["shift"].as_str() {
                last.insert(shift.to_owned(), report);
            }
        }
    }
    if last.is_empty() {
        println!("    (no site shift report arrived)");
        return;
    }
    let num = |v: &serde_json::Value, k: &str, prec: usize| {
        v[k].as_f64().map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"))
    };
    println!(
        "    {:<10} {:>6} {:>6} {:>9} {:>8} {:>8} {:>9} {:>7} {:>7} {:>8}",
        "shift", "trucks", "cycles", "tonnes", "t/h", "mean t", "overload", "queue s", "refuels", "rejected"
    );
    for (shift, r) in &last {
        println!(
            "    {shift:<10} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8}% {:>7} {:>7} {:>8}",
            num(r, "trucks", 0),
            num(r, "cycles", 0),
            num(r, "tonnes", 0),
            num(r, "tonnes_per_hour", 0),
            num(r, "mean_payload_t", 1),
            r["overload_share"].as_f64().map_or_else(|| "-".to_owned(), |x| format!("{:.1}", x * 100.0)),
            num(r, "queue_s_mean", 0),
            num(r, "refuels", 0),
            num(r, "rejected_total", 0),
        );
    }
}

/// Real captures shipped in tests/data: (asset, kind, file).
/// A week of haul cycles in about half a minute.
const HAUL_SPEED: f64 = 20_000.0;

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

pub struct KillOnDrop(pub Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn build_bins(release: bool) -> Result<()> {
    let t =
        step(&format!("building outpost, outpostctl, outpost-sim and outpost-ops ({})", if release { "release" } else { "debug" }));
    let mut cmd = cargo();
    cmd.args(["build", "-p", "outpost-runtime", "-p", "outpost-devtools", "-p", "outpost-ops", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    done(t);
    Ok(())
}

/// Messages per second of the live-upgrade stream, spread over its keys.
const UPGRADE_RATE: u64 = 1000;
const UPGRADE_KEYS: usize = 4;

fn count_lines(path: &Path, pred: impl Fn(&str) -> bool) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| pred(l)).count()
}

/// Waits until `path` has a line after the first `skip` for which `pred`
/// holds; returns how long it took.
fn wait_for_line(path: &Path, skip: usize, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().skip(skip).any(&pred) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("no such output in {} after {:?}", path.display(), limit);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The testbed service (echoes each payload to `{out}/{tail}`) as a signed
/// package at `version`; v2 writes under test/out/v2/ so the subscriber sees
/// which version handled each message.
pub fn testbed_package(root: &Path, bin: &Path, work: &Path, key: &Path, version: &str, out: &str) -> Result<PathBuf> {
    let src = crate::test_packages_dir(root).join("testbed");
    let dir = work.join(format!("testbed-{version}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(src.join("service.wasm"), dir.join("service.wasm"))?;
    let manifest = std::fs::read_to_string(src.join("service.toml"))?
        .replacen("version = \"0.1.0\"", &format!("version = \"{version}\""), 1)
        .replacen("out = \"test/out\"", &format!("out = \"{out}\""), 1);
    std::fs::write(dir.join("service.toml"), manifest)?;
    let opkg = work.join(format!("testbed-{version}.opkg"));
    let mut c = Command::new(bin.join("outpostctl"));
    c.arg("package").arg(&dir).arg("--key").arg(key).arg("--out").arg(&opkg).stdout(Stdio::null());
    run_cmd(&mut c)?;
    Ok(opkg)
}

/// `cargo xtask demo fleet`: only the fleet part at the end of the demo.
fn fleet_only(root: &Path) -> Result<()> {
    let guest = toolchain::setup(false)?;
    build_packages(root, &guest)?;
    build_bins(false)?;
    let bin = crate::host_target_dir(root).join("debug");
    let work = root.join("target/outpost/demo-fleet");
    let _ = std::fs::remove_dir_all(&work);
    let trust = work.join("trust");
    std::fs::create_dir_all(&trust)?;
    let mut keygen = Command::new(bin.join("outpostctl"));
    keygen.arg("keygen").arg("--out").arg(work.join("keys")).args(["--name", "outpost-tests"]).stdout(Stdio::null());
    run_cmd(&mut keygen)?;
    std::fs::copy(work.join("keys/outpost-tests.pub"), trust.join("outpost-tests.pub"))?;
    let t = step("a fleet: outpost-ops rolls a signed service out to four agents on two sites, in waves");
    crate::fleet_demo::run(root, &bin, &work, &work.join("keys/outpost-tests.key"), &trust)?;
    done(t);
    Ok(())
}

/// A service upgraded v1 -> v2 and rolled back through the management API
/// (`outpostctl upgrade` / `rollback`, signed packages) while an independent
/// client publishes a numbered QoS 1 stream over four keys; the verdict
/// comes from what an independent subscriber received.
fn live_upgrade(root: &Path, bin: &Path, work: &Path, api: u16, mqtt: u16, key: &Path) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    if Command::new("mosquitto_pub").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        crate::toolchain::apt_install(&["mosquitto-clients"])?;
    }
    let broker = format!("mqtt://127.0.0.1:{mqtt}");
    let agent_url = format!("http://127.0.0.1:{api}");
    let token = work.join("state/api.token");
    let ctl = |args: &[&str]| -> Command {
        let mut c = Command::new(bin.join("outpostctl"));
        c.args(args).args(["--agent", &agent_url, "--token-file"]).arg(&token);
        c
    };
    let v1 = testbed_package(root, bin, work, key, "1.0.0", "test/out")?;
    let v2 = testbed_package(root, bin, work, key, "2.0.0", "test/out/v2")?;
    println!("    signed {} and {} with the demo's provider key", v1.display(), v2.display());
    run_cmd(ctl(&["deploy"]).arg(&v1))?;

    let received = work.join("upgrade-stream.jsonl");
    let watch = KillOnDrop(
        Command::new(bin.join("outpostctl"))
            .args(["watch", "--broker", &broker, "test/out/#"])
            .stdout(std::fs::File::create(&received)?)
            .spawn()
            .context("cannot start outpostctl watch")?,
    );
    // The subscriber is in place and v1 serves once a probe comes back.
    let t = Instant::now();
    while count_lines(&received, |l| l.contains("test/out/probe")) == 0 {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("testbed 1.0.0 does not answer; see {}", work.join("agent.log").display());
        }
        let mut p = Command::new(bin.join("outpostctl"));
        p.args(["publish", "test/in/probe", "--broker", &broker, "--message", "{\"probe\":true}"]);
        run_cmd(p.stdout(Stdio::null()))?;
        std::thread::sleep(Duration::from_millis(300));
    }

    // The publisher: mosquitto_pub, one per key, fed numbered lines at a steady pace.
    let mut pubs = Vec::new();
    for k in 0..UPGRADE_KEYS {
        pubs.push(KillOnDrop(
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-q", "1", "-l", "-t", &format!("test/in/k{k}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start mosquitto_pub")?,
        ));
    }
    let mut inputs: Vec<std::process::ChildStdin> = pubs.iter_mut().filter_map(|p| p.0.stdin.take()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let pacer = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || -> Result<usize> {
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (k, input) in inputs.iter_mut().enumerate() {
                    writeln!(input, "{{\"key\":\"k{k}\",\"n\":{n}}}")?;
                    input.flush()?;
                }
                n += 1;
                sent.store(n as usize * UPGRADE_KEYS, Ordering::Relaxed);
                let next = start + Duration::from_micros(n * UPGRADE_KEYS as u64 * 1_000_000 / UPGRADE_RATE);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(n as usize)
        })
    };
    println!(
        "    stream running: {UPGRADE_KEYS} keys, {UPGRADE_RATE} numbered QoS 1 messages/s (mosquitto_pub), \
         subscriber outpostctl watch test/out/#"
    );
    std::thread::sleep(Duration::from_millis(2000));

    let before = count_lines(&received, |_| true);
    println!("    {} sent so far; outpostctl upgrade {} --yes", sent.load(Ordering::Relaxed), v2.display());
    let t = Instant::now();
    run_cmd(ctl(&["upgrade", "--yes"]).arg(&v2))?;
    let rpc = t.elapsed();
    let serving = wait_for_line(&received, before, Duration::from_secs(30), |l| l.contains("test/out/v2/"))?;
    println!(
        "    upgrade applied in {:.0} ms (the command, process start included); v2's first output {:.0} ms after it was issued",
        rpc.as_secs_f64() * 1e3,
        (rpc + serving).as_secs_f64() * 1e3
    );
    std::thread::sleep(Duration::from_millis(2000));

    let before = count_lines(&received, |_| true);
    println!("    {} sent so far; outpostctl rollback testbed", sent.load(Ordering::Relaxed));
    let t = Instant::now();
    run_cmd(&mut ctl(&["rollback", "testbed"]))?;
    let rpc = t.elapsed();
    let serving = wait_for_line(&received, before, Duration::from_secs(30), |l| {
        l.contains("\"test/out/k") && !l.contains("test/out/v2/")
    })?;
    println!(
        "    rolled back in {:.0} ms; v1's first output {:.0} ms after the command was issued",
        rpc.as_secs_f64() * 1e3,
        (rpc + serving).as_secs_f64() * 1e3
    );
    std::thread::sleep(Duration::from_millis(2000));

    stop.store(true, Ordering::Relaxed);
    let per_key = pacer.join().map_err(|_| anyhow::anyhow!("the pacer panicked"))??;
    // Closing stdin ends each mosquitto_pub once the broker acknowledged its messages.
    for mut p in pubs {
        let status = p.0.wait()?;
        if !status.success() {
            bail!("mosquitto_pub failed ({status})");
        }
    }
    let total = per_key * UPGRADE_KEYS;
    println!("    stream stopped: {total} messages published and acknowledged; waiting for the subscriber to see them");
    let stream_line = |l: &&str| l.contains("\"test/out/k") || l.contains("\"test/out/v2/k");
    let (mut last, mut still) = (0, Instant::now());
    loop {
        let n = count_lines(&received, |l| stream_line(&l));
        if n >= total {
            break;
        }
        if n != last {
            (last, still) = (n, Instant::now());
        } else if still.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(watch);

    // The verdict, from what the subscriber actually received.
    let text = std::fs::read_to_string(&received)?;
    let mut seen = vec![vec![false; per_key]; UPGRADE_KEYS];
    let mut last_n: Vec<Option<u64>> = vec![None; UPGRADE_KEYS];
    let (mut duplicates, mut by_v2, mut in_order, mut foreign) = (0usize, 0usize, true, 0usize);
    for line in text.lines().filter(stream_line) {
        let v: serde_json::Value = serde_json::from_str(line).context("a line of outpostctl watch")?;
        let (Some(k), Some(n)) = (
            v["payload"]["key"].as_str().and_then(|k| k.strip_prefix('k')).and_then(|k| k.parse::<usize>().ok()),
            v["payload"]["n"].as_u64(),
        ) else {
            foreign += 1;
            continue;
        };
        let Some(slot) = seen.get_mut(k).and_then(|s| s.get_mut(n as usize)) else {
            foreign += 1;
            continue;
        };
        if *slot {
            duplicates += 1;
            continue;
        }
        *slot = true;
        if v["topic"].as_str().is_some_and(|t| t.starts_with("test/out/v2/")) {
            by_v2 += 1;
        }
        if last_n[k].is_some_and(|l| l > n) {
            in_order = false;
        }
        last_n[k] = Some(n);
    }
    let lost = seen.iter().flatten().filter(|s| !**s).count();
    run_cmd(&mut ctl(&["list"]))?;
    println!(
        "    upgrade + rollback under load: {total} messages, {lost} lost, {duplicates} duplicates, per-key order {}; \
         {by_v2} handled by v2, {} by v1{}",
        if in_order { "held" } else { "BROKEN" },
        total - lost - by_v2,
        if foreign > 0 { format!(" ({foreign} unexpected outputs)") } else { String::new() }
    );
    if lost > 0 || !in_order || foreign > 0 {
        bail!("the live upgrade lost or reordered messages; the stream is in {}", received.display());
    }
    Ok(())
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "fleet") {
        return fleet_only(root);
    }
    let speed = match args.iter().position(|a| a == "--speed") {
        Some(i) => {
            args.get(i + 1).context("--speed needs a number")?.parse::<f64>().context("--speed needs a number")?
        }
        None => 30.0,
    };
    let guest = toolchain::setup(false)?;
    toolchain::python_hydraulics()?;
    build_packages(root, &guest)?;
    build_bins(false)?;
    let (leak_cal, leak_window, leak_model) = leak_inputs(root)?;
    let bin = crate::host_target_dir(root).join("debug");

    let t = step("starting the agent with its embedded broker");
    let work = root.join("target/outpost/demo");
    let _ = std::fs::remove_dir_all(&work);
    for name in SERVICES {
        let services = work.join("services").join(name);
        std::fs::create_dir_all(&services)?;
        for f in ["service.toml", "service.wasm"] {
            std::fs::copy(packages_dir(root).join(name).join(f), services.join(f))?;
        }
    }
    // A provider key for the live upgrade below, trusted by this agent only.
    let trust = work.join("trust");
    std::fs::create_dir_all(&trust)?;
    let mut keygen = Command::new(bin.join("outpostctl"));
    keygen.arg("keygen").arg("--out").arg(work.join("keys")).args(["--name", "outpost-tests"]).stdout(Stdio::null());
    run_cmd(&mut keygen)?;
    let provider_key = work.join("keys/outpost-tests.key");
    std::fs::copy(work.join("keys/outpost-tests.pub"), trust.join("outpost-tests.pub"))?;
    let (mqtt, http, api) = (free_port()?, free_port()?, free_port()?);
    let config = work.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"demo-gw\"\nsite = \"demo\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\ntrust_dir = \"{}\"\n\n[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\n\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n\n[api]\nlisten = \"127.0.0.1:{api}\"\n{SITE_CONFIG}",
            work.join("services").display(),
            work.join("state").display(),
            trust.display()
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
    run_cmd(
        Command::new(bin.join("outpostctl"))
            .args(["status", "--agent", &format!("http://127.0.0.1:{api}"), "--token-file"])
            .arg(work.join("state/api.token")),
    )?;
    done(t);

    let broker = format!("mqtt://127.0.0.1:{mqtt}");
    let t = step(&format!(
        "replaying side by side: {} GNSS captures at {speed}x, a minute of pit traffic in real time, \
         and a week of real haul cycles and refuels at {HAUL_SPEED}x; traffic warnings as they arrive:",
        CAPTURES.len()
    ));
    let watch = KillOnDrop(
        Command::new(bin.join("outpostctl"))
            .args(["watch", "--pretty", "--broker", &broker])
            .args(["svc/traffic-awareness/+/warning", "svc/traffic-awareness/+/zone"])
            .stdout(Stdio::inherit())
            .spawn()
            .context("cannot start outpostctl watch")?,
    );
    let shift_log = work.join("site-shift-reports.log");
    let shifts = KillOnDrop(
        Command::new(bin.join("outpostctl"))
            .args(["watch", "--broker", &broker, "svc/weight-loading/site/+/shift"])
            .stdout(std::fs::File::create(&shift_log)?)
            .spawn()
            .context("cannot start outpostctl watch")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let scene = work.join("pit-scene.csv");
    std::fs::write(&scene, mine_scene())?;
    let quiet = |cmd: &mut Command| -> Result<Child> { Ok(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?) };
    let mut gnss = Command::new(bin.join("outpost-sim"));
    gnss.args(["--broker", &broker, "--site", "demo", "--speed", &speed.to_string()]);
    for (asset, kind, file) in CAPTURES {
        gnss.arg(format!("--{kind}")).arg(format!("{asset}={}", root.join(file).display()));
    }
    let mut haul = Command::new(bin.join("outpost-sim"));
    haul.args(["--broker", &broker, "--site", "demo", "--speed", &HAUL_SPEED.to_string()])
        .arg("--haul")
        .arg(root.join("tests/data/mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv"))
        .arg("--fuel")
        .arg(root.join("tests/data/mine-haul-dispatch/SfdShiftFueltrucksAllUpdatedFin.csv"));
    let sims = [KillOnDrop(quiet(&mut gnss)?), KillOnDrop(quiet(&mut haul)?)];
    let mut pit = Command::new(bin.join("outpost-sim"));
    pit.args(["--broker", &broker, "--site", "demo", "--origin", "-23.44,-70.25", "--tracks"]).arg(&scene);
    run_cmd(pit.stdout(Stdio::null()).stderr(Stdio::null()))?;
    for mut sim in sims {
        let finished = sim.0.wait()?;
        if !finished.success() {
            bail!("outpost-sim failed ({finished}); see its output by running it alone");
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(watch);
    drop(shifts);
    done(t);

    let t = step("the site manager's view: weight loading's site report, last state of each shift");
    print_shift_table(&std::fs::read_to_string(&shift_log).unwrap_or_default());
    done(t);

    let t =
        step("the water network: calibrate leak detection on ten leak-free days, then replay four days around a burst");
    let ctl = |args: &[&str]| -> Command {
        let mut c = Command::new(bin.join("outpostctl"));
        c.args(args);
        c
    };
    run_cmd(ctl(&["publish", "site/demo/ltown/leak-model", "--broker", &broker, "--file"]).arg(&leak_model))?;
    let calibrate = format!(r#"{{"start":"{}","end":"{}"}}"#, LEAK_CALIBRATION.0, LEAK_CALIBRATION.1);
    run_cmd(&mut ctl(&["publish", "site/demo/ltown/calibrate", "--broker", &broker, "--message", &calibrate]))?;
    let alarms = KillOnDrop(
        ctl(&["watch", "--pretty", "--broker", &broker, "svc/leak-detection/+/alarm"])
            .stdout(Stdio::inherit())
            .spawn()
            .context("cannot start outpostctl watch")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    for dir in [&leak_cal, &leak_window] {
        let mut sim = Command::new(bin.join("outpost-sim"));
        sim.args(["--broker", &broker, "--site", "demo", "--network", "ltown", "--fast", "--scada"]).arg(dir);
        run_cmd(sim.stdout(Stdio::null()).stderr(Stdio::null()))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(alarms);
    println!(
        "    (truth: leaks on p257, p427, p654 and p810 have run since 2018, so they show as start-up alarms \
         against the leak-free calibration; p523 burst at 2019-01-15 23:00, about 28 m3/h)"
    );
    done(t);

    let t = step(
        "a live upgrade: a signed service upgraded v1 -> v2 and rolled back through the management API \
         while numbered QoS 1 messages flow",
    );
    live_upgrade(root, &bin, &work, api, mqtt, &provider_key)?;
    done(t);

    let t = step("agent metrics after the replay");
    if let Some((_, metrics)) = http_get(&http_addr, "/metrics") {
        for line in metrics.lines().filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("outpost_messages_")
                    || l.starts_with("outpost_traps")
                    || (l.starts_with("outpost_service_kpi") && l.contains("subject=\"\""))
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

    let t = step("a fleet: outpost-ops rolls a signed service out to four agents on two sites, in waves");
    crate::fleet_demo::run(root, &bin, &work, &provider_key, &trust)?;
    done(t);
    Ok(())
}
