//! The admin API of the multi-tenant host ([`crate::serve::TenantHost`]), mounted beside
//! `/metrics` on the host's loopback listener. Every route needs `Authorization: Bearer TOKEN`
//! with the token read from the `[host]` table's `admin_token_file` (401 without it or with a
//! wrong one; compared in constant time). Answers are JSON; a refusal is
//! `{"reason": ..., "error": ...}` with 404 (no such tenant), 409 (not possible in the tenant's
//! phase, or a swap refused: the tenant keeps its component) or 400 (a bad request or an invalid
//! configuration, which changes nothing).
//!
//! - `GET /admin/tenants`: every tenant with its phase, reason, component, restarts, swaps.
//! - `GET /admin/tenants/{name}`, `GET /admin/tenants/{name}/quarantined`.
//! - `POST /admin/tenants/{name}/pause|resume|restart`.
//! - `POST /admin/tenants/{name}/swap` with `{"component": "/path/to.wasm"}`: a hot swap
//!   ([`crate::tenant::TenantHandle::hot_swap`]), refused if the new component's calls diverge
//!   from the running one's; with `"allow_divergence": true` it swaps anyway and the answer's
//!   `divergence` says where they differed. `POST /admin/tenants/{name}/rollback` swaps back to
//!   the component that ran before the last successful swap.
//! - `POST /admin/reload`: re-reads the configuration file, as SIGHUP does.
//!
//! `difftracker admin --url URL --token-file FILE ...` is its client.

use crate::serve::{TenantError, TenantHost};
use crate::tenant::{SwapOptions, SwapReport};
use crate::wasm::{EngineComponent, Runtime, SandboxLimits};
use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// The largest token file read (a token is a line of text).
const MAX_TOKEN_BYTES: u64 = 4096;
/// Largest request body the admin API reads.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The admin API's state: the token and the host.
#[derive(Clone)]
pub struct Admin {
    token: Arc<Vec<u8>>,
    host: TenantHost,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapRequest {
    component: std::path::PathBuf,
    /// Swap even if the new component's calls diverge from the running one's.
    #[serde(default)]
    allow_divergence: bool,
}

/// Whether the request carries `Authorization: Bearer <token>`.
fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token))
}

/// Equal in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_error(status: StatusCode, reason: &str, error: &str) -> Response {
    (status, Json(serde_json::json!({ "reason": reason, "error": error }))).into_response()
}

fn tenant_error(e: TenantError) -> Response {
    match &e {
        TenantError::Unknown(_) => json_error(StatusCode::NOT_FOUND, "unknown_tenant", &e.to_string()),
        TenantError::WrongPhase { .. } => json_error(StatusCode::CONFLICT, "wrong_phase", &e.to_string()),
        TenantError::Swap(s) => json_error(StatusCode::CONFLICT, s.reason(), &e.to_string()),
    }
}

fn report_json(report: &SwapReport, sha256: &str) -> serde_json::Value {
    serde_json::json!({
        "component_sha256": sha256,
        "pause_ms": report.pause.as_secs_f64() * 1e3,
        "total_ms": report.total.as_secs_f64() * 1e3,
        "snapshot_bytes": report.snapshot_bytes,
        "replayed_in_background": report.replayed_in_background,
        "replayed_in_pause": report.replayed_in_pause,
        "divergence": report.divergence,
    })
}

/// Reads a token file: its first line, trimmed; an empty or oversized one is refused. A file
/// that does not exist is created with a fresh random token, readable by its owner only.
pub fn load_or_create_token(path: &std::path::Path) -> Result<Vec<u8>> {
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 24];
        getrandom(&mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating the admin token file {}", path.display()))?;
        writeln!(file, "{token}").with_context(|| format!("writing the admin token file {}", path.display()))?;
        tracing::info!(path = %path.display(), "created an admin token file");
    }
    let size = std::fs::metadata(path).with_context(|| format!("reading the admin token {}", path.display()))?.len();
    if size > MAX_TOKEN_BYTES {
        anyhow::bail!("the admin token file {} is {size} bytes, more than {MAX_TOKEN_BYTES}", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the admin token {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().as_bytes().to_vec();
    if token.is_empty() {
        anyhow::bail!("the admin token file {} is empty", path.display());
    }
    Ok(token)
}

/// Random bytes from the kernel.
fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).context("reading /dev/urandom for the admin token")
}

