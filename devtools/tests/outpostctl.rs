//! `outpostctl` as a user runs it: real binary, real component, recorded input.

mod support;

use support::{outpostctl, test_package};

#[test]
fn run_replays_lines_and_prints_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "{\"a\": 1}\nplain text\ncount\r\ntrap\nafter\n").expect("write");
    let pkg = test_package("testbed");
    let (ok, stdout, stderr) = outpostctl(&[
        "run",
        pkg.to_str().expect("utf8"),
        "--replay",
        input.to_str().expect("utf8"),
        "--topic",
        "test/in/x",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let outputs: Vec<&serde_json::Value> = lines.iter().filter(|l| l["topic"] == "test/out/x").collect();
    assert_eq!(outputs.len(), 4, "{stdout}");
    assert_eq!(outputs[0]["payload"], serde_json::json!({"a": 1}), "JSON payloads stay JSON");
    assert_eq!(outputs[1]["payload"], "cGxhaW4gdGV4dA==", "other payloads are base64");
    assert_eq!(outputs[2]["payload"], 1, "CR LF stripped, state counted");
    assert_eq!(outputs[3]["payload"], "YWZ0ZXI=", "the message after a trap still runs");
    let dead = lines.iter().find(|l| l["topic"] == "outpost/replay/deadletter/testbed").expect("dead letter line");
    assert_eq!(dead["payload"]["payload_base64"], "dHJhcA==");
    assert!(stderr.contains("1 dead-lettered"), "{stderr}");
}

#[test]
fn run_chunks_binary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    std::fs::write(&input, [b'a'; 10]).expect("write");
    let pkg = test_package("testbed");
    let (ok, stdout, stderr) = outpostctl(&[
        "run",
        pkg.to_str().expect("utf8"),
        "--replay",
        input.to_str().expect("utf8"),
        "--topic",
        "test/in/bin",
        "--chunk",
        "4",
    ]);
    assert!(ok, "{stderr}");
    let payloads: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["payload"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(payloads, vec!["YWFhYQ==", "YWFhYQ==", "YWE="], "3 chunks of 4, 4 and 2 bytes");
}

#[test]
fn errors_name_the_problem() {
    let pkg = test_package("testbed");
    let (ok, _, stderr) =
        outpostctl(&["run", pkg.to_str().expect("utf8"), "--replay", "/nonexistent", "--topic", "test/in/x"]);
    assert!(!ok && stderr.contains("/nonexistent"), "{stderr}");
    let (ok, _, stderr) =
        outpostctl(&["run", pkg.to_str().expect("utf8"), "--replay", "/dev/null", "--topic", "other/topic"]);
    assert!(!ok && stderr.contains("other/topic") && stderr.contains("test/in/#"), "{stderr}");
    let (ok, _, stderr) = outpostctl(&["run", "/tmp", "--replay", "/dev/null", "--topic", "x"]);
    assert!(!ok && stderr.contains("no service.toml"), "{stderr}");
    let (ok, stdout, _) = outpostctl(&["check", pkg.to_str().expect("utf8")]);
    assert!(ok && stdout.contains("testbed@0.1.0 ok"), "{stdout}");
}
