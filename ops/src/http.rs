//! The local HTTP side of `serve`: the JSON API the CLI uses (bearer token),
//! artifact downloads for gateways (`GET /artifacts/sha256/<hex>`, `Range`
//! for resume; packages are signed, so no token), and the fleet page (`/`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::artifacts::{parse_range, Artifacts, ByteRange};
use crate::center::{CenterError, CenterHandle, CountersSnapshot, SharedStore};
use crate::desired::{wave_progress, WaveProgress};
use crate::model::{Gateway, GatewayStatus, Phase, Plan, RolloutState};

pub struct ApiState {
    pub store: SharedStore,
    pub center: CenterHandle,
    pub artifacts: Artifacts,
    pub trust_dir: PathBuf,
    pub token: String,
    /// Mosquitto password file `gateway add` writes to, if any.
    pub gateway_password_file: Option<PathBuf>,
    /// The operations center's own MQTT user (no gateway may take it).
    pub ops_user: String,
}

type Shared = Arc<ApiState>;
type ApiResult = Result<Response, ApiError>;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl From<CenterError> for ApiError {
    fn from(e: CenterError) -> Self {
        match e {
            CenterError::Refused(m) => ApiError(StatusCode::CONFLICT, m),
            CenterError::Stopped | CenterError::Standby { .. } => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => internal(other),
        }
    }
}

/// Writes go to the leading replica only (503 naming the leader on a
/// standby): a gateway's credentials land in the leader's broker password
/// file and a package in its artifacts folder, and rollout commands are the
/// leader's to act on. Reads answer on every replica, from the store.
fn leader_only(s: &ApiState) -> Result<(), ApiError> {
    if s.center.role.leading() {
        return Ok(());
    }
    Err(CenterError::Standby { leader: s.center.role.leader() }.into())
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/artifacts/sha256/{hex}", get(artifact))
        .route("/api/fleet", get(fleet))
        .route("/api/gateways", get(gateways).post(add_gateway))
        .route("/api/packages", get(packages).post(add_package))
        .route("/api/rollouts", get(rollouts).post(start_rollout))
        .route("/api/rollouts/{id}", get(rollout))
        .route("/api/rollouts/{id}/pause", post(pause))
        .route("/api/rollouts/{id}/resume", post(resume))
        .route("/api/rollouts/{id}/abort", post(abort))
        .layer(DefaultBodyLimit::max(outpost_package::MAX_PACKAGE_BYTES as usize))
        .with_state(state)
}

/// Checks the bearer token; returns the operator's name for the audit
/// (`X-Outpost-Operator`, else `operator`).
fn auth(s: &ApiState, h: &HeaderMap) -> Result<String, ApiError> {
    let given = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        // Length and bytes compared without an early exit.
        g.len() == s.token.len() && g.bytes().zip(s.token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if !ok {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (http.token_file)".into()));
    }
    let who = h.get("x-outpost-operator").and_then(|v| v.to_str().ok()).unwrap_or("operator");
    let who: String = who.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    Ok(if who.is_empty() { "operator".into() } else { who })
}

async fn page() -> Html<&'static str> {
    Html(include_str!("fleet_page.html"))
}

async fn artifact(State(s): State<Shared>, Path(hex): Path<String>, h: HeaderMap) -> ApiResult {
    let path =
        s.artifacts.path_of(&hex).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no artifact {hex}")))?;
    let bytes = tokio::fs::read(&path).await.map_err(internal)?;
    let len = bytes.len() as u64;
    let range = h.get(header::RANGE).and_then(|v| v.to_str().ok());
    let common = [(header::ACCEPT_RANGES, "bytes".to_string()), (header::ETAG, format!("\"{hex}\""))];
    Ok(match parse_range(range, len) {
        ByteRange::Full => (StatusCode::OK, common, bytes).into_response(),
        ByteRange::Part { start, end } => {
            let body = bytes[start as usize..=end as usize].to_vec();
            let cr = (header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, common, [cr], body).into_response()
        }
        ByteRange::Unsatisfiable => {
            (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))]).into_response()
        }
    })
}

