//! The provider's loop, run as a provider would run it outside this
//! repository: `outpostctl new` scaffolds a crate in a scratch folder, its
//! own native test passes with plain `cargo test`, `outpostctl build`
//! compiles the component, `outpostctl keygen` and `package --key` sign it,
//! `outpostctl deploy` installs it on a running agent that trusts the key,
//! and the sample readings published on the bus come back as the service's
//! outputs.
//!
//! The scaffolded crate builds into a stable folder beside the workspace's
//! own builds (`{target}/provider-loop`), so a rerun only recompiles the new
//! crate itself.

use outpost_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NAME: &str = "flow-meter";
const PROVIDER: &str = "acme-water";

/// `{target}/provider-loop`, `{target}` being where `outpostctl` was built.
fn stable_target_dir() -> PathBuf {
    let ctl = binary("outpostctl");
    let target = ctl.parent().and_then(Path::parent).expect("outpostctl lives in {target}/debug");
    target.join("provider-loop")
}

/// Runs a step of the loop; fails the test with its output if it fails.
fn step(what: &str, cmd: &mut Command) -> String {
    let started = Instant::now();
    let out: Output = cmd.env("RUST_BACKTRACE", "0").output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("provider loop: {what} in {:.1}s", started.elapsed().as_secs_f64());
    stdout
}

fn outpostctl() -> Command {
    Command::new(binary("outpostctl"))
}

#[test]
fn scaffold_test_build_sign_deploy_and_see_the_output_on_the_bus() {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let target = stable_target_dir();

    // 1. Scaffold, in a folder of its own outside the repository.
    let out =
        step("outpostctl new", outpostctl().args(["new", NAME, "--provider", PROVIDER, "--dir"]).arg(work.path()));
    let krate = work.path().join(NAME);
    assert!(out.contains(&format!("created service {NAME}")), "{out}");
    for f in ["Cargo.toml", "service.toml", "src/lib.rs", "samples/input.jsonl", "README.md"] {
        assert!(krate.join(f).is_file(), "outpostctl new wrote no {f}");
    }
    let again = outpostctl().args(["new", NAME, "--dir"]).arg(work.path()).env("RUST_BACKTRACE", "0").output();
    let again = again.expect("outpostctl new again");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("already exists and is not empty"), "{err}");

    // 2. The crate's own native test, with plain cargo (its own workspace).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = step(
        "cargo test (native)",
        Command::new(&cargo)
            .arg("test")
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", &target)
            // Everything it needs is what the workspace already uses.
            .env("CARGO_NET_OFFLINE", "true"),
    );
    assert!(out.contains("test result: ok. 3 passed"), "the scaffolded tests ran and passed:\n{out}");

    // 3. The component, with the toolchain cargo xtask build uses.
    let out = step(
        "outpostctl build",
        outpostctl().arg("build").arg(&krate).env("CARGO_TARGET_DIR", &target).env("CARGO_NET_OFFLINE", "true"),
    );
    let pkg_dir = krate.join("target/outpost").join(NAME);
    assert!(out.contains(&pkg_dir.display().to_string()), "build names its output folder:\n{out}");
    let wasm = std::fs::read(pkg_dir.join("service.wasm")).expect("service.wasm built");
    assert_eq!(&wasm[..4], b"\0asm");

    // 4. A provider key, and the signed package.
    let keys = work.path().join("keys");
    step("outpostctl keygen", outpostctl().args(["keygen", "--name", PROVIDER, "--out"]).arg(&keys));
    let opkg = work.path().join(format!("{NAME}-0.1.0.opkg"));
    let out = step(
        "outpostctl package",
        outpostctl()
            .arg("package")
            .arg(&pkg_dir)
            .arg("--key")
            .arg(keys.join(format!("{PROVIDER}.key")))
            .arg("--out")
            .arg(&opkg),
    );
    assert!(out.contains(&format!("signed by {PROVIDER}")), "{out}");

    // 5. An agent that trusts the provider's public key.
    let trust = work.path().join("trust");
    std::fs::create_dir_all(&trust).expect("mkdir trust");
    std::fs::copy(keys.join(format!("{PROVIDER}.pub")), trust.join(format!("{PROVIDER}.pub"))).expect("trust key");
    let dir = AgentDir::new();
    let agent = TestAgent::start_with(&dir, None, &format!("trust_dir = \"{}\"\n", trust.display()), "");
    let outputs = Subscriber::start(agent.mqtt_port, &[&format!("svc/{NAME}/+/mean")]);

    // 6. Deploy over the management API, as the provider's technician would.
    let out = step(
        "outpostctl deploy",
        outpostctl()
            .arg("deploy")
            .arg(&opkg)
            .args(["--agent", &format!("http://127.0.0.1:{}", agent.api_port), "--token-file"])
            .arg(agent.dir.join("state/api.token")),
    );
    assert!(out.contains(NAME), "deploy reports the service:\n{out}");

    // 7. The sample recording onto the bus; the service's means come back.
    let samples = std::fs::read_to_string(krate.join("samples/input.jsonl")).expect("samples");
    let mut sent = 0;
    for line in samples.lines().filter(|l| !l.trim().is_empty()) {
        let m: serde_json::Value = serde_json::from_str(line).expect("sample line is JSON");
        let topic = m["topic"].as_str().expect("topic");
        let payload = m["payload"].as_str().expect("payload");
        publish_bytes(agent.mqtt_port, topic, payload.as_bytes());
        sent += 1;
    }
    assert_eq!(sent, 5, "the sample recording has five readings");
    let got = outputs.wait_until(Duration::from_secs(20), |m| m.len() >= sent);
    let means: Vec<(String, f64, u64, bool)> = got
        .iter()
        .map(|(topic, payload)| {
            let v: serde_json::Value =
                serde_json::from_str(payload).unwrap_or_else(|e| panic!("output on {topic} is JSON: {e}: {payload}"));
            (
                topic.clone(),
                v["mean"].as_f64().expect("mean"),
                v["n"].as_u64().expect("n"),
                v["above_limit"].as_bool().expect("above_limit"),
            )
        })
        .collect();
    let pump1 = format!("svc/{NAME}/pump1/mean");
    let pump2 = format!("svc/{NAME}/pump2/mean");
    // Readings pump1 61.5, pump2 12.0, pump1 74.0, 88.5, 97.0; window 5, limit 80.
    assert_eq!(
        means,
        vec![
            (pump1.clone(), 61.5, 1, false),
            (pump2, 12.0, 1, false),
            (pump1.clone(), 67.75, 2, false),
            (pump1.clone(), (61.5 + 74.0 + 88.5) / 3.0, 3, false),
            (pump1, (61.5 + 74.0 + 88.5 + 97.0) / 4.0, 4, true),
        ],
        "outputs: {got:?}"
    );
    agent.stop().expect("agent stops cleanly");
    eprintln!("provider loop: whole loop in {:.1}s", started.elapsed().as_secs_f64());
}
