//! `cargo xtask bench`: every figure the median of at least five runs with
//! its spread, beside a baseline measured in the same run, printed as a
//! markdown table and written as JSON (`--compare OLD.json` sets each
//! figure beside an earlier run's). Needs the packages built by `cargo xtask
//! build`, release binaries, and Mosquitto (all provided by `cargo xtask bench`).
//!
//! Sections (filter by name: `cargo bench ... -- handler scaling`):
//! handler, weight-loading, traffic, leak, gap (guest.rs); in-agent, e2e,
//! instantiate (delivery.rs); start (startup.rs); upgrade (upgrade.rs);
//! scaling (scaling.rs, with SVG curves); soak (soak.rs, 30 min unless
//! `OUTPOST_SOAK_SECS`, and only when named).

mod delivery;
mod guest;
mod mqtt;
mod plot;
mod process;
mod report;
mod scaling;
mod soak;
mod startup;
mod upgrade;

use outpost::dispatch::Egress;
use outpost::host::{HostEngine, LoadedComponent, ServiceContext};
use outpost::manifest::Manifest;
use outpost::telemetry::Metrics;
use report::Report;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// The agent's allocator, so that the in-process sections measure the data
// path as the `outpost` binary runs it (the native baselines share it).
outpost::install_allocator!();

fn env_dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| workspace().join(default))
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_owned()
}

fn packages() -> PathBuf {
    env_dir("OUTPOST_PACKAGES", "target/outpost/packages")
}

fn test_packages() -> PathBuf {
    env_dir("OUTPOST_TEST_PACKAGES", "target/outpost/test-packages")
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

/// One section of the bench: measures and adds its figures.
type Section<'a> = dyn Fn(&mut Report) + 'a;

/// Harness arguments after `--`: section filters and `--compare OLD.json`
/// (cargo adds `--bench`).
struct Args {
    filters: Vec<String>,
    compare: Option<PathBuf>,
}

fn args() -> Args {
    let mut filters = Vec::new();
    let mut compare = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--compare" {
            compare = it.next().map(PathBuf::from);
        } else if let Some(path) = a.strip_prefix("--compare=") {
            compare = Some(PathBuf::from(path));
        } else if !a.starts_with("--") {
            filters.push(a);
        }
    }
    Args { filters, compare }
}

fn main() {
    let args = args();
    // The soak takes 30 minutes: it runs only when asked for by name.
    let on = |name: &str| {
        if args.filters.is_empty() {
            name != "soak"
        } else {
            args.filters.iter().any(|f| name.contains(f.as_str()))
        }
    };
    let old = args.compare.as_ref().map(|p| {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("--compare {}: {e}", p.display()));
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("--compare {}: {e}", p.display()))
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // Kept alive (killed on drop) for the sections that need a broker.
    let (_mosquitto, mosquitto_port) = mqtt::start_mosquitto(dir.path());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = report::out_dir();
    println!(
        "Outpost benchmarks ({cores} cores); every figure the median (min-max) of at least {} runs, beside its \
         baseline from this run; results in {}",
        report::RUNS,
        out.display()
    );
    let mut r = Report::default();
    let mut ran = Vec::new();
    let sections: [(&str, &Section); 12] = [
        ("handler", &guest::bench_handler),
        ("weight-loading", &guest::bench_weight_loading),
        ("traffic", &guest::bench_traffic),
        ("leak", &guest::bench_leak),
        ("gap", &guest::bench_gap),
        ("in-agent", &|r| delivery::bench_in_agent(r, mosquitto_port, &rt)),
        ("e2e", &|r| delivery::bench_end_to_end(r, mosquitto_port, &rt)),
        ("instantiate", &delivery::bench_instantiate),
        ("start", &startup::bench_start_and_memory),
        ("upgrade", &|r| upgrade::bench_upgrade(r, &rt)),
        ("scaling", &|r| scaling::bench_scaling(r, &out)),
        ("soak", &|r| soak::bench_soak(r, &rt)),
    ];
    for (name, run) in sections {
        if on(name) {
            ran.push(name.to_owned());
            run(&mut r);
        }
    }
    println!("\n{}", r.markdown());
    match report::write_json(&out, &r.to_json(cores, &ran)) {
        Ok(path) => println!("figures written to {} (and latest.json beside it)", path.display()),
        Err(e) => eprintln!("could not write the figures to {}: {e}", out.display()),
    }
    if let (Some(old), Some(path)) = (old, &args.compare) {
        println!("\nCompared with {}:\n\n{}", path.display(), report::compare(&r, &old));
    }
}