impl Admin {
    /// The admin API of `host`, guarded by the token in `token_file` (created when missing).
    pub fn new(token_file: &std::path::Path, host: TenantHost) -> Result<Admin> {
        Ok(Admin { token: Arc::new(load_or_create_token(token_file)?), host })
    }

    /// The routes, to mount at the root of an HTTP server.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/admin/tenants", get(list))
            .route("/admin/tenants/{name}", get(show))
            .route("/admin/tenants/{name}/quarantined", get(quarantined))
            .route("/admin/tenants/{name}/{action}", post(act))
            .route("/admin/reload", post(reload))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_matches(headers, &self.token)
    }
}

async fn list(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(admin.host.tenants().await).into_response()
}

async fn show(State(admin): State<Admin>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match admin.host.tenant(&name).await {
        Some(view) => Json(view).into_response(),
        None => tenant_error(TenantError::Unknown(name)),
    }
}

async fn quarantined(State(admin): State<Admin>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match admin.host.quarantined(&name).await {
        Ok(inputs) => {
            let rows: Vec<serde_json::Value> = inputs
                .iter()
                .map(|q| serde_json::json!({ "tick": q.tick, "at_ms": q.at_ms, "input": q.summary, "reason": q.reason }))
                .collect();
            Json(rows).into_response()
        }
        Err(e) => tenant_error(e),
    }
}

async fn act(
    State(admin): State<Admin>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let host = &admin.host;
    let result = match action.as_str() {
        "pause" => host.pause(&name).await.map(|v| Json(v).into_response()),
        "resume" => host.resume(&name).await.map(|v| Json(v).into_response()),
        "restart" => host.restart(&name).await.map(|v| Json(v).into_response()),
        "rollback" => host.rollback(&name).await.map(|(r, sha)| Json(report_json(&r, &sha)).into_response()),
        "swap" => {
            let request: SwapRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        &format!("expected {{\"component\": PATH, \"allow_divergence\": BOOL}}: {e}"),
                    )
                }
            };
            let options = SwapOptions { allow_divergence: request.allow_divergence };
            host.swap(&name, &request.component, options).await.map(|(r, sha)| Json(report_json(&r, &sha)).into_response())
        }
        other => {
            return json_error(
                StatusCode::NOT_FOUND,
                "unknown_action",
                &format!("no action {other:?}: pause, resume, restart, swap or rollback"),
            )
        }
    };
    result.unwrap_or_else(tenant_error)
}

async fn reload(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match admin.host.reload_file().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration keeps running");
            json_error(StatusCode::BAD_REQUEST, "invalid_configuration", &e)
        }
    }
}

// ---------------------------------------------------------------- one controller

/// The same admin API for one controller (the main job, `difftracker live --admin-token-file`):
/// the same token rule, routes and answers for the tenant it runs, limited to what a single
/// controller has. `GET /admin/tenants` lists it, `GET /admin/tenants/{name}` shows it, and
/// `swap` and `rollback` work as on `serve`; the rest (pause, resume, restart, quarantined,
/// reload) is `serve`'s and answers 404 `unknown_action`.
#[derive(Clone)]
pub struct ControllerAdmin {
    token: Arc<Vec<u8>>,
    tenant: String,
    swapper: crate::controller::Swapper,
    runtime: Runtime,
    limits: SandboxLimits,
    /// The component running (none for the native engine) and the one before the last swap.
    components: Arc<tokio::sync::Mutex<(Option<EngineComponent>, Option<EngineComponent>)>>,
}

