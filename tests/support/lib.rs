//! Support for Outpost's integration tests: built packages, a real
//! Mosquitto server on a free loopback port, Mosquitto's own command-line
//! clients as independent peers, and an in-process agent.

use outpost::agent::Agent;
use outpost::config::AgentConfig;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn built(var: &str, default: &str, name: &str) -> PathBuf {
    let root = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| workspace().join(default));
    let dir = root.join(name);
    assert!(
        dir.join("service.wasm").is_file(),
        "package {} is not built; run the tests with `cargo xtask test` (it builds the components first)",
        dir.display()
    );
    dir
}

/// A real service package built by `cargo xtask build`.
pub fn package(name: &str) -> PathBuf {
    built("OUTPOST_PACKAGES", "target/outpost/packages", name)
}

/// A test service package (tests/guests/*).
pub fn test_package(name: &str) -> PathBuf {
    built("OUTPOST_TEST_PACKAGES", "target/outpost/test-packages", name)
}

/// A binary of the runtime crate (`outpost`, `outpostctl`, `outpost-sim`),
/// built by `cargo xtask test` before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("OUTPOST_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join("debug")
    });
    let bin = dir.join(name);
    assert!(bin.is_file(), "{} not built; run the tests with `cargo xtask test`", bin.display());
    bin
}

pub fn data(rel: &str) -> PathBuf {
    workspace().join("tests/data").join(rel)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn find_binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found; `cargo xtask setup` installs it")
}

