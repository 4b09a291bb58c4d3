//! `cargo xtask demo`: the agent with its embedded broker and every shipped
//! service deployed; real GNSS captures, the mine's real haul cycles and
//! refuels, and a scene of vehicles and a person around a pit replayed
//! through it, with traffic warnings printed live; then a water network
//! (L-Town, simulated with EPANET) calibrated and a burst found; KPIs at the end.

use crate::{build_packages, cargo, done, packages_dir, run as run_cmd, step, toolchain};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
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
    let (mqtt, http, api) = (free_port()?, free_port()?, free_port()?);
    let config = work.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"demo-gw\"\nsite = \"demo\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n\n[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\n\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n\n[api]\nlisten = \"127.0.0.1:{api}\"\n{SITE_CONFIG}",
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
    Ok(())
}
