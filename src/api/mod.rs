//! The REST API: the seed's eight endpoints with its envelope and field names, the maintainers'
//! extensions, bearer-token security and the directory allow-list. Handlers only call handles.
//!
//! Every route is listed once in [`routes`], which builds the router and is checked against the
//! OpenAPI document by a test.

mod error;
mod openapi;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use serde_json::{json, Value};

pub use error::ApiError;
use wire::ok;
pub use wire::TaskCache;

use crate::config::{Probe, ServiceInfo, Settings};
use crate::store::{ConfigStore, StoreError};
use crate::supervisor::{Supervisor, SupervisorError, Verb};

/// The bearer tokens: `write` may do everything, `read` only GET requests.
#[derive(Clone, Default)]
pub struct Tokens {
    pub write: Option<String>,
    pub read: Option<String>,
}

impl Tokens {
    /// Reads the token files named in config.yaml. An empty or unreadable file is an error.
    pub fn load(settings: &Settings) -> Result<Tokens, String> {
        let read_one = |p: &Option<PathBuf>, key: &str| -> Result<Option<String>, String> {
            let Some(p) = p else { return Ok(None) };
            let text = std::fs::read_to_string(p).map_err(|e| format!("{key}: cannot read {}: {e}", p.display()))?;
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(format!("{key}: the token in {} must be at least 16 characters", p.display()));
            }
            Ok(Some(token))
        };
        Ok(Tokens {
            write: read_one(&settings.api_token_file, "API_TOKEN_FILE")?,
            read: read_one(&settings.api_read_token_file, "API_READ_TOKEN_FILE")?,
        })
    }

    fn any(&self) -> bool {
        self.write.is_some() || self.read.is_some()
    }
}

/// What the handlers share: handles only.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: ConfigStore,
    pub supervisor: Supervisor,
    pub tokens: Arc<Tokens>,
    pub task_cache: Arc<TaskCache>,
}

/// Every route: method, path, handler. The router and the OpenAPI test both read this list.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/serviceInfo/get", get(service_info_get)),
        (Method::GET, "/serviceInfo/find", get(service_info_find)),
        (Method::POST, "/serviceInfo/set", post(service_info_set)),
        (Method::DELETE, "/serviceInfo/del", delete(service_info_del)),
        (Method::GET, "/task/get", get(task_get)),
        (Method::GET, "/task/find", get(task_find)),
        (Method::POST, "/task/set", post(task_set)),
        (Method::DELETE, "/task/del", delete(task_del)),
        (Method::POST, "/task/start", post(task_start)),
        (Method::POST, "/task/stop", post(task_stop)),
        (Method::POST, "/task/restart", post(task_restart)),
        (Method::GET, "/task/logs", get(task_logs)),
        (Method::POST, "/reload", post(reload)),
        (Method::GET, "/health", get(health)),
        (Method::GET, "/openapi.json", get(openapi)),
        (Method::GET, "/", get(console)),
    ]
}

/// The whole API as a router, independent of any listener (tests drive it in-process).
pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    for (_, path, handler) in routes() {
        r = r.route(path, handler);
    }
    let timeout = state.settings.api_timeout;
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(move |req: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "the request took too long; it may still complete")
                        .into_response()
                }
            }
        }))
        .with_state(state)
}

/// Authentication (bearer token, constant-time compare) and the audit log of mutating calls.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_else(|| "-".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Liveness, and the console's page itself (it holds no data and asks for the token).
    let open = path == "/health" || path == "/";
    if state.tokens.any() && !open {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let is = |t: &Option<String>| matches!((t, given), (Some(t), Some(g)) if constant_time_eq(t.as_bytes(), g.as_bytes()));
        if is(&state.tokens.write) {
        } else if is(&state.tokens.read) {
            if method != Method::GET {
                tracing::warn!(%peer, %method, %path, "refused: read-only token on a mutating call");
                return ApiError::new(StatusCode::FORBIDDEN, "this token is read-only").into_response();
            }
        } else {
            tracing::warn!(%peer, %method, %path, "refused: missing or wrong token");
            let msg = if given.is_some() { "wrong token" } else { "missing Authorization: Bearer token" };
            return ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
        }
    }
    let mutating = method != Method::GET;
    let query = req.uri().query().unwrap_or_default().to_string();
    let resp = next.run(req).await;
    if mutating {
        tracing::info!(%peer, %method, %path, query = %query, status = resp.status().as_u16(), "api call");
    }
    resp
}

