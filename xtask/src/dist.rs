//! `cargo xtask dist`: release packages a gateway installs with no compiler
//! and no network: a Debian package and a tarball per architecture
//! (x86_64 and, cross-compiled, arm64) holding the agent, `outpostctl`,
//! `outpost-sim`, the service packages, the systemd unit and the config
//! template; the Debian package's post-install creates the user, the
//! folders and the API token (`deploy/debian/`).

use crate::{cargo, done, host_target_dir, run, step};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One target architecture: Debian's name, Rust's triple, the ELF machine.
struct Arch {
    debian: &'static str,
    triple: Option<&'static str>,
    elf_machine: u16,
}

const AMD64: Arch = Arch { debian: "amd64", triple: None, elf_machine: 0x3e };
const ARM64: Arch = Arch { debian: "arm64", triple: Some("aarch64-unknown-linux-gnu"), elf_machine: 0xb7 };

const BINARIES: [&str; 3] = ["outpost", "outpostctl", "outpost-sim"];

pub fn run_dist(root: &Path, args: &[String]) -> Result<()> {
    let mut arches = vec![AMD64, ARM64];
    let mut release = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--arch" => {
                arches = match it.next().map(String::as_str) {
                    Some("amd64") => vec![AMD64],
                    Some("arm64") => vec![ARM64],
                    Some("all") => vec![AMD64, ARM64],
                    other => bail!("--arch {other:?}: use amd64, arm64 or all"),
                }
            }
            // CI packages debug binaries: the packaging is what it tests.
            "--debug" => release = false,
            other => bail!("unknown option {other:?} (dist [--arch amd64|arm64|all] [--debug])"),
        }
    }
    let guest = crate::toolchain::setup(false)?;
    crate::build_packages(root, &guest)?;
    for arch in &arches {
        build(root, arch, release)?;
    }
    Ok(())
}

/// The x86_64 package of debug binaries, which `tests/it/dist.rs` installs
/// (`cargo xtask test` makes it after the components are built).
pub fn for_tests(root: &Path) -> Result<()> {
    build(root, &AMD64, false)
}

fn build(root: &Path, arch: &Arch, release: bool) -> Result<()> {
    let bins = build_binaries(root, arch, release)?;
    let (deb, tarball) = package(root, arch, &bins)?;
    check_architecture(arch, &bins)?;
    println!("    {}\n    {}", deb.display(), tarball.display());
    Ok(())
}

fn build_binaries(root: &Path, arch: &Arch, release: bool) -> Result<PathBuf> {
    let t = step(&format!(
        "building outpost, outpostctl, outpost-sim for {} ({})",
        arch.debian,
        if release { "release" } else { "debug" }
    ));
    let mut cmd = cargo();
    cmd.args(["build", "-p", "outpost-runtime", "-p", "outpost-devtools", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    if let Some(triple) = arch.triple {
        prepare_cross(triple)?;
        cmd.args(["--target", triple]);
        cmd.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc");
    }
    run(&mut cmd).with_context(|| format!("building the {} binaries failed", arch.debian))?;
    done(t);
    let mut dir = host_target_dir(root);
    if let Some(triple) = arch.triple {
        dir = dir.join(triple);
    }
    Ok(dir.join(if release { "release" } else { "debug" }))
}

/// The cross toolchain for arm64: rustup's std for the target and Debian's
/// cross linker (installed when missing).
fn prepare_cross(triple: &str) -> Result<()> {
    if !outpost_toolchain::has_command("aarch64-linux-gnu-gcc") {
        crate::toolchain::apt_install(&["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"])?;
    }
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has = installed.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == triple));
    if !has {
        run(Command::new("rustup").args(["target", "add", triple]))
            .with_context(|| format!("rustup target add {triple} failed; the arm64 package needs it"))?;
    }
    Ok(())
}

