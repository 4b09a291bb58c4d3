//! The agent on a real bus: the embedded rumqttd and, separately, a
//! Mosquitto server started here. Input is published and output read by
//! Mosquitto's own clients, not by Outpost code.

use outpost_tests::*;
use std::time::Duration;

fn lines(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn echo_round_trip(external: Option<&Mosquitto>) {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let agent = TestAgent::start(&dir, external.map(|m| m.url()).as_deref(), "");
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    publish_lines(agent.mqtt_port, "test/in/truck-1", &lines(&["hello", "acl", "count", "count", "bye"]));
    let got = sub.wait_until(Duration::from_secs(20), |g| g.len() >= 5);
    let expected: Vec<(String, String)> =
        ["hello", "denied", "1", "2", "bye"].iter().map(|p| ("test/out/truck-1".to_string(), p.to_string())).collect();
    assert_eq!(got, expected, "outputs in order, ACL enforced by the host, state counted");
    assert_eq!(agent.metric("outpost_acl_denied_total", &["testbed"]), 1.0);
    assert_eq!(agent.metric("outpost_messages_in_total", &["testbed"]), 5.0);
    assert_eq!(agent.metric("outpost_messages_out_total", &["testbed"]), 5.0);
    agent.stop().expect("clean stop");
}

#[test]
fn embedded_broker_delivers_in_order_with_acl_and_state() {
    echo_round_trip(None);
}

#[test]
fn external_mosquitto_delivers_in_order_with_acl_and_state() {
    let mosquitto = Mosquitto::start();
    echo_round_trip(Some(&mosquitto));
}

#[test]
fn state_survives_agent_restart() {
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    for expected in [["1", "2"], ["3", "4"]] {
        let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
        let sub = Subscriber::start(mosquitto.port, &["test/out/#"]);
        publish_lines(mosquitto.port, "test/in/a", &lines(&["count", "count"]));
        let got: Vec<String> =
            sub.wait_until(Duration::from_secs(20), |g| g.len() >= 2).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, expected, "counter continues from persisted state");
        agent.stop().expect("stop");
    }
}

#[test]
fn site_config_overrides_manifest_defaults() {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let agent = TestAgent::start(&dir, None, "[services.testbed.config]\nout = \"test/out/calibrated\"\n");
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    publish_lines(agent.mqtt_port, "test/in/x", &lines(&["ping"]));
    let got = sub.wait_until(Duration::from_secs(20), |g| !g.is_empty());
    assert_eq!(got, vec![("test/out/calibrated/x".to_string(), "ping".to_string())]);
}

#[test]
fn metrics_pass_promtool_and_status_page_renders() {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let agent = TestAgent::start(&dir, None, "");
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    publish_lines(agent.mqtt_port, "test/in/x", &lines(&["a", "b"]));
    sub.wait_until(Duration::from_secs(20), |g| g.len() >= 2);
    let text = agent.metrics();
    for name in [
        "outpost_messages_in_total",
        "outpost_messages_out_total",
        "outpost_handle_seconds_bucket",
        "outpost_traps_total",
        "outpost_restarts_total",
        "outpost_queue_depth",
        "outpost_service_events_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs it)");
    use std::io::Write;
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, page) = agent.http("/").expect("status page");
    assert_eq!(code, 200);
    assert!(page.contains("testbed") && page.contains("test-gw"), "{page}");
    let (code, _) = agent.http("/healthz").expect("healthz");
    assert_eq!(code, 200);
}

#[test]
fn management_api_and_outpostctl_status_report_services() {
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let agent = TestAgent::start(&dir, None, "");
    let out = std::process::Command::new(binary("outpostctl"))
        .args(["status", "--agent", &format!("http://127.0.0.1:{}", agent.api_port), "--json"])
        .arg("--token-file")
        .arg(dir.path().join("state/api.token"))
        .output()
        .expect("outpostctl status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["gateway"], "test-gw");
    assert_eq!(status["state"], "ready");
    assert_eq!(status["mqtt_connected"], true);
    assert_eq!(status["services"][0]["name"], "testbed");
    assert_eq!(status["services"][0]["running"], 1);
    let table = std::process::Command::new(binary("outpostctl"))
        .args(["status", "--agent", &format!("http://127.0.0.1:{}", agent.api_port)])
        .arg("--token-file")
        .arg(dir.path().join("state/api.token"))
        .output()
        .expect("outpostctl status");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("testbed") && text.contains("ok") && text.contains("test-gw"), "{text}");
    // An agent that is not there: a clear error, not a hang.
    let gone = std::process::Command::new(binary("outpostctl"))
        .args(["status", "--agent", &format!("http://127.0.0.1:{}", free_port())])
        .arg("--token-file")
        .arg(dir.path().join("state/api.token"))
        .output()
        .expect("outpostctl status");
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach the agent"));
}

