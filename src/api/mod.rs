//! The REST API: the seed's eight endpoints with its envelope and field names, the maintainers'
//! extensions, bearer-token security and the directory allow-list. Handlers only call handles.
//!
//! Every route is listed once in [`routes`], which builds the router and is checked against the
//! OpenAPI document by a test.

mod error;
mod openapi;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use serde_json::{json, Value};

pub use error::ApiError;
use wire::ok;
pub use wire::TaskCache;

use crate::allow::Policy;
use crate::audit::{Audit, Record};
use crate::config::{ServiceInfo, Settings};
use crate::store::{ConfigStore, StoreError};
use crate::supervisor::{Supervisor, SupervisorError, Verb};
use crate::tls::{Peer, TlsState};

/// The bearer tokens: `write` may do everything, `read` only GET and HEAD requests.
#[derive(Clone, Default)]
pub struct Tokens {
    pub write: Option<String>,
    pub read: Option<String>,
}

impl Tokens {
    /// Reads the token files named in config.yaml. An empty, short or unreadable file is an error.
    pub fn load(settings: &Settings) -> Result<Tokens, String> {
        let read_one = |p: &Option<std::path::PathBuf>, key: &str| -> Result<Option<String>, String> {
            p.as_deref().map(crate::config::read_token).transpose().map_err(|e| format!("{key}: {e}"))
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

/// The API's security state, re-read on SIGHUP: the tokens and the TLS configuration.
pub struct Security {
    settings: Arc<Settings>,
    tokens: RwLock<Tokens>,
    pub tls: Option<Arc<TlsState>>,
    refusals: Mutex<RefusalLog>,
}

impl Security {
    pub fn new(settings: Arc<Settings>, tokens: Tokens, tls: Option<Arc<TlsState>>) -> Arc<Security> {
        Arc::new(Security { settings, tokens: RwLock::new(tokens), tls, refusals: Mutex::default() })
    }

    fn tokens(&self) -> Tokens {
        self.tokens.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Re-reads the token files and the TLS files (SIGHUP). What cannot be read is reported and the
    /// old value stays in force; nothing is half-applied.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = Vec::new();
        match Tokens::load(&self.settings) {
            Ok(t) => {
                if let Ok(mut w) = self.tokens.write() {
                    *w = t;
                }
            }
            Err(e) => errors.push(format!("tokens not reloaded: {e}")),
        }
        if let Some(tls) = &self.tls {
            if let Err(e) = tls.reload(None) {
                errors.push(format!("TLS not reloaded: {e}"));
            }
        }
        errors
    }
}

/// Wrong tokens are logged with the peer's address, at most [`REFUSALS_PER_WINDOW`] lines per
/// ten seconds; the rest are counted and summed up in the next window.
#[derive(Default)]
struct RefusalLog {
    window: Option<Instant>,
    logged: u32,
    suppressed: u32,
}

const REFUSALS_PER_WINDOW: u32 = 5;

impl RefusalLog {
    fn note(&mut self, peer: &str, method: &Method, path: &str, why: &str) {
        let now = Instant::now();
        if self.window.is_none_or(|w| now.duration_since(w) > Duration::from_secs(10)) {
            if self.suppressed > 0 {
                tracing::warn!("{} more requests were refused for a missing or wrong token", self.suppressed);
            }
            *self = RefusalLog { window: Some(now), logged: 0, suppressed: 0 };
        }
        if self.logged < REFUSALS_PER_WINDOW {
            self.logged += 1;
            tracing::warn!(%peer, %method, %path, "refused: {why}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// What the handlers share: handles only.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: ConfigStore,
    pub supervisor: Supervisor,
    pub security: Arc<Security>,
    pub task_cache: Arc<TaskCache>,
    pub audit: Audit,
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
        (Method::GET, "/task/events", get(task_events)),
        (Method::GET, "/task/order", get(task_order)),
        (Method::POST, "/reload", post(reload)),
        (Method::GET, "/audit", get(audit)),
        (Method::GET, "/health", get(health)),
        (Method::GET, "/metrics", get(metrics)),
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
        .layer(middleware::from_fn(|req: Request, next: Next| async move {
            let resp = next.run(req).await;
            crate::metrics::count_request(resp.status().as_u16());
            resp
        }))
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

/// Who made a request, as the guard established it (handlers read it from the request's
/// extensions; the audit trail records it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The write token, or a client certificate (with TLS client authentication).
    Write(String),
    /// The read-only token.
    Read,
    /// No token configured and no client certificate: loopback only, by configuration.
    Anonymous,
    /// Tokens are configured and none was given (only `/health` and `/` answer).
    Unauthenticated,
}

impl Identity {
    fn label(&self) -> String {
        match self {
            Identity::Write(who) => who.clone(),
            Identity::Read => "read".into(),
            Identity::Anonymous => "anonymous".into(),
            Identity::Unauthenticated => "unauthenticated".into(),
        }
    }
}

/// The service a mutating handler acted on, for the audit trail.
#[derive(Clone)]
struct AuditService(String);

/// Browser safety, authentication, and the audit trail of every change.
async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer_info = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.clone());
    let peer = peer_info.as_ref().map(|p| p.addr.to_string()).unwrap_or_else(|| "-".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if let Err(e) = browser_check(&state, req.headers(), mutating) {
        tracing::warn!(%peer, %method, %path, "refused: {}", e.msg);
        return e.into_response();
    }
    // Liveness, and the console's page itself (it holds no data and asks for the token).
    let open = path == "/health" || path == "/";
    let identity = match identify(&state.security, req.headers(), peer_info.as_ref()) {
        Ok(id) => id,
        Err(_) if open => Identity::Unauthenticated,
        Err(why) => {
            if let Ok(mut log) = state.security.refusals.lock() {
                log.note(&peer, &method, &path, why);
            }
            return ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
        }
    };
    if identity == Identity::Read && mutating {
        tracing::warn!(%peer, %method, %path, "refused: read-only token on a mutating call");
        return ApiError::new(StatusCode::FORBIDDEN, "this token is read-only").into_response();
    }
    req.extensions_mut().insert(identity.clone());
    let query_name = query(req.uri().query().map(str::to_string)).remove("name");
    let early_operator_event =
        query_name.as_deref().filter(|n| mutating && !open && crate::config::service::check_name(n).is_ok()).map(|n| {
            // Only for a service there is: a request for an unknown name makes no history.
            (n.to_string(), format!("{method} {path} by {} from {peer}", identity.label()))
        });
    if let Some((service, message)) = &early_operator_event {
        if state.supervisor.get(service).await.is_some() || state.store.get(service).await.is_some() {
            state.supervisor.journal().record(service, crate::events::Kind::Operator, message.clone());
        }
    }
    let mut resp = next.run(req).await;
    if mutating && !open {
        let service = resp.extensions_mut().remove::<AuditService>().map(|s| s.0).or(query_name);
        let status = resp.status();
        let (resp, result) = if status.is_success() { (resp, "SUCCESS".to_string()) } else { envelope_msg(resp).await };
        let record = Record {
            time: crate::audit::rfc3339(SystemTime::now()),
            peer,
            identity: identity.label(),
            method: method.to_string(),
            endpoint: path,
            service,
            status: status.as_u16(),
            result,
        };
        tracing::info!(peer = %record.peer, identity = %record.identity, method = %record.method, path = %record.endpoint, service = record.service.as_deref().unwrap_or("-"), status = record.status, "api change");
        // The service's history: a request named in its query was recorded as it began (before
        // the events it causes); its failure, or a change named in its body, is recorded now.
        // Requests for no such service, or malformed ones, leave no history.
        let recorded_early = early_operator_event.is_some();
        let counts = !matches!(record.status, 400 | 404);
        if let Some(service) = record.service.as_deref().filter(|_| counts) {
            if !recorded_early || !status.is_success() {
                state.supervisor.journal().record(
                    service,
                    crate::events::Kind::Operator,
                    format!(
                        "{} {} by {} from {}: {}",
                        record.method, record.endpoint, record.identity, record.peer, record.result
                    ),
                );
            }
        }
        if let Err(e) = state.audit.append(record).await {
            // The change is made; its answer says the trail could not record it.
            tracing::error!("cannot write the audit trail {}: {e}", state.audit.path().display());
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the change was made but the audit trail could not record it: {e}"),
            )
            .into_response();
        }
        return resp;
    }
    resp
}

/// The `msg` of an error envelope (the response is rebuilt from the same bytes).
async fn envelope_msg(resp: Response) -> (Response, String) {
    let (parts, body) = resp.into_parts();
    let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("msg").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    (Response::from_parts(parts, Body::from(bytes)), msg)
}

/// The token (or client certificate) a request carries, checked.
fn identify(security: &Security, headers: &HeaderMap, peer: Option<&Peer>) -> Result<Identity, &'static str> {
    if let Some(subject) = peer.and_then(|p| p.cert_subject.clone()) {
        // The TLS handshake verified it against API_TLS_CLIENT_CA.
        return Ok(Identity::Write(format!("cert:{subject}")));
    }
    let tokens = security.tokens();
    let client_certs = security.tls.as_ref().is_some_and(|t| t.requires_client_cert());
    if !tokens.any() {
        return if client_certs { Err("a client certificate is required") } else { Ok(Identity::Anonymous) };
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(given) = given else { return Err("missing Authorization: Bearer token") };
    let is = |t: &Option<String>| t.as_ref().is_some_and(|t| constant_time_eq(t.as_bytes(), given.as_bytes()));
    if is(&tokens.write) {
        Ok(Identity::Write("write".into()))
    } else if is(&tokens.read) {
        Ok(Identity::Read)
    } else {
        Err("wrong token")
    }
}

/// Refuses what a web page in a browser could send without the user meaning to: a `Host` the API
/// is not (DNS rebinding), a foreign `Origin`, and a write whose body is not declared JSON (a form
/// or `text/plain` needs no CORS preflight). Body-less writes without a Content-Type stay allowed:
/// the seed's clients send `DELETE …?name=` like that, and a browser always adds `Origin` to a
/// cross-site write.
fn browser_check(state: &AppState, headers: &HeaderMap, mutating: bool) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or("\u{0}"));
    if let Some(host) = host {
        if !host_allowed(&state.settings, host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Host: {host:?} is not this API's address or one of API_HOST_NAMES"),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let scheme = if state.security.tls.is_some() { "https" } else { "http" };
        let same = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("{scheme}://{h}")));
        if !same {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Origin: {origin:?} is not this API's own origin"),
            ));
        }
    }
    if mutating {
        let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or_default());
        let has_body = headers.get(header::TRANSFER_ENCODING).is_some()
            || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
        let json = content_type
            .is_some_and(|ct| ct.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json"));
        if (content_type.is_some() || has_body) && !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type: {:?}; a write must be sent as application/json",
                    content_type.unwrap_or("(none)")
                ),
            ));
        }
    }
    Ok(())
}

