//! `cargo xtask eval leak`: the leak-detection service under the BattLeDIM
//! protocol (calibrated on a simulated 2018, scored on 2019 with the official
//! rules, on report seeds never used to choose settings). Generates what is
//! missing first (WNTR/EPANET simulations and the network model, cached
//! outside git in /var/tmp/outpost-data/battledim: about 5 minutes per
//! simulated year on 2 cores, two years per seed), then replays and scores.
//! `cargo xtask eval leakdb`: LeakDB Hanoi scenarios, LeakDB's scores.

use crate::{cargo, done, run, step, toolchain};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const CACHE: &str = "/var/tmp/outpost-data/battledim";

pub fn run_eval(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("leak") => leak(root, &args[1..]),
        Some("leakdb") => leakdb(&args[1..]),
        Some("positioning") => positioning(root, &args[1..]),
        _ => bail!(
            "usage: cargo xtask eval leak [--set report|tuning|retired|all] [leak-eval options] | cargo xtask eval leakdb [leakdb-eval options] \
             | cargo xtask eval positioning DIR"
        ),
    }
}

/// The positioning component, run by `outpostctl run` exactly as on a
/// gateway, on every capture with a gpsd `.chk` beside it in DIR (and its
/// sub-folders): NMEA text one message per line, u-blox binary in 64-byte
/// chunks; then scored per epoch against gpsd (`positioning::score`).
fn positioning(root: &Path, args: &[String]) -> Result<()> {
    let [dir] = args else { bail!("usage: cargo xtask eval positioning DIR (captures with gpsd .chk files)") };
    let dir = std::fs::canonicalize(dir).with_context(|| format!("cannot open {dir}"))?;
    let guest = toolchain::setup(false)?;
    crate::build_packages(root, &guest)?;
    let t = step("building outpostctl");
    run(cargo().args(["build", "-q", "-p", "outpost-devtools", "--bin", "outpostctl"]))?;
    done(t);
    let outpostctl = crate::host_target_dir(root).join("debug/outpostctl");
    let package = crate::packages_dir(root).join("positioning");
    let out_dir = PathBuf::from("/var/tmp/outpost-data/positioning-eval");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut captures = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log")
                && PathBuf::from(format!("{}.chk", p.display())).is_file()
            {
                captures.push(p);
            }
        }
    }
    captures.sort();
    if captures.is_empty() {
        bail!("no capture with a .chk file in {}", dir.display());
    }
    let t = step(&format!("replaying {} captures through the positioning component (outpostctl run)", captures.len()));
    for c in &captures {
        let rel = c.strip_prefix(&dir).unwrap_or(c);
        let out = out_dir.join(format!("{}.fixes.jsonl", rel.display()));
        std::fs::create_dir_all(out.parent().unwrap_or(&out_dir))?;
        let binary = std::fs::read(c)?.windows(2).any(|w| w == [0xB5, 0x62]);
        let mut cmd = Command::new(&outpostctl);
        cmd.arg("run").arg(&package).arg("--replay").arg(c);
        if binary {
            cmd.args(["--topic", "site/eval/rx/gnss/ubx", "--chunk", "64"]);
        } else {
            cmd.args(["--topic", "site/eval/rx/gnss/nmea"]);
        }
        let output =
            cmd.stderr(std::process::Stdio::null()).output().with_context(|| format!("cannot start {cmd:?}"))?;
        if !output.status.success() {
            bail!("outpostctl run failed on {} ({})", c.display(), output.status);
        }
        std::fs::write(&out, &output.stdout)?;
    }
    done(t);
    let t = step("scoring per epoch against gpsd's .chk files");
    let mut cmd = cargo();
    cmd.args(["run", "-q", "--release", "-p", "positioning", "--example", "gpsd_score", "--"]).arg(&dir).arg(&out_dir);
    run(&mut cmd)?;
    done(t);
    Ok(())
}

/// LeakDB Hanoi scenarios (simulated and cached by the runner itself),
/// scored with LeakDB's official formulas.
fn leakdb(args: &[String]) -> Result<()> {
    toolchain::setup(true)?;
    let t = step("replaying LeakDB Hanoi scenarios through leak-detection and scoring them (F1, MCC, TPR, TNR, SED)");
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-q", "-p", "outpost-eval", "--bin", "leakdb-eval", "--"]).args(args);
    run(&mut cmd)?;
    done(t);
    Ok(())
}

