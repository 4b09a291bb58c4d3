//! Regression tests for the MQTT link's faults (issue 9), each against a
//! real broker (Mosquitto or the embedded rumqttd) and a real agent:
//! oversized messages, `/healthz` with the broker down, SIGTERM without a
//! broker, the reconnect backoff, topics with NUL or wildcards, the agent's
//! client id, the embedded broker's credentials and a subscription refused
//! by the broker's ACL.

use outpost::bus::MAX_INCOMING_PACKET;
use outpost_tests::{
    binary, free_port, http_get, make_world_accessible, publish_bytes, test_package, AgentDir, Mosquitto, RawMqtt,
    Subscriber, TestAgent,
};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest payload the test's Mosquitto forwards (`message_size_limit`),
/// as the README and deploy/gateway/outpost.toml tell operators to set it:
/// 16 MiB, the most a manifest's `limits.max_payload_bytes` may allow. The
/// agent must read any packet carrying such a payload, whatever its topic.
const BROKER_LIMIT: usize = 16 << 20;

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn testbed_agent_dir() -> AgentDir {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    dir
}

/// Samples `outpost_mqtt_connected` every 10 ms in the background. A
/// reconnect keeps the gauge at 0 for at least the first backoff (200 ms),
/// so a dropped link cannot slip between two samples.
struct LinkWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkWatch {
    fn start(http_port: u16) -> LinkWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, samples, down) = (stop.clone(), samples.clone(), down.clone());
            let addr = format!("127.0.0.1:{http_port}");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Some((_, text)) = http_get(&addr, "/metrics") {
                        samples.fetch_add(1, Ordering::AcqRel);
                        if outpost_tests::metric_value(&text, "outpost_mqtt_connected", &[]) != 1.0 {
                            down.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        LinkWatch { stop, samples, down, thread: Some(thread) }
    }

    /// (samples taken, samples with the link down)
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.samples.load(Ordering::Acquire), self.down.load(Ordering::Acquire))
    }
}

/// Connections the agent (client id `outpost-test-gw`) made, from Mosquitto's log.
fn agent_connections(mosquitto: &Mosquitto) -> usize {
    mosquitto.log().lines().filter(|l| l.contains("New client connected") && l.contains(" as outpost-test-gw ")).count()
}

fn has_output(got: &[(String, String)], topic: &str, payload: &str) -> bool {
    got.iter().any(|(t, p)| t == topic && p == payload)
}