/// Compares without an early exit, so the time taken does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn query(raw: Option<String>) -> HashMap<String, String> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `name` query parameter, checked.
fn name_param(raw: Option<String>) -> Result<String, ApiError> {
    let q = query(raw);
    let name = q.get("name").ok_or_else(|| ApiError::bad("name", "missing query parameter ?name="))?;
    crate::config::service::check_name(name).map_err(|r| ApiError::bad("name", r))?;
    Ok(name.clone())
}

/// The request body as a service object: size-limited, every problem named.
async fn service_body(state: &AppState, body: Body) -> Result<ServiceInfo, ApiError> {
    let bytes = to_bytes(body, state.settings.api_body_limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: larger than the limit of {} bytes (API_BODY_LIMIT)", state.settings.api_body_limit),
        )
    })?;
    let info = ServiceInfo::from_json(&bytes).map_err(|problems| {
        let msg = problems.errors().map(|p| p.to_string()).collect::<Vec<_>>().join("; ");
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    })?;
    check_allowed(&state.settings, &info)?;
    Ok(info)
}

/// Refuses (403) a service that would run anything outside the allowed directories: its script,
/// its program, a CMD check's program; and what cannot be confined (shell checks, loader variables).
pub fn check_allowed(settings: &Settings, info: &ServiceInfo) -> Result<(), ApiError> {
    let allowed: Vec<PathBuf> =
        settings.allowed_dirs.iter().map(|d| real_path(d).unwrap_or_else(|_| d.clone())).collect();
    let mut paths: Vec<(&str, PathBuf)> = Vec::new();
    if !info.is_direct() {
        paths.push(("script.execPath", raw_join(&settings.work_dir, &info.script.exec_path)));
    }
    let program = info.script.program_file_path.trim_start_matches('/');
    paths.push(("script.programFilePath", settings.rootpath.join(program)));
    if info.health_check.is_health_check {
        match info.health_check.probe() {
            Probe::Cmd(argv) => {
                if !argv[0].contains('/') {
                    return Err(ApiError::forbidden(
                        "healthCheck.test",
                        format!("{:?} must be a path under the allowed directories, not a name looked up in PATH", argv[0]),
                    ));
                }
                paths.push(("healthCheck.test", raw_join(&settings.work_dir, &argv[0])));
            }
            Probe::Shell(_) => {
                return Err(ApiError::forbidden(
                    "healthCheck.test",
                    "CMD-SHELL runs arbitrary shell text and cannot be set over the API; use [\"CMD\", program under the allowed directories, …], HTTP or TCP",
                ))
            }
            _ => {}
        }
    }
    if let Some(k) = info.script.env.keys().find(|k| k.starts_with("LD_")) {
        return Err(ApiError::forbidden(
            "script.env",
            format!("{k} would load code from outside the allowed directories"),
        ));
    }
    for (field, p) in paths {
        let real = real_path(&p).map_err(|reason| ApiError::forbidden(field, reason))?;
        if !allowed.iter().any(|a| real.starts_with(a)) {
            let dirs: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
            return Err(ApiError::forbidden(
                field,
                format!(
                    "{} resolves to {}, outside the allowed directories ({})",
                    p.display(),
                    real.display(),
                    dirs.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn raw_join(base: &Path, p: &str) -> PathBuf {
    if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    }
}

/// Where `p` really leads: the longest existing prefix resolved by the kernel (symlinks and `..`),
/// plus the rest, which may not contain `..`.
fn real_path(p: &Path) -> Result<PathBuf, String> {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(real) => {
                let mut out = real;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => {
                let name = existing.file_name().map(|n| n.to_os_string());
                match (name, existing.components().next_back()) {
                    (_, Some(Component::ParentDir)) => {
                        return Err(format!("{} uses '..' in a part that does not exist", p.display()))
                    }
                    (Some(n), _) => {
                        rest.push(n);
                        if !existing.pop() {
                            return Err(format!("{} cannot be resolved", p.display()));
                        }
                    }
                    (None, _) => return Err(format!("{} cannot be resolved", p.display())),
                }
            }
        }
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(name) => ApiError::new(StatusCode::NOT_FOUND, format!("name: no service named {name:?}")),
        other => {
            tracing::error!("{other}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
        }
    }
}

fn supervisor_error(e: SupervisorError) -> ApiError {
    match e {
        SupervisorError::NoTask(name) => ApiError::new(StatusCode::NOT_FOUND, format!("name: no task named {name:?}")),
        SupervisorError::NoService(name) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("name: no service named {name:?}"))
        }
        SupervisorError::Store(e) => store_error(e),
        SupervisorError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "air-nanny is shutting down"),
        SupervisorError::Failed(reason) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, reason),
    }
}

async fn service_info_get(State(s): State<AppState>) -> Response {
    ok(s.store.list().await)
}

async fn service_info_find(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    let info = s.store.get(&name).await.ok_or_else(|| ApiError::not_found(&name))?;
    Ok(ok(info))
}

async fn service_info_set(State(s): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let info = service_body(&s, body).await?;
    s.store.upsert(info.clone()).await.map_err(store_error)?;
    Ok(ok(info))
}

async fn service_info_del(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    let old = s.store.delete(&name).await.map_err(store_error)?;
    Ok(ok(old))
}

async fn task_get(State(s): State<AppState>) -> Response {
    s.task_cache.list_response(&s.supervisor.list().await)
}

async fn task_find(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    let t = s.supervisor.get(&name).await.ok_or_else(|| ApiError::no_task(&name))?;
    Ok(s.task_cache.one_response(&t))
}

async fn task_set(State(s): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let info = service_body(&s, body).await?;
    let name = info.name.clone();
    s.supervisor.apply(info).await.map_err(supervisor_error)?;
    task_now(&s, &name).await
}

async fn task_now(s: &AppState, name: &str) -> Result<Response, ApiError> {
    match s.supervisor.get(name).await {
        Some(t) => Ok(s.task_cache.one_response(&t)),
        None => Ok(ok(Value::Null)),
    }
}

async fn task_del(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    s.supervisor.remove(&name).await.map_err(supervisor_error)?;
    Ok(ok(Value::Null))
}

async fn task_verb(s: AppState, q: Option<String>, verb: Verb) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    s.supervisor.control(&name, verb).await.map_err(supervisor_error)?;
    task_now(&s, &name).await
}