/// The bound address (any, when bound to all addresses), loopback addresses and names, and
/// `API_HOST_NAMES`; the port is not compared (a proxy may forward).
fn host_allowed(settings: &Settings, host: &str) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ip.is_loopback() || ip == settings.addr || settings.addr.is_unspecified();
    }
    name.eq_ignore_ascii_case("localhost") || settings.api_host_names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Compares without an early exit over the whole of both, so the time taken does not reveal how
/// much of a token matched, and no length difference is folded away.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The query string as name → value, percent-decoded (public for the fuzz targets).
pub fn query(raw: Option<String>) -> HashMap<String, String> {
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

/// The request body as a service object: size-limited, every problem named (400), its paths
/// resolved once and checked against the allow-list (403). Returns the policy it passed, which the
/// service task applies again to the paths it resolves at every start.
async fn service_body(state: &AppState, body: Body) -> Result<(ServiceInfo, Policy), ApiError> {
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
    let resolved = state.settings.resolve(&info, true).map_err(|p| ApiError::bad(p.field, p.reason))?;
    let policy = Policy::new(&state.settings, state.store.get(&info.name).await);
    policy.check(&info, &resolved).map_err(|r| ApiError::forbidden(r.field, r.reason))?;
    Ok((info, policy))
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
        e @ SupervisorError::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e @ SupervisorError::Decision { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
    let (info, policy) = service_body(&s, body).await?;
    let name = info.name.clone();
    // Stored with the allow-list it passed: whatever starts it later checks it again.
    s.store.upsert_requested(info.clone(), Some(Arc::new(policy))).await.map_err(store_error)?;
    s.supervisor.changes().bump();
    Ok(audited(ok(info), name))
}

fn audited(mut resp: Response, name: String) -> Response {
    resp.extensions_mut().insert(AuditService(name));
    resp
}

async fn service_info_del(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    let old = s.store.delete(&name).await.map_err(store_error)?;
    s.supervisor.changes().bump();
    Ok(ok(old))
}

/// The longest a `/task/get?wait=` waits for a change.
const TASKS_WAIT_MAX: u64 = 30;

/// Every task. Its `X-Tasks-Version` header counts the visible changes (a task's state, pids,
/// health…, an operator's decision, a configuration written); with `?since=VERSION&wait=SECONDS`
/// (at most 30) and no change since that version, it answers at the next change or when the time
/// is up (long-poll: how the console stays live without re-fetching every second).
async fn task_get(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = query(q);
    let wait = number_param(&params, "wait", 0, 0..=TASKS_WAIT_MAX)?;
    let since = position_param(&params, "since")?;
    let changes = s.supervisor.changes();
    let mut seen = changes.subscribe();
    if let Some(since) = since.filter(|_| wait > 0) {
        let wait = long_poll(&s.settings, wait);
        let _ = tokio::time::timeout(wait, seen.wait_for(|v| *v != since)).await;
    }
    // The version is read before the list: a change in between is seen again, never missed.
    let version = changes.current();
    let (tasks, held) = (s.supervisor.list().await, s.supervisor.operator_stopped().await);
    let mut resp = s.task_cache.list_response(&tasks, &held);
    resp.headers_mut().insert("x-tasks-version", version.into());
    Ok(resp)
}

async fn task_find(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let name = name_param(q)?;
    let t = s.supervisor.get_fresh(&name).await.ok_or_else(|| ApiError::no_task(&name))?;
    let held = s.supervisor.operator_stopped().await.contains(&name);
    Ok(s.task_cache.one_response(&t, held))
}

async fn task_set(State(s): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let (info, policy) = service_body(&s, body).await?;
    let name = info.name.clone();
    s.supervisor.apply(info, Some(Arc::new(policy))).await.map_err(supervisor_error)?;
    Ok(audited(task_now(&s, &name).await?, name))
}

async fn task_now(s: &AppState, name: &str) -> Result<Response, ApiError> {
    match s.supervisor.get(name).await {
        Some(t) => Ok(s.task_cache.one_response(&t, s.supervisor.operator_stopped().await.contains(name))),
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

/// A whole-number query parameter within `range`, `default` when absent.
fn number_param(
    q: &HashMap<String, String>,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(n) => match n.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::bad(key, format!("{n:?} is not a number from {} to {}", range.start(), range.end()))),
        },
    }
}

/// The most a `/task/logs?after=` answer carries (the rest comes with the next request).
const LOG_FOLLOW_MAX: usize = 256 * 1024;

/// How often a follower's wait looks at the log's size: programs write to their log file
/// themselves, so air-nanny learns of new lines only by looking (one `fstat` per look, and only
/// while someone follows).
const LOG_FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The tail of a service's log (`?lines=`), with `offset`, the length of the current file. With
/// `?after=OFFSET` instead, the whole lines written since that byte; with `&wait=SECONDS` (at most
/// 30) and nothing new, it answers when something is written or the time is up (how `ctl logs -f`
/// follows a log). `rotated` says the file was rotated since `after` and the lines start at its
/// beginning.
async fn task_logs(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = query(q.clone());
    let lines = number_param(&params, "lines", 100, 1..=10_000)? as usize;
    let after = position_param(&params, "after")?;
    let wait = number_param(&params, "wait", 0, 0..=EVENTS_WAIT_MAX)?;
    let name = name_param(q)?;
    let log = s.supervisor.log(&name).await.ok_or_else(|| ApiError::not_found(&name))?;
    let read_failed = |_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "log reader failed");
    let cannot =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the log: {e}"));
    let Some(after) = after else {
        let (text, offset) =
            tokio::task::spawn_blocking(move || log.tail_at(lines)).await.map_err(read_failed)?.map_err(cannot)?;
        return Ok(ok(json!({ "name": name, "lines": text.lines().collect::<Vec<_>>(), "offset": offset })));
    };
    let wait = long_poll(&s.settings, wait);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let l = log.clone();
        let f = tokio::task::spawn_blocking(move || l.read_after(after, LOG_FOLLOW_MAX))
            .await
            .map_err(read_failed)?
            .map_err(cannot)?;
        let now = tokio::time::Instant::now();
        if !f.lines.is_empty() || f.rotated || f.offset != after || now >= deadline {
            return Ok(ok(json!({ "name": name, "lines": f.lines, "offset": f.offset, "rotated": f.rotated })));
        }
        tokio::time::sleep_until((now + LOG_FOLLOW_POLL).min(deadline)).await;
    }
}