/// Defect 1: a payload above a service's `limits.max_payload_bytes` is
/// dropped once and counted; one above the broker's `message_size_limit`
/// never reaches the agent. Either way the link stays up (one connection
/// in the broker's log, the gauge never 0) and later messages arrive.
#[test]
fn oversized_messages_are_dropped_or_refused_once_and_the_link_holds() {
    let mosquitto = Mosquitto::start_with(&format!("message_size_limit {BROKER_LIMIT}"));
    let dir = testbed_agent_dir();
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    let sub = Subscriber::start(mosquitto.port, &["test/out/#"]);
    let watch = LinkWatch::start(agent.http_port);

    // 1 MiB: above testbed's 64 KiB limit, far below the agent's packet limit.
    publish_bytes(mosquitto.port, "test/in/big", &vec![b'x'; 1 << 20]);
    publish_bytes(mosquitto.port, "test/in/after1", b"after-1");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/after1", "after-1"));
    assert!(
        has_output(&got, "test/out/after1", "after-1"),
        "a message after the oversized one was not delivered: {got:?}"
    );
    let dropped =
        |agent: &TestAgent| agent.metric("outpost_dropped_total", &[r#"service="testbed""#, r#"reason="oversized""#]);
    assert_eq!(dropped(&agent), 1.0, "the 1 MiB payload is dropped exactly once for testbed");

    // One byte above the broker's limit: Mosquitto completes the QoS 1 flow
    // with the publisher and forwards nothing.
    publish_bytes(mosquitto.port, "test/in/huge", &vec![b'y'; BROKER_LIMIT + 1]);
    publish_bytes(mosquitto.port, "test/in/after2", b"after-2");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/after2", "after-2"));
    assert!(
        has_output(&got, "test/out/after2", "after-2"),
        "a message after the refused one was not delivered: {got:?}"
    );

    let (samples, down) = watch.finish();
    let log = mosquitto.log();
    assert!(
        log.contains("Dropped too large PUBLISH"),
        "Mosquitto did not refuse the {} byte payload (message_size_limit {BROKER_LIMIT}):\n{log}",
        BROKER_LIMIT + 1
    );
    assert_eq!(dropped(&agent), 1.0, "the payload refused by the broker never reached the agent");
    assert_eq!(agent.metric("outpost_ingress_refused_total", &[]), 0.0);
    assert!(samples >= 5, "only {samples} metric samples taken");
    assert_eq!(down, 0, "outpost_mqtt_connected was 0 in {down} of {samples} samples");
    assert_eq!(agent_connections(&mosquitto), 1, "the agent reconnected; broker log:\n{log}");
    assert!(
        got.iter().all(|(t, _)| t != "test/out/big" && t != "test/out/huge"),
        "an oversized payload reached the service: {:?}",
        got.iter().map(|(t, p)| (t, p.len())).collect::<Vec<_>>()
    );
    eprintln!("oversized: dropped 1, refused by broker 1, {samples} link samples all up, 1 agent connection");
    agent.stop().expect("agent stops cleanly");
}

/// Defect 1, at the boundary: the largest message the configured broker
/// still forwards (a payload of exactly `message_size_limit` on the longest
/// topic MQTT allows) must not wedge the agent's link either.
#[test]
fn the_largest_message_the_broker_forwards_does_not_wedge_the_link() {
    let mosquitto = Mosquitto::start_with(&format!("message_size_limit {BROKER_LIMIT}"));
    let dir = testbed_agent_dir();
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    let sub = Subscriber::start(mosquitto.port, &["test/out/#"]);

    let topic = format!("test/in/{}", "t".repeat(65_535 - "test/in/".len()));
    publish_bytes(mosquitto.port, &topic, &vec![b'z'; BROKER_LIMIT]);
    publish_bytes(mosquitto.port, "test/in/after", b"after");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/after", "after"));
    let connections = agent_connections(&mosquitto);
    assert!(
        has_output(&got, "test/out/after", "after") && connections == 1,
        "a {BROKER_LIMIT} byte payload on a 65535 byte topic (MQTT remaining length {}, agent limit {MAX_INCOMING_PACKET}) \
         wedged the link: {connections} agent connections in 10 s, later message delivered: {}, \
         outpost_ingress_refused_total {}, outpost_mqtt_connected {}",
        BROKER_LIMIT + 65_535 + 4,
        has_output(&got, "test/out/after", "after"),
        agent.metric("outpost_ingress_refused_total", &[]),
        agent.metric("outpost_mqtt_connected", &[]),
    );
    assert_eq!(agent.metric("outpost_dropped_total", &[r#"reason="oversized""#]), 1.0);
}

/// Defect 1: `/healthz` says "degraded" (503, naming the broker link) while
/// the broker is down and "ok" (200) once the agent is back on it.
#[test]
fn healthz_is_degraded_while_the_broker_is_down() {
    let mut mosquitto = Mosquitto::start_with(&format!("message_size_limit {BROKER_LIMIT}"));
    let dir = testbed_agent_dir();
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    assert_eq!(agent.http("/healthz"), Some((200, "ok".to_owned())));

    mosquitto.stop();
    let t0 = Instant::now();
    let (code, body) = wait_for(Duration::from_secs(10), "/healthz 503 with the broker stopped", || {
        agent.http("/healthz").filter(|(c, _)| *c == 503)
    });
    let noticed = t0.elapsed();
    assert_eq!(code, 503);
    assert!(body.starts_with("degraded") && body.contains("broker link down"), "/healthz body: {body:?}");

    mosquitto.restart();
    let t1 = Instant::now();
    let (_, body) = wait_for(Duration::from_secs(15), "/healthz 200 with the broker back", || {
        agent.http("/healthz").filter(|(c, _)| *c == 200)
    });
    let recovered = t1.elapsed();
    assert_eq!(body, "ok");
    let sub = Subscriber::start(mosquitto.port, &["test/out/#"]);
    publish_bytes(mosquitto.port, "test/in/back", b"back");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/back", "back"));
    assert!(has_output(&got, "test/out/back", "back"), "nothing delivered after the broker came back: {got:?}");
    eprintln!("healthz: 503 {noticed:?} after the broker stopped, 200 {recovered:?} after it restarted");
    agent.stop().expect("agent stops cleanly");
}

/// The real `outpost` binary with its stderr kept in a file.
struct AgentProcess {
    child: Child,
    http_port: u16,
    log: std::path::PathBuf,
    started: Instant,
}

impl AgentProcess {
    /// Runs `outpost -c` on a config for `url` with no services installed.
    fn start(dir: &AgentDir, url: &str) -> AgentProcess {
        let (text, _, http_port, _) = dir.config(Some(url), "");
        let conf = dir.path().join("outpost.toml");
        std::fs::write(&conf, text).expect("write outpost.toml");
        let log = dir.path().join("outpost.log");
        let child = Command::new(binary("outpost"))
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start outpost");
        AgentProcess { child, http_port, log, started: Instant::now() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Defect 2: SIGTERM while the broker is unreachable ends the agent at once
/// (exit 0, within 3 s), not when the link comes up or after 10 s.
#[test]
fn sigterm_without_a_broker_exits_promptly() {
    let dir = AgentDir::new();
    let unused = free_port();
    let mut agent = AgentProcess::start(&dir, &format!("mqtt://127.0.0.1:{unused}"));
    let addr = format!("127.0.0.1:{}", agent.http_port);
    wait_for(Duration::from_secs(30), "the agent's /status", || http_get(&addr, "/status"));
    // Let it try (and fail) to connect for a second, as in the report.
    while agent.started.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, _) = http_get(&addr, "/healthz").expect("/healthz answers");
    assert_eq!(code, 503, "healthy without a broker");
    agent.sigterm();
    let t0 = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(3));
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| {
        // How long it does take, for the report.
        let late = agent.wait_exit(Duration::from_secs(12));
        panic!(
            "the agent did not exit within 3 s of SIGTERM with the broker unreachable \
             (exited after {:?}: {late:?}); its log:\n{}",
            t0.elapsed(),
            agent.log()
        )
    });
    assert_eq!(status.code(), Some(0), "exit status {status:?}; log:\n{}", agent.log());
    eprintln!("sigterm without a broker: exit 0 after {took:?}");
}

/// Defect 2: against a broker that accepts and closes at once, the agent's
/// reconnect backoff doubles (200 ms, 400 ms, ... capped at 5 s). Over
/// 10 s that is 6 attempts; a flat 100 ms retry would make about 100.
#[test]
fn reconnect_backoff_grows_against_a_broker_that_closes_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let accepts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (accepts, stop) = (accepts.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepts.lock().expect("lock").push(Instant::now());
                        drop(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    };
    let dir = AgentDir::new();
    let mut agent = AgentProcess::start(&dir, &format!("mqtt://127.0.0.1:{port}"));
    let first = wait_for(Duration::from_secs(30), "the agent's first connection", || {
        accepts.lock().expect("lock").first().copied()
    });
    let window = Duration::from_secs(10);
    while first.elapsed() < window {
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.sigterm();
    let exited = agent.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::Release);
    let _ = server.join();

    let times: Vec<Instant> = accepts.lock().expect("lock").iter().copied().filter(|t| *t - first < window).collect();
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_millis() as u64).collect();
    eprintln!("backoff: {} connections in 10 s, gaps {gaps:?} ms; exit {exited:?}", times.len());
    assert!(
        (3..=8).contains(&times.len()),
        "{} connections in 10 s (gaps {gaps:?} ms): the backoff does not grow; log:\n{}",
        times.len(),
        agent.log()
    );
    for w in gaps.windows(2) {
        assert!(w[1] + 50 >= w[0], "the backoff shrank: gaps {gaps:?} ms");
    }
    assert!(gaps.iter().all(|g| *g <= 5_500), "a gap above the 5 s cap: {gaps:?} ms");
    assert!(gaps.first().is_some_and(|g| *g >= 150), "first retry too soon: {gaps:?} ms");
}

/// Defect 3a: a message on a topic with NUL or a wildcard, published to
/// the embedded broker, is refused once by the agent (counted, acknowledged,
/// no service sees it) and later messages still flow.
#[test]
fn topics_with_nul_or_wildcards_are_refused_once() {
    let dir = testbed_agent_dir();
    let agent = TestAgent::start(&dir, None, "");
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    let watch = LinkWatch::start(agent.http_port);
    let mut raw = RawMqtt::connect(agent.mqtt_port, "raw-publisher", None).expect("raw client connects");
    let bad: [&[u8]; 3] = [b"test/in/a\0b", b"test/in/a+b", b"test/in/a#b"];
    for topic in bad {
        raw.publish(topic, b"bad-topic").unwrap_or_else(|e| panic!("broker refused {topic:?}: {e}"));
    }
    raw.publish(b"test/in/after", b"after").expect("publish after");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/after", "after"));
    assert!(has_output(&got, "test/out/after", "after"), "a message after the bad topics was not delivered: {got:?}");
    let refused = wait_for(Duration::from_secs(10), "3 refused messages", || {
        let n = agent.metric("outpost_ingress_refused_total", &[]);
        (n >= bad.len() as f64).then_some(n)
    });
    // More traffic: a redelivered bad message would be counted again.
    raw.publish(b"test/in/later", b"later").expect("publish later");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/later", "later"));
    assert!(has_output(&got, "test/out/later", "later"), "{got:?}");
    raw.disconnect();
    let (samples, down) = watch.finish();
    assert_eq!(refused, bad.len() as f64);
    assert_eq!(agent.metric("outpost_ingress_refused_total", &[]), bad.len() as f64, "a bad message came back");
    assert_eq!(agent.metric("outpost_messages_in_total", &[r#"service="testbed""#]), 2.0, "testbed saw a bad topic");
    assert!(got.iter().all(|(_, p)| p != "bad-topic"), "a bad topic reached the service: {got:?}");
    assert_eq!(down, 0, "the agent's link dropped in {down} of {samples} samples");
    agent.stop().expect("agent stops cleanly");
}

/// Defect 3b: a client connecting to the embedded broker with the client
/// id the agent used to have (`outpost-{gateway}`) does not take the
/// agent's session over: the agent's link stays up and messages still flow.
#[test]
fn a_client_using_the_gateway_client_id_does_not_disturb_the_agent() {
    let dir = testbed_agent_dir();
    let agent = TestAgent::start(&dir, None, "");
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    let watch = LinkWatch::start(agent.http_port);
    let mut intruder =
        RawMqtt::connect(agent.mqtt_port, "outpost-test-gw", None).expect("the loopback broker admits it");
    intruder.publish(b"test/in/intruder", b"through-intruder").expect("publish");
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/intruder", "through-intruder"));
    assert!(has_output(&got, "test/out/intruder", "through-intruder"), "{got:?}");
    // A second takeover attempt while the first is still connected.
    let second = RawMqtt::connect(agent.mqtt_port, "outpost-test-gw", None).expect("second connect");
    outpost_tests::publish_lines(agent.mqtt_port, "test/in/other", &[b"still-flowing".to_vec()]);
    let got = sub.wait_until(Duration::from_secs(10), |g| has_output(g, "test/out/other", "still-flowing"));
    assert!(has_output(&got, "test/out/other", "still-flowing"), "messages stopped flowing: {got:?}");
    second.disconnect();
    let (samples, down) = watch.finish();
    assert_eq!(down, 0, "the agent's link dropped in {down} of {samples} samples");
    let status = agent.status().expect("status");
    assert_eq!(status["state"], "ready");
    assert_eq!(status["mqtt_connected"], true);
    assert_eq!(agent.http("/healthz").map(|(c, _)| c), Some(200));
    agent.stop().expect("agent stops cleanly");
}

/// Defect 3c: an embedded broker beyond loopback without a credentials file
/// is refused by `outpost --check` and by config parsing, naming the key.
#[test]
fn embedded_broker_beyond_loopback_requires_a_credentials_file() {
    let dir = AgentDir::new();
    let (text, port, _, _) = dir.config(None, "");
    let text = text.replace(&format!("listen = \"127.0.0.1:{port}\""), &format!("listen = \"0.0.0.0:{port}\""));
    assert!(text.contains("0.0.0.0"), "config not edited:\n{text}");
    let err = outpost::config::AgentConfig::parse(&text, Path::new("wide.toml")).expect_err("accepted");
    assert!(err.to_string().contains("broker.credentials_file"), "{err}");

    let conf = dir.path().join("wide.toml");
    std::fs::write(&conf, &text).expect("write");
    let out = Command::new(binary("outpost")).arg("--check").arg("-c").arg(&conf).output().expect("outpost --check");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "--check accepted it: {said}");
    assert!(said.contains("broker.credentials_file"), "--check does not name broker.credentials_file: {said}");

    let creds = dir.path().join("users");
    std::fs::write(&creds, "alice:correct-horse\n").expect("write");
    let with = text.replace(
        "mode = \"embedded\"\n",
        &format!("mode = \"embedded\"\ncredentials_file = \"{}\"\n", creds.display()),
    );
    outpost::config::AgentConfig::parse(&with, Path::new("wide.toml")).expect("accepted with a credentials file");
}

/// Defect 3c: with `credentials_file`, the embedded broker admits listed
/// logins only, and no login may use the gateway's client id.
#[test]
fn embedded_broker_with_credentials_admits_listed_logins_only() {
    let dir = testbed_agent_dir();
    let creds = dir.path().join("users");
    std::fs::write(&creds, "# site users\nalice:correct-horse\n").expect("write");
    let (text, mqtt, http, api) = dir.config(None, "");
    let text = text.replace(
        "mode = \"embedded\"\n",
        &format!("mode = \"embedded\"\ncredentials_file = \"{}\"\n", creds.display()),
    );
    let agent = TestAgent::start_text(&dir, &text, mqtt, http, api);

    let anonymous = RawMqtt::connect(mqtt, "anon", None);
    assert!(anonymous.is_err(), "an anonymous client was admitted");
    let wrong = RawMqtt::connect(mqtt, "alice-1", Some(("alice", "wrong-password")));
    assert!(wrong.is_err(), "a wrong password was admitted");
    let reserved = RawMqtt::connect(mqtt, "outpost-test-gw", Some(("alice", "correct-horse")));
    assert!(reserved.is_err(), "a user took the gateway's client id");
    let mut alice =
        RawMqtt::connect(mqtt, "alice-1", Some(("alice", "correct-horse"))).expect("a listed login is admitted");
    let mut watcher = RawMqtt::connect(mqtt, "alice-2", Some(("alice", "correct-horse"))).expect("second login");
    watcher.subscribe(b"test/out/#").expect("subscribe");
    alice.publish(b"test/in/auth", b"logged-in").expect("publish");
    let (topic, payload) = watcher.next_publish().expect("the agent's output");
    assert_eq!((topic.as_slice(), payload.as_slice()), (&b"test/out/auth"[..], &b"logged-in"[..]));
    assert_eq!(agent.metric("outpost_mqtt_connected", &[]), 1.0);
    alice.disconnect();
    watcher.disconnect();
    agent.stop().expect("agent stops cleanly");
}

/// Mosquitto's dynamic-security plugin, which checks SUBSCRIBE against
/// its ACLs (2.0's `acl_file` grants every subscription and only filters
/// at delivery, so it never answers with a SUBACK failure).
fn dynamic_security_plugin() -> std::path::PathBuf {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/arm-linux-gnueabihf",
        "/usr/lib",
        "/usr/local/lib",
    ];
    dirs.iter()
        .map(|d| Path::new(d).join("mosquitto_dynamic_security.so"))
        .find(|p| p.is_file())
        .expect("mosquitto_dynamic_security.so not found (Debian: package mosquitto); `cargo xtask setup` installs it")
}

/// Defect 4: a SUBACK failure (Mosquitto's ACL denies the agent's filter)
/// must not count as ready: `/status` lists the refused filter and
/// `/healthz` is 503 naming it, while the link itself is up.
#[test]
fn a_subscription_refused_by_the_broker_acl_makes_the_agent_degraded() {
    // Anonymous clients (the agent here) may do anything but subscribe to test/in/#.
    let dir = testbed_agent_dir();
    let acl = dir.path().join("dynamic-security.json");
    std::fs::write(
        &acl,
        serde_json::json!({
            "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true},
            "clients": [],
            "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-test-in"}], "clients": []}],
            "anonymousGroup": "anonymous",
            "roles": [{"rolename": "no-test-in", "acls": [
                {"acltype": "subscribePattern", "topic": "test/in/#", "priority": 0, "allow": false}
            ]}]
        })
        .to_string(),
    )
    .expect("write the ACL");
    make_world_accessible(dir.path(), 0o755);
    make_world_accessible(&acl, 0o644);
    let mosquitto = Mosquitto::start_with(&format!(
        "plugin {}\nplugin_opt_config_file {}",
        dynamic_security_plugin().display(),
        acl.display()
    ));
    let agent = TestAgent::spawn(&dir, Some(&mosquitto.url()), "");
    let start = Instant::now();
    let status = loop {
        let status = agent.status().expect("/status");
        if status["refused_subscriptions"].as_array().is_some_and(|a| !a.is_empty()) {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no refused_subscriptions in /status after 15 s: {status}\n/healthz: {:?}\nMosquitto's log:\n{}",
            agent.http("/healthz"),
            mosquitto.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        mosquitto.log().contains("Denied SUBSCRIBE") || mosquitto.log().contains("test/in/#"),
        "{}",
        mosquitto.log()
    );
    assert_eq!(status["refused_subscriptions"], serde_json::json!(["test/in/#"]), "{status}");
    assert_ne!(status["state"], "ready", "{status}");
    let (code, body) = agent.http("/healthz").expect("/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("degraded") && body.contains("broker refused subscription test/in/#"), "{body:?}");
    assert_eq!(agent.metric("outpost_mqtt_connected", &[]), 1.0, "the link itself is up");
    eprintln!("refused subscription: /healthz 503 {body:?} after {:?}", start.elapsed());
    agent.stop().expect("agent stops cleanly");
}
