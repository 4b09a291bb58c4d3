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
    let track = outpost_devtools::sim::haul::load_cycles("bench", &csv).expect("haul cycles");
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

/// The testbed package at `version` (v2 writes under `test/out/v2/`, so a
/// subscriber tells which version handled a message), signed by `key`.
fn signed_testbed(key: &outpost_package::SigningKey, version: &str, out: Option<&str>) -> Vec<u8> {
    let dir = env_dir("OUTPOST_TEST_PACKAGES", "target/outpost/test-packages").join("testbed");
    let mut manifest = std::fs::read_to_string(dir.join("service.toml")).expect("testbed manifest");
    manifest = manifest.replacen("version = \"0.1.0\"", &format!("version = \"{version}\""), 1);
    if let Some(out) = out {
        manifest = manifest.replacen("out = \"test/out\"", &format!("out = \"{out}\""), 1);
    }
    let wasm = std::fs::read(dir.join("service.wasm")).expect("testbed component");
    outpost_package::pack(manifest.as_bytes(), &wasm, Some(key)).expect("pack")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw.split_once("\r\n\r\n")?.1.to_owned())
}

/// `outpost_queue_depth` summed over the agent's services (from /metrics).
fn queue_depth(http: u16) -> f64 {
    http_get(http, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("outpost_queue_depth"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One arrival at the subscriber: when, whether v2 handled it, key, number.
#[derive(Clone, Copy)]
struct Arrival {
    at: Instant,
    v2: bool,
    key: usize,
    n: usize,
    latency_us: f64,
}

/// What one numbered stream showed.
#[derive(Default, Clone)]
struct StreamRun {
    /// Messages per second from the first publish to the last arrival.
    rate: f64,
    /// Arrivals per second in the 500 ms from the mark (the upgrade call,
    /// or the same point of a steady stream).
    window_rate: f64,
    lost: usize,
    duplicates: usize,
    in_order: bool,
    latency_p50_us: f64,
    /// Agent queue depth read from /metrics right before the mark.
    queue_at_mark: f64,
    /// Published but not yet seen by the subscriber at the mark.
    in_flight_at_mark: f64,
    upgrade: Option<Swap>,
    rollback: Option<Swap>,
}

#[derive(Default, Clone, Copy)]
struct Swap {
    /// The RPC's own latency (upload, verify, prepare, swap, reply).
    rpc_ms: f64,
    /// From the call to the first output of the version swapped in.
    serving_ms: f64,
    /// Outputs of the version swapped out that arrived after the call.
    old_after_call: usize,
}

const UPGRADE_KEYS: usize = 4;
/// Messages the publisher keeps in flight end to end (sent, not yet seen by
/// the subscriber): flat out, without building an unbounded broker queue.
const UPGRADE_WINDOW: usize = 1000;

/// Publishes `n` numbered QoS 1 messages flat out (at most `UPGRADE_WINDOW`
/// unseen by the subscriber) over four keys through the
/// agent's testbed; with `control`, upgrades to `v2` once a third has
/// arrived and rolls back at two thirds. Counts what a subscriber received.
async fn upgrade_stream(
    mqtt: u16,
    http: u16,
    n: usize,
    mut control: Option<(&mut outpost::client::Client, &[u8])>,
) -> StreamRun {
    use std::sync::{Arc, Mutex};
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::new(Mutex::new(Vec::with_capacity(n + n / 10)));
    let (sub, mut sub_loop) = client("bench-upgrade-sub", mqtt);
    sub.subscribe("test/out/#", QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    let start = Instant::now();
    let sink = arrivals.clone();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen_rx = seen.clone();
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (published_tx, seen_pub) = (published.clone(), seen.clone());
    let receiver = tokio::spawn(async move {
        let mut unique = std::collections::HashSet::with_capacity(n);
        while unique.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let at = Instant::now();
                    let text = std::str::from_utf8(&p.payload).unwrap_or("");
                    let mut parts = text.split(':');
                    let (Some(k), Some(num), Some(sent)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    let key: usize = k.trim_start_matches('k').parse().unwrap_or(usize::MAX);
                    let num: usize = num.parse().unwrap_or(usize::MAX);
                    let sent: u128 = sent.parse().unwrap_or(0);
                    let latency_us = at.duration_since(start).as_nanos().saturating_sub(sent) as f64 / 1e3;
                    if unique.insert((key, num)) {
                        seen_rx.store(unique.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    sink.lock().expect("lock").push(Arrival {
                        at,
                        v2: p.topic.starts_with("test/out/v2/"),
                        key,
                        n: num,
                        latency_us,
                    });
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = sub.disconnect().await;
    });
    let (pub_, mut pub_loop) = client("bench-upgrade-pub", mqtt);
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            while i >= seen_pub.load(std::sync::atomic::Ordering::Relaxed) + UPGRADE_WINDOW {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let (key, num) = (i % UPGRADE_KEYS, i / UPGRADE_KEYS);
            let payload = format!("k{key}:{num}:{}", start.elapsed().as_nanos());
            pub_.publish(format!("test/in/k{key}"), QoS::AtLeastOnce, false, payload).await.expect("publish");
            published_tx.store(i + 1, std::sync::atomic::Ordering::Relaxed);
        }
        pub_
    });
    let count = || arrivals.lock().expect("lock").len();
    let wait_for = |target: usize| async move {
        let t = Instant::now();
        while count() < target && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    };
    // The mark: a third of the stream has arrived.
    wait_for(n / 3).await;
    let queue_at_mark = tokio::task::spawn_blocking(move || queue_depth(http)).await.unwrap_or(f64::NAN);
    let in_flight_at_mark = published
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(seen.load(std::sync::atomic::Ordering::Relaxed)) as f64;
    let mark = Instant::now();
    let mut calls = Vec::new();
    if let Some((c, v2)) = control.as_mut() {
        let t0 = Instant::now();
        let up = outpost::client::upload(c, outpost::client::Upload::Upgrade, v2.to_vec(), "bench", |_, _| {})
            .await
            .expect("upgrade under load");
        assert_eq!(up.version, "2.0.0");
        calls.push((t0, t0.elapsed(), true));
        wait_for(n * 2 / 3).await;
        let t1 = Instant::now();
        let back = c.rollback(outpost_proto::agent::v1::ServiceRef { name: "testbed".into() }).await;
        assert_eq!(back.expect("rollback under load").into_inner().version, "1.0.0");
        calls.push((t1, t1.elapsed(), false));
    }
    let pub_ = publisher.await.expect("publisher");
    let _ = receiver.await;
    let _ = pub_.disconnect().await;
    let got = arrivals.lock().expect("lock").clone();

    let mut per_key: Vec<Vec<bool>> = vec![vec![false; n / UPGRADE_KEYS + 1]; UPGRADE_KEYS];
    let mut last = [None::<usize>; UPGRADE_KEYS];
    let (mut duplicates, mut in_order) = (0, true);
    for a in &got {
        let Some(seen) = per_key.get_mut(a.key).and_then(|k| k.get_mut(a.n)) else { continue };
        if *seen {
            duplicates += 1;
            continue;
        }
        *seen = true;
        if last[a.key].is_some_and(|l| l > a.n) {
            in_order = false;
        }
        last[a.key] = Some(a.n);
    }
    let unique = per_key.iter().flatten().filter(|s| **s).count();
    let end = got.iter().map(|a| a.at).max().unwrap_or(start);
    let window = got.iter().filter(|a| a.at >= mark && a.at < mark + Duration::from_millis(500)).count();
    let mut lat: Vec<f64> = got.iter().map(|a| a.latency_us).collect();
    let swap = |(t0, rpc, to_v2): (Instant, Duration, bool)| {
        let first_new = got.iter().filter(|a| a.at >= t0 && a.v2 == to_v2).map(|a| a.at).min();
        let old_after_call =
            got.iter().filter(|a| a.at >= t0 && a.v2 != to_v2 && first_new.is_none_or(|f| a.at < f)).count();
        Swap {
            rpc_ms: rpc.as_secs_f64() * 1e3,
            serving_ms: first_new.map_or(f64::NAN, |f| f.duration_since(t0).as_secs_f64() * 1e3),
            old_after_call,
        }
    };
    StreamRun {
        rate: n as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
        window_rate: window as f64 / 0.5,
        lost: n - unique,
        duplicates,
        in_order,
        latency_p50_us: percentile(&mut lat, 0.5),
        queue_at_mark,
        in_flight_at_mark,
        upgrade: calls.first().copied().map(swap),
        rollback: calls.get(1).copied().map(swap),
    }
}

/// Median and (min-max) of a figure over runs.
fn spread(v: &[f64], prec: usize) -> (f64, String) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let med = percentile(&mut s, 0.5);
    let (lo, hi) = (s.first().copied().unwrap_or(f64::NAN), s.last().copied().unwrap_or(f64::NAN));
    (med, format!("{med:.prec$} ({lo:.prec$}-{hi:.prec$})"))
}

/// (f) a live upgrade and rollback under load, each run beside a steady
/// stream of the same length through the same agent: the release `outpost`
/// binary with signed packages over the management API, Mosquitto between.
fn bench_upgrade(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime) {
    const RUNS: usize = 5;
    println!(
        "\n(f) live upgrade v1 -> v2 and rollback under a flat-out QoS1 stream, {UPGRADE_WINDOW} in flight end to end \
         (release agent, Mosquitto, signed packages)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let keys = dir.path().join("keys");
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&keys).expect("mkdir");
    std::fs::create_dir_all(&trust).expect("mkdir");
    let generated = outpost_package::keygen(&keys, "outpost-tests").expect("keygen");
    std::fs::copy(&generated.public_path, trust.join("outpost-tests.pub")).expect("trust the key");
    let key = outpost_package::ProviderSigningKey::load(&generated.private_path).expect("load key").key;
    let (v1, v2) = (signed_testbed(&key, "1.0.0", None), signed_testbed(&key, "2.0.0", Some("test/out/v2")));

    let (http, api) = (free_port(), free_port());
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"bench-upgrade\"\nsite = \"b\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\ntrust_dir = \"{}\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            dir.path().join("services").display(),
            dir.path().join("state").display(),
            trust.display()
        ),
    )
    .expect("config");
    std::fs::create_dir_all(dir.path().join("services")).expect("mkdir");
    let bin = env_dir("OUTPOST_BIN_DIR", "target/release").join("outpost");
    let _agent = Proc(
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display())),
    );
    let t = Instant::now();
    while http_status(http).is_none_or(|s| s["state"] != "ready") {
        assert!(t.elapsed() < Duration::from_secs(120), "agent not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let token = outpost::client::read_token(&dir.path().join("state/api.token")).expect("token");
    let mut control = rt.block_on(async {
        let mut c = outpost::client::connect(&format!("http://127.0.0.1:{api}"), &token).await.expect("connect");
        outpost::client::upload(&mut c, outpost::client::Upload::Deploy, v1.clone(), "bench", |_, _| {})
            .await
            .expect("deploy v1");
        c
    });
    // Size the stream to about three seconds of this machine's steady rate.
    let probe = rt.block_on(upgrade_stream(port, http, 20_000, None));
    let n = ((probe.rate * 3.0) as usize).clamp(20_000, 300_000) / UPGRADE_KEYS * UPGRADE_KEYS;
    println!("    warm-up: {:.0} msgs/s steady; {RUNS} pairs of {n}-message streams", probe.rate);
    let (mut steady, mut live) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let s = rt.block_on(upgrade_stream(port, http, n, None));
        let u = rt.block_on(upgrade_stream(port, http, n, Some((&mut control, v2.as_slice()))));
        let (up, back) = (u.upgrade.unwrap_or_default(), u.rollback.unwrap_or_default());
        println!(
            "    run {}: steady {:.0}/s ({} lost, {} dup) | with upgrade + rollback {:.0}/s ({:.2}x), {} lost, {} dup, order {}; \
             500 ms after the call {:.0}/s vs {:.0}/s; upgrade rpc {:.1} ms, v2 serving after {:.1} ms ({} v1 outputs between, queue {}); \
             rollback rpc {:.1} ms, v1 serving after {:.1} ms",
            i + 1,
            s.rate,
            s.lost,
            s.duplicates,
            u.rate,
            u.rate / s.rate,
            u.lost,
            u.duplicates,
            if u.in_order && s.in_order { "held" } else { "BROKEN" },
            u.window_rate,
            s.window_rate,
            up.rpc_ms,
            up.serving_ms,
            up.old_after_call,
            u.queue_at_mark,
            back.rpc_ms,
            back.serving_ms,
        );
        steady.push(s);
        live.push(u);
    }
    let f = |runs: &[StreamRun], g: &dyn Fn(&StreamRun) -> f64| runs.iter().map(g).collect::<Vec<f64>>();
    let (s_rate, s_rate_txt) = spread(&f(&steady, &|r| r.rate), 0);
    let (u_rate, u_rate_txt) = spread(&f(&live, &|r| r.rate), 0);
    let ratios: Vec<f64> = live.iter().zip(&steady).map(|(u, s)| u.rate / s.rate).collect();
    let (_, ratio_txt) = spread(&ratios, 2);
    row(
        rows,
        &format!("end to end during upgrade + rollback ({n} msgs, 4 keys, QoS1), msgs/s"),
        format!("{u_rate_txt}/s"),
        format!("{s_rate_txt}/s steady"),
        format!("{:.2}x (per pair {ratio_txt})", u_rate / s_rate),
        ">= 0.9x",
    );
    let (s_win, s_win_txt) = spread(&f(&steady, &|r| r.window_rate), 0);
    let (u_win, u_win_txt) = spread(&f(&live, &|r| r.window_rate), 0);
    row(
        rows,
        "end to end in the 500 ms from the upgrade call, msgs/s",
        format!("{u_win_txt}/s"),
        format!("{s_win_txt}/s steady, same point"),
        format!("{:.2}x", u_win / s_win),
        ">= 0.9x",
    );
    let lost: usize = live.iter().map(|r| r.lost).sum();
    let dup: usize = live.iter().map(|r| r.duplicates).sum();
    let order = live.iter().all(|r| r.in_order);
    let (s_lost, s_dup): (usize, usize) =
        (steady.iter().map(|r| r.lost).sum(), steady.iter().map(|r| r.duplicates).sum());
    row(
        rows,
        &format!("lost / duplicated over {RUNS} upgrade + rollback streams"),
        format!(
            "{lost} lost, {dup} duplicates of {}; per-key order {}",
            n * RUNS,
            if order { "held" } else { "BROKEN" }
        ),
        format!("steady: {s_lost} lost, {s_dup} duplicates"),
        "-".into(),
        "0 lost",
    );
    let (_, lat_txt) = spread(&f(&steady, &|r| r.latency_p50_us / 1e3), 1);
    let (_, up_serving) = spread(&f(&live, &|r| r.upgrade.unwrap_or_default().serving_ms), 1);
    let (_, up_rpc) = spread(&f(&live, &|r| r.upgrade.unwrap_or_default().rpc_ms), 1);
    row(
        rows,
        "upgrade call -> first v2 output at the subscriber, ms",
        format!("{up_serving} ms (the RPC itself {up_rpc} ms)"),
        format!("message latency p50 under the same load {lat_txt} ms"),
        "-".into(),
        "-",
    );
    let (_, back_serving) = spread(&f(&live, &|r| r.rollback.unwrap_or_default().serving_ms), 1);
    let (_, back_rpc) = spread(&f(&live, &|r| r.rollback.unwrap_or_default().rpc_ms), 1);
    row(
        rows,
        "rollback call -> first v1 output at the subscriber, ms",
        format!("{back_serving} ms (the RPC itself {back_rpc} ms)"),
        format!("message latency p50 under the same load {lat_txt} ms"),
        "-".into(),
        "-",
    );
    let (_, q_up) = spread(&f(&live, &|r| r.queue_at_mark), 0);
    let (_, q_steady) = spread(&f(&steady, &|r| r.queue_at_mark), 0);
    let (_, between) = spread(&f(&live, &|r| r.upgrade.unwrap_or_default().old_after_call as f64), 0);
    let (_, flight_up) = spread(&f(&live, &|r| r.in_flight_at_mark), 0);
    let (_, flight_steady) = spread(&f(&steady, &|r| r.in_flight_at_mark), 0);
    row(
        rows,
        "messages in flight during the swap",
        format!(
            "{flight_up} published, not yet delivered at the call, {q_up} of them queued in the agent; \
             {between} v1 outputs arrived between the call and the first v2 one"
        ),
        format!("{flight_steady} in flight, {q_steady} in the agent at the same point, steady"),
        "-".into(),
        "all handled (0 lost)",
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
    if on("upgrade") {
        bench_upgrade(&mut rows, &rt);
    }
    println!("\n| figure | Outpost | baseline (same run) | ratio | target |\n|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} |", r.what, r.ours, r.baseline, r.ratio, r.target);
    }
}
