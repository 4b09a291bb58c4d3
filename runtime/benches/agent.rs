//! `cargo xtask bench`: every figure printed beside a baseline measured in
//! the same run. Needs the packages built by `cargo xtask build`, release
//! binaries, and Mosquitto (all provided by `cargo xtask bench`).

use outpost::config::DispatchConfig;
use outpost::dispatch::{Dispatcher, Egress, Inbound, ServiceSpec};
use outpost::host::{EngineOptions, HostEngine, LoadedComponent, ServiceContext};
use outpost::manifest::Manifest;
use outpost::telemetry::Metrics;
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use positioning::Positioning;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| workspace().join(default))
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_owned()
}

struct Row {
    what: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn row(rows: &mut Vec<Row>, what: &str, ours: String, baseline: String, ratio: String, target: &str) {
    println!("  {what}: {ours}  |  baseline {baseline}  |  {ratio}  (target {target})");
    rows.push(Row { what: what.into(), ours, baseline, ratio, target: target.into() });
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Null;
impl Egress for Null {
    fn publish(&mut self, _: &str, _: &[u8]) {}
}

fn load(host: &HostEngine, dir: &Path) -> (Manifest, LoadedComponent) {
    let pkg = outpost::package::Package::load(dir).unwrap_or_else(|e| panic!("{e}; run `cargo xtask bench`"));
    let loaded = host.load(&pkg.wasm_path, &pkg.wasm, None).expect("load component");
    (pkg.manifest, loaded)
}

fn context(name: &str, manifest: &Manifest, metrics: &Arc<Metrics>) -> ServiceContext {
    ServiceContext {
        service: name.into(),
        publish_acl: manifest.bus.publish.clone().into(),
        state: None,
        metrics: metrics.service(name),
    }
}

/// NMEA lines of every shipped capture (the positioning workload).
fn nmea_workload() -> Vec<Vec<u8>> {
    let dir = workspace().join("tests/data/gpsd-nmea-logs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/gpsd-nmea-logs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        let data = std::fs::read(&f).expect("read capture");
        for l in data.split(|&b| b == b'\n') {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if l.starts_with(b"$") {
                lines.push(l.to_vec());
            }
        }
    }
    lines
}

/// One service's per-message cost, WASM in the real host vs the same code
/// native through the SDK's harness, on the same messages in the same
/// batches. Each round starts from a fresh instance (services that
/// recognise redeliveries would otherwise take a cheaper path).
struct Workload<'a> {
    service: &'a str,
    what: String,
    messages: Vec<(String, Vec<u8>)>,
    batch: usize,
    rounds: usize,
    target: &'a str,
}

fn wasm_vs_native<S: outpost_sdk::Service>(rows: &mut Vec<Row>, host: &HostEngine, w: Workload) -> (f64, f64) {
    let (manifest, loaded) = load(host, &env_dir("OUTPOST_PACKAGES", "target/outpost/packages").join(w.service));
    let config = outpost::package::effective_config(&manifest.config, None);
    let metrics = Metrics::new();
    let wit_batches: Vec<Vec<outpost::host::WitMessage>> = w
        .messages
        .chunks(w.batch)
        .map(|c| c.iter().map(|(t, p)| outpost::host::WitMessage { topic: t, payload: p, received_ms: 0 }).collect())
        .collect();
    let native_batches: Vec<Vec<Message>> = w
        .messages
        .chunks(w.batch)
        .map(|c| c.iter().map(|(t, p)| Message::new(t.clone(), p.clone())).collect())
        .collect();
    let (mut wasm, mut native) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..w.rounds {
        let mut instance = host
            .instantiate(&loaded, &manifest, context(w.service, &manifest, &metrics), &config)
            .expect("instantiate");
        let t = Instant::now();
        for b in &wit_batches {
            instance.handle(b).expect("wasm handle");
        }
        wasm += t.elapsed();
        let mut h = Harness::<S>::new(&config).expect("native init");
        let t = Instant::now();
        for b in &native_batches {
            let _ = h.send_batch(b.clone());
            h.take_published();
        }
        native += t.elapsed();
    }
    let n = (w.rounds * w.messages.len()) as f64;
    let (wasm_ns, native_ns) = (wasm.as_nanos() as f64 / n, native.as_nanos() as f64 / n);
    row(
        rows,
        &w.what,
        format!("{wasm_ns:.0} ns (WASM)"),
        format!("{native_ns:.0} ns (native)"),
        format!("{:.2}x native", wasm_ns / native_ns),
        w.target,
    );
    (wasm_ns, native_ns)
}

/// (a) positioning per message, WASM in the real host vs the same code native.
fn bench_handler(rows: &mut Vec<Row>) {
    println!("\n(a) positioning handler, per message: WASM (real host) vs native");
    let lines = nmea_workload();
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    let messages: Vec<(String, Vec<u8>)> =
        lines.iter().map(|l| ("site/bench/truck-1/gnss/nmea".to_owned(), l.clone())).collect();
    for batch in [1usize, 16, 256] {
        wasm_vs_native::<Positioning>(
            rows,
            &host,
            Workload {
                service: "positioning",
                what: format!("positioning per message, batch {batch}"),
                rounds: (200_000 / messages.len()).max(2),
                messages: messages.clone(),
                batch,
                target: if batch == 256 { "<= 1.5x at batch 256" } else { "-" },
            },
        );
    }
}

/// Weight loading per haul-cycle record: the mine's real week of cycles.
fn bench_weight_loading(rows: &mut Vec<Row>) {
    println!("\n(a) weight-loading, per haul-cycle record: WASM (real host) vs native");
    let csv = workspace().join("tests/data/mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv");
    let track = outpost::sim::haul::load_cycles("bench", &csv).expect("haul cycles");
    let messages: Vec<(String, Vec<u8>)> = track.messages.into_iter().map(|m| (m.topic, m.payload)).collect();
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    for batch in [1usize, 64] {
        wasm_vs_native::<weight_loading::WeightLoading>(
            rows,
            &host,
            Workload {
                service: "weight-loading",
                what: format!("weight-loading per record, batch {batch} ({} records)", messages.len()),
                messages: messages.clone(),
                batch,
                rounds: 3,
                target: "-",
            },
        );
    }
}

/// `n` assets moving at 2-15 m/s over a 2 km square, one fix each per
/// second for `seconds` (TPV as positioning publishes it). Deterministic.
fn traffic_workload(n: usize, seconds: usize) -> Vec<(String, Vec<u8>)> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let assets: Vec<(f64, f64, f64, f64)> =
        (0..n).map(|_| (rnd() * 2000.0 - 1000.0, rnd() * 2000.0 - 1000.0, 2.0 + rnd() * 13.0, rnd() * 360.0)).collect();
    let (lat0, lon0) = (-23.44f64, -70.25f64);
    let mut out = Vec::with_capacity(n * seconds);
    for s in 0..seconds {
        for (i, &(x0, y0, speed, track)) in assets.iter().enumerate() {
            let (vx, vy) = (speed * track.to_radians().sin(), speed * track.to_radians().cos());
            let (x, y) = (x0 + vx * s as f64, y0 + vy * s as f64);
            let lat = lat0 + y / 110_757.0;
            let lon = lon0 + x / (111_320.0 * lat0.to_radians().cos());
            let payload = format!(
                r#"{{"class":"TPV","device":"a{i}","mode":3,"time":"2026-11-23T08:{:02}:{:02}.000Z","lat":{lat:.8},"lon":{lon:.8},"alt":2400.0,"speed":{speed:.3},"track":{track:.2}}}"#,
                s / 60,
                s % 60
            );
            out.push((format!("svc/positioning/a{i}/fix"), payload.into_bytes()));
        }
    }
    out
}

