//! Finds or installs what builds and tests need on a bare machine: a WASM
//! guest toolchain (rustup's wasm32-wasip2 target where it can be had,
//! else Debian's rustc-web with build-std), Mosquitto and promtool.
//! Detecting the toolchain and the build command live in `outpost-toolchain`
//! (`toolchain/`), which `outpostctl build` uses too; installing lives here.

use crate::{done, run, step};
use anyhow::{bail, Context, Result};
use outpost_toolchain::{
    debian_toolchain_ready, has_command, run_with_timeout, rustup_has_wasm_target, DEBIAN_PACKAGES,
};
use std::process::Command;
use std::time::Duration;

/// How guests are compiled (shared with `outpostctl build`).
pub use outpost_toolchain::Guest;

static APT_UPDATED: std::sync::Once = std::sync::Once::new();

/// `apt-get install` as root (or through sudo), updating the lists once.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let prefix: Vec<&str> = if root {
        vec![]
    } else if has_command("sudo") {
        vec!["sudo", "-n"]
    } else {
        bail!(
            "need to install {} but this user is not root and has no sudo; install them and rerun",
            packages.join(" ")
        );
    };
    let apt = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = prefix.clone();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut cmd = Command::new(all[0]);
        cmd.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    let mut update = Ok(());
    APT_UPDATED.call_once(|| update = apt(&["update", "-q"]));
    update.context("apt-get update failed")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args).with_context(|| format!("apt-get install {} failed", packages.join(" ")))
}

/// Finds or installs the guest toolchain; with `servers`, also Mosquitto
/// and promtool for the interop tests.
pub fn setup(servers: bool) -> Result<Guest> {
    let t = step("checking the WASM guest toolchain");
    let forced = std::env::var("OUTPOST_GUEST_TOOLCHAIN").ok();
    let guest = match forced.as_deref() {
        Some("debian") => {
            if !debian_toolchain_ready() {
                apt_install(&DEBIAN_PACKAGES)?;
            }
            Guest::Debian
        }
        Some("rustup") => {
            if !rustup_has_wasm_target() {
                run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
            }
            Guest::Rustup
        }
        Some(other) => bail!("OUTPOST_GUEST_TOOLCHAIN={other}: use `rustup` or `debian`"),
        None if rustup_has_wasm_target() => Guest::Rustup,
        None => {
            println!("    wasm32-wasip2 target not installed; trying `rustup target add wasm32-wasip2`");
            if has_command("rustup")
                && run_with_timeout(
                    Command::new("rustup").args(["target", "add", "wasm32-wasip2"]),
                    Duration::from_secs(180),
                )
                && rustup_has_wasm_target()
            {
                Guest::Rustup
            } else {
                if !debian_toolchain_ready() {
                    println!(
                        "    rustup cannot provide it here; installing Debian's toolchain: {}",
                        DEBIAN_PACKAGES.join(" ")
                    );
                    apt_install(&DEBIAN_PACKAGES)?;
                }
                if !debian_toolchain_ready() {
                    bail!("no WASM guest toolchain: neither rustup's wasm32-wasip2 target nor Debian's {} could be installed", DEBIAN_PACKAGES.join(" "));
                }
                Guest::Debian
            }
        }
    };
    println!("    using {}", guest.describe());
    done(t);
    if servers {
        let t = step("checking test servers and tools (mosquitto, mosquitto_sub, promtool, shellcheck, chromium, postgresql, ip)");
        let mut missing = Vec::new();
        if !has_command("mosquitto") {
            missing.push("mosquitto");
        }
        if !has_command("mosquitto_sub") {
            missing.push("mosquitto-clients");
        }
        if !has_command("promtool") {
            missing.push("prometheus");
        }
        if !has_command("shellcheck") {
            missing.push("shellcheck");
        }
        if !has_command("chromium") {
            missing.push("chromium"); // the status page test renders the page in headless Chromium
        }
        // outpost-ops' PostgreSQL store is tested against a server its test starts.
        let has_initdb = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("bin/initdb").is_file()))
            .unwrap_or(false);
        if !has_initdb {
            missing.push("postgresql");
        }
        if !has_command("ip") {
            missing.push("iproute2"); // the fleet test puts gateways in their own network namespace
        }
        if missing.is_empty() {
            println!("    all present");
        } else {
            println!("    installing {}", missing.join(" "));
            apt_install(&missing)?;
        }
        done(t);
        python_hydraulics()?;
        python_grpc()?;
    }
    Ok(guest)
}

/// WNTR (EPANET hydraulics, from PyPI) simulates the water networks the
/// leak-detection tests run on.
pub fn python_hydraulics() -> Result<()> {
    let t = step("checking Python hydraulics (wntr)");
    let has = |m: &str| {
        Command::new("python3").args(["-c", &format!("import {m}")]).stderr(std::process::Stdio::null()).status()
    };
    match has("wntr") {
        Ok(s) if s.success() => println!("    present"),
        Ok(_) => {
            println!("    installing wntr and six from PyPI");
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "wntr", "six"])
                .status()
                .context("cannot run python3 -m pip")?;
            if !status.success() {
                bail!("pip install wntr six failed ({status}); install them by hand and rerun");
            }
        }
        Err(e) => bail!("python3 not found ({e}); install Python 3 (Debian: apt-get install python3 python3-pip)"),
    }
    done(t);
    Ok(())
}

/// grpcio and grpcio-tools (from PyPI): the Python interop test generates a
/// client from `proto/` and drives the agent's management API with it.
pub fn python_grpc() -> Result<()> {
    let t = step("checking the Python gRPC client (grpcio, grpcio-tools)");
    let has = |m: &str| {
        Command::new("python3").args(["-c", &format!("import {m}")]).stderr(std::process::Stdio::null()).status()
    };
    match has("grpc, grpc_tools.protoc") {
        Ok(s) if s.success() => println!("    present"),
        Ok(_) => {
            println!("    installing grpcio and grpcio-tools from PyPI");
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "grpcio", "grpcio-tools"])
                .status()
                .context("cannot run python3 -m pip")?;
            if !status.success() {
                bail!("pip install grpcio grpcio-tools failed ({status}); install them by hand and rerun");
            }
        }
        Err(e) => bail!("python3 not found ({e}); install Python 3 (Debian: apt-get install python3 python3-pip)"),
    }
    done(t);
    Ok(())
}
