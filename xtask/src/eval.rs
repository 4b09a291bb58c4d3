//! `cargo xtask eval leak`: the leak-detection service on a simulated year
//! of L-Town, scored with the official BattLeDIM rules. Generates what is
//! missing first (WNTR/EPANET simulations and the network model, cached
//! outside git in /var/tmp/outpost-data/battledim: about 5 minutes per
//! simulated year on 2 cores), then replays and scores (seconds).

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
            "usage: cargo xtask eval leak [--seed N] [leak-eval options] | cargo xtask eval leakdb [SCENARIO ...] \
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
    run(cargo().args(["build", "-q", "-p", "outpost-runtime", "--bin", "outpostctl"]))?;
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

fn leak(root: &Path, args: &[String]) -> Result<()> {
    toolchain::setup(true)?;
    let (seed, rest) = match args.iter().position(|a| a == "--seed") {
        Some(i) => {
            let seed = args.get(i + 1).cloned().unwrap_or_default();
            if seed.parse::<u64>().is_err() {
                bail!("--seed needs a whole number");
            }
            let rest: Vec<String> =
                args.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, a)| a.clone()).collect();
            (Some(seed), rest)
        }
        None => (None, args.to_vec()),
    };
    let tools = root.join("plugins/leak-detection/tools");
    let cache = PathBuf::from(CACHE);
    let suffix = seed.as_ref().map(|s| format!("-seed{s}")).unwrap_or_default();
    let mut runs = Vec::new();
    for config in ["leakfree", "evaluation"] {
        let out = cache.join(format!("{config}{suffix}"));
        if !out.join("pressures.csv").is_file() || !out.join("meta.json").is_file() {
            let t =
                step(&format!("simulating L-Town 2019 ({config}) with EPANET into {} (about 5 min)", out.display()));
            let mut cmd = Command::new("python3");
            cmd.current_dir(&tools).args(["simulate_ltown.py", "--config", config, "--out"]).arg(&out);
            if let Some(s) = &seed {
                cmd.args(["--seed", s]);
            }
            run(&mut cmd)?;
            done(t);
        }
        runs.push(out);
    }
    let model = cache.join("leak-model.json");
    if !model.is_file() {
        let t = step("building the L-Town leak model (pressure sensitivities, about 30 s)");
        run(Command::new("python3").current_dir(&tools).args(["leak_model.py", "--out"]).arg(&model))?;
        done(t);
    }
    let t = step("replaying the year through leak-detection and scoring it (BattLeDIM rules)");
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-q", "-p", "outpost-eval", "--bin", "leak-eval", "--"])
        .arg("--leakfree")
        .arg(&runs[0])
        .arg("--evaluation")
        .arg(&runs[1])
        .arg("--model")
        .arg(&model)
        .args(&rest);
    run(&mut cmd)?;
    done(t);
    Ok(())
}