/// Stages the package tree and writes `outpost_{version}_{arch}.deb` and
/// `.tar.gz` into `target/outpost/dist/`.
fn package(root: &Path, arch: &Arch, bins: &Path) -> Result<(PathBuf, PathBuf)> {
    let t = step(&format!("packaging {}", arch.debian));
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("outpost_{version}_{}", arch.debian);
    let out = root.join("target/outpost/dist");
    let stage = out.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = stage.join(rel);
        std::fs::create_dir_all(path.parent().context("a file in a folder")?)?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()));
    for b in BINARIES {
        let rel = format!("usr/bin/{b}");
        put(&rel, &read(bins.join(b))?, 0o755)?;
        // Debug information stays on the build machine, as Debian does.
        let strip = if arch.triple.is_some() { "aarch64-linux-gnu-strip" } else { "strip" };
        run(Command::new(strip).arg("--strip-debug").arg(stage.join(&rel)))
            .with_context(|| format!("{strip} failed (binutils provides it)"))?;
    }
    let deploy = root.join("deploy");
    let unit = String::from_utf8(read(deploy.join("gateway/outpost.service"))?)?
        .replace("/usr/local/bin/outpost", "/usr/bin/outpost")
        .replace("/usr/local/share/doc/outpost", "/usr/share/doc/outpost")
        .replace(
            "Installed by deploy/gateway/install.sh to /etc/systemd/system/outpost.service.",
            "Installed by the outpost Debian package.",
        )
        .replace("the installer replaces this file on upgrade.", "the package replaces this file on upgrade.");
    put("lib/systemd/system/outpost.service", unit.as_bytes(), 0o644)?;
    put("etc/outpost/outpost.toml", &read(deploy.join("gateway/outpost.toml"))?, 0o644)?;
    put("usr/share/doc/outpost/README.md", &read(root.join("README.md"))?, 0o644)?;
    for e in std::fs::read_dir(deploy.join("sites"))? {
        let p = e?.path();
        let file = p.file_name().and_then(|n| n.to_str()).context("site file name")?.to_owned();
        put(&format!("usr/share/doc/outpost/sites/{file}"), &read(p)?, 0o644)?;
    }
    let packages = crate::packages_dir(root);
    let mut services = Vec::new();
    for e in std::fs::read_dir(&packages).with_context(|| format!("{} (cargo xtask build)", packages.display()))? {
        let dir = e?.path();
        let svc = dir.file_name().and_then(|n| n.to_str()).context("package name")?.to_owned();
        for f in ["service.toml", "service.wasm"] {
            put(&format!("usr/share/outpost/packages/{svc}/{f}"), &read(dir.join(f))?, 0o644)?;
        }
        services.push(svc);
    }
    if services.is_empty() {
        bail!("no service packages in {}; run cargo xtask build", packages.display());
    }
    // The tarball: the same tree, for gateways without dpkg.
    std::fs::create_dir_all(&out)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-C")
        .arg(&stage)
        .args(["usr", "lib", "etc"]))?;
    let size_kib = du_kib(&stage)?;
    let control = String::from_utf8(read(deploy.join("debian/control"))?)?
        .replace("@VERSION@", version)
        .replace("@ARCH@", arch.debian)
        .replace("@SIZE_KIB@", &size_kib.to_string());
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put("DEBIAN/conffiles", b"/etc/outpost/outpost.toml\n", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(&format!("DEBIAN/{script}"), &read(deploy.join("debian").join(script))?, 0o755)?;
    }
    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&stage).arg(&deb))
        .context("dpkg-deb failed (Debian's dpkg provides it)")?;
    println!("    {} services: {}", services.len(), services.join(", "));
    done(t);
    Ok((deb, tarball))
}

fn du_kib(dir: &Path) -> Result<u64> {
    let o = Command::new("du").arg("-sk").arg(dir).output().context("du")?;
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sk {} gave no size", dir.display()))
}

/// Each binary is an ELF for the package's machine; an arm64 agent also
/// runs under qemu-user where that is installed.
fn check_architecture(arch: &Arch, bins: &Path) -> Result<()> {
    for b in BINARIES {
        let path = bins.join(b);
        let head = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let machine =
            (head.len() >= 20 && head.starts_with(b"\x7fELF")).then(|| u16::from_le_bytes([head[18], head[19]]));
        if machine != Some(arch.elf_machine) {
            bail!("{} is not an {} ELF binary (machine {machine:?})", path.display(), arch.debian);
        }
    }
    println!("    binaries are {} ELF executables", arch.debian);
    if arch.triple.is_some() {
        if outpost_toolchain::has_command("qemu-aarch64") {
            let o = Command::new("qemu-aarch64")
                .args(["-L", "/usr/aarch64-linux-gnu"])
                .arg(bins.join("outpost"))
                .arg("--version")
                .output()
                .context("qemu-aarch64")?;
            if !o.status.success() {
                bail!("the arm64 agent did not run under qemu: {}", String::from_utf8_lossy(&o.stderr));
            }
            println!("    under qemu-aarch64: {}", String::from_utf8_lossy(&o.stdout).trim());
        } else {
            println!("    qemu-aarch64 not installed (apt-get install qemu-user): the arm64 agent was not run");
        }
    }
    Ok(())
}