/// Seeds `leak-eval` reports (never used while choosing settings) and the seeds the settings
/// were chosen on; keep equal to `eval/src/bin/leak-eval.rs`.
const LEAK_REPORT_SEEDS: [&str; 6] = ["9501", "9502", "9503", "9504", "9505", "9506"];
const LEAK_TUNING_SEEDS: [&str; 8] = ["2020", "2021", "2022", "2023", "2024", "2025", "2026", "2027"];
/// Report seeds of earlier rounds (already read): `--set retired`.
const LEAK_RETIRED_SEEDS: [&str; 12] =
    ["7301", "7302", "7303", "7304", "7305", "7306", "8811", "8812", "8813", "8814", "8815", "8816"];

/// The BattLeDIM protocol: per seed a 2018 historical run (calibration, labels) and a 2019
/// evaluation run (scored), simulated when missing (cached per seed, resumable: a run is kept
/// only once complete), then `leak-eval` prints the table. `--set tuning|all` runs the tuning
/// seeds too; other options go to `leak-eval`.
fn leak(root: &Path, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let mut cmd = cargo();
        cmd.args(["run", "--release", "-q", "-p", "outpost-eval", "--bin", "leak-eval", "--", "--help"]);
        return run(&mut cmd);
    }
    toolchain::setup(true)?;
    let set = match args.iter().position(|a| a == "--set") {
        Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
        None => "report".into(),
    };
    let seeds: Vec<&str> = match set.as_str() {
        "report" => LEAK_REPORT_SEEDS.to_vec(),
        "tuning" => LEAK_TUNING_SEEDS.to_vec(),
        "retired" => LEAK_RETIRED_SEEDS.to_vec(),
        "all" => LEAK_TUNING_SEEDS.iter().chain(&LEAK_REPORT_SEEDS).copied().collect(),
        _ => bail!("--set is report, tuning, retired or all"),
    };
    let tools = root.join("plugins/leak-detection/tools");
    let cache = PathBuf::from(CACHE);
    // Missing years, simulated two at a time (one EPANET process per core).
    let mut missing = Vec::new();
    for seed in &seeds {
        for config in ["historical", "evaluation"] {
            if !cache.join(format!("{config}-seed{seed}")).join("meta.json").is_file() {
                missing.push((config, *seed));
            }
        }
    }
    for pair in missing.chunks(2) {
        let what: Vec<String> = pair.iter().map(|(c, s)| format!("{c} seed {s}")).collect();
        let t = step(&format!(
            "simulating L-Town ({}) with EPANET into {} (5-14 min a year on 2 cores)",
            what.join(", "),
            cache.display()
        ));
        let mut children = Vec::new();
        for (config, seed) in pair {
            let tmp = cache.join(format!("{config}-seed{seed}.tmp"));
            let child = Command::new("python3")
                .current_dir(&tools)
                .args(["simulate_ltown.py", "--config", config, "--seed", seed, "--out"])
                .arg(&tmp)
                .spawn()?;
            children.push((child, tmp, cache.join(format!("{config}-seed{seed}"))));
        }
        for (mut child, tmp, out) in children {
            if !child.wait()?.success() {
                bail!("simulate_ltown.py failed for {}", out.display());
            }
            let _ = std::fs::remove_dir_all(&out);
            std::fs::rename(&tmp, &out)?;
        }
        done(t);
    }
    let model = cache.join("leak-model.json");
    if !model.is_file() {
        let t = step("building the L-Town leak model (pressure sensitivities, about 30 s)");
        run(Command::new("python3").current_dir(&tools).args(["leak_model.py", "--out"]).arg(&model))?;
        done(t);
    }
    let t = step("calibrating on 2018, replaying 2019 through leak-detection per seed, scoring (BattLeDIM rules)");
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-q", "-p", "outpost-eval", "--bin", "leak-eval", "--"])
        .arg("--cache")
        .arg(&cache)
        .arg("--model")
        .arg(&model)
        .args(args);
    run(&mut cmd)?;
    done(t);
    Ok(())
}
