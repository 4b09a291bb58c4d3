//! Signed packages installed from local files, with no uplink: a Python
//! client generated from `proto/` with grpcio deploys and upgrades a
//! service (interop), and a technician's `outpostctl verify` + `deploy` of
//! a `.opkg` file does the same from the command line (the README's
//! "install a signed package from a USB stick").

use outpost_tests::*;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PROVIDER: &str = "outpost-tests";

/// A provider key pair for the testbed's provider and a trust folder with
/// its public key.
struct Provider {
    keys: tempfile::TempDir,
    trust: tempfile::TempDir,
}

impl Provider {
    fn new() -> Provider {
        let keys = tempfile::tempdir().expect("tempdir");
        let trust = tempfile::tempdir().expect("tempdir");
        let generated = outpost_package::keygen(keys.path(), PROVIDER).expect("keygen");
        std::fs::copy(&generated.public_path, trust.path().join(format!("{PROVIDER}.pub"))).expect("trust the key");
        Provider { keys, trust }
    }

    /// The testbed package at `version`, signed, written to `dir`.
    fn testbed(&self, version: &str, dir: &Path) -> PathBuf {
        let pkg = test_package("testbed");
        let manifest = std::fs::read_to_string(pkg.join("service.toml")).expect("manifest");
        assert!(manifest.contains("version = \"0.1.0\""), "testbed manifest changed: {manifest}");
        let manifest = manifest.replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
        let wasm = std::fs::read(pkg.join("service.wasm")).expect("component");
        let key = outpost_package::ProviderSigningKey::load(&self.keys.path().join(format!("{PROVIDER}.key")))
            .expect("load key");
        let bytes = outpost_package::pack(manifest.as_bytes(), &wasm, Some(&key.key)).expect("pack");
        let path = dir.join(format!("testbed-{version}.opkg"));
        std::fs::write(&path, bytes).expect("write package");
        path
    }
}

fn start(dir: &AgentDir, trust: &Path) -> TestAgent {
    TestAgent::start_with(dir, None, &format!("trust_dir = \"{}\"\n", trust.display()), "")
}

fn token_file(agent: &TestAgent) -> PathBuf {
    agent.dir.join("state/api.token")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs the Python client; its one JSON line on stdout.
fn python(agent: &TestAgent, args: &[&str]) -> serde_json::Value {
    let script = workspace().join("tests/python/agent_client.py");
    let o = Command::new("python3")
        .arg(&script)
        .args(["--agent", &format!("127.0.0.1:{}", agent.api_port), "--token-file"])
        .arg(token_file(agent))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 not found ({e}); `cargo xtask setup` installs grpcio and grpcio-tools"));
    let (out, err) = text(&o);
    assert_ne!(
        o.status.code(),
        Some(3),
        "the Python client's modules are missing; run `cargo xtask setup` (pip installs grpcio grpcio-tools): {err}"
    );
    assert!(o.status.success(), "agent_client.py {args:?} failed ({}): {out}{err}", o.status);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("agent_client.py {args:?} printed no JSON ({e}): {out}"))
}

/// The testbed answers `test/in/{tail}` on `test/out/{tail}` with the payload.
fn assert_serving(agent: &TestAgent, tail: &str) {
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    publish_lines(agent.mqtt_port, &format!("test/in/{tail}"), &[tail.as_bytes().to_vec()]);
    let want = (format!("test/out/{tail}"), tail.to_owned());
    let got = sub.wait_until(Duration::from_secs(15), |g| g.contains(&want));
    assert!(got.contains(&want), "no echo from the deployed service: {got:?}");
}

#[test]
fn a_python_grpc_client_deploys_and_upgrades_a_service() {
    let provider = Provider::new();
    let files = tempfile::tempdir().expect("tempdir");
    let v1 = provider.testbed("1.0.0", files.path());
    let v2 = provider.testbed("2.0.0", files.path());
    let dir = AgentDir::new();
    let agent = start(&dir, provider.trust.path());

    let deployed = python(&agent, &["deploy", v1.to_str().expect("utf-8 path"), "--approved-by", "py-tech"]);
    assert_eq!(
        (deployed["service"].as_str(), deployed["version"].as_str()),
        (Some("testbed"), Some("1.0.0")),
        "{deployed}"
    );
    assert_serving(&agent, "one");

    let upgraded = python(&agent, &["upgrade", v2.to_str().expect("utf-8 path")]);
    assert_eq!(
        (upgraded["service"].as_str(), upgraded["version"].as_str()),
        (Some("testbed"), Some("2.0.0")),
        "{upgraded}"
    );

    let list = python(&agent, &["list"]);
    let services = list["services"].as_array().unwrap_or_else(|| panic!("no services in {list}"));
    assert_eq!(services.len(), 1, "{list}");
    assert_eq!(services[0]["name"], "testbed", "{list}");
    assert_eq!(services[0]["version"], "2.0.0", "{list}");
    assert_eq!(services[0]["previous_version"], "1.0.0", "{list}");
    assert!(services[0]["manifest_toml"].as_str().is_some_and(|m| m.contains("version = \"2.0.0\"")), "{list}");

    let status = python(&agent, &["status"]);
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(status["services"][0]["version"], "2.0.0", "{status}");
    assert_serving(&agent, "two");

    // A refused call is a gRPC status the client reports, not a crash: the
    // same version again is a conflict.
    let script = workspace().join("tests/python/agent_client.py");
    let o = Command::new("python3")
        .arg(&script)
        .args(["--agent", &format!("127.0.0.1:{}", agent.api_port), "--token-file"])
        .arg(token_file(&agent))
        .arg("deploy")
        .arg(&v1)
        .output()
        .expect("python3");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let refused: serde_json::Value = serde_json::from_str(out.trim()).expect("error JSON");
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("already installed")), "{refused}");

    // And the agent's own view agrees.
    let s = agent.status().expect("status");
    assert_eq!(s["services"][0]["version"], "2.0.0", "{s}");
}

