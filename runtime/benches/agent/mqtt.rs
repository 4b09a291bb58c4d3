//! MQTT helpers: Mosquitto started for the bench, clients, raw baselines.

use crate::report::percentile;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One message at a time: publish, wait for it to arrive, repeat; p99 in us.
pub async fn ping_pong(port: u16, qos: QoS, pub_topic: &str, sub_filter: &str, n: usize) -> f64 {
    let (pub_, sub, mut sub_loop) = pub_sub(port, sub_filter, qos).await;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        pub_.publish(pub_topic, qos, false, format!("pp{i}").into_bytes()).await.expect("publish");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => break,
                Ok(Ok(_)) => {}
                _ => return f64::NAN,
            }
        }
        if i >= 50 {
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = sub.disconnect().await;
    percentile(&mut lat, 0.99)
}

/// Raw publish -> subscribe through a broker; returns (msgs/s, p99 latency us).
pub async fn raw_mqtt(port: u16, qos: QoS, n: usize, topic: &str) -> (f64, f64) {
    let start = Instant::now();
    let (pub_, _sub, mut sub_loop) = pub_sub(port, topic, qos).await;
    let topic_owned = topic.to_owned();
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            let mut payload = vec![b'x'; 100];
            payload[..16].copy_from_slice(&start.elapsed().as_nanos().to_le_bytes());
            pub_.publish(&topic_owned, qos, false, payload).await.expect("publish");
        }
    });
    let (rate, p99, got) = receive(&mut sub_loop, n, start, Duration::from_secs(5), |payload| {
        payload.get(..16).and_then(|b| b.try_into().ok()).map(u128::from_le_bytes)
    })
    .await;
    let _ = publisher.await;
    if got < n {
        println!("    (baseline received {got} of {n})");
    }
    (rate, p99)
}

/// Reads up to `n` messages whose payload tells its send time (ns since
/// `start`); returns (msgs/s from first to last arrival, p99 latency us, count).
pub async fn receive(
    sub_loop: &mut rumqttc::EventLoop,
    n: usize,
    start: Instant,
    idle: Duration,
    sent_ns: impl Fn(&[u8]) -> Option<u128>,
) -> (f64, f64, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut first = None;
    let mut last = Instant::now();
    while lat.len() < n {
        match tokio::time::timeout(idle, sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = start.elapsed().as_nanos();
                let sent = sent_ns(&p.payload).unwrap_or(now);
                lat.push(now.saturating_sub(sent) as f64 / 1e3);
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    let got = lat.len();
    let secs = first.map_or(1.0, |f| last.duration_since(f).as_secs_f64().max(1e-9));
    (got as f64 / secs, percentile(&mut lat, 0.99), got)
}

/// A subscriber (already acknowledged by the broker) and a publisher whose
/// event loop runs in the background.
pub async fn pub_sub(port: u16, filter: &str, qos: QoS) -> (AsyncClient, AsyncClient, rumqttc::EventLoop) {
    let (sub, mut sub_loop) = client("bench-sub", port);
    let (pub_, mut pub_loop) = client("bench-pub", port);
    sub.subscribe(filter, qos).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    (pub_, sub, sub_loop)
}

pub fn client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut o = MqttOptions::new(format!("{id}-{}-{n}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    AsyncClient::new(o, 10_000)
}

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

pub fn start_mosquitto(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 1000000\nset_tcp_nodelay true\n")).expect("conf");
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto installed");
    let child =
        Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("mosquitto");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    (Proc(child), port)
}
