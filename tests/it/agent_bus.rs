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
        .output()
        .expect("outpostctl status");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("testbed") && text.contains("ok") && text.contains("test-gw"), "{text}");
    // An agent that is not there: a clear error, not a hang.
    let gone = std::process::Command::new(binary("outpostctl"))
        .args(["status", "--agent", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .expect("outpostctl status");
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach the agent"));
}
