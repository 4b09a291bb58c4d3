//! Per-message cost of each service, WASM in the real host beside the same
//! code native through the SDK's harness: same crate, same inputs, same
//! batches.

use crate::report::{Figure, Report, RUNS};
use crate::{context, load, packages, workspace};
use outpost::host::{EngineOptions, HostEngine};
use outpost::telemetry::Metrics;
use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use positioning::Positioning;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// `n` assets moving at 2-15 m/s over a 2 km square, one fix each per
/// second for `seconds` (TPV as positioning publishes it). Deterministic.
pub fn traffic_workload(n: usize, seconds: usize) -> Vec<(String, Vec<u8>)> {
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

/// One service's workload. Every pass starts from a fresh instance (services
/// that recognise redeliveries would otherwise take a cheaper path); a run
/// is `passes` passes, WASM and native interleaved so that the machine's
/// noise falls on both.
pub struct Workload<'a> {
    pub service: &'a str,
    pub id: String,
    pub what: String,
    pub messages: Vec<(String, Vec<u8>)>,
    pub batch: usize,
    pub passes: usize,
    pub target: &'a str,
    /// Site config over the manifest's defaults (as an agent's `[services.NAME.config]`).
    pub site: Option<toml::Table>,
}

/// Per-run ns per message: (WASM, native).
pub fn wasm_vs_native<S: outpost_sdk::Service>(r: &mut Report, host: &HostEngine, w: Workload) -> (Vec<f64>, Vec<f64>) {
    let (manifest, loaded) = load(host, &packages().join(w.service));
    let config = outpost::package::effective_config(&manifest.config, w.site.as_ref());
    let metrics = Metrics::new();
    let wit_batches: Vec<Vec<outpost::host::WitMessage>> = w.messages.chunks(w.batch).map(wit_batch).collect();
    let native_batches: Vec<Vec<Message>> = w
        .messages
        .chunks(w.batch)
        .map(|c| c.iter().map(|(t, p)| Message::new(t.clone(), p.clone())).collect())
        .collect();
    let (mut wasm_runs, mut native_runs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (mut wasm, mut native) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..w.passes {
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
        let n = (w.passes * w.messages.len()) as f64;
        wasm_runs.push(wasm.as_nanos() as f64 / n);
        native_runs.push(native.as_nanos() as f64 / n);
    }
    let ratios: Vec<f64> = wasm_runs.iter().zip(&native_runs).map(|(a, b)| a / b).collect();
    r.push(
        Figure::new(&w.id, &w.what, "ns/msg", wasm_runs.clone())
            .baseline("native", native_runs.clone())
            .target(w.target)
            .note(format!("WASM/native per run {}", crate::report::with_spread(&ratios, "x"))),
    );
    (wasm_runs, native_runs)
}

/// Positioning per NMEA sentence at batch 1, 16 and 256.
pub fn bench_handler(r: &mut Report) {
    println!("\n(a) positioning handler, per message: WASM (real host) vs native");
    let lines = nmea_workload();
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    let messages: Vec<(String, Vec<u8>)> =
        lines.iter().map(|l| ("site/bench/truck-1/gnss/nmea".to_owned(), l.clone())).collect();
    for batch in [1usize, 16, 256] {
        wasm_vs_native::<Positioning>(
            r,
            &host,
            Workload {
                service: "positioning",
                id: format!("handler.positioning.batch{batch}"),
                what: format!("positioning per message, batch {batch}"),
                passes: (40_000 / messages.len()).max(1),
                messages: messages.clone(),
                batch,
                target: if batch == 256 { "<= 1.2x native" } else { "-" },
                site: None,
            },
        );
    }
}

/// Weight loading per haul-cycle record: the mine's real week of cycles.
pub fn bench_weight_loading(r: &mut Report) {
    println!("\n(a) weight-loading, per haul-cycle record: WASM (real host) vs native");
    let csv = workspace().join("tests/data/mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv");
    let track = outpost_devtools::sim::haul::load_cycles("bench", &csv).expect("haul cycles");
    let messages: Vec<(String, Vec<u8>)> = track.messages.into_iter().map(|m| (m.topic, m.payload)).collect();
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    for batch in [1usize, 64] {
        wasm_vs_native::<weight_loading::WeightLoading>(
            r,
            &host,
            Workload {
                service: "weight-loading",
                id: format!("weight-loading.batch{batch}"),
                what: format!("weight-loading per record, batch {batch} ({} records)", messages.len()),
                messages: messages.clone(),
                batch,
                passes: 1,
                target: if batch == 64 { "<= 1.2x native" } else { "-" },
                site: None,
            },
        );
    }
}

/// Site sizes of the traffic-awareness rows (and its scaling curve).
pub const TRAFFIC_ASSETS: [usize; 4] = [10, 100, 500, 2000];

/// Traffic awareness per fix by site size, one batch per second of site
/// time (every asset's fix), the way the agent delivers a busy site.
pub fn bench_traffic(r: &mut Report) {
    println!("\n(a) traffic-awareness, per fix by site size: WASM (real host) vs native");
    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    for assets in TRAFFIC_ASSETS {
        // A minute of the site; 20 s at 2,000 assets keeps a run near a second.
        let messages = traffic_workload(assets, if assets >= 1000 { 20 } else { 60 });
        let (wasm, _) = wasm_vs_native::<traffic_awareness::TrafficAwareness>(
            r,
            &host,
            Workload {
                service: "traffic-awareness",
                id: format!("traffic.assets{assets}"),
                what: format!("traffic-awareness per fix, {assets} assets"),
                passes: (600 / assets).max(1),
                messages,
                batch: assets,
                target: "<= 1.2x native",
                // The default bound is 1,000 assets.
                site: Some(toml::from_str("max_assets = 4000").expect("site config")),
            },
        );
        println!(
            "    one second of the site ({assets} fixes in one call): {:.2} ms in WASM (call deadline 250 ms)",
            crate::report::median(&wasm) * assets as f64 / 1e6
        );
    }
}

pub fn wit_batch(b: &[(String, Vec<u8>)]) -> Vec<outpost::host::WitMessage<'_>> {
    b.iter().map(|(t, p)| outpost::host::WitMessage { topic: t, payload: p, received_ms: 0 }).collect()
}

