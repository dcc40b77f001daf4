//! In-process tests of the router's pure parts: the route table against the OpenAPI document,
//! query parsing, token comparison and the allow-list.

use super::*;

#[test]
fn every_route_of_the_router_is_in_the_openapi_document() {
    let doc = openapi::document(true);
    let paths = doc["paths"].as_object().unwrap();
    let routes = routes();
    for (method, path, _) in &routes {
        let m = method.as_str().to_ascii_lowercase();
        assert!(paths.get(*path).and_then(|p| p.get(&m)).is_some(), "{method} {path} is not documented");
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "the document describes routes the router does not have");
}

#[test]
fn the_openapi_document_names_every_operation_and_declares_security_only_with_a_token() {
    for secured in [false, true] {
        let doc = openapi::document(secured);
        let mut ids = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_string()), "operationId {id} twice");
                let responses = op["responses"].as_object().unwrap();
                for status in ["200", "403", "504"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status} not declared");
                }
                let open = path == "/health" || path == "/";
                assert_eq!(responses.contains_key("401"), secured && !open, "{method} {path}: 401");
            }
        }
        assert_eq!(doc.get("security").is_some(), secured);
        assert_eq!(doc["components"].get("securitySchemes").is_some(), secured);
    }
}

#[test]
fn query_strings_decode() {
    let q = query(Some("name=a%2Eb&lines=10&x=%E6%9C%BA+1&bad=%zz".into()));
    assert_eq!(q["name"], "a.b");
    assert_eq!(q["lines"], "10");
    assert_eq!(q["x"], "机 1");
    assert_eq!(q["bad"], "%zz");
    assert!(name_param(Some("name=..".into())).is_err());
    assert!(name_param(None).is_err());
}

#[test]
fn tokens_compare_exactly() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    // The length difference is never folded away: the token plus 65,536 bytes is not the token.
    let token = b"a-long-enough-token-0123".to_vec();
    let mut longer = token.clone();
    longer.extend(std::iter::repeat_n(0u8, 65_536));
    assert!(!constant_time_eq(&token, &longer));
    longer.truncate(token.len() + 256);
    assert!(!constant_time_eq(&token, &longer));
}

/// The router in-process (tower's `oneshot`): envelopes for errors axum would otherwise answer
/// with an empty body, and the token check.
mod router {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn app(token: Option<&str>) -> (Router, tempfile::TempDir) {
        app_with(token, None).await
    }

