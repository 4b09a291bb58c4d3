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

/// One of the binaries (`outpost`, `outpostctl`, `outpost-sim`),
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

/// A loopback port nobody listens on now and that this process has not
/// handed out before: parallel tests that each pick several ports could
/// otherwise be given the same one by the kernel and reach each other.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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

pub fn find_binary(name: &str) -> PathBuf {
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
    pub conf: PathBuf,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// Like `start`, with `extra` lines appended to mosquitto.conf (e.g.
    /// `message_size_limit`, a `plugin`); with extra lines, the server logs
    /// everything to a file read by [`Mosquitto::log`].
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let log = if extra.is_empty() {
            String::new()
        } else {
            // Started as root, Mosquitto drops to its own user: it must be
            // able to reach its folder and write its log.
            let path = dir.path().join("mosquitto.log");
            std::fs::write(&path, "").expect("create mosquitto.log");
            make_world_accessible(dir.path(), 0o755);
            make_world_accessible(&path, 0o666);
            format!("log_dest file {}\nlog_type all\n", path.display())
        };
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 100000\nset_tcp_nodelay true\n{log}{extra}\n"),
        )
        .expect("write mosquitto.conf");
        let child = spawn_mosquitto(&conf, port);
        Mosquitto { port, child, _dir: dir, conf }
    }

    /// Stops the server (SIGKILL); its port stays reserved for `restart`.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_mosquitto(&self.conf, self.port);
    }

    /// The server's log (only with `start_with` and some extra config).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.conf.with_file_name("mosquitto.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Sets `path`'s mode (Unix), so that Mosquitto, which drops root for its