/// A slow and a fast service finish messages out of arrival order; the
/// agent still acknowledges in arrival order (MQTT 3.1.1, 4.6), so the
/// embedded rumqttd, which drops a client that acks out of order, keeps the
/// connection and nothing is redelivered twice.
#[test]
fn acks_stay_in_order_when_services_finish_out_of_order() {
    let dir = AgentDir::new();
    for name in ["slow", "fast"] {
        let manifest = dir.install(&test_package("testbed"), name).join("service.toml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let text = text
            .replace("name = \"testbed\"", &format!("name = \"{name}\""))
            .replace("subscribe = [\"test/in/#\"]", &format!("subscribe = [\"test/in/{name}/#\"]"));
        std::fs::write(&manifest, text).expect("write manifest");
    }
    let agent = TestAgent::start(&dir, None, "");
    let sub = Subscriber::start(agent.mqtt_port, &["test/out/#"]);
    // Interleaved on one connection: each slow message is followed by five
    // fast ones that finish before it.
    let mut messages = Vec::new();
    for i in 0..30 {
        messages.push(("test/in/slow/x", format!("spin:15:s{i}")));
        for j in 0..5 {
            messages.push(("test/in/fast/x", format!("f{i}-{j}")));
        }
    }
    publish_interleaved(agent.mqtt_port, &messages);
    let got = sub.wait_until(Duration::from_secs(30), |g| g.len() >= 180);
    std::thread::sleep(Duration::from_millis(500));
    let got = if sub.received().len() > got.len() { sub.received() } else { got };
    let mut payloads: Vec<String> = got.into_iter().map(|(_, p)| p).collect();
    payloads.sort();
    let before = payloads.len();
    payloads.dedup();
    assert_eq!(before, payloads.len(), "no message handled twice (a redelivery after a dropped connection)");
    assert_eq!(payloads.len(), 180);
    assert_eq!(agent.metric("outpost_messages_in_total", &["\"slow\""]), 30.0);
    assert_eq!(agent.metric("outpost_messages_in_total", &["\"fast\""]), 150.0);
    agent.stop().expect("clean stop");
}

/// Publishes (topic, payload) pairs in this order, QoS 1, from one client.
fn publish_interleaved(port: u16, messages: &[(&str, String)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("interleaver", "127.0.0.1", port), 1000);
        for (topic, payload) in messages {
            client.publish(*topic, QoS::AtLeastOnce, false, payload.clone().into_bytes()).await.expect("publish");
        }
        let mut acked = 0;
        while acked < messages.len() {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("publisher: {other:?}"),
            }
        }
    });
}

/// `outpostctl publish` delivers a text or a file (a calibration command, a
/// network model) and says what is wrong when it cannot.
#[test]
fn outpostctl_publish_delivers_text_and_files() {
    let mosquitto = Mosquitto::start();
    let sub = Subscriber::start(mosquitto.port, &["site/s1/ltown/#"]);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), "{\"version\":1}").expect("write");
    let ctl = |args: &[&str]| {
        std::process::Command::new(binary("outpostctl"))
            .arg("publish")
            .args(args)
            .args(["--broker", &mosquitto.url()])
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("outpostctl")
    };
    assert!(ctl(&["site/s1/ltown/calibrate", "--message", "{\"start\":\"a\"}"]).status.success());
    assert!(ctl(&["site/s1/ltown/leak-model", "--file", &file.path().display().to_string()]).status.success());
    let got = sub.wait_until(Duration::from_secs(10), |g| g.len() >= 2);
    assert_eq!(
        got,
        vec![
            ("site/s1/ltown/calibrate".to_string(), "{\"start\":\"a\"}".to_string()),
            ("site/s1/ltown/leak-model".to_string(), "{\"version\":1}".to_string()),
        ]
    );
    let missing = ctl(&["site/s1/ltown/leak-model", "--file", "/nonexistent/model.json"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model.json"));
    let wildcard = ctl(&["site/+/x", "--message", "m"]);
    assert!(!wildcard.status.success(), "a topic with a wildcard is refused");
}