impl ControllerAdmin {
    /// The admin API of the controller behind `swapper`, which runs `tenant` with `running` (the
    /// bundled component, or none for the native engine) in sandboxes of `limits`.
    pub fn new(
        token_file: &std::path::Path,
        tenant: &str,
        swapper: crate::controller::Swapper,
        limits: SandboxLimits,
        running: Option<EngineComponent>,
    ) -> Result<ControllerAdmin> {
        Ok(ControllerAdmin {
            token: Arc::new(load_or_create_token(token_file)?),
            tenant: tenant.to_string(),
            swapper,
            runtime: Runtime::with_limits(&limits)?,
            limits,
            components: Arc::new(tokio::sync::Mutex::new((running, None))),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/admin/tenants", get(controller_list))
            .route("/admin/tenants/{name}", get(controller_show))
            .route("/admin/tenants/{name}/{action}", post(controller_act))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_matches(headers, &self.token)
    }

    async fn view(&self) -> serde_json::Value {
        let components = self.components.lock().await;
        serde_json::json!({
            "name": self.tenant,
            "component_sha256": components.0.as_ref().map(|c| c.sha256.clone()),
            "rollback_to": components.1.as_ref().map(|c| c.sha256.clone()),
        })
    }

    /// Swaps to `component`; on success it runs and the one before becomes the rollback target
    /// (a rollback leaves none).
    async fn swap_to(&self, component: EngineComponent, options: SwapOptions, rollback: bool) -> Response {
        let mut components = self.components.lock().await;
        match self.swapper.hot_swap(crate::serve::factory_of(&component, &self.limits), options).await {
            Ok(report) => {
                let sha = component.sha256.clone();
                tracing::info!(tenant = %self.tenant, component = %sha, rollback, diverged = report.divergence.is_some(), "swapped");
                let old = components.0.replace(component);
                components.1 = if rollback { None } else { old };
                Json(report_json(&report, &sha)).into_response()
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, reason = e.reason(), error = %e, "swap refused; the tenant keeps its component");
                tenant_error(TenantError::Swap(e))
            }
        }
    }
}

async fn controller_list(State(admin): State<ControllerAdmin>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(vec![admin.view().await]).into_response()
}

async fn controller_show(State(admin): State<ControllerAdmin>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if name != admin.tenant {
        return tenant_error(TenantError::Unknown(name));
    }
    Json(admin.view().await).into_response()
}

async fn controller_act(
    State(admin): State<ControllerAdmin>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if name != admin.tenant {
        return tenant_error(TenantError::Unknown(name));
    }
    match action.as_str() {
        "swap" => {
            let request: SwapRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("expected {{\"component\": PATH}}: {e}")),
            };
            let (runtime, path) = (admin.runtime.clone(), request.component.clone());
            let loaded = tokio::task::spawn_blocking(move || runtime.load_file(&path)).await.map_err(|e| anyhow::anyhow!("{e}"));
            match loaded.and_then(|r| r) {
                Ok(component) => admin.swap_to(component, SwapOptions { allow_divergence: request.allow_divergence }, false).await,
                Err(e) => {
                    tracing::warn!(tenant = %admin.tenant, error = %format!("{e:#}"), "swap refused: the component does not load");
                    tenant_error(TenantError::Swap(crate::tenant::SwapError::Build(format!("{e:#}"))))
                }
            }
        }
        "rollback" => {
            let previous = admin.components.lock().await.1.clone();
            match previous {
                Some(previous) => admin.swap_to(previous, SwapOptions::default(), true).await,
                None => json_error(StatusCode::CONFLICT, "wrong_phase", "nothing to roll back to: no swap since the last rollback"),
            }
        }
        other => json_error(
            StatusCode::NOT_FOUND,
            "unknown_action",
            &format!("no action {other:?} on the main job: swap or rollback (pause, resume, restart and reload are `serve`'s)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn a_missing_token_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("difftracker-admin-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 48, "24 random bytes in hex");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), first, "an existing file is read, not replaced");
        std::fs::write(&path, "\n").unwrap();
        assert!(load_or_create_token(&path).unwrap_err().to_string().contains("is empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
