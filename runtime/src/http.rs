//! Local HTTP endpoints: Prometheus `/metrics`, JSON `/status`, a status
//! page at `/` for technicians, and `/healthz`.
//!
//! The page works offline: its HTML, script and style are compiled into
//! the agent (`status_page/`), and its script polls `/page.json` (the
//! status, each declared KPI with its trend, the latest warnings, alarms
//! and advice, the weight-loading shift reports) every few seconds.

use crate::history::Recent;
use crate::status::{AgentStatus, StatusBoard};
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often each site-wide KPI is sampled for its trend.
pub const TREND_INTERVAL: Duration = Duration::from_secs(60);
/// How often the sampler looks: a KPI's first sample comes this soon
/// after the service first reports it.
const TREND_POLL: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct AppState {
    board: StatusBoard,
    recent: Arc<Recent>,
}

impl AppState {
    fn snapshot(&self) -> Option<AgentStatus> {
        self.board.snapshot()
    }

    fn metrics(&self) -> &Arc<crate::telemetry::Metrics> {
        self.board.metrics()
    }
}

/// Binds `addr` and serves in the background; samples the site-wide KPIs
/// into `recent` every `TREND_INTERVAL` for the page's trends.
pub async fn serve(addr: SocketAddr, board: StatusBoard, recent: Arc<Recent>) -> std::io::Result<()> {
    let state = AppState { board, recent };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status", get(status_json))
        .route("/healthz", get(healthz))
        .route("/page.json", get(page_json))
        .route("/page.js", get(page_js))
        .route("/page.css", get(page_css))
        .route("/", get(status_page))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and status at http://{addr}/");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TREND_POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let site_wide = site_kpis(&state).into_iter().map(|((svc, name), v)| (svc, name, v));
            state.recent.sample_kpis(crate::dispatch::now_ms(), TREND_INTERVAL.as_millis() as u64, site_wide);
        }
    });
    Ok(())
}

/// Site-wide KPI values as `/metrics` has them now.
fn site_kpis(s: &AppState) -> BTreeMap<(String, String), f64> {
    crate::events::kpis_from_metrics(&s.metrics().encode())
        .into_iter()
        .filter(|k| k.subject.is_empty())
        .map(|k| ((k.service, k.name), k.value))
        .collect()
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics().encode())
}

fn snapshot(s: &AppState) -> Option<AgentStatus> {
    s.snapshot()
}

/// A site-wide KPI as the page shows it.
#[derive(Serialize)]
struct PageKpi {
    service: String,
    name: String,
    unit: String,
    better: String,
    description: Option<String>,
    /// As `/metrics` has it now; `None` until the service reports it.
    value: Option<f64>,
    /// `(unix ms, value)`, oldest first, one a `TREND_INTERVAL`.
    trend: Vec<(u64, f64)>,
}

#[derive(Serialize)]
struct Page {
    now_ms: u64,
    trend_interval_s: u64,
    status: Option<AgentStatus>,
    kpis: Vec<PageKpi>,
    /// Per-subject series (trucks, loaders...) per service: in `/metrics`.
    subject_kpis: BTreeMap<String, usize>,
    recent: Vec<crate::history::RecentItem>,
    shifts: Vec<crate::history::ShiftReport>,
}

fn page(s: &AppState) -> Page {
    let status = snapshot(s);
    let all = crate::events::kpis_from_metrics(&s.metrics().encode());
    let mut subject_kpis = BTreeMap::new();
    let mut values = BTreeMap::new();
    for k in all {
        if k.subject.is_empty() {
            values.insert((k.service, k.name), k.value);
        } else {
            *subject_kpis.entry(k.service).or_insert(0) += 1;
        }
    }
    let mut kpis = Vec::new();
    for svc in status.iter().flat_map(|st| &st.services) {
        for d in &svc.kpis {
            let key = (svc.name.clone(), d.name.clone());
            kpis.push(PageKpi {
                value: values.remove(&key),
                trend: s.recent.trend(&svc.name, &d.name),
                service: key.0,
                name: key.1,
                unit: d.unit.clone(),
                better: d.better.clone(),
                description: d.description.clone(),
            });
        }
    }
    // Reported but not declared: shown too, without a unit.
    for ((service, name), value) in values {
        kpis.push(PageKpi {
            trend: s.recent.trend(&service, &name),
            service,
            name,
            unit: String::new(),
            better: String::new(),
            description: None,
            value: Some(value),
        });
    }
    Page {
        now_ms: crate::dispatch::now_ms(),
        trend_interval_s: TREND_INTERVAL.as_secs(),
        status,
        kpis,
        subject_kpis,
        recent: s.recent.items(),
        shifts: s.recent.shifts(),
    }
}

async fn page_json(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")],
        serde_json::to_string(&page(&s)).unwrap_or_default(),
    )
}

async fn page_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("status_page/page.js"))
}

async fn page_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("status_page/page.css"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page, with the gateway and its services already in (read without a
/// script too); `page.js` then redraws all of it from `/page.json`.
async fn status_page(State(s): State<AppState>) -> Html<String> {
    let page = include_str!("status_page/index.html");
    let Some(st) = snapshot(&s) else {
        return Html(page.replace("<!--gateway-->", "").replace("<!--summary-->", "status unavailable"));
    };
    let mut rows = String::new();
    for svc in &st.services {
        let health = if svc.running == svc.instances && svc.instances > 0 { "ok" } else { "degraded" };
        rows.push_str(&format!(
            "<tr class=\"{health}\" data-service=\"{name}\"><td class=\"name\">{name}</td><td class=\"version\">{}</td>\
             <td class=\"health\">{health}</td><td class=\"num instances\">{}/{}</td><td class=\"num queued\">{}</td>\
             <td class=\"num restarts\">{}</td><td class=\"uptime\">{} s</td></tr>",
            esc(&svc.version),
            svc.running,
            svc.instances,
            svc.queued,
            svc.restarts,
            svc.uptime_s,
            name = esc(&svc.name),
        ));
    }
    for (name, why) in &st.rejected {
        rows.push_str(&format!(
            "<tr class=\"bad\" data-service=\"{name}\"><td class=\"name\">{name}</td><td colspan=6>not loaded: {}</td></tr>",
            esc(why),
            name = esc(name),
        ));
    }
    let summary = format!(
        "site <b>{}</b> · state <b>{}</b> · broker {} ({}) · up {} s",
        esc(&st.site),
        st.state,
        esc(&st.broker),
        if st.mqtt_connected { "connected" } else { "DISCONNECTED" },
        st.uptime_s
    );
    Html(
        page.replace("<!--gateway-->", &esc(&st.gateway))
            .replace("<!--summary-->", &summary)
            .replace("<!--services-->", &rows),
    )
}

async fn status_json(State(s): State<AppState>) -> impl IntoResponse {
    let body = snapshot(&s).map(|st| serde_json::to_string_pretty(&st).unwrap_or_default()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// 200 "ok" only when the agent is ready, connected to its broker, every
/// subscription was granted and every instance runs; else 503 with why.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match snapshot(&s) {
        Some(st) if st.healthy() => (axum::http::StatusCode::OK, "ok".to_owned()),
        Some(st) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("degraded\n{}\n", st.problems().join("\n"))),
        None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "degraded\nstatus unavailable\n".to_owned()),
    }
}
