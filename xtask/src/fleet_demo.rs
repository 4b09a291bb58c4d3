//! The end of `cargo xtask demo`: a small fleet. `outpost-ops serve` with a
//! Mosquitto that knows each gateway's password and the fleet ACL, four
//! real agents on two sites, a signed service installed everywhere by one
//! rollout and upgraded by a second in three waves, with progress per wave
//! (`outpost-ops rollout watch`) and the fleet table at the end.

use crate::demo::{free_port, testbed_package, KillOnDrop};
use crate::{run as run_cmd, toolchain};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GATEWAYS: [(&str, &str); 4] =
    [("north-1", "quarry-north"), ("north-2", "quarry-north"), ("south-1", "quarry-south"), ("south-2", "quarry-south")];

fn wait_port(addr: &str, what: &str) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{what} did not listen on {addr} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn binary(name: &str) -> Result<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} is not installed; `cargo xtask setup` installs it"))
}

/// Runs the fleet part; `work` is the demo's folder, `provider_key` signs the packages.
pub fn run(root: &Path, bin: &Path, work: &Path, provider_key: &Path, trust: &Path) -> Result<()> {
    if binary("mosquitto").is_err() {
        toolchain::apt_install(&["mosquitto", "mosquitto-clients"])?;
    }
    let dir = work.join("fleet");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Mosquitto drops to its own user when started as root: it must read these.
    let open = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    };
    for p in [work, &dir] {
        open(p, 0o755);
    }
    let passwords = dir.join("passwords");
    run_cmd(Command::new(binary("mosquitto_passwd")?).args(["-c", "-b"]).arg(&passwords).args(["ops", "ops-demo-secret"]))?;
    open(&passwords, 0o666);
    std::fs::write(dir.join("ops.pass"), "ops-demo-secret")?;
    let port = free_port()?;
    let ops = bin.join("outpost-ops");
    run_cmd(Command::new(bin.join("outpostctl")).arg("keygen").arg("--out").arg(dir.join("keys")).args(["--name", "ops-demo"]).stdout(Stdio::null()))?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join("ops.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nuser = \"ops\"\npassword_file = \"{0}/ops.pass\"\ngateway_password_file = \"{1}\"\n\n\
             [ops]\nkey = \"{0}/keys/ops-demo.key\"\nstore = \"{0}/fleet.redb\"\nartifacts = \"{0}/artifacts\"\ntrust = \"{2}\"\n\n\
             [http]\nlisten = \"{http}\"\ntoken_file = \"{0}/api.token\"\nartifacts_url = \"http://{http}\"\n",
            dir.display(),
            passwords.display(),
            trust.display()
        ),
    )?;
    // One ACL file for the whole fleet: each gateway only its own topics.
    let acl = Command::new(&ops).arg("--config").arg(&config).arg("acl").output()?;
    if !acl.status.success() {
        bail!("outpost-ops acl: {}", String::from_utf8_lossy(&acl.stderr));
    }
    std::fs::write(dir.join("acl"), &acl.stdout)?;
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
            passwords.display(),
            dir.join("acl").display()
        ),
    )?;
    let start_broker = || -> Result<KillOnDrop> {
        let child = Command::new(binary("mosquitto")?)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto")?;
        wait_port(&format!("127.0.0.1:{port}"), "mosquitto")?;
        Ok(KillOnDrop(child))
    };
    let mut broker = start_broker()?;

    let ops_log = std::fs::File::create(dir.join("outpost-ops.log"))?;
    let _ops = KillOnDrop(
        Command::new(&ops).arg("--config").arg(&config).arg("serve").env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(ops_log).spawn()?,
    );
    wait_port(&http, "outpost-ops")?;
    let cli = |args: &[&str]| -> Result<String> {
        let out = Command::new(&ops).arg("--config").arg(&config).args(args).output()?;
        if !out.status.success() {
            bail!("outpost-ops {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for (id, site) in GATEWAYS {
        let cred = dir.join(format!("{id}.cred"));
        cli(&["gateway", "add", id, "--site", site, "--tag", "loader", "--out", &cred.display().to_string()])?;
    }
    // The broker reads the new gateways' passwords at start.
    drop(broker);
    broker = start_broker()?;
    let mut digests = Vec::new();
    for v in ["1.0.0", "2.0.0"] {
        let opkg = testbed_package(root, bin, &dir, provider_key, v, "fleet/out")?;
        let line = cli(&["package", "add", &opkg.display().to_string()])?;
        print!("    catalogued {line}");
        let digest = line.split_whitespace().find(|w| w.starts_with("sha256:")).context("package add printed no digest")?;
        digests.push(digest.to_owned());
    }

    let mut agents = Vec::new();
    for (id, site) in GATEWAYS {
        let root_dir = dir.join(id);
        std::fs::create_dir_all(root_dir.join("services"))?;
        let cfg = root_dir.join("outpost.toml");
        std::fs::write(
            &cfg,
            format!(
                "gateway = \"{id}\"\nsite = \"{site}\"\nservices_dir = \"{0}/services\"\nstate_dir = \"{0}/state\"\ntrust_dir = \"{1}\"\n\n\
                 [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{2}\"\n[metrics]\nlisten = \"127.0.0.1:{3}\"\n[api]\nlisten = \"127.0.0.1:{4}\"\n\n\
                 [fleet]\nbroker = \"mqtt://127.0.0.1:{port}\"\nops_key = \"{5}/keys/ops-demo.pub\"\ncredentials_file = \"{5}/{id}.cred\"\nartifacts_url = \"http://{http}\"\nprovider = \"outpost-tests\"\nreport_interval_s = 2\n",
                root_dir.display(),
                trust.display(),
                free_port()?,
                free_port()?,
                free_port()?,
                dir.display(),
            ),
        )?;
        let log = std::fs::File::create(root_dir.join("agent.log"))?;
        agents.push(KillOnDrop(
            Command::new(bin.join("outpost")).arg("--config").arg(&cfg).env("RUST_LOG", "warn").stderr(log).spawn()?,
        ));
    }
    let start = Instant::now();
    loop {
        let table = cli(&["gateways"])?;
        if table.lines().skip(1).filter(|l| !l.contains("never")).count() == GATEWAYS.len() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("not every gateway reported within 30 s:\n{table}(logs in {})", dir.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("    4 agents on 2 sites report to outpost-ops over their own MQTT credentials");

    let plans = [
        ("install-testbed", "1.0.0", &digests[0], r#"[1, "100%"]"#),
        ("upgrade-testbed", "2.0.0", &digests[1], r#"[1, "50%", "100%"]"#),
    ];
    for (id, version, digest, waves) in plans {
        let plan = dir.join(format!("{id}.json"));
        std::fs::write(
            &plan,
            format!(
                r#"{{"id":"{id}","service":"testbed","version":"{version}","digest":"{digest}","waves":{waves},"gates":[{{"min_success_ratio":1.0,"bake_secs":1,"apply_timeout_secs":120}}]}}"#
            ),
        )?;
        let t0 = Instant::now();
        cli(&["rollout", "start", &plan.display().to_string()])?;
        println!("    rollout {id}: testbed {version} in waves {waves}");
        let status = Command::new(&ops).arg("--config").arg(&config).args(["rollout", "watch", id]).status()?;
        if !status.success() {
            bail!("outpost-ops rollout watch {id} failed (logs in {})", dir.display());
        }
        let shown = cli(&["rollout", "show", id])?;
        let phase = shown.lines().next().unwrap_or_default();
        println!("    {phase} in {:.1} s (1 s bake per wave)", t0.elapsed().as_secs_f64());
        if !phase.ends_with(": succeeded") {
            bail!("rollout {id} did not succeed:\n{shown}");
        }
    }
    for line in cli(&["gateways"])?.lines() {
        println!("    {line}");
    }
    drop(agents);
    drop(broker);
    Ok(())
}
