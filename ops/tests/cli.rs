//! The `outpost-ops` binary end to end: `serve` against a Mosquitto the
//! test starts, and the CLI talking to it (gateway add with mosquitto_passwd,
//! package add, rollout start / watch / pause / resume / abort, gateways,
//! acl), with simulated gateways logging in with the printed credentials.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use outpost_ops::sim::{self, always_ok, SimConfig, SimGateway};
use outpost_package::ProviderSigningKey;

use support::fixture::{pack, OPS_PASSWORD, OPS_USER, SVC};
use support::mosquitto::{free_port, Mosquitto};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-ops");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ops(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("OUTPOST_OPERATOR", "tester")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run outpost-ops")
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(config: &Path, args: &[&str]) -> String {
    let (c, a): (PathBuf, Vec<String>) = (config.to_owned(), args.iter().map(|s| s.to_string()).collect());
    let out = tokio::task::spawn_blocking(move || ops(&c, &a.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "outpost-ops {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn fails(config: &Path, args: &[&str]) -> String {
    let (c, a): (PathBuf, Vec<String>) = (config.to_owned(), args.iter().map(|s| s.to_string()).collect());
    let out = tokio::task::spawn_blocking(move || ops(&c, &a.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("join");
    assert!(!out.status.success(), "outpost-ops {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("chromium not found: the fleet page is rendered in headless Chromium; cargo xtask setup installs it")
}

/// The page at `url` after its script ran, as Chromium serializes the DOM.
fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("DOM is UTF-8")
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_the_cli_run_a_rollout_pause_resume_and_abort() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(
        &[(OPS_USER.to_string(), OPS_PASSWORD.to_string())],
        &outpost_fleet::acl::mosquitto_acl(OPS_USER),
        None,
    );
    let ops_key = outpost_package::keygen(&d.join("keys"), "ops-cli").unwrap();
    let prov = outpost_package::keygen(&d.join("provider"), "acme").unwrap();
    std::fs::create_dir_all(d.join("trust")).unwrap();
    std::fs::copy(&prov.public_path, d.join("trust/acme.pub")).unwrap();
    let provider = ProviderSigningKey::load(&prov.private_path).unwrap();
    for v in ["1.4.0", "1.5.0"] {
        std::fs::write(d.join(format!("{v}.opkg")), pack(&provider, v)).unwrap();
    }
    std::fs::write(d.join("broker.pass"), format!("{OPS_PASSWORD}\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = d.join("ops.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"{}\"\nuser = \"{OPS_USER}\"\npassword_file = \"{}\"\ngateway_password_file = \"{}\"\n\
             [ops]\nkey = \"{}\"\nstore = \"{}\"\nartifacts = \"{}\"\ntrust = \"{}\"\ntick_ms = 50\n\
             [http]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\n",
            broker.url(),
            d.join("broker.pass").display(),
            broker.passwd_path().display(),
            ops_key.private_path.display(),
            d.join("fleet.redb").display(),
            d.join("artifacts").display(),
            d.join("trust").display(),
            d.join("api.token").display(),
        ),
    )
    .unwrap();

    // A bad config names every problem at once.
    let bad = d.join("bad.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &bad,
        text.replace(&listen, "nowhere").replace("mqtt://", "mqtts://").replace("tick_ms = 50", "tick_ms = 0"),
    )
    .unwrap();
    let why = fails(&bad, &["serve"]).await;
    for want in ["broker.tls_ca", "http.listen", "ops.tick_ms"] {
        assert!(why.contains(want), "`{want}` missing from:\n{why}");
    }

    let _serve = Serve(
        Command::new(BIN).arg("--config").arg(&config).arg("serve").env("RUST_LOG", "warn").spawn().expect("serve"),
    );
    let token_file = d.join("api.token");
    until("serve answers", Duration::from_secs(20), || {
        token_file.exists() && ops(&config, &["gateways"]).status.success()
    })
    .await;

    // Register three gateways; their passwords go into the broker's file.
    let mut gateways = Vec::new();
    for (i, id) in ["gw-1", "gw-2", "gw-3"].iter().enumerate() {
        let site = if i == 0 { "north" } else { "south" };
        let out = ok(&config, &["gateway", "add", id, "--site", site, "--tag", "loader"]).await;
        let password = out
            .lines()
            .find_map(|l| l.strip_prefix("password = \""))
            .and_then(|p| p.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no password in {out}"))
            .to_string();
        gateways.push(SimGateway {
            id: id.to_string(),
            site: site.into(),
            password,
            services: BTreeMap::new(),
            kpis: BTreeMap::new(),
        });
    }
    assert!(fails(&config, &["gateway", "add", "gw-1", "--site", "north"]).await.contains("already registered"));
    assert!(fails(&config, &["gateway", "add", "bad/id", "--site", "north"]).await.contains("is not 1-64"));
    broker.reload();
    let acl = ok(&config, &["acl"]).await;
    assert!(acl.contains("pattern write outpost/fleet/%u/reported"), "{acl}");

    for v in ["1.4.0", "1.5.0"] {
        let out = ok(&config, &["package", "add", d.join(format!("{v}.opkg")).to_str().unwrap()]).await;
        assert!(out.starts_with(&format!("{SVC} {v} sha256:")), "{out}");
    }
    let listed = ok(&config, &["package", "list"]).await;
    assert_eq!(listed.lines().count(), 2, "{listed}");

    // The gateways log in with the credentials `gateway add` printed.
    let ops_pub = outpost_package::ProviderKey::load(&ops_key.public_path).unwrap();
    let cfg = SimConfig {
        broker_url: broker.url(),
        tls_ca: None,
        ops_key: ops_pub,
        artifacts_url: Some(format!("http://{listen}")),
        // Periodic reports, as the agent sends: none is lost to a
        // subscription `serve` has not made yet.
        report_every: Some(Duration::from_secs(1)),
        behaviour: always_ok(),
    };
    let fleet = sim::spawn_fleet(&cfg, gateways, Duration::from_millis(100)).unwrap();
    until("every gateway seen", Duration::from_secs(20), || {
        let t = ops(&config, &["gateways"]);
        String::from_utf8_lossy(&t.stdout).lines().filter(|l| l.contains("s ago")).count() == 3
    })
    .await;

    // First install of 1.4.0 in waves [1, 100%], watched to the end.
    let digest = |v: &str| {
        let l = listed.lines().find(|l| l.contains(&format!(" {v} "))).unwrap().to_string();
        l.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string()
    };
    let plan = |id: &str, v: &str, bake: u64| {
        format!(
            r#"{{"id":"{id}","service":"{SVC}","version":"{v}","digest":"{}","selector":{{"tags":["loader"]}},"waves":[1,"100%"],"gates":[{{"bake_secs":{bake}}}]}}"#,
            digest(v)
        )
    };
    std::fs::write(d.join("p1.json"), plan("p1", "1.4.0", 0)).unwrap();
    assert!(ok(&config, &["rollout", "start", d.join("p1.json").to_str().unwrap()]).await.contains("started p1"));
    let watched = ok(&config, &["rollout", "watch", "p1"]).await;
    assert!(watched.contains("wave 1/2: 1 gateways"), "{watched}");
    assert!(watched.contains("wave 2/2: 2 gateways: succeeded 2 [passed]"), "{watched}");
    assert!(watched.trim_end().ends_with("rollout p1 succeeded"), "{watched}");
    let table = ok(&config, &["gateways"]).await;
    assert_eq!(
        table.lines().filter(|l| l.contains("weight-loading=1.4.0") && l.contains("healthy")).count(),
        3,
        "{table}"
    );
    assert!(fleet.stats.installed().values().all(|s| s[SVC] == "1.4.0"));
    assert_eq!(fleet.stats.get(&fleet.stats.downloads), 3);

    // 1.5.0 with a long bake: pause, resume, then abort by hand.
    std::fs::write(d.join("p2.json"), plan("p2", "1.5.0", 600)).unwrap();
    ok(&config, &["rollout", "start", d.join("p2.json").to_str().unwrap()]).await;
    until("wave 1 of p2 succeeded", Duration::from_secs(20), || {
        String::from_utf8_lossy(&ops(&config, &["rollout", "show", "p2"]).stdout).contains("succeeded 1 [running]")
    })
    .await;
    assert!(ok(&config, &["rollout", "pause", "p2"]).await.contains("paused p2"));
    assert!(ok(&config, &["rollout", "show", "p2"]).await.contains("p2 weight-loading 1.5.0: paused"));
    assert!(fails(&config, &["rollout", "pause", "p2"]).await.contains("cannot pause"));
    // The fleet page, rendered by headless Chromium with the token in the
    // fragment: versions per site and the paused rollout with its waves.
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let page_url = format!("http://{listen}/#token={token}");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&page_url)).await.unwrap();
    assert!(dom.contains("3 gateways, updated"), "{dom}");
    assert!(dom.contains("<td>north</td><td>weight-loading</td>"), "{dom}");
    assert!(dom.contains("<td>south</td><td>weight-loading</td>"), "{dom}");
    assert_eq!(dom.matches("1.5.0 (1)").count(), 1, "wave 1's gateway runs 1.5.0: {dom}");
    assert!(dom.contains("p2: weight-loading 1.5.0 <span class=\"\">paused</span>"), "{dom}");
    assert!(dom.contains("<td>wave 1</td><td>1</td>"), "{dom}");
    ok(&config, &["rollout", "resume", "p2"]).await;
    ok(&config, &["rollout", "abort", "p2", "--reason", "operator test"]).await;
    let watched = fails(&config, &["rollout", "watch", "p2"]).await;
    assert!(watched.contains("rolled_back: aborted by tester: operator test"), "{watched}");
    let list = ok(&config, &["rollout", "list"]).await;
    assert!(list.contains("p1") && list.contains("succeeded") && list.contains("rolled_back"), "{list}");
    until("every gateway back on 1.4.0", Duration::from_secs(10), || {
        fleet.stats.installed().values().all(|s| s[SVC] == "1.4.0")
    })
    .await;

    // The fleet page and its data (token required for the data).
    let page = outpost_ops::client::request("GET", &format!("http://{listen}/"), &[], b"", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(page.status == 200 && page.text().contains("/api/fleet"));
    let anon =
        outpost_ops::client::request("GET", &format!("http://{listen}/api/fleet"), &[], b"", Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(anon.status, 401);
    let auth = format!("Bearer {token}");
    let data = outpost_ops::client::request(
        "GET",
        &format!("http://{listen}/api/fleet"),
        &[("Authorization", &auth)],
        b"",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&data.body).unwrap();
    assert_eq!(v["versions"]["south"][SVC]["1.4.0"], 2, "{v}");
    assert_eq!(v["versions"]["north"][SVC]["1.4.0"], 1, "{v}");
}
