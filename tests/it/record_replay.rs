//! Record and replay: `outpostctl record` captures live traffic from a real
//! Mosquitto into a recording, `outpostctl run` replays it through a
//! service in the real host (each message on its own topic), and
//! `outpost-sim --recording` puts it back on a bus with the same topics,
//! payloads, order and offsets, as Mosquitto's own `mosquitto_sub` sees them.

use outpost_devtools::sim::recording::{self, Recorded};
use outpost_tests::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: [u8; 5] = [0xb5, 0x62, 0x00, 0xff, 0x0a];
/// BINARY in standard base64, as the recording and `outpostctl run` write it.
const BINARY_B64: &str = "tWIA/wo=";

/// `outpostctl record` in the background; returns once it has subscribed.
struct Recording {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Recording {
    fn start(port: u16, topics: &[&str], out: &Path, extra: &[&str]) -> Recording {
        let mut child = Command::new(binary("outpostctl"))
            .arg("record")
            .args(topics)
            .args(["--broker", &format!("mqtt://127.0.0.1:{port}"), "--out"])
            .arg(out)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start outpostctl record");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("recording ") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("outpostctl record did not subscribe within 15 s: {seen:?}");
                }
            }
        }
        Recording { child, stderr: rx }
    }

    /// Waits for it to stop by itself; its stderr.
    fn wait(mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(50));
                let text: Vec<String> = self.stderr.try_iter().collect();
                let text = text.join("\n");
                assert!(status.success(), "outpostctl record failed ({status}): {text}");
                return text;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("outpostctl record did not stop within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn line_json(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn recorded_live_traffic_replays_through_a_service() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("site.jsonl");
    // Five messages to wait for: four on the testbed's input, one elsewhere.
    let rec = Recording::start(broker.port, &["test/in/#", "site/+/+/gnss/nmea"], &file, &["--count", "5"]);
    publish_lines(broker.port, "test/in/a", &[br#"{"n":1}"#.to_vec()]);
    publish_lines(broker.port, "site/s1/truck7/gnss/nmea", &[b"$GPGGA,120000.00,,,,,0,00,,,M,,M,,*66".to_vec()]);
    std::thread::sleep(Duration::from_millis(400));
    publish_bytes(broker.port, "test/in/bin", &BINARY);
    publish_lines(broker.port, "test/in/b", &[b"plain text".to_vec()]);
    publish_lines(broker.port, "test/in/a", &[br#"{"n":2}"#.to_vec()]);
    let log = rec.wait(Duration::from_secs(20));
    assert!(log.contains("5 messages") && log.contains("count reached"), "{log}");

    // The file, as written: one JSON object per line, text or base64.
    let text = std::fs::read_to_string(&file).expect("recording");
    let raw = line_json(&text);
    assert_eq!(raw.len(), 5, "{text}");
    assert_eq!(raw[0]["t_ms"], 0, "{text}");
    assert_eq!(raw[0]["payload"], r#"{"n":1}"#, "{text}");
    assert_eq!(raw[2]["payload_b64"], BINARY_B64, "{text}");
    assert!(raw[2].get("payload").is_none(), "{text}");
    // Read back with the module every reader uses: order and offsets.
    let messages = recording::read(&file).expect("valid recording");
    let got: Vec<(&str, &[u8])> = messages.iter().map(|m| (m.topic.as_str(), m.payload.as_slice())).collect();
    assert_eq!(
        got,
        vec![
            ("test/in/a", &br#"{"n":1}"#[..]),
            ("site/s1/truck7/gnss/nmea", &b"$GPGGA,120000.00,,,,,0,00,,,M,,M,,*66"[..]),
            ("test/in/bin", &BINARY[..]),
            ("test/in/b", &b"plain text"[..]),
            ("test/in/a", &br#"{"n":2}"#[..]),
        ]
    );
    assert!(messages.windows(2).all(|w| w[0].t_ms <= w[1].t_ms), "{messages:?}");
    assert!(messages[2].t_ms >= messages[1].t_ms + 350, "the 400 ms pause is kept: {messages:?}");

    // The testbed replayed on it: each input on its own topic, the GNSS
    // line (not subscribed) skipped and counted.
    let o = Command::new(binary("outpostctl"))
        .arg("run")
        .arg(test_package("testbed"))
        .arg("--replay")
        .arg(&file)
        .output()
        .expect("outpostctl run");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "outpostctl run failed: {out}{err}");
    let outputs = line_json(&out);
    assert_eq!(
        outputs,
        vec![
            serde_json::json!({"topic": "test/out/a", "payload": {"n": 1}}),
            serde_json::json!({"topic": "test/out/bin", "payload": BINARY_B64}),
            // Not JSON: base64, as `outpostctl run` prints any such payload.
            serde_json::json!({"topic": "test/out/b", "payload": "cGxhaW4gdGV4dA=="}),
            serde_json::json!({"topic": "test/out/a", "payload": {"n": 2}}),
        ],
        "{out}"
    );
    assert!(err.contains("4 messages handled, 4 published"), "{err}");
    assert!(err.contains("1 recorded messages on topics the service does not subscribe to"), "{err}");

    // Without the .jsonl name it is a recording only when told so; --topic
    // does not apply to one.
    let renamed = dir.path().join("site.rec");
    std::fs::copy(&file, &renamed).expect("copy");
    let o = Command::new(binary("outpostctl"))
        .arg("run")
        .arg(test_package("testbed"))
        .arg("--replay")
        .arg(&renamed)
        .arg("--recording")
        .output()
        .expect("outpostctl run --recording");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(line_json(&String::from_utf8_lossy(&o.stdout)), outputs);
    let o = Command::new(binary("outpostctl"))
        .arg("run")
        .arg(test_package("testbed"))
        .arg("--replay")
        .arg(&file)
        .args(["--topic", "test/in/x"])
        .output()
        .expect("outpostctl run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is a recording"), "{err}");
    let o = Command::new(binary("outpostctl"))
        .arg("run")
        .arg(test_package("testbed"))
        .arg("--replay")
        .arg(&renamed)
        .output()
        .expect("outpostctl run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--topic"), "a raw capture needs --topic: {err}");
}

#[test]
fn record_stops_after_its_duration_and_refuses_to_overwrite() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("quiet.jsonl");
    let started = Instant::now();
    let rec = Recording::start(broker.port, &["test/#"], &file, &["--duration", "1"]);
    publish_lines(broker.port, "test/x", &[b"only".to_vec()]);
    let log = rec.wait(Duration::from_secs(15));
    assert!(log.contains("duration reached") && log.contains("1 messages"), "{log}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(recording::read(&file).expect("recording").len(), 1);
    // An existing recording is kept unless --force.
    let o = Command::new(binary("outpostctl"))
        .args(["record", "test/#", "--broker", &broker.url(), "--duration", "1", "--out"])
        .arg(&file)
        .output()
        .expect("outpostctl record");
    assert!(!o.status.success(), "overwrote a recording");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(recording::read(&file).expect("recording kept").len(), 1);
    // No broker: a clear error, and no empty file left behind.
    let nowhere = dir.path().join("nowhere.jsonl");
    let o = Command::new(binary("outpostctl"))
        .args(["record", "test/#", "--broker", &format!("mqtt://127.0.0.1:{}", free_port()), "--out"])
        .arg(&nowhere)
        .output()
        .expect("outpostctl record");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is the agent or broker running"), "{err}");
    assert!(!nowhere.exists());
}

/// One `mosquitto_sub -F '%U|%t|%x'` line: receive time (s), topic, payload.
fn parse_sub_line(line: &str) -> Option<(f64, String, Vec<u8>)> {
    let mut parts = line.splitn(3, '|');
    let t = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    let hex = parts.next()?;
    let bytes =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    Some((t, topic, bytes))
}

#[test]
fn outpost_sim_replays_a_recording_in_order_with_its_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("site.jsonl");
    let recorded = [
        Recorded { t_ms: 0, topic: "site/s1/truck1/gnss/nmea".into(), payload: b"$GPGGA,first".to_vec() },
        Recorded { t_ms: 0, topic: "site/s1/truck2/payload".into(), payload: br#"{"t":12.5}"#.to_vec() },
        Recorded { t_ms: 300, topic: "site/s1/truck1/gnss/ubx".into(), payload: BINARY.to_vec() },
        Recorded { t_ms: 300, topic: "site/s1/truck1/gnss/nmea".into(), payload: b"$GPRMC,second".to_vec() },
        Recorded { t_ms: 1200, topic: "site/s1/truck2/payload".into(), payload: br#"{"t":13.0}"#.to_vec() },
    ];
    let text: String = recorded.iter().map(|m| recording::to_line(m) + "\n").collect();
    std::fs::write(&file, text).expect("write recording");

    let broker = Mosquitto::start();
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "site/#", "-F", "%U|%t|%x", "-C", &recorded.len().to_string(), "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (cargo xtask setup installs mosquitto-clients)");
    // mosquitto_sub prints nothing on SUBACK in this format: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let o = Command::new(binary("outpost-sim"))
        .args(["--broker", &broker.url(), "--recording"])
        .arg(&file)
        .output()
        .expect("outpost-sim");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "outpost-sim failed: {err}");
    assert!(err.contains("5 messages") && err.contains("5 acknowledged"), "{err}");
    let mut stdout = String::new();
    sub.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read mosquitto_sub");
    let _ = sub.wait();
    let got: Vec<(f64, String, Vec<u8>)> =
        stdout.lines().map(|l| parse_sub_line(l).unwrap_or_else(|| panic!("bad mosquitto_sub line {l}"))).collect();
    let want: Vec<(String, Vec<u8>)> = recorded.iter().map(|m| (m.topic.clone(), m.payload.clone())).collect();
    assert_eq!(got.iter().map(|(_, t, p)| (t.clone(), p.clone())).collect::<Vec<_>>(), want, "{stdout}");
    // Offsets as recorded (at speed 1), give or take scheduling.
    let t0 = got[0].0;
    for (m, (t, _, _)) in recorded.iter().zip(&got) {
        let offset_ms = (t - t0) * 1000.0;
        assert!(
            (offset_ms - m.t_ms as f64).abs() < 250.0,
            "{} arrived at +{offset_ms:.0} ms, recorded at +{} ms",
            m.topic,
            m.t_ms
        );
    }

    // --fast: same messages, no waiting.
    let started = Instant::now();
    let o = Command::new(binary("outpost-sim"))
        .args(["--broker", &broker.url(), "--fast", "--recording"])
        .arg(&file)
        .output()
        .expect("outpost-sim --fast");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(started.elapsed() < Duration::from_millis(1100), "--fast waited: {:?}", started.elapsed());

    // A broken line is refused with its number before anything is sent.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"t_ms\":5,\"topic\":\"a/b\"}}\n", recording::to_line(&recorded[0])))
        .expect("write");
    let o = Command::new(binary("outpost-sim")).args(["--broker", &broker.url(), "--recording"]).arg(&bad).output();
    let o = o.expect("outpost-sim");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:2: no payload"), "{err}");
}