/// How long a long-poll asked to wait `secs` may wait: it ends before the API's own timeout would
/// answer 504.
fn long_poll(settings: &Settings, secs: u64) -> Duration {
    Duration::from_secs(secs).min(settings.api_timeout.saturating_sub(Duration::from_secs(1)))
}

/// An optional position in a stream (`since`, `after`): a whole number when present.
fn position_param(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    q.get(key).map(|_| number_param(q, key, 0, 0..=u64::MAX)).transpose()
}

/// The longest a `/task/events?wait=` waits for a new event.
const EVENTS_WAIT_MAX: u64 = 30;

/// A service's history (`?since=SEQ` for what is newer, `?limit=` the newest N, default 100, at
/// most 1000, oldest first). With `?wait=SECONDS` (at most 30) and nothing newer than `since`, it
/// answers when the next event is written or the time is up (long-poll: how `ctl events -f` and
/// the console follow a service).
async fn task_events(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let params = query(q.clone());
    let limit = number_param(&params, "limit", 100, 1..=1000)? as usize;
    let since = position_param(&params, "since")?;
    let wait = number_param(&params, "wait", 0, 0..=EVENTS_WAIT_MAX)?;
    let name = name_param(q)?;
    if s.store.get(&name).await.is_none() && s.supervisor.get(&name).await.is_none() {
        return Err(ApiError::not_found(&name));
    }
    let wait = long_poll(&s.settings, wait);
    let deadline = tokio::time::Instant::now() + wait;
    let journal = s.supervisor.journal().clone();
    let mut written = journal.subscribe();
    loop {
        written.borrow_and_update();
        let (j, n) = (journal.clone(), name.clone());
        let events = tokio::task::spawn_blocking(move || j.read(&n, since, limit))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "event reader failed"))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the events: {e}")))?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(ok(json!({ "name": name, "events": events })));
        }
        if tokio::time::timeout_at(deadline, written.changed()).await.is_err() {
            return Ok(ok(json!({ "name": name, "events": events })));
        }
    }
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

