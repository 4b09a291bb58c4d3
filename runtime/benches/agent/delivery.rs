//! Delivery: service to service inside the agent, end to end through a
//! broker, and the cost of a new instance, each beside its raw baseline.

use crate::mqtt::{ping_pong, pub_sub, raw_mqtt, receive};
use crate::report::{Figure, Report, RUNS};
use crate::{context, load, packages, test_packages, Null};
use outpost::config::DispatchConfig;
use outpost::dispatch::{Dispatcher, Inbound, ServiceSpec};
use outpost::host::{EngineOptions, HostEngine};
use outpost::telemetry::Metrics;
use rumqttc::QoS;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A dispatcher with the testbed as `relay` (bench/in -> bench/mid) and
/// `sink` (bench/mid -> bench/out), echoing, not mirrored to a broker.
fn two_hops(host: &Arc<HostEngine>, metrics: &Arc<Metrics>) -> Dispatcher {
    let testbed = test_packages().join("testbed");
    let mut d = Dispatcher::new(host.clone(), DispatchConfig::default(), "bench", Box::new(Null));
    for (name, sub, out) in [("relay", "bench/in/#", "bench/mid"), ("sink", "bench/mid/#", "bench/out")] {
        let (mut manifest, loaded) = load(host, &testbed);
        manifest.service.name = name.into();
        manifest.bus.subscribe = vec![sub.into()];
        manifest.bus.publish = vec![format!("{out}/#")];
        manifest.bus.mirror = false;
        let ctx = context(name, &manifest, metrics);
        d.add_service(ServiceSpec {
            config_json: format!("{{\"out\": \"{out}\", \"echo_only\": true}}"),
            instances: 1,
            manifest,
            loaded,
            context: ctx,
        })
        .expect("add service");
    }
    d
}