/// Traffic awareness per fix at 10, 100 and 500 assets, one batch per
/// second of site time (every asset's fix), the way the agent delivers a
/// busy site.
fn bench_traffic(rows: &mut Vec<Row>) {
    println!("\n(a) traffic-awareness, per fix by site size: WASM (real host) vs native");
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    for assets in [10usize, 100, 500] {
        let messages = traffic_workload(assets, 60);
        let (wasm_ns, _) = wasm_vs_native::<traffic_awareness::TrafficAwareness>(
            rows,
            &host,
            Workload {
                service: "traffic-awareness",
                what: format!("traffic-awareness per fix, {assets} assets"),
                messages,
                batch: assets,
                rounds: (3000 / assets).max(2),
                target: "-",
            },
        );
        println!(
            "    one second of the site ({assets} fixes in one call): {:.2} ms in WASM (call deadline 250 ms)",
            wasm_ns * assets as f64 / 1e6
        );
    }
}

fn wit_batch(b: &[(String, Vec<u8>)]) -> Vec<outpost::host::WitMessage<'_>> {
    b.iter().map(|(t, p)| outpost::host::WitMessage { topic: t, payload: p, received_ms: 0 }).collect()
}

/// Leak detection at L-Town scale: a simulated year of 5-minute SCADA steps
/// (33 pressures, 3 flows, 82 AMR meters, 1 tank level per message), one
/// hour per call, after calibration on two leak-free weeks. Needs the cached
/// runs of `cargo xtask eval leak`.
fn bench_leak(rows: &mut Vec<Row>) {
    println!("\n(a) leak-detection, per 5-minute SCADA step over a year of L-Town: WASM (real host) vs native");
    let cache = std::env::var_os("OUTPOST_LTOWN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/outpost-data/battledim"));
    let model = cache.join("leak-model.json");
    if !cache.join("evaluation/pressures.csv").is_file() || !model.is_file() {
        println!("  skipped: no simulated year in {}; run `cargo xtask eval leak` once", cache.display());
        return;
    }
    let load = |dir: &str, from: Option<&str>, to: Option<&str>| {
        leak_detection::replay::load_dir(&cache.join(dir), from, to).expect("simulated SCADA")
    };
    let (cal_start, cal_end) = ("2019-01-01 00:00", "2019-01-14 23:55");
    let calibration = load("leakfree", Some(cal_start), Some(cal_end));
    let year = load("evaluation", None, None);
    let model = std::fs::read(model).expect("leak model");
    let topic = "site/bench/ltown";
    let as_batches = |steps: &[leak_detection::replay::Step]| -> Vec<Vec<(String, Vec<u8>)>> {
        steps
            .chunks(12)
            .map(|c| c.iter().map(|s| (format!("{topic}/scada"), s.payload.clone().into_bytes())).collect())
            .collect()
    };
    let (cal_batches, year_batches) = (as_batches(&calibration), as_batches(&year));
    let mut setup = vec![vec![
        (format!("{topic}/leak-model"), model),
        (format!("{topic}/calibrate"), format!(r#"{{"start":"{cal_start}","end":"{cal_end}"}}"#).into_bytes()),
    ]];
    setup.extend(cal_batches);

    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    let (manifest, loaded) =
        self::load(&host, &env_dir("OUTPOST_PACKAGES", "target/outpost/packages").join("leak-detection"));
    let config = outpost::package::effective_config(&manifest.config, None);
    let metrics = Metrics::new();
    let mut instance = host
        .instantiate(&loaded, &manifest, context("leak-detection", &manifest, &metrics), &config)
        .expect("instantiate");
    for b in &setup {
        instance.handle(&wit_batch(b)).expect("calibration");
    }
    let t = Instant::now();
    for b in &year_batches {
        let _ = instance.handle(&wit_batch(b));
    }
    let wasm = t.elapsed();
    let memory = instance.memory_bytes();

    let mut h = Harness::<leak_detection::LeakDetection>::new(&config).expect("native init");
    for b in &setup {
        let _ = h.send_batch(b.iter().map(|(t, p)| Message::new(t.clone(), p.clone())).collect());
    }
    let native_batches: Vec<Vec<Message>> =
        year_batches.iter().map(|b| b.iter().map(|(t, p)| Message::new(t.clone(), p.clone())).collect()).collect();
    let t = Instant::now();
    for b in native_batches {
        let _ = h.send_batch(b);
    }
    let native = t.elapsed();
    let n = year.len() as f64;
    let (wasm_us, native_us) = (wasm.as_secs_f64() * 1e6 / n, native.as_secs_f64() * 1e6 / n);
    row(
        rows,
        &format!("leak-detection per SCADA step ({} steps, 119 sensors each)", year.len()),
        format!("{wasm_us:.1} us (WASM)"),
        format!("{native_us:.1} us (native)"),
        format!("{:.2}x native", wasm_us / native_us),
        "-",
    );
    println!(
        "    the year through WASM in {:.1} s ({:.0}x real time); guest memory after it {:.1} MiB (limit {} MiB)",
        wasm.as_secs_f64(),
        365.0 * 86_400.0 / wasm.as_secs_f64(),
        memory as f64 / (1u64 << 20) as f64,
        manifest.limits.memory_mib
    );
    rows.push(Row {
        what: "leak-detection guest memory after a year of L-Town".into(),
        ours: format!("{:.1} MiB", memory as f64 / (1u64 << 20) as f64),
        baseline: format!("limit {} MiB", manifest.limits.memory_mib),
        ratio: "-".into(),
        target: "bounded".into(),
    });
}

/// (b) service -> service inside the agent vs raw publish -> subscribe through Mosquitto.
fn bench_in_agent(rows: &mut Vec<Row>, mosquitto_port: u16, rt: &tokio::runtime::Runtime) {
    println!("\n(b) service-to-service delivery: in-agent routing vs Mosquitto publish -> subscribe");
    let host = Arc::new(HostEngine::new(&EngineOptions::default()).expect("engine"));
    let testbed = env_dir("OUTPOST_TEST_PACKAGES", "target/outpost/test-packages").join("testbed");
    let metrics = Metrics::new();
    let mut d = Dispatcher::new(host.clone(), DispatchConfig::default(), "bench", Box::new(Null));
    for (name, sub, out) in [("relay", "bench/in/#", "bench/mid"), ("sink", "bench/mid/#", "bench/out")] {
        let (mut manifest, loaded) = load(&host, &testbed);
        manifest.service.name = name.into();
        manifest.bus.subscribe = vec![sub.into()];
        manifest.bus.publish = vec![format!("{out}/#")];
        manifest.bus.mirror = false;
        let ctx = context(name, &manifest, &metrics);
        d.add_service(ServiceSpec {
            config_json: format!("{{\"out\": \"{out}\", \"echo_only\": true}}"),
            instances: 1,
            manifest,
            loaded,
            context: ctx,
        })
        .expect("add service");
    }
    let sink = metrics.service("sink");
    // Throughput: bursts of 1024 (the dispatcher hands batches of up to 256).
    let n = 200_000u64;
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        for _ in 0..1024 {
            d.accept(Arc::new(Inbound::new("bench/in/a", vec![b'x'; 100])));
        }
        d.run_until_idle();
        sent += 1024;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(sink.messages_in.get(), sent, "sink saw every message");
    let agent_rate = sent as f64 / secs;
    // Latency: one message at a time through both services.
    let mut latencies = Vec::new();
    for _ in 0..5000 {
        let t0 = Instant::now();
        d.accept(Arc::new(Inbound::new("bench/in/a", vec![b'x'; 100])));
        d.run_until_idle();
        latencies.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let agent_p99 = percentile(&mut latencies, 0.99);

    let (raw_rate, _) = rt.block_on(raw_mqtt(mosquitto_port, QoS::AtMostOnce, 100_000, "bench/raw0"));
    let raw_p99 = rt.block_on(ping_pong(mosquitto_port, QoS::AtMostOnce, "bench/pp0", "bench/pp0", 2000));
    row(
        rows,
        "in-agent service->service, msgs/s",
        format!("{agent_rate:.0}/s (2 WASM hops)"),
        format!("{raw_rate:.0}/s (Mosquitto QoS0 pub->sub)"),
        format!("{:.1}x", agent_rate / raw_rate),
        ">= 5x",
    );
    row(
        rows,
        "in-agent service->service, p99 latency (one message at a time)",
        format!("{agent_p99:.1} us"),
        format!("{raw_p99:.1} us (Mosquitto QoS0)"),
        format!("{:.3}x", agent_p99 / raw_p99),
        "-",
    );
}

/// One message at a time: publish, wait for it to arrive, repeat; p99 in us.
async fn ping_pong(port: u16, qos: QoS, pub_topic: &str, sub_filter: &str, n: usize) -> f64 {
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
async fn raw_mqtt(port: u16, qos: QoS, n: usize, topic: &str) -> (f64, f64) {
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
async fn receive(
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
async fn pub_sub(port: u16, filter: &str, qos: QoS) -> (AsyncClient, AsyncClient, rumqttc::EventLoop) {
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

fn client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut o = MqttOptions::new(format!("{id}-{}-{n}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    AsyncClient::new(o, 10_000)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn start_mosquitto(dir: &Path) -> (Proc, u16) {
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

/// (c) publish -> service -> subscriber through the agent vs raw through the same broker.
fn bench_end_to_end(rows: &mut Vec<Row>, mosquitto_port: u16, rt: &tokio::runtime::Runtime) {
    println!(
        "\n(c) end to end: publish -> agent service -> subscriber vs raw publish -> subscribe (QoS1, same Mosquitto)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let services = dir.path().join("services/testbed");
    std::fs::create_dir_all(&services).expect("mkdir");
    let testbed = env_dir("OUTPOST_TEST_PACKAGES", "target/outpost/test-packages").join("testbed");
    for f in ["service.toml", "service.wasm"] {
        std::fs::copy(testbed.join(f), services.join(f)).expect("copy");
    }
    let text = format!(
        "gateway = \"bench\"\nsite = \"b\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{mosquitto_port}\"\n[metrics]\n[api]\n",
        dir.path().join("services").display(),
        dir.path().join("state").display()
    );
    let config = outpost::config::AgentConfig::parse(&text, Path::new("bench.toml")).expect("config");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        rt.block_on(outpost::agent::Agent::new(config).run(async move {
            let _ = stop_rx.await;
        }))
    });
    std::thread::sleep(Duration::from_millis(500));
    let n = 20_000;
    let (agent_rate, _) = rt.block_on(through_agent(mosquitto_port, n));
    let agent_p99 = rt.block_on(ping_pong(mosquitto_port, QoS::AtLeastOnce, "test/in/pp", "test/out/pp", 2000));
    let (raw_rate, _) = rt.block_on(raw_mqtt(mosquitto_port, QoS::AtLeastOnce, n, "bench/raw1"));
    let raw_p99 = rt.block_on(ping_pong(mosquitto_port, QoS::AtLeastOnce, "bench/pp1", "bench/pp1", 2000));
    let _ = stop_tx.send(());
    let _ = agent.join();
    row(
        rows,
        "end to end through the agent, msgs/s",
        format!("{agent_rate:.0}/s"),
        format!("{raw_rate:.0}/s (raw)"),
        format!("{:.2}x", agent_rate / raw_rate),
        ">= 0.7x",
    );
    row(
        rows,
        "end to end p99 latency (one message at a time)",
        format!("{agent_p99:.0} us"),
        format!("{raw_p99:.0} us (raw)"),
        format!("{:.2}x", agent_p99 / raw_p99),
        "-",
    );
}

async fn through_agent(port: u16, n: usize) -> (f64, f64) {
    let start = Instant::now();
    let (pub_, _sub, mut sub_loop) = pub_sub(port, "test/out/#", QoS::AtLeastOnce).await;
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            // The testbed echoes the payload: a decimal send time in ns.
            let payload = start.elapsed().as_nanos().to_string().into_bytes();
            pub_.publish("test/in/bench", QoS::AtLeastOnce, false, payload).await.expect("publish");
        }
    });
    let (rate, p99, got) = receive(&mut sub_loop, n, start, Duration::from_secs(10), |payload| {
        std::str::from_utf8(payload).ok().and_then(|t| t.parse().ok())
    })
    .await;
    let _ = publisher.await;
    if got < n {
        println!("    (agent path delivered {got} of {n})");
    }
    (rate, p99)
}

struct RawState {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}
impl wasmtime_wasi::WasiView for RawState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// (d) instantiate cost vs raw wasmtime on the same engine config.
fn bench_instantiate(rows: &mut Vec<Row>) {
    println!("\n(d) instantiate: Outpost instance (store, limits, WASI, init) vs raw wasmtime (same engine config)");
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    let (manifest, loaded) = load(&host, &env_dir("OUTPOST_PACKAGES", "target/outpost/packages").join("positioning"));
    let metrics = Metrics::new();
    let ctx = context("positioning", &manifest, &metrics);
    let n = 2000;
    for _ in 0..50 {
        drop(host.instantiate(&loaded, &manifest, ctx.clone(), "{}").expect("warm"));
    }
    let t = Instant::now();
    for _ in 0..n {
        drop(host.instantiate(&loaded, &manifest, ctx.clone(), "{}").expect("instantiate"));
    }
    let ours = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let mut linker = wasmtime::component::Linker::<RawState>::new(host.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    linker.define_unknown_imports_as_traps(loaded.component()).expect("stubs");
    let pre = linker.instantiate_pre(loaded.component()).expect("pre");
    let mk = || {
        let mut s = wasmtime::Store::new(
            host.engine(),
            RawState { wasi: wasmtime_wasi::WasiCtx::builder().build(), table: Default::default() },
        );
        s.set_epoch_deadline(u64::MAX / 2);
        s
    };
    for _ in 0..50 {
        let mut s = mk();
        pre.instantiate(&mut s).expect("raw warm");
    }
    let t = Instant::now();
    for _ in 0..n {
        let mut s = mk();
        pre.instantiate(&mut s).expect("raw instantiate");
    }
    let raw = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    row(
        rows,
        "instantiate + init (pooling)",
        format!("{ours:.1} us"),
        format!("{raw:.1} us (raw wasmtime instantiate)"),
        format!("{:.2}x", ours / raw),
        "< 20 us",
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn http_status(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /status HTTP/1.0\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    serde_json::from_str(raw.split_once("\r\n\r\n")?.1).ok()
}

/// Starts the release agent binary; returns it with (wall ms to ready, agent's own ready_ms).
fn start_agent(dir: &Path, extra: &str) -> (Proc, f64, f64) {
    let (mqtt, http, api) = (free_port(), free_port(), free_port());
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"bench\"\nsite = \"b\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n{extra}",
            dir.join("services").display(),
            dir.join("state").display()
        ),
    )
    .expect("config");
    let bin = env_dir("OUTPOST_BIN_DIR", "target/release").join("outpost");
    let t = Instant::now();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let proc_ = Proc(child);
    loop {
        if let Some(s) = http_status(http) {
            if s["state"] == "ready" {
                return (proc_, t.elapsed().as_secs_f64() * 1e3, s["ready_ms"].as_f64().unwrap_or(f64::NAN));
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "agent not ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn install(dir: &Path, package: &Path, name: &str) {
    let dest = dir.join("services").join(name);
    std::fs::create_dir_all(&dest).expect("mkdir");
    std::fs::copy(package.join("service.wasm"), dest.join("service.wasm")).expect("copy");
    let manifest = std::fs::read_to_string(package.join("service.toml")).expect("manifest");
    let manifest = manifest.replacen(
        &format!("name = \"{}\"", package.file_name().and_then(|n| n.to_str()).unwrap_or("")),
        &format!("name = \"{name}\""),
        1,
    );
    std::fs::write(dest.join("service.toml"), manifest).expect("write");
}

/// (d) start to ready, and (e) memory.
fn bench_start_and_memory(rows: &mut Vec<Row>) {
    println!("\n(d) agent start to ready with 4 services, and (e) resident memory");
    let pkgs = env_dir("OUTPOST_PACKAGES", "target/outpost/packages");
    let tests = env_dir("OUTPOST_TEST_PACKAGES", "target/outpost/test-packages");
    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), &pkgs.join("positioning"), "positioning");
    for name in ["testbed", "relay", "sink"] {
        install(dir.path(), &tests.join("testbed"), name);
    }
    let (cold, cold_wall, cold_ms) = start_agent(dir.path(), "");
    drop(cold);
    let (warm, warm_wall, warm_ms) = start_agent(dir.path(), "");
    row(
        rows,
        "start to ready, 4 services, precompiled cache",
        format!("{warm_ms:.1} ms (agent) / {warm_wall:.1} ms (process spawn)"),
        format!("{cold_ms:.1} ms / {cold_wall:.1} ms without cache"),
        format!("{:.1}x faster", cold_ms / warm_ms),
        "< 100 ms with cache",
    );
    std::thread::sleep(Duration::from_secs(1));
    let four = rss_kib(warm.0.id());
    drop(warm);

    let idle_dir = tempfile::tempdir().expect("tempdir");
    install(idle_dir.path(), &pkgs.join("positioning"), "positioning");
    // Second start: components come from the precompiled cache, as on a gateway.
    drop(start_agent(idle_dir.path(), ""));
    let (idle, _, _) = start_agent(idle_dir.path(), "");
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = rss_kib(idle.0.id());
    drop(idle);
    // A fresh Mosquitto, idle (the one used above has served the floods).
    let mdir = tempfile::tempdir().expect("tempdir");
    let (fresh, _) = start_mosquitto(mdir.path());
    std::thread::sleep(Duration::from_secs(1));
    let mosq = rss_kib(fresh.0.id());
    drop(fresh);
    row(
        rows,
        "idle RSS, agent + embedded broker + positioning",
        format!("{:.1} MiB", idle_kib as f64 / 1024.0),
        format!("{:.1} MiB (idle Mosquitto)", mosq as f64 / 1024.0),
        format!("{:.2}x", idle_kib as f64 / mosq as f64),
        "< 2x Mosquitto",
    );
    let (hundred, _, _) = start_agent(dir.path(), "[services.testbed]\ninstances = 97\n");
    std::thread::sleep(Duration::from_secs(1));
    let h = rss_kib(hundred.0.id());
    drop(hundred);
    row(
        rows,
        "RSS with 100 service instances (97 testbed + 3 others)",
        format!("{:.1} MiB", h as f64 / 1024.0),
        format!("{:.1} MiB with 4 instances", four as f64 / 1024.0),
        format!("+{:.0} KiB per instance", (h.saturating_sub(four)) as f64 / 96.0),
        "< 64 MB",
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects sections.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let on = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // Kept alive (killed on drop) for the sections that need a broker.
    let (_mosquitto, mosquitto_port) = start_mosquitto(dir.path());
    let mut rows = Vec::new();
    println!(
        "Outpost benchmarks ({} cores); every figure beside its baseline from this run",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if on("handler") {
        bench_handler(&mut rows);
    }
    if on("weight-loading") {
        bench_weight_loading(&mut rows);
    }
    if on("traffic") {
        bench_traffic(&mut rows);
    }
    if on("leak") {
        bench_leak(&mut rows);
    }
    if on("in-agent") {
        bench_in_agent(&mut rows, mosquitto_port, &rt);
    }
    if on("e2e") {
        bench_end_to_end(&mut rows, mosquitto_port, &rt);
    }
    if on("instantiate") {
        bench_instantiate(&mut rows);
    }
    if on("start") {
        bench_start_and_memory(&mut rows);
    }
    println!("\n| figure | Outpost | baseline (same run) | ratio | target |\n|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} |", r.what, r.ours, r.baseline, r.ratio, r.target);
    }
}