/// Liveness. Without a token (when tokens are configured) it says only that air-nanny answers; the
/// version and pid are for authenticated callers.
async fn health(State(s): State<AppState>, req: Request) -> Response {
    match req.extensions().get::<Identity>() {
        Some(Identity::Unauthenticated) => ok(json!({ "status": "ok" })),
        _ => ok(json!({
            "status": "ok",
            "server": s.settings.server,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "tls": s.security.tls.is_some(),
            "ownership": s.supervisor.ownership(),
            "output": crate::fdstore::in_force(),
        })),
    }
}

/// The boot order of services.json, as the boot itself computes it (the console draws this).
async fn task_order(State(s): State<AppState>) -> Response {
    let infos = s.store.list().await;
    let groups: Vec<Value> = crate::supervisor::boot_order(&infos)
        .into_iter()
        .filter_map(|names| {
            let first = infos.iter().find(|i| names.first() == Some(&i.name))?;
            Some(json!({ "isInit": first.is_init, "priority": first.priority, "services": names }))
        })
        .collect();
    ok(groups)
}

/// The newest records of the audit trail (`?limit=`, default 100, at most 10000), oldest first.
async fn audit(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let limit = number_param(&query(q), "limit", 100, 1..=10_000)? as usize;
    let records =
        s.audit.tail(limit).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the audit trail: {e}"))
        })?;
    Ok(ok(records))
}

/// Prometheus metrics (text exposition format); a read token suffices. The cgroup and /proc
/// files are read on a blocking thread.
async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let tasks = s.supervisor.list().await;
    let dirs: Vec<Option<std::path::PathBuf>> = tasks.iter().map(|t| s.supervisor.cgroup_dir(&t.info.name)).collect();
    let ownership = s.supervisor.ownership();
    let text = tokio::task::spawn_blocking(move || {
        let rows: Vec<_> = tasks
            .into_iter()
            .zip(dirs)
            .map(|(t, dir)| (t, dir.map(|d| crate::metrics::read_usage(&d)).unwrap_or_default()))
            .collect();
        crate::metrics::render(&rows, crate::metrics::read_own(), ownership, SystemTime::now())
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// The web console: one self-contained page, embedded in the binary (no CDN, no files to install).
async fn console() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        include_str!("console.html"),
    )
        .into_response()
}

/// The OpenAPI document, with bearer security declared only when a token is configured.
async fn openapi(State(s): State<AppState>) -> Response {
    axum::Json(openapi::document(s.security.tokens().any())).into_response()
}

#[cfg(test)]
mod tests;
