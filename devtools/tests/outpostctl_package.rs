//! `outpostctl keygen / package / sign / verify` as a provider and a
//! technician run them: real binary, real component.

mod support;

use std::path::{Path, PathBuf};
use support::test_package;

fn outpostctl(args: &[&Path]) -> (bool, String, String) {
    support::outpostctl(args)
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// A provider `outpost-tests` with its key, and a trust folder holding it.
struct Provider {
    dir: tempfile::TempDir,
}

impl Provider {
    fn new() -> Provider {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        let (ok, stdout, stderr) = outpostctl(&[p("keygen"), p("--out"), &keys, p("--name"), p("outpost-tests")]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("outpost-tests.key") && stdout.contains("key id"), "{stdout}");
        let trust = dir.path().join("trust");
        std::fs::create_dir(&trust).expect("mkdir");
        std::fs::copy(keys.join("outpost-tests.pub"), trust.join("outpost-tests.pub")).expect("copy");
        Provider { dir }
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("keys/outpost-tests.key")
    }
    fn trust(&self) -> PathBuf {
        self.dir.path().join("trust")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn package_sign_and_verify_a_real_component() {
    let pv = Provider::new();
    let opkg = pv.file("testbed.opkg");
    let (ok, stdout, stderr) =
        outpostctl(&[p("package"), &test_package("testbed"), p("--key"), &pv.key(), p("--out"), &opkg]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("packaged testbed 0.1.0") && stdout.contains("signed by outpost-tests"), "{stdout}");

    let (ok, stdout, stderr) = outpostctl(&[p("verify"), &opkg, p("--trust"), &pv.trust()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("(testbed 0.1.0) ok: signed by outpost-tests"), "{stdout}");

    // Not trusted on a gateway that has no key of this provider.
    let empty = pv.file("empty-trust");
    std::fs::create_dir(&empty).expect("mkdir");
    let (ok, _, stderr) = outpostctl(&[p("verify"), &opkg, p("--trust"), &empty]);
    assert!(!ok && stderr.contains("not in the trust store") && stderr.contains("testbed.opkg"), "{stderr}");

    // One byte of the component changed after signing.
    let mut bytes = std::fs::read(&opkg).expect("read");
    let manifest_len =
        std::fs::metadata(test_package("testbed").join("service.toml")).expect("manifest").len() as usize;
    let in_component = 512 + manifest_len.div_ceil(512) * 512 + 512 + 200;
    bytes[in_component] ^= 0x20;
    let tampered = pv.file("tampered.opkg");
    std::fs::write(&tampered, &bytes).expect("write");
    let (ok, _, stderr) = outpostctl(&[p("verify"), &tampered, p("--trust"), &pv.trust()]);
    assert!(!ok && stderr.contains("tampered.opkg") && stderr.contains("was tampered with"), "{stderr}");
    assert!(stderr.contains("component (service.wasm)"), "{stderr}");
}

#[test]
fn unsigned_packages_are_refused_until_signed() {
    let pv = Provider::new();
    let opkg = pv.file("u.opkg");
    let (ok, _, stderr) = outpostctl(&[p("package"), &test_package("testbed"), p("--out"), &opkg]);
    assert!(ok && stderr.contains("unsigned"), "{stderr}");
    let (ok, _, stderr) = outpostctl(&[p("verify"), &opkg, p("--trust"), &pv.trust()]);
    assert!(!ok && stderr.contains("not signed"), "{stderr}");
    let (ok, _, stderr) = outpostctl(&[p("sign"), &opkg, p("--key"), &pv.key()]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = outpostctl(&[p("verify"), &opkg, p("--trust"), &pv.trust()]);
    assert!(ok, "{stderr}");
}

#[test]
fn an_invalid_manifest_is_refused_with_the_manifests_own_error() {
    let pv = Provider::new();
    let src = pv.file("src");
    std::fs::create_dir(&src).expect("mkdir");
    let manifest = std::fs::read_to_string(test_package("testbed").join("service.toml")).expect("read");
    std::fs::write(src.join("service.toml"), manifest.replace("version = \"0.1.0\"", "version = \"one\""))
        .expect("write");
    let wasm = test_package("testbed").join("service.wasm");
    let (ok, _, stderr) = outpostctl(&[p("package"), &src, p("--wasm"), &wasm, p("--key"), &pv.key()]);
    assert!(!ok && stderr.contains("service.version 'one' is not semver"), "{stderr}");
}

#[test]
fn a_key_of_another_provider_is_refused_before_packaging() {
    let pv = Provider::new();
    let other = pv.file("other");
    let (ok, _, stderr) = outpostctl(&[p("keygen"), p("--out"), &other, p("--name"), p("acme")]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = outpostctl(&[
        p("package"),
        &test_package("testbed"),
        p("--key"),
        &other.join("acme.key"),
        p("--out"),
        &pv.file("x.opkg"),
    ]);
    assert!(!ok && stderr.contains("'acme'") && stderr.contains("'outpost-tests'"), "{stderr}");
    assert!(!pv.file("x.opkg").exists());
}

#[test]
fn a_core_module_is_refused_before_packaging() {
    let pv = Provider::new();
    let wasm = pv.file("core.wasm");
    std::fs::write(&wasm, wat::parse_str("(module)").expect("wat")).expect("write");
    let (ok, _, stderr) =
        outpostctl(&[p("package"), &test_package("testbed"), p("--wasm"), &wasm, p("--key"), &pv.key()]);
    assert!(!ok && stderr.contains("core.wasm") && stderr.contains("not a component"), "{stderr}");
}
