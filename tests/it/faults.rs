//! Faults stay inside one instance: a trap, an endless loop and a runaway
//! allocation each restart the instance that caused them, the poison
//! message is dead-lettered, every other message is still delivered exactly
//! once and in order, and a neighbouring service never notices.

use outpost_tests::*;
use std::time::Duration;

#[test]
fn trap_loop_and_oom_restart_one_instance_and_lose_nothing() {
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    // A healthy neighbour on the same input: the same code told to only echo.
    let neighbour = dir.install(&test_package("testbed"), "neighbour");
    let manifest = std::fs::read_to_string(neighbour.join("service.toml")).expect("manifest");
    let manifest = manifest
        .replace("name = \"testbed\"", "name = \"neighbour\"")
        .replace("publish = [\"test/out/#\"]", "publish = [\"test/echo/#\"]")
        .replace("out = \"test/out\"", "out = \"test/echo\"\necho_only = true");
    std::fs::write(neighbour.join("service.toml"), manifest).expect("write manifest");
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");

    let sub = Subscriber::start(mosquitto.port, &["test/out/#", "test/echo/#", "outpost/test-gw/deadletter/#"]);
    let mut input: Vec<String> = Vec::new();
    for (i, poison) in ["trap", "loop", "alloc"].iter().enumerate() {
        for j in 0..10 {
            input.push(format!("m{}", i * 10 + j));
        }
        input.push(poison.to_string());
    }
    input.extend((30..40).map(|j| format!("m{j}")));
    publish_lines(mosquitto.port, "test/in/a", &input.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>());

    let got = sub.wait_until(Duration::from_secs(30), |g| {
        g.iter().filter(|(t, _)| t.starts_with("test/out/")).count() >= 40
            && g.iter().filter(|(t, _)| t.starts_with("test/echo/")).count() >= 43
            && g.iter().filter(|(t, _)| t.contains("deadletter")).count() >= 3
    });
    let out: Vec<&str> = got.iter().filter(|(t, _)| t == "test/out/a").map(|(_, p)| p.as_str()).collect();
    let expected: Vec<String> = (0..40).map(|j| format!("m{j}")).collect();
    assert_eq!(out, expected, "every non-poison message exactly once, in order");
    let echoed: Vec<&str> = got.iter().filter(|(t, _)| t == "test/echo/a").map(|(_, p)| p.as_str()).collect();
    assert_eq!(echoed, input.iter().map(String::as_str).collect::<Vec<_>>(), "neighbour saw everything");
    let dead: Vec<serde_json::Value> = got
        .iter()
        .filter(|(t, _)| t == "outpost/test-gw/deadletter/testbed")
        .map(|(_, p)| serde_json::from_str(p).expect("dead letter is JSON"))
        .collect();
    let poisons: Vec<&str> = dead.iter().map(|d| d["payload_base64"].as_str().unwrap_or("")).collect();
    assert_eq!(poisons, vec!["dHJhcA==", "bG9vcA==", "YWxsb2M="], "trap, loop, alloc dead-lettered in order");
    let errors: Vec<&str> = dead.iter().map(|d| d["error"].as_str().unwrap_or("")).collect();
    assert!(errors[0].contains("unreachable"), "{errors:?}");
    assert!(errors[1].contains("interrupt"), "{errors:?}");
    assert!(errors[2].contains("memory"), "{errors:?}");

    // A poison message may fault once inside its batch, then again alone.
    let traps = agent.metric("outpost_traps_total", &["service=\"testbed\""]);
    assert!((3.0..=6.0).contains(&traps), "traps {traps}");
    assert_eq!(agent.metric("outpost_dead_letters_total", &["service=\"testbed\""]), 3.0);
    assert_eq!(agent.metric("outpost_traps_total", &["service=\"neighbour\""]), 0.0);
    let restarted = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        agent.metric("outpost_restarts_total", &["service=\"testbed\""]) >= traps
    });
    assert!(restarted, "testbed restarted after each fault");
    agent.stop().expect("stop");
}

#[test]
fn shutdown_drains_accepted_messages_and_broker_keeps_the_rest() {
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let sub = Subscriber::start(mosquitto.port, &["test/out/#"]);
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    // ~2 ms of work each: the agent is still busy when asked to stop.
    let input: Vec<Vec<u8>> = (0..300).map(|i| format!("spin:2:id{i}").into_bytes()).collect();
    publish_lines(mosquitto.port, "test/in/a", &input);
    // Stop while the agent is busy: once it has handled its first message.
    sub.wait_until(Duration::from_secs(20), |g| !g.is_empty());
    agent.stop().expect("drained stop");
    let first_run = sub.received().len();
    // A new agent with the same identity gets what the broker kept.
    let agent = TestAgent::start(&dir, Some(&mosquitto.url()), "");
    let got = sub.wait_until(Duration::from_secs(30), |g| g.len() >= 300);
    let mut ids: Vec<String> = got.into_iter().map(|(_, p)| p).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every message handled across the restart (first run handled {first_run})");
    assert!(first_run > 0, "first run handled some before stopping");
    agent.stop().expect("stop");
}