/// A Mosquitto server on a free loopback port, stopped on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 100000\nset_tcp_nodelay true\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(find_binary("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        assert!(wait_for_port(port, Duration::from_secs(10)), "mosquitto did not open port {port}");
        Mosquitto { port, child, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub -v`, collecting `(topic, payload)` lines in the background.
pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<(String, String)>>>,
}

impl Subscriber {
    /// Subscribes and returns once the broker acknowledged the subscription.
    pub fn start(port: u16, filters: &[&str]) -> Subscriber {
        // Line-buffered: mosquitto_sub's stdout is a pipe here.
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL").arg(find_binary("mosquitto_sub"));
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v", "-d"]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            // Payloads may be binary: read bytes, not UTF-8 lines.
            for raw in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&raw).into_owned();
                // -d interleaves protocol debug lines with "topic payload" lines.
                if line.starts_with("Client ") {
                    if line.contains("SUBACK") {
                        let _ = ready_tx.send(());
                    }
                    continue;
                }
                if line.starts_with("Subscribed") || line.starts_with("Received") {
                    continue;
                }
                let (t, p) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                sink.lock().expect("lock").push((t.to_owned(), p.to_owned()));
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("mosquitto_sub got no SUBACK");
        Subscriber { child, lines }
    }

    pub fn received(&self) -> Vec<(String, String)> {
        self.lines.lock().expect("lock").clone()
    }

    /// Waits until `pred` holds for what arrived, or the time runs out.
    pub fn wait_until(&self, limit: Duration, pred: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if pred(&got) || start.elapsed() > limit {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes each line as one QoS 1 message with `mosquitto_pub -l`.
pub fn publish_lines(port: u16, topic: &str, lines: &[Vec<u8>]) {
    let mut child = Command::new(find_binary("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start mosquitto_pub");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for l in lines {
            stdin.write_all(l).expect("write");
            stdin.write_all(b"\n").expect("write");
        }
    }
    let status = child.wait().expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}

/// Publishes one message (payload from a file, so any bytes) with `mosquitto_pub -f`.
pub fn publish_bytes(port: u16, topic: &str, payload: &[u8]) {
    let mut f = tempfile::NamedTempFile::new().expect("tempfile");
    f.write_all(payload).expect("write");
    let status = Command::new(find_binary("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-f"])
        .arg(f.path())
        .status()
        .expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub -f failed");
}

/// An agent running in-process on its own runtime thread.
pub struct TestAgent {
    pub mqtt_port: u16,
    pub http_port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

/// Folder layout for a test agent: `services/` to install packages into, `state/`.
pub struct AgentDir {
    pub root: tempfile::TempDir,
}

impl AgentDir {
    pub fn new() -> AgentDir {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("services")).expect("mkdir");
        AgentDir { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Copies a package folder into `services/{as_name}`.
    pub fn install(&self, package: &Path, as_name: &str) -> PathBuf {
        let dest = self.path().join("services").join(as_name);
        std::fs::create_dir_all(&dest).expect("mkdir");
        for f in ["service.toml", "service.wasm"] {
            if package.join(f).exists() {
                std::fs::copy(package.join(f), dest.join(f)).expect("copy");
            }
        }
        dest
    }

    /// Config text for an agent on the given broker (`None` = embedded on a free port).
    pub fn config(&self, external: Option<&str>, extra: &str) -> (String, u16, u16, u16) {
        self.config_with(external, "", extra)
    }

    /// Like `config`, with `top` top-level keys (before any table).
    pub fn config_with(&self, external: Option<&str>, top: &str, extra: &str) -> (String, u16, u16, u16) {
        let http = free_port();
        let api = free_port();
        let (broker, port) = match external {
            Some(url) => {
                let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in url");
                (format!("[broker]\nmode = \"external\"\nurl = \"{url}\"\n"), port)
            }
            None => {
                let port = free_port();
                (format!("[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n"), port)
            }
        };
        let text = format!(
            "gateway = \"test-gw\"\nsite = \"s1\"\nservices_dir = \"{}\"\nstate_dir = \"{}\"\n{top}{broker}\n[metrics]\nlisten = \"127.0.0.1:{http}\"\n\n[api]\nlisten = \"127.0.0.1:{api}\"\n\n[dispatch]\ninitial_backoff_ms = 20\nmax_backoff_ms = 200\ntick_interval_ms = 200\n{extra}\n",
            self.path().join("services").display(),
            self.path().join("state").display(),
        );
        (text, port, http, api)
    }
}

impl Default for AgentDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestAgent {
    /// Starts an agent and waits until it is ready (subscribed) or 30 s pass.
    pub fn start(dir: &AgentDir, external: Option<&str>, extra: &str) -> TestAgent {
        Self::start_with(dir, external, "", extra)
    }

    /// Like `start`, with top-level config keys (e.g. `trust_dir = "..."`).
    pub fn start_with(dir: &AgentDir, external: Option<&str>, top: &str, extra: &str) -> TestAgent {
        outpost::telemetry::init_tracing_with("warn,rumqttd=off");
        let (text, mqtt_port, http_port, api_port) = dir.config_with(external, top, extra);
        let config = AgentConfig::parse(&text, Path::new("test.toml")).expect("test config is valid");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                Agent::new(config)
                    .run(async move {
                        let _ = rx.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let agent = TestAgent {
            mqtt_port,
            http_port,
            api_port,
            dir: dir.path().to_owned(),
            stop: Some(tx),
            thread: Some(thread),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if agent.status().is_some_and(|s| s["state"] == "ready") {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent not ready within 30 s: {:?}", agent.status());
    }

    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("127.0.0.1:{}", self.http_port), path)
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        self.http("/status").and_then(|(_, b)| serde_json::from_str(&b).ok())
    }

    pub fn metrics(&self) -> String {
        self.http("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Sum of a metric's samples whose line contains every `needle`.
    pub fn metric(&self, name: &str, needles: &[&str]) -> f64 {
        metric_value(&self.metrics(), name, needles)
    }

    /// Requests shutdown (as SIGTERM does) and waits for the drain to finish.
    pub fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.thread.take().map(|t| t.join().unwrap_or_else(|_| Err("agent thread panicked".into()))).unwrap_or(Ok(()))
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn metric_value(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}
