//! The technician's status page, as a browser shows it: an agent runs the
//! real services, weight loading is fed real haul cycles over the agent's
//! broker, and headless Chromium (Debian's `chromium`) loads `/`, runs its
//! script and hands back the rendered DOM. The figures on the page must be
//! the agent's own: versions from `/status`, KPIs from `/metrics`, shift
//! tonnes, advice and traffic warnings from what the services published on
//! the bus.

use outpost_tests::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const HAUL: &str = "mine-haul-dispatch/StdShiftLoadsDumpsFuel.train.csv";
/// Haul-cycle records fed: enough for a few trucks, loaders and a shift.
const RECORDS: usize = 300;

/// Two haul trucks head-on at 8 m/s each from 201 m apart, 20 s at 10 Hz
/// (local metres): traffic awareness warns both, then escalates.
fn head_on_scene() -> String {
    let mut csv = String::from("track_id,object_type,timestep,position_x,position_y,velocity_x,velocity_y\n");
    for step in 0..=200 {
        let t = step as f64 * 0.1;
        csv += &format!("haul-1,vehicle,{step},{:.4},0,8,0\n", -100.5 + 8.0 * t);
        csv += &format!("haul-2,vehicle,{step},{:.4},0,-8,0\n", 100.5 - 8.0 * t);
    }
    csv
}

fn chromium() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
        for name in ["chromium", "chromium-browser"] {
            let p = std::path::Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("chromium not found: the status page test renders the page in headless Chromium (Debian's chromium); cargo xtask setup installs it")
}

/// The page at `url` after its script ran, as Chromium serializes the DOM.
fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("DOM is UTF-8")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// Every `<tr ...>...</tr>` whose opening tag holds `attr` (e.g. `data-kpi="x"`).
fn rows<'a>(dom: &'a str, attr: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<tr ") {
        let tail = &rest[i..];
        let end = tail.find("</tr>").map_or(tail.len(), |e| e + 5);
        let open = &tail[..tail.find('>').unwrap_or(0)];
        if open.contains(attr) {
            out.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out
}

/// The first `<td>` whose class list holds `class`: (its `data-value`, its text).
fn cell(row: &str, class: &str) -> Option<(Option<String>, String)> {
    let mut rest = row;
    while let Some(i) = rest.find("<td") {
        let tail = &rest[i..];
        let close = tail.find('>')?;
        let open = &tail[..close];
        let body_end = tail.find("</td>")?;
        let classes = attribute(open, "class").unwrap_or_default();
        if classes.split(' ').any(|c| c == class) {
            let text = strip_tags(&tail[close + 1..body_end]);
            return Some((attribute(open, "data-value"), unescape(text.trim())));
        }
        rest = &tail[body_end..];
    }
    None
}