async fn task_start(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    task_verb(s, q, Verb::Start).await
}

async fn task_stop(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    task_verb(s, q, Verb::Stop).await
}

async fn task_restart(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    task_verb(s, q, Verb::Restart).await
}

async fn task_logs(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let lines = match query(q.clone()).get("lines") {
        None => 100,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => return Err(ApiError::bad("lines", format!("{n:?} is not a number of lines from 1 to 10000"))),
        },
    };
    let name = name_param(q)?;
    let log = s.supervisor.log(&name).await.ok_or_else(|| ApiError::not_found(&name))?;
    let text = tokio::task::spawn_blocking(move || log.tail(lines))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "log reader failed"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the log: {e}")))?;
    Ok(ok(json!({ "name": name, "lines": text.lines().collect::<Vec<_>>() })))
}

async fn reload(State(s): State<AppState>) -> Result<Response, ApiError> {
    let summary = s.supervisor.reload().await.map_err(|e| match e {
        SupervisorError::Store(StoreError::Invalid { problems, .. }) => ApiError::new(
            StatusCode::BAD_REQUEST,
            problems.errors().map(|p| p.to_string()).collect::<Vec<_>>().join("; "),
        ),
        other => supervisor_error(other),
    })?;
    Ok(ok(summary))
}

async fn health(State(s): State<AppState>) -> Response {
    ok(json!({ "server": s.settings.server, "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id() }))
}

/// The web console: one self-contained page, embedded in the binary (no CDN, no files to install).
async fn console() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("console.html"),
    )
        .into_response()
}

async fn openapi() -> Response {
    axum::Json(openapi::document()).into_response()
}

#[cfg(test)]
mod tests;