/// Leak detection at L-Town scale, one hour (12 steps) per call, after
/// calibration on two weeks: a simulated year of `cargo xtask eval leak`
/// when one is cached (its 2019, calibrated on the first two weeks of its
/// 2018), else a synthetic stream made here (so the row always prints).
pub fn bench_leak(r: &mut Report) {
    let cache = std::env::var_os("OUTPOST_LTOWN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/outpost-data/battledim"));
    let topic = "site/bench/ltown";
    let as_messages = |payloads: Vec<String>| -> Vec<(String, Vec<u8>)> {
        payloads.into_iter().map(|p| (format!("{topic}/scada"), p.into_bytes())).collect()
    };
    let mut setup = Vec::new();
    let (source, calibration, stream, (cal_start, cal_end)) = match cached_ltown_seed(&cache) {
        Some(seed) => {
            let load = |dir: &str, from: Option<&str>, to: Option<&str>| {
                leak_detection::replay::load_dir(&cache.join(dir), from, to).expect("simulated SCADA")
            };
            let window = ("2018-01-01 00:00", "2018-01-14 23:55");
            setup.push((
                format!("{topic}/leak-model"),
                std::fs::read(cache.join("leak-model.json")).expect("leak model"),
            ));
            let historical = format!("historical-seed{seed}");
            let cal = load(&historical, Some(window.0), Some(window.1)).into_iter().map(|s| s.payload).collect();
            let evaluation = format!("evaluation-seed{seed}");
            let year = load(&evaluation, None, None).into_iter().map(|s| s.payload).collect();
            (format!("the simulated 2019 of L-Town, seed {seed} (leaks in)"), cal, year, window)
        }
        None => {
            println!(
                "    no simulated year in {} (`cargo xtask eval leak` makes them): a synthetic L-Town-sized stream instead",
                cache.display()
            );
            let steps = synthetic_scada(6 * 7 * 288);
            let (cal, rest) = steps.split_at(14 * 288);
            (
                "4 synthetic weeks at L-Town scale (no leak model, so no localisation)".to_owned(),
                cal.to_vec(),
                rest.to_vec(),
                ("2019-01-01 00:00", "2019-01-14 23:55"),
            )
        }
    };
    println!("\n(a) leak-detection, per 5-minute SCADA step over {source}: WASM (real host) vs native");
    setup.push((format!("{topic}/calibrate"), format!(r#"{{"start":"{cal_start}","end":"{cal_end}"}}"#).into_bytes()));
    let mut setup_batches = vec![setup];
    setup_batches.extend(as_messages(calibration).chunks(12).map(<[_]>::to_vec));
    let stream = as_messages(stream);
    let batches: Vec<&[(String, Vec<u8>)]> = stream.chunks(12).collect();

    let host = HostEngine::new(&EngineOptions::default()).expect("engine");
    let (manifest, loaded) = load(&host, &packages().join("leak-detection"));
    let config = outpost::package::effective_config(&manifest.config, None);
    let metrics = Metrics::new();
    let (mut wasm_runs, mut native_runs, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    let mut wasm_secs = Vec::new();
    for _ in 0..RUNS {
        let mut instance = host
            .instantiate(&loaded, &manifest, context("leak-detection", &manifest, &metrics), &config)
            .expect("instantiate");
        for b in &setup_batches {
            instance.handle(&wit_batch(b)).expect("calibration");
        }
        let t = Instant::now();
        for b in &batches {
            let _ = instance.handle(&wit_batch(b));
        }
        let wasm = t.elapsed();
        memory.push(instance.memory_bytes() as f64 / (1u64 << 20) as f64);
        let mut h = Harness::<leak_detection::LeakDetection>::new(&config).expect("native init");
        for b in &setup_batches {
            let _ = h.send_batch(b.iter().map(|(t, p)| Message::new(t.clone(), p.clone())).collect());
        }
        let native_batches: Vec<Vec<Message>> =
            batches.iter().map(|b| b.iter().map(|(t, p)| Message::new(t.clone(), p.clone())).collect()).collect();
        let t = Instant::now();
        for b in native_batches {
            let _ = h.send_batch(b);
        }
        let native = t.elapsed();
        let n = stream.len() as f64;
        wasm_runs.push(wasm.as_secs_f64() * 1e6 / n);
        native_runs.push(native.as_secs_f64() * 1e6 / n);
        wasm_secs.push(wasm.as_secs_f64());
    }
    let ratios: Vec<f64> = wasm_runs.iter().zip(&native_runs).map(|(a, b)| a / b).collect();
    r.push(
        Figure::new(
            "leak.per_step",
            &format!("leak-detection per SCADA step, 119 sensors ({} steps: {source})", stream.len()),
            "us/step",
            wasm_runs,
        )
        .baseline("native", native_runs)
        .target("<= 1.2x native")
        .note(format!("WASM/native per run {}", crate::report::with_spread(&ratios, "x"))),
    );
    let secs = crate::report::median(&wasm_secs);
    println!(
        "    {} steps through WASM in {secs:.2} s ({:.0}x real time)",
        stream.len(),
        stream.len() as f64 * 300.0 / secs
    );
    r.push(
        Figure::new("leak.guest_memory", &format!("leak-detection guest memory after {source}"), "MiB", memory)
            .target(&format!("bounded (limit {} MiB)", manifest.limits.memory_mib)),
    );
}

/// The lowest seed with both simulated years and the leak model cached.
fn cached_ltown_seed(cache: &Path) -> Option<u64> {
    if !cache.join("leak-model.json").is_file() {
        return None;
    }
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("evaluation-seed")?.parse::<u64>().ok())
        .filter(|seed| {
            cache.join(format!("evaluation-seed{seed}/pressures.csv")).is_file()
                && cache.join(format!("historical-seed{seed}/pressures.csv")).is_file()
        })
        .min()
}

/// `steps` 5-minute SCADA messages shaped like L-Town's (33 pressures, the
/// two inlet flows and the pump flow the default config names, 82 AMR
/// meters, the tank level) from 2019-01-01 00:00: a daily demand cycle with
/// noise, deterministic.
pub fn synthetic_scada(steps: usize) -> Vec<String> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let day0 = outpost_sdk::civil::days_from_civil(2019, 1, 1);
    let mut out = Vec::with_capacity(steps);
    for k in 0..steps {
        let minutes = k as i64 * 5;
        let (y, m, d) = outpost_sdk::civil::civil_from_days(day0 + minutes / 1440);
        let time = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", (minutes % 1440) / 60, minutes % 60);
        let hour = (minutes % 1440) as f64 / 60.0;
        let demand = 1.0 + 0.35 * (2.0 * std::f64::consts::PI * (hour - 7.0) / 24.0).sin();
        let mut s = format!("{{\"time\":\"{time}\",\"pressure_m\":{{");
        for i in 0..33 {
            s.push_str(&format!(
                "{}\"n{}\":{:.3}",
                if i > 0 { "," } else { "" },
                i * 13 + 1,
                60.0 - 8.0 * demand + noise() * 0.2
            ));
        }
        s.push_str(&format!(
            "}},\"flow_m3h\":{{\"p227\":{:.3},\"p235\":{:.3},\"PUMP_1\":{:.3}}},\"demand_lph\":{{",
            110.0 * demand + noise(),
            75.0 * demand + noise(),
            30.0 + noise()
        ));
        for i in 0..82 {
            s.push_str(&format!(
                "{}\"n{}\":{:.2}",
                if i > 0 { "," } else { "" },
                i * 7 + 2,
                20.0 * demand + noise() * 2.0
            ));
        }
        s.push_str(&format!("}},\"level_m\":{{\"T1\":{:.3}}}}}", 3.0 + 0.5 * demand + noise() * 0.01));
        out.push(s);
    }
    out
}

/// One engine setting the WASM/native gap is checked against.
struct Variant {
    id: &'static str,
    what: &'static str,
    adjust: fn(&mut wasmtime::Config),
}

const VARIANTS: [Variant; 3] = [
    Variant { id: "agent", what: "the agent's engine", adjust: |_| {} },
    Variant {
        id: "no_epoch",
        what: "without epoch checks (calls could no longer be cut at their deadline)",
        adjust: |c| {
            c.epoch_interruption(false);
        },
    },
    Variant {
        id: "bounds_checked",
        what: "with an explicit bounds check on every memory access (no guard region)",
        adjust: |c| {
            c.memory_reservation(u64::from(outpost::host::MAX_MEMORY_MIB) << 20);
            c.memory_guard_size(0);
        },
    },
];

/// WASM ns per message of one run (`passes` passes, a fresh instance each).
fn wasm_run(host: &HostEngine, w: &Workload) -> f64 {
    let (manifest, loaded) = load(host, &packages().join(w.service));
    let config = outpost::package::effective_config(&manifest.config, w.site.as_ref());
    let metrics = Metrics::new();
    let batches: Vec<Vec<outpost::host::WitMessage>> = w.messages.chunks(w.batch).map(wit_batch).collect();
    let mut took = Duration::ZERO;
    for _ in 0..w.passes {
        let mut instance = host
            .instantiate(&loaded, &manifest, context(w.service, &manifest, &metrics), &config)
            .expect("instantiate");
        let t = Instant::now();
        for b in &batches {
            instance.handle(b).expect("wasm handle");
        }
        took += t.elapsed();
    }
    took.as_nanos() as f64 / (w.passes * w.messages.len()) as f64
}

/// Where the WASM/native gap is not: each service's WASM cost per message
/// with the agent's engine beside the same engine without epoch checks and
/// with explicit bounds checks, run by run in turn so that noise falls on
/// all three.
pub fn bench_gap(r: &mut Report) {
    println!("\n(a) the WASM/native gap: the cost of epoch checks and of bounds checks");
    let csv = workspace().join("tests/data/mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv");
    let track = outpost_devtools::sim::haul::load_cycles("bench", &csv).expect("haul cycles");
    let nmea: Vec<(String, Vec<u8>)> =
        nmea_workload().into_iter().map(|l| ("site/bench/truck-1/gnss/nmea".to_owned(), l)).collect();
    let workloads = [
        Workload {
            service: "positioning",
            id: "gap.positioning".into(),
            what: "positioning per message, batch 256".into(),
            passes: (40_000 / nmea.len()).max(1),
            messages: nmea,
            batch: 256,
            target: "-",
            site: None,
        },
        Workload {
            service: "weight-loading",
            id: "gap.weight-loading".into(),
            what: "weight-loading per record, batch 64".into(),
            messages: track.messages.into_iter().map(|m| (m.topic, m.payload)).collect(),
            batch: 64,
            passes: 1,
            target: "-",
            site: None,
        },
        Workload {
            service: "traffic-awareness",
            id: "gap.traffic".into(),
            what: "traffic-awareness per fix, 500 assets".into(),
            messages: traffic_workload(500, 60),
            batch: 500,
            passes: 1,
            target: "-",
            site: Some(toml::from_str("max_assets = 4000").expect("site config")),
        },
    ];
    let hosts: Vec<HostEngine> = VARIANTS
        .iter()
        .map(|v| HostEngine::with_config(&EngineOptions::default(), v.adjust).expect("engine variant"))
        .collect();
    for w in &workloads {
        // runs[variant][run]
        let mut runs = vec![Vec::new(); VARIANTS.len()];
        for _ in 0..RUNS {
            for (v, host) in hosts.iter().enumerate() {
                runs[v].push(wasm_run(host, w));
            }
        }
        for (v, variant) in VARIANTS.iter().enumerate().skip(1) {
            r.push(
                Figure::new(
                    &format!("{}.{}", w.id, variant.id),
                    &format!("{} {}", w.what, variant.what),
                    "ns/msg",
                    runs[v].clone(),
                )
                .baseline(VARIANTS[0].what, runs[0].clone())
                .target("-"),
            );
        }
    }
}
