//! What the `outpostctl` tests share: the built test packages and a way to
//! run the real binary.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

pub fn test_package(name: &str) -> PathBuf {
    let root = std::env::var_os("OUTPOST_TEST_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/outpost/test-packages"));
    let dir = root.join(name);
    assert!(dir.join("service.wasm").is_file(), "{} not built; run `cargo xtask test`", dir.display());
    dir
}

/// Runs `outpostctl ARGS`: (success, stdout, stderr).
pub fn outpostctl<S: AsRef<OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpostctl")).args(args).output().expect("run outpostctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