    async fn app_with(token: Option<&str>, read: Option<&str>) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("public.yaml"), "rootpath: root\n").unwrap();
        std::fs::write(dir.path().join("config.yaml"), "SERVER: r\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 1\n")
            .unwrap();
        std::fs::write(dir.path().join("services.json"), "[]").unwrap();
        let settings = Arc::new(Settings::load(&dir.path().join("config.yaml"), &mut Default::default()).unwrap());
        let (store, _) = ConfigStore::load(&settings.services_file).unwrap();
        let reaper = crate::reaper::Reaper::start().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (supervisor, _) = Supervisor::start(settings.clone(), store.clone(), reaper, None, shutdown).unwrap();
        let tokens = Tokens { write: token.map(str::to_string), read: read.map(str::to_string) };
        let state = AppState {
            security: Security::new(settings.clone(), tokens, None),
            audit: Audit::new(&settings.state_dir),
            settings,
            store,
            supervisor,
            task_cache: Arc::default(),
        };
        (router(state), dir)
    }

    async fn send(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    async fn call(app: &Router, method: &str, uri: &str, auth: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("Authorization", format!("Bearer {a}"));
        }
        send(app, req.body(Body::empty()).unwrap()).await
    }

    const TOKEN: &str = "a-long-enough-token-0123";
    const READ: &str = "a-read-only-token-456789";

    #[tokio::test]
    async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let (app, _dir) = app(Some(TOKEN)).await;
        for scheme in ["bearer", "BEARER", "Bearer"] {
            let req = Request::get("/task/get").header("Authorization", format!("{scheme} {TOKEN}"));
            assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await.0, StatusCode::OK, "{scheme}");
        }
        let padded = format!("{TOKEN}{}", "x".repeat(65_536));
        assert_eq!(call(&app, "GET", "/task/get", Some(&padded)).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/task/get", Some(&TOKEN[..TOKEN.len() - 1])).await.0, StatusCode::UNAUTHORIZED);
        let basic = Request::get("/task/get").header("Authorization", format!("Basic {TOKEN}"));
        assert_eq!(send(&app, basic.body(Body::empty()).unwrap()).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn head_with_the_read_token_is_a_read() {
        let (app, _dir) = app_with(Some(TOKEN), Some(READ)).await;
        assert_eq!(call(&app, "HEAD", "/task/get", Some(READ)).await.0, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/task/get", Some(READ)).await.0, StatusCode::OK);
        assert_eq!(call(&app, "POST", "/reload", Some(READ)).await.0, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn health_tells_nothing_more_than_liveness_without_a_token() {
        let (app, _dir) = app(Some(TOKEN)).await;
        let (s, v) = call(&app, "GET", "/health", None).await;
        assert_eq!((s, &v["data"]), (StatusCode::OK, &serde_json::json!({"status": "ok"})));
        let (_, v) = call(&app, "GET", "/health", Some(TOKEN)).await;
        assert!(v["data"]["version"].is_string() && v["data"]["pid"].is_number(), "{v}");
    }

    #[tokio::test]
    async fn cross_site_requests_are_refused() {
        let (app, _dir) = app(None).await;
        let post = |ct: Option<&str>, host: &str, origin: Option<&str>, body: &str| {
            let mut r = Request::post("/reload").header("Host", host);
            if let Some(ct) = ct {
                r = r.header("Content-Type", ct);
            }
            if let Some(o) = origin {
                r = r.header("Origin", o);
            }
            r.header("Content-Length", body.len()).body(Body::from(body.to_string())).unwrap()
        };
        // A form or text/plain body needs no CORS preflight: refused.
        for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let (s, v) = send(&app, post(Some(ct), "127.0.0.1:1", None, "x")).await;
            assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}: {v}");
        }
        assert_eq!(send(&app, post(None, "127.0.0.1:1", None, "{}")).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // DNS rebinding: a name the API is not.
        let (s, v) = send(&app, post(Some("application/json"), "evil.example:1", None, "")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["msg"].as_str().unwrap().starts_with("Host:"), "{v}");
        // A foreign Origin, even with the right Host.
        let (s, _) = send(&app, post(Some("application/json"), "127.0.0.1:1", Some("http://evil.example"), "")).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = send(&app, post(Some("application/json"), "127.0.0.1:1", Some("null"), "")).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // The console's own requests, and the seed's body-less DELETE, pass.
        let (s, v) = send(&app, post(Some("application/json"), "127.0.0.1:1", Some("http://127.0.0.1:1"), "")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = send(&app, post(None, "localhost:1", None, "")).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_paths_and_wrong_methods_get_the_envelope() {
        let (app, _dir) = app(None).await;
        let (s, v) = call(&app, "GET", "/nowhere", None).await;
        assert_eq!((s, v["msg"].as_str()), (StatusCode::NOT_FOUND, Some("no such endpoint")));
        let (s, v) = call(&app, "DELETE", "/task/get", None).await;
        assert_eq!(
            (s, v["msg"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method not allowed on this endpoint"))
        );
        let (s, v) = call(&app, "GET", "/task/get", None).await;
        assert_eq!((s, v), (StatusCode::OK, serde_json::json!({"data": [], "msg": "SUCCESS"})));
    }

    #[tokio::test]
    async fn the_token_is_required_except_for_health_and_the_console_page() {
        let (app, _dir) = app(Some(TOKEN)).await;
        assert_eq!(call(&app, "GET", "/task/get", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/task/get", Some("nope")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/task/get", Some("a-long-enough-token-0123")).await.0, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/health", None).await.0, StatusCode::OK);
        let page = app.clone().oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    }
}
