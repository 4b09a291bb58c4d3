//! The WASM guest toolchain, found without installing anything: rustup's
//! `wasm32-wasip2` target where it is installed, else Debian's `rustc-web`
//! with `-Zbuild-std`. `cargo xtask` (which also installs what is missing)
//! and `outpostctl build` (a provider's crate outside this repository) both
//! build components through [`Guest::cargo_build`], so a service compiles
//! the same way in the repository and out of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The target every Outpost service component is built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Debian packages that make up the `rustc-web` guest toolchain.
pub const DEBIAN_PACKAGES: [&str; 5] = ["rustc-web", "cargo-web", "rust-web-src", "lld", "wasi-libc"];

/// Environment variable that forces a toolchain: `rustup` or `debian`.
pub const FORCE_VAR: &str = "OUTPOST_GUEST_TOOLCHAIN";

#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("{FORCE_VAR}={0}: use `rustup` or `debian`")]
    BadChoice(String),
    #[error(
        "no WASM guest toolchain: rustup's {WASM_TARGET} target is not installed \
         (run `rustup target add {WASM_TARGET}`) and Debian's {} is not either \
         (run `apt-get install {}`); inside the Outpost checkout `cargo xtask setup` does either",
        DEBIAN_PACKAGES.join(" "),
        DEBIAN_PACKAGES.join(" ")
    )]
    Missing,
    #[error("{FORCE_VAR}=rustup but rustup has no {WASM_TARGET} target: run `rustup target add {WASM_TARGET}`")]
    RustupTargetMissing,
    #[error("{FORCE_VAR}=debian but Debian's toolchain is incomplete: run `apt-get install {}`", DEBIAN_PACKAGES.join(" "))]
    DebianMissing,
}

/// How guests are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// rustup's toolchain with the wasm32-wasip2 target installed.
    Rustup,
    /// Debian's rustc-web/cargo-web, std built from rust-web-src.
    Debian,
}

impl Guest {
    /// The toolchain this machine has now (honouring `OUTPOST_GUEST_TOOLCHAIN`),
    /// without installing anything.
    pub fn detect() -> Result<Guest, ToolchainError> {
        match std::env::var(FORCE_VAR).ok().as_deref() {
            Some("rustup") if rustup_has_wasm_target() => Ok(Guest::Rustup),
            Some("rustup") => Err(ToolchainError::RustupTargetMissing),
            Some("debian") if debian_toolchain_ready() => Ok(Guest::Debian),
            Some("debian") => Err(ToolchainError::DebianMissing),
            Some(other) => Err(ToolchainError::BadChoice(other.to_owned())),
            None if rustup_has_wasm_target() => Ok(Guest::Rustup),
            None if debian_toolchain_ready() => Ok(Guest::Debian),
            None => Err(ToolchainError::Missing),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Guest::Rustup => "rustup's wasm32-wasip2 target",
            Guest::Debian => "Debian's rustc-web (build-std)",
        }
    }

    /// `cargo build --release --target wasm32-wasip2` for this toolchain,
    /// with the release profile every component is built with (LTO, one
    /// codegen unit, panic=abort, no debug info), into `target_dir`. The
    /// caller adds `-p NAME` or `--manifest-path` and runs it.
    pub fn cargo_build(&self, target_dir: &Path) -> Command {
        let mut cmd = match self {
            Guest::Rustup => {
                let mut c = host_cargo();
                c.args(["build", "--release", "--target", WASM_TARGET]);
                c
            }
            Guest::Debian => {
                let mut c = Command::new("/usr/bin/cargo");
                clean_env(&mut c);
                c.env("RUSTC_BOOTSTRAP", "1")
                    .env("RUSTC", "/usr/bin/rustc")
                    .env("RUSTFLAGS", "-L /usr/lib/wasm32-wasi")
                    .args(["build", "--release", "--target", WASM_TARGET, "-Zbuild-std=std,panic_abort"]);
                c
            }
        };
        // Small, fast guests; names kept for trap backtraces.
        cmd.env("CARGO_TARGET_DIR", target_dir)
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_LTO", "true")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
            .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
        cmd
    }
}

/// Where [`Guest::cargo_build`] leaves the component of crate `crate_name`.
pub fn component_path(target_dir: &Path, crate_name: &str) -> PathBuf {
    target_dir.join(WASM_TARGET).join("release").join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// The cargo that runs us when run by cargo (`$CARGO`), else the one on PATH.
pub fn host_cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The outer cargo's variables would point Debian's cargo at rustup's rustc.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        let keep = key == "CARGO_HOME" || key == "CARGO_NET_OFFLINE";
        if !keep
            && (key.starts_with("CARGO")
                || key.starts_with("RUSTUP")
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || key == "RUSTDOC")
        {
            cmd.env_remove(&key);
        }
    }
}

/// Whether `name` is a command on PATH.
pub fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether rustup lists the wasm32-wasip2 target as installed.
pub fn rustup_has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
}

/// Whether Debian's rustc-web toolchain with std sources and wasi-libc is installed.
pub fn debian_toolchain_ready() -> bool {
    Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/rustlib/src/rust/library").exists()
        && Path::new("/usr/lib/wasm32-wasi").exists()
}

/// Runs a command with a time limit (rustup may hang without a network);
/// true if it finished in time and succeeded.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> bool {
    let Ok(mut child) = cmd.spawn() else { return false };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_path_uses_the_library_name() {
        assert_eq!(
            component_path(Path::new("/t"), "weight-loading"),
            Path::new("/t/wasm32-wasip2/release/weight_loading.wasm")
        );
    }

    #[test]
    fn build_command_sets_the_component_profile() {
        for guest in [Guest::Rustup, Guest::Debian] {
            let cmd = guest.cargo_build(Path::new("/t"));
            let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
            assert!(args.windows(2).any(|w| w == ["--target", WASM_TARGET]), "{args:?}");
            let env: Vec<_> = cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_string_lossy().into_owned(), v?.to_string_lossy().into_owned())))
                .collect();
            assert!(env.contains(&("CARGO_PROFILE_RELEASE_LTO".into(), "true".into())), "{env:?}");
            assert!(env.contains(&("CARGO_TARGET_DIR".into(), "/t".into())), "{env:?}");
        }
    }
}