/// (b) service -> service inside the agent vs raw publish -> subscribe through Mosquitto.
pub fn bench_in_agent(r: &mut Report, mosquitto_port: u16, rt: &tokio::runtime::Runtime) {
    println!("\n(b) service-to-service delivery: in-agent routing vs Mosquitto publish -> subscribe");
    let host = Arc::new(HostEngine::new(&EngineOptions::default()).expect("engine"));
    let metrics = Metrics::new();
    let mut d = two_hops(&host, &metrics);
    let sink = metrics.service("sink");
    let (mut agent_rates, mut agent_p99, mut raw_rates, mut raw_p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        // Throughput: bursts of 1024 (the dispatcher hands batches of up to 256).
        let n = 100_000u64;
        let before = sink.messages_in.get();
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
        assert_eq!(sink.messages_in.get() - before, sent, "sink saw every message");
        agent_rates.push(sent as f64 / secs);
        // Latency: one message at a time through both services.
        let mut latencies = Vec::new();
        for _ in 0..2000 {
            let t0 = Instant::now();
            d.accept(Arc::new(Inbound::new("bench/in/a", vec![b'x'; 100])));
            d.run_until_idle();
            latencies.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        agent_p99.push(crate::report::percentile(&mut latencies, 0.99));
        let (rate, _) = rt.block_on(raw_mqtt(mosquitto_port, QoS::AtMostOnce, 100_000, &format!("bench/raw0/{i}")));
        raw_rates.push(rate);
        raw_p99.push(rt.block_on(ping_pong(
            mosquitto_port,
            QoS::AtMostOnce,
            &format!("bench/pp0/{i}"),
            &format!("bench/pp0/{i}"),
            1000,
        )));
    }
    r.push(
        Figure::new("in-agent.rate", "in-agent service->service (2 WASM hops), msgs/s", "msgs/s", agent_rates)
            .baseline("Mosquitto QoS0 pub->sub", raw_rates)
            .target(">= 10x"),
    );
    r.push(
        Figure::new("in-agent.p99", "in-agent service->service, p99 latency (one message at a time)", "us", agent_p99)
            .baseline("Mosquitto QoS0", raw_p99)
            .target("<= 0.1x"),
    );
}

/// (c) publish -> service -> subscriber through the agent vs raw through the same broker.
pub fn bench_end_to_end(r: &mut Report, mosquitto_port: u16, rt: &tokio::runtime::Runtime) {
    println!(
        "\n(c) end to end: publish -> agent service -> subscriber vs raw publish -> subscribe (QoS1, same Mosquitto)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let services = dir.path().join("services/testbed");
    std::fs::create_dir_all(&services).expect("mkdir");
    let testbed = test_packages().join("testbed");
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
    let (mut agent_rates, mut agent_p99, mut raw_rates, mut raw_p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut agent_cpu, mut raw_cpu, mut relay_cpu) = (CpuSplit::default(), CpuSplit::default(), CpuSplit::default());
    let mut relay_rates = Vec::new();
    for i in 0..RUNS {
        let before = CpuSample::now();
        agent_rates.push(rt.block_on(through_agent(mosquitto_port, n)).0);
        agent_cpu.add(&before, &CpuSample::now(), n);
        agent_p99.push(rt.block_on(ping_pong(
            mosquitto_port,
            QoS::AtLeastOnce,
            &format!("test/in/pp{i}"),
            &format!("test/out/pp{i}"),
            1000,
        )));
        let before = CpuSample::now();
        raw_rates.push(rt.block_on(raw_mqtt(mosquitto_port, QoS::AtLeastOnce, n, &format!("bench/raw1/{i}"))).0);
        raw_cpu.add(&before, &CpuSample::now(), n);
        let before = CpuSample::now();
        relay_rates.push(rt.block_on(raw_relay(mosquitto_port, n, i)));
        relay_cpu.add(&before, &CpuSample::now(), n);
        raw_p99.push(rt.block_on(ping_pong(
            mosquitto_port,
            QoS::AtLeastOnce,
            &format!("bench/pp1/{i}"),
            &format!("bench/pp1/{i}"),
            1000,
        )));
    }
    let _ = stop_tx.send(());
    let _ = agent.join();
    println!("  CPU per message, us (all {RUNS} runs; wall = elapsed per message):");
    println!("    through the agent: {}", agent_cpu.describe());
    println!("    raw pub->sub:      {}", raw_cpu.describe());
    println!("    raw relay:         {}", relay_cpu.describe());
    // The broker handles each message twice through the agent (in, then
    // out); a bare client relaying through the same broker shows what those
    // two hops cost without any agent.
    let med = |v: &[f64]| crate::report::percentile(&mut v.to_vec(), 0.5);
    println!(
        "  two hops without the agent (a bare rumqttc client relaying, auto-ack, same broker): {:.0} msgs/s; \
         the agent path is {:.2}x of it (median of {RUNS})",
        med(&relay_rates),
        med(&agent_rates) / med(&relay_rates)
    );
    r.push(
        Figure::new(
            "e2e.rate",
            &format!("end to end through the agent ({n} msgs, QoS1), msgs/s"),
            "msgs/s",
            agent_rates,
        )
        .baseline("raw pub->sub, same broker", raw_rates)
        .target(">= 0.8x"),
    );
    r.push(
        Figure::new("e2e.p99", "end to end p99 latency (one message at a time)", "us", agent_p99)
            .baseline("raw", raw_p99)
            .target("-"),
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

/// CPU time so far (ns, from schedstat) of each thread of this process by
/// name, and of the Mosquitto the bench started.
struct CpuSample {
    at: Instant,
    threads: std::collections::BTreeMap<String, u64>,
    mosquitto: u64,
}

impl CpuSample {
    fn now() -> CpuSample {
        let on_cpu = |dir: &Path| {
            std::fs::read_to_string(dir.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
                .unwrap_or(0)
        };
        let name =
            |dir: &Path| std::fs::read_to_string(dir.join("comm")).map(|s| s.trim().to_owned()).unwrap_or_default();
        let mut threads = std::collections::BTreeMap::new();
        let mut children = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            let dir = task.path();
            *threads.entry(name(&dir)).or_insert(0) += on_cpu(&dir);
            if let Ok(list) = std::fs::read_to_string(dir.join("children")) {
                children.extend(list.split_whitespace().map(str::to_owned));
            }
        }
        let mosquitto = children
            .iter()
            .map(|pid| Path::new("/proc").join(pid))
            .filter(|dir| name(dir) == "mosquitto")
            .flat_map(|dir| std::fs::read_dir(dir.join("task")).into_iter().flatten().flatten())
            .map(|t| on_cpu(&t.path()))
            .sum();
        CpuSample { at: Instant::now(), threads, mosquitto }
    }
}

/// CPU time per message of one path, summed over runs: the agent's I/O
/// thread, the rest of the agent (`outpost-*` threads), Mosquitto, and the
/// bench's own publisher and subscriber (every other thread).
#[derive(Default)]
struct CpuSplit {
    messages: u64,
    wall_ns: u64,
    io: u64,
    agent_other: u64,
    mosquitto: u64,
    clients: u64,
}

impl CpuSplit {
    fn add(&mut self, a: &CpuSample, b: &CpuSample, messages: usize) {
        self.messages += messages as u64;
        self.wall_ns += (b.at - a.at).as_nanos() as u64;
        self.mosquitto += b.mosquitto.saturating_sub(a.mosquitto);
        for (name, ns) in &b.threads {
            let d = ns.saturating_sub(a.threads.get(name).copied().unwrap_or(0));
            match name.as_str() {
                "outpost-io" => self.io += d,
                n if n.starts_with("outpost-") => self.agent_other += d,
                _ => self.clients += d,
            }
        }
    }

    fn describe(&self) -> String {
        let per = |ns: u64| ns as f64 / 1e3 / self.messages.max(1) as f64;
        format!(
            "wall {:.2}, Mosquitto {:.2}, agent I/O thread {:.2}, other agent threads {:.2}, bench publisher+subscriber {:.2}",
            per(self.wall_ns),
            per(self.mosquitto),
            per(self.io),
            per(self.agent_other),
            per(self.clients)
        )
    }
}

/// publisher -> broker -> a bare rumqttc client that republishes each
/// message (QoS 1, acked on receipt) -> broker -> subscriber; msgs/s.
async fn raw_relay(port: u16, n: usize, run: usize) -> f64 {
    let (inbound, outbound) = (format!("bench/relay-in/{run}"), format!("bench/relay-out/{run}"));
    let (relay, mut relay_loop) = crate::mqtt::client("bench-relay", port);
    relay.subscribe(inbound.as_str(), QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = relay_loop.poll().await {
            break;
        }
    }
    // The relay's event loop keeps running while its publishes wait for room.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        while let Ok(event) = relay_loop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                if tx.send(p.payload).is_err() {
                    break;
                }
            }
        }
    });
    let sender = tokio::spawn(async move {
        while let Some(payload) = rx.recv().await {
            if relay.publish(outbound.as_str(), QoS::AtLeastOnce, false, payload.to_vec()).await.is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let (pub_, _sub, mut sub_loop) = pub_sub(port, &format!("bench/relay-out/{run}"), QoS::AtLeastOnce).await;
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            let payload = start.elapsed().as_nanos().to_string().into_bytes();
            pub_.publish(inbound.as_str(), QoS::AtLeastOnce, false, payload).await.expect("publish");
        }
    });
    let (rate, _, got) = receive(&mut sub_loop, n, start, Duration::from_secs(10), |payload| {
        std::str::from_utf8(payload).ok().and_then(|t| t.parse().ok())
    })
    .await;
    let _ = publisher.await;
    poller.abort();
    sender.abort();
    if got < n {
        println!("    (relay path delivered {got} of {n})");
    }
    rate
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