/// own user, can read a config file the test wrote (an ACL, a password file).
pub fn make_world_accessible(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

fn spawn_mosquitto(conf: &Path, port: u16) -> Child {
    let child = Command::new(find_binary("mosquitto"))
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    assert!(wait_for_port(port, Duration::from_secs(10)), "mosquitto did not open port {port}");
    child
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
        Self::start_as(port, filters, None)
    }

    /// Like `start`, logged in as `(user, password)`.
    pub fn start_as(port: u16, filters: &[&str], login: Option<(&str, &str)>) -> Subscriber {
        // Line-buffered: mosquitto_sub's stdout is a pipe here.
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL").arg(find_binary("mosquitto_sub"));
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v", "-d"]);
        if let Some((user, password)) = login {
            cmd.args(["-u", user, "-P", password]);
        }
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
        let (text, mqtt_port, http_port, api_port) = dir.config_with(external, top, extra);
        Self::start_text(dir, &text, mqtt_port, http_port, api_port)
    }

    /// Starts an agent from config text (e.g. `AgentDir::config` edited by
    /// the test) and waits until it is ready or 30 s pass.
    pub fn start_text(dir: &AgentDir, text: &str, mqtt_port: u16, http_port: u16, api_port: u16) -> TestAgent {
        let agent = Self::spawn_text(dir, text, mqtt_port, http_port, api_port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if agent.status().is_some_and(|s| s["state"] == "ready") {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent not ready within 30 s: {:?}", agent.status());
    }

    /// Starts an agent and returns once its HTTP status answers, ready or
    /// not (for agents whose broker link cannot become ready).
    pub fn spawn(dir: &AgentDir, external: Option<&str>, extra: &str) -> TestAgent {
        let (text, mqtt_port, http_port, api_port) = dir.config_with(external, "", extra);
        Self::spawn_text(dir, &text, mqtt_port, http_port, api_port)
    }

    /// Like `spawn`, from config text.
    pub fn spawn_text(dir: &AgentDir, text: &str, mqtt_port: u16, http_port: u16, api_port: u16) -> TestAgent {
        let agent = Self::launch(dir, text, mqtt_port, http_port, api_port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if agent.status().is_some() {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent's /status did not answer within 30 s");
    }

    fn launch(dir: &AgentDir, text: &str, mqtt_port: u16, http_port: u16, api_port: u16) -> TestAgent {
        outpost::telemetry::init_tracing_with("warn,rumqttd=off");
        let config = AgentConfig::parse(text, Path::new("test.toml")).expect("test config is valid");
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
        TestAgent { mqtt_port, http_port, api_port, dir: dir.path().to_owned(), stop: Some(tx), thread: Some(thread) }
    }

    /// A management API client with this agent's token.
    pub async fn api(&self) -> outpost::client::Client {
        let token = outpost::client::read_token(&self.dir.join("state/api.token")).expect("API token");
        outpost::client::connect(&format!("http://127.0.0.1:{}", self.api_port), &token)
            .await
            .expect("connect to the API")
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

/// A bare MQTT 3.1.1 client on a `TcpStream` that sends exactly what the
/// test asks for, including what no client library would send (a topic
/// with NUL or wildcard characters).
pub struct RawMqtt {
    stream: TcpStream,
    next_id: u16,
}

/// One MQTT packet: the first byte of the fixed header and the rest.
pub type RawPacket = (u8, Vec<u8>);

fn mqtt_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

impl RawMqtt {
    /// CONNECT (clean session, keep-alive 60 s, optional login) and wait
    /// for the CONNACK. `Err` says why there is no session: the broker's
    /// return code, or the connection closed without a CONNACK.
    pub fn connect(port: u16, client_id: &str, login: Option<(&str, &str)>) -> Result<RawMqtt, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut raw = RawMqtt { stream, next_id: 1 };
        let mut body = Vec::new();
        mqtt_string(&mut body, b"MQTT");
        body.push(4); // protocol level 3.1.1
        let flags = 0x02 | if login.is_some() { 0xC0 } else { 0 };
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        mqtt_string(&mut body, client_id.as_bytes());
        if let Some((user, pass)) = login {
            mqtt_string(&mut body, user.as_bytes());
            mqtt_string(&mut body, pass.as_bytes());
        }
        raw.send(&mqtt_packet(0x10, &body))?;
        match raw.read_packet()? {
            (0x20, b) if b.len() == 2 && b[1] == 0 => Ok(raw),
            (0x20, b) => Err(format!("CONNACK return code {}", b.get(1).copied().unwrap_or(255))),
            (t, _) => Err(format!("expected CONNACK, got packet type {:#x}", t)),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| format!("write: {e}"))
    }

    /// Reads one packet; `Err` on timeout (5 s) or a closed connection.
    pub fn read_packet(&mut self) -> Result<RawPacket, String> {
        let mut first = [0u8; 1];
        match self.stream.read(&mut first) {
            Ok(0) => return Err("connection closed by the broker".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
            len |= ((b[0] & 0x7f) as usize) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
        Ok((first[0], body))
    }

    /// Publishes at QoS 1 with `topic` as raw bytes and waits for the PUBACK.
    pub fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut body = Vec::new();
        mqtt_string(&mut body, topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.send(&mqtt_packet(0x32, &body))?;
        loop {
            let (t, b) = self.read_packet()?;
            if t & 0xf0 == 0x40 && b.get(..2) == Some(&id.to_be_bytes()[..]) {
                return Ok(());
            }
        }
    }

    /// Subscribes at QoS 1; returns the SUBACK's return code (0x80: refused).
    pub fn subscribe(&mut self, filter: &[u8]) -> Result<u8, String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut body = id.to_be_bytes().to_vec();
        mqtt_string(&mut body, filter);
        body.push(1);
        self.send(&mqtt_packet(0x82, &body))?;
        loop {
            let (t, b) = self.read_packet()?;
            if t & 0xf0 == 0x90 && b.get(..2) == Some(&id.to_be_bytes()[..]) {
                return b.get(2).copied().ok_or_else(|| "SUBACK without a return code".to_owned());
            }
        }
    }

    /// Waits (5 s) for the next PUBLISH, acknowledges it if QoS 1, and
    /// returns its topic and payload.
    pub fn next_publish(&mut self) -> Result<(Vec<u8>, Vec<u8>), String> {
        loop {
            let (t, b) = self.read_packet()?;
            if t & 0xf0 != 0x30 {
                continue;
            }
            let qos = (t >> 1) & 3;
            let len = u16::from_be_bytes([b[0], b[1]]) as usize;
            let topic = b[2..2 + len].to_vec();
            let mut rest = 2 + len;
            if qos > 0 {
                let id = [b[rest], b[rest + 1]];
                rest += 2;
                self.send(&[0x40, 2, id[0], id[1]])?;
            }
            return Ok((topic, b[rest..].to_vec()));
        }
    }

    /// Sends DISCONNECT and closes the connection.
    pub fn disconnect(mut self) {
        let _ = self.send(&[0xE0, 0]);
    }
}

/// A provider's signing key, trusted by the agents a test starts: its
/// public key sits alone in `trust` (the agent's `trust_dir`).
pub struct TrustedProvider {
    pub key: outpost_package::SigningKey,
    pub trust: tempfile::TempDir,
}

impl TrustedProvider {
    /// The test guests' provider, `outpost-tests`.
    pub fn new() -> TrustedProvider {
        let keys = tempfile::tempdir().expect("tempdir");
        let trust = tempfile::tempdir().expect("tempdir");
        let generated = outpost_package::keygen(keys.path(), "outpost-tests").expect("keygen");
        std::fs::copy(&generated.public_path, trust.path().join("outpost-tests.pub")).expect("trust the key");
        let key = outpost_package::ProviderSigningKey::load(&generated.private_path).expect("load key").key;
        TrustedProvider { key, trust }
    }

    /// `trust_dir = "..."`, a top-level line of the agent's config.
    pub fn config_line(&self) -> String {
        format!("trust_dir = \"{}\"\n", self.trust.path().display())
    }

    /// A signed `.opkg` of this manifest and component.
    pub fn sign(&self, manifest: &str, wasm: &[u8]) -> Vec<u8> {
        outpost_package::pack(manifest.as_bytes(), wasm, Some(&self.key)).expect("pack")
    }

    /// A test package (tests/guests/NAME), signed, with `edits` (from, to)
    /// applied to its manifest; each `from` must be there.
    pub fn package(&self, name: &str, edits: &[(&str, &str)]) -> Vec<u8> {
        let dir = test_package(name);
        let mut manifest = std::fs::read_to_string(dir.join("service.toml")).expect("manifest");
        for (from, to) in edits {
            assert!(manifest.contains(from), "{from} not in {name}'s manifest:\n{manifest}");
            manifest = manifest.replace(from, to);
        }
        self.sign(&manifest, &std::fs::read(dir.join("service.wasm")).expect("component"))
    }

    /// The testbed as `version`, writing under `out` when given.
    pub fn testbed(&self, version: &str, out: Option<&str>) -> Vec<u8> {
        let version = format!("version = \"{version}\"");
        let out = out.map(|o| format!("out = \"{o}\""));
        let mut edits = vec![("version = \"0.1.0\"", version.as_str())];
        if let Some(o) = &out {
            edits.push(("out = \"test/out\"", o.as_str()));
        }
        self.package("testbed", &edits)
    }
}

impl Default for TrustedProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// A current-thread runtime for a test's own async clients.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Runs Debian's openssl CLI in `dir`; a failure fails the test with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (Debian's openssl) runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`{name}-ca.pem`) and, signed by it, a certificate for localhost
/// and 127.0.0.1 (`{name}.pem`, `{name}.key`).
pub fn site_ca(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &ca_key]);
    openssl(
        dir,
        &["req", "-x509", "-new", "-key", &ca_key, "-subj", &format!("/CN={name} site CA"), "-days", "30", "-out", &ca],
    );
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(dir, &["req", "-new", "-key", &key, "-subj", "/CN=localhost", "-out", &csr]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write san.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "san.ext",
            "-out",
            &cert,
        ],
    );
}