#[test]
fn a_wrong_token_is_refused_to_the_python_client() {
    let provider = Provider::new();
    let dir = AgentDir::new();
    let agent = start(&dir, provider.trust.path());
    let bad = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(bad.path(), "0123456789abcdef0123\n").expect("write");
    let o = Command::new("python3")
        .arg(workspace().join("tests/python/agent_client.py"))
        .args(["--agent", &format!("127.0.0.1:{}", agent.api_port), "--token-file"])
        .arg(bad.path())
        .arg("list")
        .output()
        .expect("python3");
    let (out, err) = text(&o);
    assert_ne!(o.status.code(), Some(3), "run `cargo xtask setup`: {err}");
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("error JSON");
    assert_eq!(v["error"]["code"], "UNAUTHENTICATED", "{v}");
}

/// Runs `outpostctl` with `args`; stdout and stderr, asserting success.
fn outpostctl(args: &[&OsStr]) -> (String, String) {
    let o = Command::new(binary("outpostctl")).args(args).output().expect("run outpostctl");
    let (out, err) = text(&o);
    assert!(o.status.success(), "outpostctl {args:?} failed ({}): {out}{err}", o.status);
    (out, err)
}

/// The README's offline procedure, step by step with the real binary: the
/// provider's key and package made with `outpostctl`, carried as a file,
/// verified against the gateway's trust folder, deployed to the local agent.
#[test]
fn a_technician_installs_a_signed_package_from_a_local_file() {
    let keys = tempfile::tempdir().expect("tempdir");
    let stick = tempfile::tempdir().expect("tempdir");
    let trust = tempfile::tempdir().expect("tempdir");
    let s = |s: &'static str| OsStr::new(s);
    // The provider's side.
    outpostctl(&[s("keygen"), s("--out"), keys.path().as_os_str(), s("--name"), s(PROVIDER)]);
    let opkg = stick.path().join("testbed.opkg");
    let key = keys.path().join(format!("{PROVIDER}.key"));
    let pkg_dir = test_package("testbed");
    let (out, _) =
        outpostctl(&[s("package"), pkg_dir.as_os_str(), s("--key"), key.as_os_str(), s("--out"), opkg.as_os_str()]);
    assert!(out.contains(&format!("signed by {PROVIDER}")), "{out}");
    // The gateway's side, agent running, provider not trusted yet.
    let dir = AgentDir::new();
    let agent = start(&dir, trust.path());
    let api = OsString::from(format!("http://127.0.0.1:{}", agent.api_port));
    let token = token_file(&agent).into_os_string();
    let mut target = vec![s("--agent"), api.as_os_str(), s("--token-file"), token.as_os_str()];
    let deploy = [s("deploy"), opkg.as_os_str(), s("--approved-by"), s("tech")];
    target.extend_from_slice(&deploy);
    let o = Command::new(binary("outpostctl")).args(&target).output().expect("outpostctl deploy");
    let (out, err) = text(&o);
    assert!(!o.status.success() && err.contains("not in the trust store"), "{out}{err}");
    // Trust the provider's key (read at each upload: no restart), verify
    // offline, then deploy to the local agent.
    std::fs::copy(keys.path().join(format!("{PROVIDER}.pub")), trust.path().join(format!("{PROVIDER}.pub")))
        .expect("install the provider key");
    let (out, _) = outpostctl(&[s("verify"), opkg.as_os_str(), s("--trust"), trust.path().as_os_str()]);
    assert!(out.contains("ok: signed by"), "{out}");
    let on_agent = |cmd: &[&OsStr]| {
        let mut args = vec![s("--agent"), api.as_os_str(), s("--token-file"), token.as_os_str()];
        args.extend_from_slice(cmd);
        outpostctl(&args)
    };
    let (out, _) = on_agent(&deploy);
    assert!(out.contains("testbed@0.1.0"), "{out}");
    let (out, _) = on_agent(&[s("list"), s("--json")]);
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(list["services"][0]["name"], "testbed", "{list}");
    assert_eq!(list["services"][0]["version"], "0.1.0", "{list}");
    assert_serving(&agent, "usb");
    // A package changed on the stick is refused, offline and by the agent.
    let mut bytes = std::fs::read(&opkg).expect("read package");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let tampered = stick.path().join("tampered.opkg");
    std::fs::write(&tampered, bytes).expect("write");
    let o = Command::new(binary("outpostctl"))
        .arg("verify")
        .arg(&tampered)
        .arg("--trust")
        .arg(trust.path())
        .output()
        .expect("outpostctl verify");
    assert!(!o.status.success(), "a tampered package verified: {:?}", text(&o));
}
