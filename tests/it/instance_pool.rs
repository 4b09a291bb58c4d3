//! A thousand live instances in one agent: the instance pool is sized by
//! `[dispatch] max_instances` (default from the machine's memory), one
//! service scaled to 1,000 instances runs them all and every message is
//! handled; a pool too small for what the config asks says which setting
//! to raise.

use outpost_tests::{client_runtime, metric_value, test_package, AgentDir, TestAgent};
use std::time::{Duration, Instant};

/// The testbed, installed from its folder, sharded by the third topic level.
fn sharded_testbed(dir: &AgentDir) {
    let installed = dir.install(&test_package("testbed"), "testbed");
    let manifest = std::fs::read_to_string(installed.join("service.toml")).expect("manifest");
    std::fs::write(installed.join("service.toml"), format!("{manifest}\n[scale]\ninstances = 1\nshard_by = 2\n"))
        .expect("write manifest");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn one_thousand_instances_run_in_one_agent() {
    let dir = AgentDir::new();
    sharded_testbed(&dir);
    let before = rss_kib();
    let t0 = Instant::now();
    let agent = TestAgent::start(
        &dir,
        None,
        "max_instances = 1100\n\n[services.testbed]\ninstances = 1000\n",
    );
    let started = t0.elapsed();
    let status = agent.status().expect("status");
    let svc = &status["services"][0];
    assert_eq!((svc["instances"].as_u64(), svc["running"].as_u64()), (Some(1000), Some(1000)), "{status}");
    // 3,000 messages over 1,000 keys, spread over the instances by key: every one is answered.
    client_runtime().block_on(async {
        let mut opts = rumqttc::MqttOptions::new("pool-test", "127.0.0.1", agent.mqtt_port);
        opts.set_inflight(100);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 200);
        let publisher = tokio::spawn(async move {
            for i in 0..3000 {
                let topic = format!("test/in/k{}", i % 1000);
                client.publish(topic, rumqttc::QoS::AtLeastOnce, false, format!("m{i}")).await.expect("publish");
            }
        });
        let mut acked = 0;
        while acked < 3000 {
            match tokio::time::timeout(Duration::from_secs(30), events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("publishing stopped after {acked} acks: {other:?}"),
            }
        }
        publisher.await.expect("publisher");
    });
    let start = Instant::now();
    loop {
        let handled = metric_value(&agent.metrics(), "outpost_messages_in_total", &["testbed"]);
        if handled >= 3000.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "only {handled} of 3000 handled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let handled_in = start.elapsed();
    let grew = rss_kib().saturating_sub(before);
    println!(
        "1,000 instances: ready in {:.0} ms, process RSS grew {} KiB ({:.0} KiB per instance), 3,000 messages handled {:.1} s after the last publish",
        started.as_secs_f64() * 1e3,
        grew,
        grew as f64 / 1000.0,
        handled_in.as_secs_f64()
    );
    let t = Instant::now();
    agent.stop().expect("stops cleanly");
    println!("stopped in {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn a_pool_too_small_names_the_setting_to_raise() {
    let dir = AgentDir::new();
    sharded_testbed(&dir);
    let agent = TestAgent::spawn(&dir, None, "max_instances = 8\n\n[services.testbed]\ninstances = 20\n");
    let start = Instant::now();
    loop {
        let text = agent.status().map(|s| s.to_string()).unwrap_or_default();
        if text.contains("max_instances") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no status names [dispatch] max_instances: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
