//! WASI capabilities through the real host (`outpostctl run` and `check`):
//! a component sees the clock only when its manifest declares `clocks`, a
//! component importing clocks without declaring them is refused naming the
//! import and the fix, and one that opens sockets never loads (files and
//! sockets are not linked, and no manifest can ask for them).

use outpost_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// A copy of a built test package with its manifest edited.
fn variant(package: &Path, into: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    std::fs::create_dir_all(into).expect("mkdir");
    let manifest = std::fs::read_to_string(package.join("service.toml")).expect("manifest");
    std::fs::write(into.join("service.toml"), edit(&manifest)).expect("write manifest");
    std::fs::copy(package.join("service.wasm"), into.join("service.wasm")).expect("copy component");
    into.to_owned()
}

fn run(package: &Path, input: &Path, topic: &str) -> Output {
    Command::new(binary("outpostctl"))
        .arg("run")
        .arg(package)
        .arg("--replay")
        .arg(input)
        .args(["--topic", topic])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("start outpostctl run")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn the_clock_is_granted_only_when_declared() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let input = scratch.path().join("input.txt");
    std::fs::write(&input, "now\n").expect("input");
    let built = test_package("wasi-clock");
    let manifest = std::fs::read_to_string(built.join("service.toml")).expect("manifest");
    assert!(manifest.contains("wasi = [\"clocks\"]"), "the test guest declares clocks:\n{manifest}");

    // Declared: the real wall clock.
    let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
    let o = run(&built, &input, "test/clock/a");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
    let (out, err) = text(&o);
    assert!(o.status.success(), "outpostctl run failed:\n{out}\n{err}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("")).expect("one JSON line");
    assert_eq!(line["topic"], "test/clock-out/a", "{out}");
    // `run` prints a payload that is JSON as JSON: here a number.
    let seen = u128::from(line["payload"].as_u64().expect("ms in the payload"));
    assert!((before..=after).contains(&seen), "guest saw {seen}, real clock was {before}..{after}");

    // Not declared: the same component is refused before it runs, and told why.
    let undeclared =
        variant(&built, &scratch.path().join("undeclared"), |m| m.replace("wasi = [\"clocks\"]", "wasi = []"));
    let o = run(&undeclared, &input, "test/clock/a");
    let (out, err) = text(&o);
    assert!(!o.status.success(), "ran without the capability:\n{out}\n{err}");
    assert!(out.trim().is_empty(), "nothing published: {out}");
    assert!(err.contains("wasi:clocks/wall-clock"), "the import is named: {err}");
    assert!(err.contains("[capabilities] wasi = [\"clocks\"]"), "the fix is named: {err}");
    // No [capabilities] table at all is the same: none by default.
    let absent =
        variant(&built, &scratch.path().join("absent"), |m| m.replace("[capabilities]\nwasi = [\"clocks\"]\n", ""));
    let o = run(&absent, &input, "test/clock/a");
    assert!(!o.status.success() && text(&o).1.contains("wasi:clocks/wall-clock"), "{:?}", text(&o));
}

#[test]
fn sockets_are_never_linked() {
    let built = test_package("wasi-socket");
    let o = Command::new(binary("outpostctl"))
        .arg("check")
        .arg(&built)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("outpostctl check");
    let (out, err) = text(&o);
    assert!(!o.status.success(), "a component opening sockets loaded:\n{out}\n{err}");
    assert!(err.contains("wasi:sockets/"), "the refused import is named: {err}");

    // And no manifest can ask for them.
    let scratch = tempfile::tempdir().expect("tempdir");
    let asking =
        variant(&built, &scratch.path().join("asking"), |m| format!("{m}\n[capabilities]\nwasi = [\"sockets\"]\n"));
    let o = Command::new(binary("outpostctl"))
        .arg("check")
        .arg(&asking)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("outpostctl check");
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("unknown 'sockets'") && err.contains("never available"), "{err}");
}

#[test]
fn the_plugins_declare_what_they_import() {
    // Every shipped service loads and starts under its own manifest (the
    // agent tests run them on the bus; here each is checked alone).
    for name in ["positioning", "weight-loading", "traffic-awareness", "leak-detection"] {
        let o = Command::new(binary("outpostctl"))
            .arg("check")
            .arg(package(name))
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("outpostctl check");
        let (out, err) = text(&o);
        assert!(o.status.success(), "{name}: {out}\n{err}");
    }
}