fn attribute(open_tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = open_tag.find(&key)? + key.len();
    let end = open_tag[start..].find('"')? + start;
    Some(unescape(&open_tag[start..end]))
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in html.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

/// A number shown on the page against the agent's: the raw `data-value`
/// exactly, and the text rounded as the page rounds (at most half its last digit).
fn assert_shows(what: &str, shown: &(Option<String>, String), want: f64) {
    assert_shows_one_of(what, shown, &[want]);
}

/// Like `assert_shows` for a figure that may have moved while the page
/// loaded: it must be one of the values the agent had (before, after).
fn assert_shows_one_of(what: &str, shown: &(Option<String>, String), wants: &[f64]) {
    let raw: f64 = shown.0.as_deref().unwrap_or_else(|| panic!("{what}: no data-value")).parse().expect("data-value");
    let Some(&want) = wants.iter().find(|w| (raw - **w).abs() <= 1e-12 * w.abs().max(1.0)) else {
        panic!("{what}: page has {raw}, agent {wants:?}")
    };
    let text: f64 = shown.1.parse().unwrap_or_else(|_| panic!("{what}: {:?} is not a number", shown.1));
    let decimals = shown.1.split_once('.').map_or(0, |(_, d)| d.len());
    let half = 0.5 * 10f64.powi(-(decimals as i32)) + 1e-9;
    assert!((text - want).abs() <= half, "{what}: page shows {}, agent {want}", shown.1);
}

/// Samples in a KPI's trend, as `/page.json` has it.
fn trend_samples(agent: &TestAgent, name: &str) -> usize {
    let page: Option<serde_json::Value> = agent.http("/page.json").and_then(|(_, b)| serde_json::from_str(&b).ok());
    let kpis = page.as_ref().and_then(|p| p["kpis"].as_array().cloned()).unwrap_or_default();
    kpis.iter().find(|k| k["name"] == name).and_then(|k| k["trend"].as_array()).map_or(0, Vec::len)
}

fn site_kpis(metrics: &str) -> BTreeMap<(String, String), f64> {
    outpost::events::kpis_from_metrics(metrics)
        .into_iter()
        .filter(|k| k.subject.is_empty())
        .map(|k| ((k.service, k.name), k.value))
        .collect()
}

#[test]
fn the_status_page_in_a_browser_shows_the_agents_figures() {
    let browser = chromium(); // missing: fail now, before any agent starts
    assert!(browser.exists());

    let dir = AgentDir::new();
    for name in ["weight-loading", "positioning", "traffic-awareness"] {
        dir.install(&package(name), name);
    }
    let agent = TestAgent::start(
        &dir,
        None,
        "[services.traffic-awareness.config]\nsite = \"s1\"\norigin = { lat = -23.44, lon = -70.25 }\n",
    );
    let sub = Subscriber::start(
        agent.mqtt_port,
        &["svc/weight-loading/site/+/shift", "svc/weight-loading/+/advice", "svc/traffic-awareness/+/warning"],
    );

    // GNSS fixes of a head-on course: positioning, then traffic awareness.
    let scene = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(scene.path(), head_on_scene()).expect("write scene");
    let sim = Command::new(binary("outpost-sim"))
        .args(["--broker", &format!("mqtt://127.0.0.1:{}", agent.mqtt_port), "--site", "s1", "--speed", "10"])
        .arg("--origin=-23.44,-70.25")
        .arg("--tracks")
        .arg(scene.path())
        .status()
        .expect("outpost-sim");
    assert!(sim.success());

    let mut cycles = outpost_devtools::sim::haul::load_cycles("s1", &data(HAUL)).expect("haul csv").messages;
    cycles.sort_by(|a, b| a.at.total_cmp(&b.at));
    cycles.truncate(RECORDS);
    let mut mqtt = RawMqtt::connect(agent.mqtt_port, "status-page-feed", None).expect("connect");
    for m in &cycles {
        mqtt.publish(m.topic.as_bytes(), &m.payload).expect("publish");
    }
    mqtt.disconnect();

    // Everything handled, nothing queued: the figures hold still from here.
    let start = Instant::now();
    loop {
        let handled = agent.metric("outpost_messages_in_total", &["weight-loading"]);
        let queued = agent.metric("outpost_queue_depth", &["weight-loading"]);
        if handled >= RECORDS as f64 && queued == 0.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "weight-loading handled {handled} of {RECORDS}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = sub.wait_until(Duration::from_secs(20), |g| {
        g.iter().any(|(t, _)| t.ends_with("/shift"))
            && g.iter().any(|(t, p)| t.ends_with("/warning") && p.contains("\"critical\""))
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = if sub.received().len() > got.len() { sub.received() } else { got };

    // The trend's first sample (taken within 5 s of a KPI's first report).
    let start = Instant::now();
    while trend_samples(&agent, "tonnes_per_hour") == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no trend sample of tonnes_per_hour");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Weight loading's figures hold still now (no more input); traffic
    // awareness's move on its tick (assets go stale): the page must show
    // the value before or after it was loaded.
    let before = site_kpis(&agent.metrics());
    let url = format!("http://127.0.0.1:{}/", agent.http_port);
    let dom = rendered_dom(&url);
    if let Some(dir) = std::env::var_os("OUTPOST_STATUS_PAGE_OUT") {
        // To look at the page: its DOM and a screenshot, written there.
        let dir = PathBuf::from(dir);
        std::fs::write(dir.join("status_page.html"), &dom).expect("write DOM");
        let profile = tempfile::tempdir().expect("profile dir");
        Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={}", dir.join("status_page.png").display()))
            .args(["--window-size=1400,2400", &url])
            .output()
            .expect("screenshot");
    }
    let after = site_kpis(&agent.metrics());
    let status = agent.status().expect("status");
    assert!(dom.contains("data-loaded=\"1\""), "the page's script did not render:\n{dom}");

    // Each service: one row, with the version the agent runs.
    for svc in status["services"].as_array().expect("services") {
        let name = svc["name"].as_str().expect("name");
        let row = rows(&dom, &format!("data-service=\"{name}\""));
        let row = row.iter().find(|r| r.contains("class=\"version\"")).unwrap_or_else(|| panic!("no row for {name}"));
        assert_eq!(cell(row, "version").expect("version cell").1, svc["version"].as_str().expect("version"), "{name}");
        assert_eq!(cell(row, "instances").expect("instances").1, format!("{}/{}", svc["running"], svc["instances"]));
    }
    assert_eq!(status["services"].as_array().map(Vec::len), Some(3));

    // Each site-wide KPI the agent exposes is on the page with its value.
    assert!(after.len() >= 5, "site-wide KPIs in /metrics: {after:?}");
    for ((service, name), want) in &after {
        let row = rows(&dom, &format!("data-kpi=\"{service}/{name}\""));
        let row = row.first().unwrap_or_else(|| panic!("KPI {service}/{name} not on the page"));
        let shown = cell(row, "value").expect("value cell");
        if service == "weight-loading" {
            assert_eq!(before.get(&(service.clone(), name.clone())), Some(want), "{name} moved without input");
            assert_shows(&format!("KPI {service}/{name}"), &shown, *want);
        } else {
            let wants: Vec<f64> =
                before.get(&(service.clone(), name.clone())).into_iter().copied().chain([*want]).collect();
            assert_shows_one_of(&format!("KPI {service}/{name}"), &shown, &wants);
        }
        assert!(row.contains("<svg") || row.contains("one point a minute"), "KPI {name}: no trend");
    }
    // Declared KPIs carry their unit.
    let tph = rows(&dom, "data-kpi=\"weight-loading/tonnes_per_hour\"");
    assert!(tph[0].contains("<td>t/h</td>"), "{}", tph[0]);
    // Its trend is drawn: the sample taken and the value now, as a line.
    let line = tph[0].split("<polyline points=\"").nth(1).and_then(|r| r.split('"').next()).expect("a sparkline");
    assert_eq!(line.split(' ').count(), 2, "{line}");

    // The shift table: the latest site report of each shift, its tonnes as published.
    let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (_, p) in got.iter().filter(|(t, _)| t.ends_with("/shift")) {
        let report: serde_json::Value = serde_json::from_str(p).expect("shift report JSON");
        last.insert(report["shift"].as_str().expect("shift").to_owned(), report);
    }
    assert!(!last.is_empty(), "no site shift report published");
    for (shift, report) in last.iter().take(outpost::history::SHIFT_REPORTS) {
        let row = rows(&dom, &format!("data-shift=\"{shift}\""));
        let row = row.first().unwrap_or_else(|| panic!("shift {shift} not in the table"));
        let tonnes = report["tonnes"].as_f64().expect("tonnes");
        assert!(tonnes > 0.0);
        assert_shows(&format!("shift {shift} tonnes"), &cell(row, "tonnes").expect("tonnes cell"), tonnes);
        assert_shows(
            &format!("shift {shift} cycles"),
            &cell(row, "cycles").expect("cycles"),
            report["cycles"].as_f64().expect("cycles"),
        );
    }
    assert!(dom.contains(" by truck</h3>"), "the latest shift's per-truck table");

    // Loader advice is listed, newest first, in the operator's words.
    let advice: Vec<&(String, String)> = got.iter().filter(|(t, _)| t.ends_with("/advice")).collect();
    let (topic, payload) = advice.last().expect("weight-loading published advice");
    let message: serde_json::Value = serde_json::from_str(payload).expect("advice JSON");
    let items = rows(&dom, "data-kind=\"advice\"");
    assert!(!items.is_empty(), "no advice on the page");
    let newest = items[0];
    assert_eq!(cell(newest, "service").expect("service").1, "weight-loading");
    assert_eq!(cell(newest, "subject").expect("subject").1, topic.split('/').nth(2).expect("loader"));
    let summary = cell(newest, "summary").expect("summary").1;
    let want = message["message"].as_str().expect("advice message");
    assert!(want.starts_with(summary.trim_end_matches('…')), "page says {summary:?}, service said {want:?}");

    // The encounter is listed as a sentence: who, how bad, how close.
    let warnings = rows(&dom, "data-kind=\"warning\"");
    let critical: Vec<String> = warnings
        .iter()
        .filter(|r| cell(r, "service").is_some_and(|c| c.1 == "traffic-awareness"))
        .map(|r| cell(r, "summary").expect("summary").1)
        .filter(|s| s.contains("critical collision with haul-"))
        .collect();
    assert!(!critical.is_empty(), "no critical encounter on the page: {warnings:?}");
    assert!(critical.iter().all(|s| s.contains(" m apart, collision in ")), "{critical:?}");

    // Nothing is fetched from elsewhere: the page works offline (the one
    // URL in the script is the SVG namespace, which is never fetched).
    for page in ["/", "/page.js", "/page.css"] {
        let (code, body) = agent.http(page).expect(page);
        assert_eq!(code, 200, "{page}");
        let outside = body.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !outside.contains("http://") && !outside.contains("https://") && !outside.contains("\"//"),
            "{page} links outside"
        );
    }
    agent.stop().expect("stop");
}
