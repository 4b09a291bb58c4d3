//! Local HTTP endpoints: Prometheus `/metrics`, JSON `/status`, a status
//! page at `/` for technicians (works offline), and `/healthz`.

use crate::status::{AgentStatus, StatusBoard};
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;

type AppState = StatusBoard;

/// Binds `addr` and serves in the background.
pub async fn serve(addr: SocketAddr, board: StatusBoard) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status", get(status_json))
        .route("/healthz", get(healthz))
        .route("/", get(status_page))
        .with_state(board);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and status at http://{addr}/");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics().encode())
}

fn snapshot(s: &AppState) -> Option<AgentStatus> {
    s.snapshot()
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn status_page(State(s): State<AppState>) -> Html<String> {
    let Some(st) = snapshot(&s) else { return Html("status unavailable".into()) };
    let mut rows = String::new();
    for svc in &st.services {
        let health = if svc.running == svc.instances { "ok" } else { "degraded" };
        rows.push_str(&format!(
            "<tr class=\"{health}\"><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}s</td><td><code>{}</code></td></tr>",
            esc(&svc.name), esc(&svc.version), svc.running, svc.instances, svc.queued, svc.restarts, svc.uptime_s, esc(&svc.digest[..12.min(svc.digest.len())])
        ));
    }
    for (name, why) in &st.rejected {
        rows.push_str(&format!(
            "<tr class=\"bad\"><td>{}</td><td colspan=6>not loaded: {}</td></tr>",
            esc(name),
            esc(why)
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>Outpost {gw}</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left}}tr.ok td:first-child{{border-left:4px solid #2a2}}\
tr.degraded td:first-child,tr.bad td:first-child{{border-left:4px solid #c22}}</style></head><body>\
<h1>Outpost gateway {gw}</h1><p>site <b>{site}</b> &middot; state <b>{state}</b> &middot; broker {broker} ({conn}) &middot; up {up}s</p>\
<table><tr><th>service</th><th>version</th><th>instances</th><th>queued</th><th>restarts</th><th>uptime</th><th>digest</th></tr>{rows}</table>\
<p><a href=/metrics>metrics</a> &middot; <a href=/status>status JSON</a></p></body></html>",
        gw = esc(&st.gateway),
        site = esc(&st.site),
        state = st.state,
        broker = esc(&st.broker),
        conn = if st.mqtt_connected { "connected" } else { "disconnected" },
        up = st.uptime_s,
    ))
}