/// One rollout in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub id: String,
    pub service: String,
    pub version: String,
    pub phase: String,
    pub reason: Option<String>,
    pub current_wave: usize,
    pub waves: usize,
    pub gateways: usize,
    pub created_ms: u64,
}

/// One rollout in detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub summary: RolloutSummary,
    pub waves: Vec<WaveProgress>,
    /// gateway -> why it failed.
    pub failures: BTreeMap<String, String>,
}

pub fn summary(r: &RolloutState) -> RolloutSummary {
    let (phase, reason) = match &r.phase {
        Phase::Running => ("running", None),
        Phase::Paused => ("paused", None),
        Phase::Succeeded => ("succeeded", None),
        Phase::Aborted(w) => ("aborted", Some(w.clone())),
        Phase::RolledBack(w) => ("rolled_back", Some(w.clone())),
    };
    RolloutSummary {
        id: r.plan.id.clone(),
        service: r.plan.service.clone(),
        version: r.plan.version.clone(),
        phase: phase.to_string(),
        reason,
        current_wave: r.current_wave,
        waves: r.waves.len(),
        gateways: r.gateways.len(),
        created_ms: r.created_ms,
    }
}

pub fn view(r: &RolloutState) -> RolloutView {
    let failures = r
        .gateways
        .iter()
        .filter_map(|(id, g)| match (&g.status, &g.failure) {
            (GatewayStatus::Failed(why), _) => Some((id.clone(), why.clone())),
            (_, Some(why)) => Some((id.clone(), why.clone())),
            _ => None,
        })
        .collect();
    RolloutView { summary: summary(r), waves: wave_progress(r), failures }
}

/// What the fleet page and `outpost-ops gateways` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    pub gateways: Vec<Gateway>,
    /// site -> service -> version -> gateways.
    pub versions: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>>,
    pub rollouts: Vec<RolloutView>,
    pub counters: CountersSnapshot,
    #[serde(default)]
    pub replica: ReplicaView,
}

/// This replica and the lease holder it last saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaView {
    pub id: String,
    pub leading: bool,
    pub leader: Option<String>,
}

async fn fleet(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    auth(&s, &h)?;
    let gateways = s.store.gateways().map_err(internal)?;
    let mut versions: BTreeMap<String, BTreeMap<String, BTreeMap<String, usize>>> = BTreeMap::new();
    for g in &gateways {
        for (svc, v) in &g.services {
            *versions
                .entry(g.site.clone())
                .or_default()
                .entry(svc.clone())
                .or_default()
                .entry(v.clone())
                .or_default() += 1;
        }
    }
    let rollouts = s.store.rollouts().map_err(internal)?.iter().filter(|r| r.phase.is_active()).map(view).collect();
    let role = &s.center.role;
    let replica = ReplicaView { id: role.replica().to_string(), leading: role.leading(), leader: role.leader() };
    Ok(Json(FleetView { gateways, versions, rollouts, counters: s.center.counters.snapshot(), replica })
        .into_response())
}