/// (d) instantiate cost vs raw wasmtime on the same engine config: a new
/// instance alone (checks, store, limits, WASI context, linking; the issue's
/// figure), and with the guest's `init`.
pub fn bench_instantiate(r: &mut Report) {
    println!(
        "\n(d) instantiate: Outpost instance (store, limits, WASI; without and with init) vs raw wasmtime (same engine config)"
    );
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    let (manifest, loaded) = load(&host, &packages().join("positioning"));
    let metrics = Metrics::new();
    // Shared by every instance, as the agent's instance factory holds it.
    let ctx = Arc::new(context("positioning", &manifest, &metrics));
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
        drop(host.instantiate(&loaded, &manifest, ctx.clone(), "{}").expect("warm"));
        drop(host.instantiate_without_init(&loaded, &manifest, ctx.clone()).expect("warm"));
        let mut s = mk();
        pre.instantiate(&mut s).expect("raw warm");
    }
    let n = 1000;
    let (mut ours, mut bare, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    for _ in 0..RUNS {
        let t = Instant::now();
        for _ in 0..n {
            drop(host.instantiate_without_init(&loaded, &manifest, ctx.clone()).expect("instantiate"));
        }
        bare.push(per(t));
        let t = Instant::now();
        for _ in 0..n {
            let mut s = mk();
            pre.instantiate(&mut s).expect("raw instantiate");
        }
        raw.push(per(t));
        let t = Instant::now();
        for _ in 0..n {
            drop(host.instantiate(&loaded, &manifest, ctx.clone(), "{}").expect("instantiate"));
        }
        ours.push(per(t));
    }
    r.push(
        Figure::new("instantiate.new_instance", "new instance without init (pooling)", "us", bare)
            .baseline("raw wasmtime instantiate", raw.clone())
            .target("<= 1.2x raw"),
    );
    r.push(
        Figure::new("instantiate.with_init", "instantiate + init (pooling)", "us", ours)
            .baseline("raw wasmtime instantiate", raw)
            .target("< 20 us"),
    );
}
