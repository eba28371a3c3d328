//! The admin API of hot swap: swap a running tenant to another component, or roll back to the
//! previous one, over HTTP. Mounted by whoever owns the tenants (`Admin::router`, under
//! `/admin`); authenticated by a bearer token read from a file (401 without it or with a wrong
//! one, compared in constant time), as the multi-tenant issue's admin API describes.
//!
//! - `POST /admin/tenants/{name}/swap` with `{"component": "/path/to.wasm"}`: loads the component
//!   (the runtime's size limit and WIT check apply), swaps in the background
//!   ([`TenantHandle::hot_swap`]) and answers the [`SwapReport`] as JSON; a refusal is 409 with
//!   `{"reason": ..., "error": ...}` and the tenant keeps its current component.
//! - `POST /admin/tenants/{name}/rollback`: swaps back to the component that ran before the last
//!   successful swap (409 if there is none).
//! - `GET /admin/tenants`: each registered tenant's component hash, swaps and refusals.

use crate::driver::{EngineDriver, WasmEngine};
use crate::tenant::{EngineFactory, SwapError, SwapReport, TenantHandle};
use crate::wasm::{EngineComponent, Runtime};
use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The largest token file read (a token is a line of text).
const MAX_TOKEN_BYTES: u64 = 4096;

/// One tenant the admin API may swap.
struct Entry {
    tenant: Arc<TenantHandle>,
    current: EngineComponent,
    previous: Option<EngineComponent>,
    /// One admin swap of a tenant at a time.
    busy: bool,
}

/// The admin API's state: the token, the runtime components load into, the tenants.
#[derive(Clone)]
pub struct Admin {
    token: Arc<Vec<u8>>,
    runtime: Runtime,
    tenants: Arc<Mutex<BTreeMap<String, Entry>>>,
}

#[derive(serde::Deserialize)]
struct SwapRequest {
    component: std::path::PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Equal in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn factory_of(component: &EngineComponent) -> EngineFactory {
    let component = component.clone();
    Arc::new(move |ids| Ok(Box::new(WasmEngine::new(&component, ids)?) as Box<dyn EngineDriver>))
}

fn json_error(status: StatusCode, reason: &str, error: &str) -> Response {
    (status, Json(serde_json::json!({ "reason": reason, "error": error }))).into_response()
}

fn report_json(report: &SwapReport, component: &EngineComponent) -> serde_json::Value {
    serde_json::json!({
        "component_sha256": component.sha256,
        "pause_ms": report.pause.as_secs_f64() * 1e3,
        "total_ms": report.total.as_secs_f64() * 1e3,
        "snapshot_bytes": report.snapshot_bytes,
        "replayed_in_background": report.replayed_in_background,
        "replayed_in_pause": report.replayed_in_pause,
    })
}

impl Admin {
    /// Reads the token from `token_file` (its first line, trimmed; an empty one is refused).
    pub fn new(token_file: &std::path::Path, runtime: Runtime) -> Result<Admin> {
        let size = std::fs::metadata(token_file).with_context(|| format!("reading the admin token {}", token_file.display()))?.len();
        if size > MAX_TOKEN_BYTES {
            anyhow::bail!("the admin token file {} is {size} bytes, more than {MAX_TOKEN_BYTES}", token_file.display());
        }
        let text = std::fs::read_to_string(token_file).with_context(|| format!("reading the admin token {}", token_file.display()))?;
        let token = text.lines().next().unwrap_or_default().trim().as_bytes().to_vec();
        if token.is_empty() {
            anyhow::bail!("the admin token file {} is empty", token_file.display());
        }
        Ok(Admin { token: Arc::new(token), runtime, tenants: Arc::default() })
    }

    /// Lets the admin API swap `tenant`, which runs `component`.
    pub fn register(&self, tenant: Arc<TenantHandle>, component: EngineComponent) {
        let name = tenant.name().to_string();
        lock(&self.tenants).insert(name, Entry { tenant, current: component, previous: None, busy: false });
    }

    /// The routes, to mount at the root of an HTTP server.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/admin/tenants", get(list))
            .route("/admin/tenants/{name}/swap", post(swap))
            .route("/admin/tenants/{name}/rollback", post(rollback))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|t| constant_time_eq(t.trim().as_bytes(), &self.token))
    }

    /// Swaps `name` to `component`; on success the old component becomes the rollback target.
    async fn swap_to(&self, name: &str, component: EngineComponent) -> Response {
        let tenant = {
            let mut tenants = lock(&self.tenants);
            let Some(entry) = tenants.get_mut(name) else {
                return json_error(StatusCode::NOT_FOUND, "unknown_tenant", &format!("no tenant {name}"));
            };
            if entry.busy {
                return json_error(StatusCode::CONFLICT, SwapError::Busy.reason(), &SwapError::Busy.to_string());
            }
            entry.busy = true;
            entry.tenant.clone()
        };
        let result = tenant.hot_swap(factory_of(&component)).await;
        let mut tenants = lock(&self.tenants);
        let Some(entry) = tenants.get_mut(name) else {
            return json_error(StatusCode::NOT_FOUND, "unknown_tenant", &format!("tenant {name} was removed during the swap"));
        };
        entry.busy = false;
        match result {
            Ok(report) => {
                let body = report_json(&report, &component);
                entry.previous = Some(std::mem::replace(&mut entry.current, component));
                tracing::info!(tenant = %name, component = %entry.current.sha256, "admin swap done");
                (StatusCode::OK, Json(body)).into_response()
            }
            Err(e) => json_error(StatusCode::CONFLICT, e.reason(), &e.to_string()),
        }
    }
}

async fn list(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let tenants = lock(&admin.tenants);
    let rows: Vec<serde_json::Value> = tenants
        .iter()
        .map(|(name, e)| {
            let status = e.tenant.status();
            serde_json::json!({
                "name": name,
                "component_sha256": e.current.sha256,
                "rollback_to": e.previous.as_ref().map(|p| p.sha256.clone()),
                "swaps": status.swaps,
                "swaps_refused": status.swaps_refused,
                "last_swap_error": status.last_swap_error,
            })
        })
        .collect();
    Json(rows).into_response()
}

async fn swap(State(admin): State<Admin>, Path(name): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let request: SwapRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &format!("expected {{\"component\": PATH}}: {e}")),
    };
    let runtime = admin.runtime.clone();
    let path = request.component.clone();
    let loaded = tokio::task::spawn_blocking(move || runtime.load_file(&path)).await;
    let component = match loaded {
        Ok(Ok(component)) => component,
        Ok(Err(e)) => return json_error(StatusCode::CONFLICT, SwapError::Build(String::new()).reason(), &format!("{e:#}")),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "build", &format!("loading the component failed: {e}")),
    };
    admin.swap_to(&name, component).await
}

async fn rollback(State(admin): State<Admin>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let previous = lock(&admin.tenants).get(&name).map(|e| e.previous.clone());
    match previous {
        None => json_error(StatusCode::NOT_FOUND, "unknown_tenant", &format!("no tenant {name}")),
        Some(None) => json_error(StatusCode::CONFLICT, "no_previous", &format!("tenant {name} has no previous component to roll back to")),
        Some(Some(component)) => admin.swap_to(&name, component).await,
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
