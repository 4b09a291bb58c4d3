//! The short soak (the long one is `cargo bench ... -- soak`): a steady QoS 1
//! stream for 60 s (`OUTPOST_SOAK_SECS`) through publisher -> Mosquitto ->
//! the `outpost` binary -> testbed -> Mosquitto -> subscriber. Fails on any
//! lost message and when the agent's memory grows after warm-up: the median
//! RSS of the last quarter of the samples may exceed the second quarter's by
//! at most `MAX_GROWTH`.

use outpost_tests::{binary, http_get, metric_value, test_package, AgentDir, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Allowed growth of the last quarter's median RSS over the second quarter's.
const MAX_GROWTH: f64 = 0.05;
/// Messages per second: steady, well under what a debug agent sustains.
const RATE: usize = 200;

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc status")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(format!("{id}-{}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(o, 10_000)
}

#[test]
fn steady_stream_loses_nothing_and_memory_stays_flat() {
    let secs: usize = std::env::var("OUTPOST_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let mosquitto = Mosquitto::start();
    let dir = AgentDir::new();
    dir.install(&test_package("testbed"), "testbed");
    let (text, port, http, _) = dir.config(Some(&mosquitto.url()), "");
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, text).expect("config");
    let agent = Agent(
        Command::new(binary("outpost"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("start the outpost binary"),
    );
    let addr = format!("127.0.0.1:{http}");
    let t = Instant::now();
    while !http_get(&addr, "/status").is_some_and(|(_, b)| b.contains("\"ready\"")) {
        assert!(t.elapsed() < Duration::from_secs(60), "agent not ready in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = agent.0.id();
    let total = RATE * secs;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (samples, seen, max_latency_ms) = rt.block_on(async move {
        let (sub, mut sub_loop) = client("soak-sub", port);
        sub.subscribe("test/out/#", QoS::AtLeastOnce).await.expect("subscribe");
        while !matches!(sub_loop.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
        let start = Instant::now();
        let flags = Arc::new(Mutex::new(vec![false; total]));
        let seen = Arc::new(AtomicUsize::new(0));
        let worst = Arc::new(Mutex::new(0.0f64));
        let (f, s, w) = (flags.clone(), seen.clone(), worst.clone());
        let receiver = tokio::spawn(async move {
            while s.load(Ordering::Relaxed) < total {
                match tokio::time::timeout(Duration::from_secs(20), sub_loop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        let Some((seq, sent)) = text.split_once(':') else { continue };
                        let (Ok(seq), Ok(sent)) = (seq.parse::<usize>(), sent.parse::<u128>()) else { continue };
                        let ms = start.elapsed().as_nanos().saturating_sub(sent) as f64 / 1e6;
                        let mut worst = w.lock().expect("lock");
                        *worst = worst.max(ms);
                        if let Some(flag) = f.lock().expect("lock").get_mut(seq) {
                            if !*flag {
                                *flag = true;
                                s.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
        });
        let (pub_, mut pub_loop) = client("soak-pub", port);
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        let publisher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0;
            while i < total {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * RATE as f64) as usize).min(total);
                while i < due {
                    let payload = format!("{i}:{}", start.elapsed().as_nanos());
                    pub_.publish("test/in/soak", QoS::AtLeastOnce, false, payload).await.expect("publish");
                    i += 1;
                }
            }
        });
        // RSS and queue depth every second while the stream runs.
        let mut samples = Vec::new();
        while !publisher.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let metrics = tokio::task::spawn_blocking({
                let addr = addr.clone();
                move || http_get(&addr, "/metrics").map(|(_, b)| b).unwrap_or_default()
            })
            .await
            .expect("metrics");
            samples.push((rss_kib(pid), metric_value(&metrics, "outpost_queue_depth", &[])));
        }
        let _ = receiver.await;
        let worst = *worst.lock().expect("lock");
        (samples, seen.load(Ordering::Relaxed), worst)
    });
    drop(agent);

    assert_eq!(seen, total, "every message of the stream arrived ({} lost)", total - seen);
    assert!(samples.len() >= 8, "too few samples: {}", samples.len());
    let q = samples.len() / 4;
    let rss: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let (second, last) = (median(&rss[q..2 * q]), median(&rss[rss.len() - q..]));
    let growth = last / second - 1.0;
    let max_queue = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    eprintln!(
        "soak: {total} messages at {RATE}/s, all delivered (worst latency {max_latency_ms:.1} ms); RSS second quarter \
         {:.0} KiB, last quarter {:.0} KiB ({:+.1} %); queue depth at most {max_queue}",
        second,
        last,
        growth * 100.0
    );
    assert!(
        growth <= MAX_GROWTH,
        "agent memory grew {:.1} % after warm-up ({second:.0} -> {last:.0} KiB), bound {:.0} %: {rss:?}",
        growth * 100.0,
        MAX_GROWTH * 100.0
    );
}