async fn gateways(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    auth(&s, &h)?;
    Ok(Json(s.store.gateways().map_err(internal)?).into_response())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGateway {
    pub id: String,
    pub site: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A new gateway's MQTT login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub gateway: String,
    pub user: String,
    pub password: String,
    /// Whether the password was written to the broker's password file.
    pub password_file: Option<PathBuf>,
}

/// 24 random bytes, hex.
pub fn new_password() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 24];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// `mosquitto_passwd -b [-c] FILE user password`.
pub fn mosquitto_passwd(file: &std::path::Path, user: &str, password: &str) -> Result<(), String> {
    let mut cmd = std::process::Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .output()
        .map_err(|e| format!("cannot run mosquitto_passwd (cargo xtask setup installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!("mosquitto_passwd failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

async fn add_gateway(State(s): State<Shared>, h: HeaderMap, Json(n): Json<NewGateway>) -> ApiResult {
    auth(&s, &h)?;
    leader_only(&s)?;
    let mut problems = Vec::new();
    if !outpost_fleet::topic::valid_gateway_id(&n.id) {
        problems.push(format!("gateway id `{}` is not 1-64 of [A-Za-z0-9._-]", n.id));
    }
    if n.id == s.ops_user {
        problems.push(format!("gateway id `{}` is the operations center's own MQTT user", n.id));
    }
    if n.site.trim().is_empty() {
        problems.push("site is empty".into());
    }
    if n.tags.iter().any(|t| t.trim().is_empty()) {
        problems.push("a tag is empty".into());
    }
    if !problems.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, problems.join("; ")));
    }
    if s.store.gateway(&n.id).map_err(internal)?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("gateway `{}` is already registered", n.id)));
    }
    let password = new_password();
    if let Some(file) = s.gateway_password_file.clone() {
        let (user, pass) = (n.id.clone(), password.clone());
        tokio::task::spawn_blocking(move || mosquitto_passwd(&file, &user, &pass))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    }
    let mut g = Gateway::new(n.id.clone(), n.site.clone());
    g.tags.extend(n.tags.iter().cloned());
    s.store.put_gateway(&g).map_err(internal)?;
    let creds =
        Credentials { gateway: n.id.clone(), user: n.id, password, password_file: s.gateway_password_file.clone() };
    Ok((StatusCode::CREATED, Json(creds)).into_response())
}

async fn packages(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    auth(&s, &h)?;
    Ok(Json(s.store.packages().map_err(internal)?).into_response())
}

async fn add_package(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> ApiResult {
    auth(&s, &h)?;
    leader_only(&s)?;
    let name = h.get("x-package-name").and_then(|v| v.to_str().ok()).unwrap_or("upload.opkg").to_string();
    let trust_dir = s.trust_dir.clone();
    let arts = s.artifacts.clone();
    let now = crate::rollout::Clock::now_ms(&crate::rollout::SystemClock);
    let rec = tokio::task::spawn_blocking(move || {
        let trust = outpost_package::TrustStore::load(&trust_dir).map_err(|e| e.to_string())?;
        arts.add(&name, &body, &trust, now).map_err(|e| e.to_string())
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let existing = s.store.packages().map_err(internal)?;
    if let Some(old) = existing.iter().find(|p| p.service == rec.service && p.version == rec.version) {
        if old.digest != rec.digest {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "{} {} is already catalogued with digest {}; a version is never replaced, publish a new one",
                    rec.service, rec.version, old.digest
                ),
            ));
        }
        return Ok(Json(old.clone()).into_response());
    }
    s.store.put_package(&rec).map_err(internal)?;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

async fn rollouts(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    auth(&s, &h)?;
    let all: Vec<RolloutSummary> = s.store.rollouts().map_err(internal)?.iter().map(summary).collect();
    Ok(Json(all).into_response())
}

async fn rollout(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    auth(&s, &h)?;
    match s.store.rollout(&id).map_err(internal)? {
        Some(r) => Ok(Json(view(&r)).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no rollout `{id}`"))),
    }
}

async fn start_rollout(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> ApiResult {
    let actor = auth(&s, &h)?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError(StatusCode::BAD_REQUEST, "plan is not UTF-8".into()))?;
    let plan = Plan::from_json(text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = plan.id.clone();
    s.center.start(plan, &actor).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

async fn pause(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let actor = auth(&s, &h)?;
    s.center.pause(&id, &actor).await?;
    Ok(Json(serde_json::json!({ "id": id, "paused": true })).into_response())
}

async fn resume(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let actor = auth(&s, &h)?;
    s.center.resume(&id, &actor).await?;
    Ok(Json(serde_json::json!({ "id": id, "resumed": true })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    reason: String,
}

async fn abort(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let actor = auth(&s, &h)?;
    let b: AbortBody = serde_json::from_slice(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if b.reason.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "an abort needs a reason".into()));
    }
    s.center.abort(&id, &actor, &b.reason).await?;
    Ok(Json(serde_json::json!({ "id": id, "aborted": true })).into_response())
}
