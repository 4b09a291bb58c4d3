//! `cargo xtask`: the project's own setup, build, test, demo and bench
//! commands. Everything a bare machine needs is installed from here.

mod bench;
mod demo;
mod dist;
mod eval;
mod fleet_demo;
mod toolchain;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup   install what is missing (WASM guest toolchain, Mosquitto, promtool)
  build   build every service component and assemble packages in target/outpost/
  test    setup + build + run every test (what CI runs)
  demo    start the agent with its embedded broker, deploy every service and
          replay GNSS captures, pit traffic, haul cycles and a water network's
          SCADA through every service
  bench   measured figures beside their baselines (release build)
  dist [--arch amd64|arm64|all] [--debug]
          release packages in target/outpost/dist/: a Debian package and a
          tarball per architecture (arm64 cross-compiled), with the agent, the
          CLI, the service packages, the systemd unit and the config template
  eval leak [--seed N]
          the leak-detection service on a simulated year of L-Town, scored
          with the official BattLeDIM rules (simulates and caches what is missing)
  eval leakdb [SCENARIO ...]
          the same service on LeakDB Hanoi scenarios, LeakDB's official scores
  eval positioning DIR
          the positioning component through `outpostctl run` on every capture
          in DIR with a gpsd .chk beside it (e.g. ../shared/data/gpsd-nmea-logs),
          scored per epoch against gpsd; fails below 99% overall / 95% per file";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("setup") => {
            toolchain::setup(true)?;
        }
        Some("build") => {
            let guest = toolchain::setup(false)?;
            build_packages(&root, &guest)?;
        }
        Some("test") => test(&root, &args[1..])?,
        Some("demo") => demo::run(&root, &args[1..])?,
        Some("bench") => bench::run_bench(&root, &args[1..])?,
        Some("eval") => eval::run_eval(&root, &args[1..])?,
        Some("dist") => dist::run_dist(&root, &args[1..])?,
        _ => {
            println!("{USAGE}");
            if !args.is_empty() {
                bail!("unknown command {:?}", args[0]);
            }
        }
    }
    Ok(())
}

/// The checkout `cargo xtask` was run in: the nearest folder up from the
/// current one holding this workspace (`xtask/` beside a `[workspace]`
/// manifest). Found at run time, not compiled in, because a target directory
/// shared by two checkouts (CI keeps one) may run an xtask built in the other.
fn workspace_root() -> Result<PathBuf> {
    let start = std::env::current_dir().context("cannot read the current directory")?;
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if dir.join("xtask/Cargo.toml").is_file()
            && std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]"))
        {
            return Ok(dir.to_owned());
        }
    }
    bail!("run cargo xtask inside the Outpost checkout ({} is not)", start.display())
}

/// Prints a step header; returns the start time for `done`.
pub fn step(what: &str) -> Instant {
    println!("\x1b[1m==> {what}\x1b[0m");
    Instant::now()
}

pub fn done(t: Instant) {
    println!("    done in {:.1}s", t.elapsed().as_secs_f64());
}

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

/// The host cargo (the one running xtask).
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Where the host cargo puts its builds (CI may move it out of the clone).
pub fn host_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

pub fn packages_dir(root: &Path) -> PathBuf {
    root.join("target/outpost/packages")
}

pub fn test_packages_dir(root: &Path) -> PathBuf {
    root.join("target/outpost/test-packages")
}

/// Guest crates: every folder with a `service.toml` under plugins/ (real
/// services) and tests/guests/ (test services).
fn guest_crates(root: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for (folder, is_test) in [("plugins", false), ("tests/guests", true)] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(folder))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("service.toml").is_file() && p.join("Cargo.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
            let name = manifest
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
                .with_context(|| format!("no package name in {}", dir.join("Cargo.toml").display()))?
                .to_owned();
            out.push((name, dir, is_test));
        }
    }
    Ok(out)
}

/// Builds every guest to wasm32-wasip2 and assembles `service.toml` +
/// `service.wasm` package folders.
pub fn build_packages(root: &Path, guest: &toolchain::Guest) -> Result<()> {
    let crates = guest_crates(root)?;
    let t = step(&format!(
        "building {} service components ({}) with {}",
        crates.len(),
        crates.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", "),
        guest.describe()
    ));
    let target_dir = host_target_dir(root).join("wasm");
    let mut cmd = guest.cargo_build(&target_dir);
    for (name, _, _) in &crates {
        cmd.arg("-p").arg(name);
    }
    run(&mut cmd)
        .context("building service components failed; run `cargo xtask setup` to check the guest toolchain")?;
    for (name, dir, is_test) in &crates {
        let wasm = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        let dest_root = if *is_test { test_packages_dir(root) } else { packages_dir(root) };
        let dest = dest_root.join(name);
        std::fs::create_dir_all(&dest)?;
        std::fs::copy(dir.join("service.toml"), dest.join("service.toml"))?;
        std::fs::copy(&wasm, dest.join("service.wasm"))
            .with_context(|| format!("component {} was not produced", wasm.display()))?;
        let size = std::fs::metadata(dest.join("service.wasm"))?.len();
        println!("    {name}: {} ({} KiB)", dest.display(), size / 1024);
    }
    done(t);
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let guest = toolchain::setup(true)?;
    build_packages(root, &guest)?;
    demo::build_bins(false)?;
    dist::for_tests(root)?;
    let t = step("running every test (cargo test --workspace)");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "xtask"])
        .args(extra)
        .env("OUTPOST_PACKAGES", packages_dir(root))
        .env("OUTPOST_TEST_PACKAGES", test_packages_dir(root))
        .env("OUTPOST_BIN_DIR", host_target_dir(root).join("debug"))
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    // Pass the output through and add up every test binary's result line.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    done(t);
    Ok(())
}
