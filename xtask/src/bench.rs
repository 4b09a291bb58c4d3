//! `cargo xtask bench`: builds everything in release and runs the benchmark
//! harness (`runtime/benches/agent.rs`), which prints every figure beside a
//! baseline measured in the same run.

use crate::{
    build_packages, cargo, demo, done, host_target_dir, packages_dir, run, step, test_packages_dir, toolchain,
};
use anyhow::Result;
use std::path::Path;

pub fn run_bench(root: &Path, args: &[String]) -> Result<()> {
    let guest = toolchain::setup(true)?;
    build_packages(root, &guest)?;
    demo::build_bins(true)?;
    let t = step("running benchmarks (release)");
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "outpost-runtime", "--bench", "agent", "--"])
        .args(args)
        .env("OUTPOST_PACKAGES", packages_dir(root))
        .env("OUTPOST_TEST_PACKAGES", test_packages_dir(root))
        .env("OUTPOST_BIN_DIR", host_target_dir(root).join("release"));
    run(&mut cmd)?;
    done(t);
    // The fleet over real MQTT: outpost-ops, Mosquitto with password file and
    // ACL, 1,000 and 10,000 simulated gateways (time to 100 %, gateways per
    // second, broker messages per gateway, time to rolled back).
    let t = step("running the fleet bench (release)");
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "outpost-ops", "--bench", "fleet"]);
    run(&mut cmd)?;
    done(t);
    Ok(())
}
