//! In-process tests of the router's pure parts: the route table against the OpenAPI document,
//! query parsing, token comparison and the allow-list.

use super::*;

#[test]
fn every_route_of_the_router_is_in_the_openapi_document() {
    let doc = openapi::document();
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
}

#[test]
fn real_paths_resolve_symlinks_and_refuse_dotdot_in_missing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(base.join("allowed")).unwrap();
    std::os::unix::fs::symlink("/etc", base.join("allowed/link")).unwrap();
    assert_eq!(real_path(&base.join("allowed/new/x")).unwrap(), base.join("allowed/new/x"));
    assert_eq!(real_path(&base.join("allowed/link/passwd")).unwrap(), std::path::PathBuf::from("/etc/passwd"));
    assert_eq!(real_path(&base.join("allowed/../x")).unwrap(), base.join("x"));
    assert!(real_path(&base.join("allowed/missing/../../x")).is_err());
}

/// The router in-process (tower's `oneshot`): envelopes for errors axum would otherwise answer
/// with an empty body, and the token check.
mod router {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn app(token: Option<&str>) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("public.yaml"), "rootpath: root\n").unwrap();
        std::fs::write(dir.path().join("config.yaml"), "SERVER: r\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 1\n")
            .unwrap();
        std::fs::write(dir.path().join("services.json"), "[]").unwrap();
        let settings = Arc::new(Settings::load(&dir.path().join("config.yaml"), &mut Default::default()).unwrap());
        let (store, _) = ConfigStore::load(&settings.services_file).unwrap();
        let reaper = crate::reaper::Reaper::start().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (supervisor, _) = Supervisor::start(settings.clone(), store.clone(), reaper, shutdown);
        let tokens = Tokens { write: token.map(str::to_string), read: None };
        let state = AppState { settings, store, supervisor, tokens: Arc::new(tokens), task_cache: Arc::default() };
        (router(state), dir)
    }

    async fn call(app: &Router, method: &str, uri: &str, auth: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("Authorization", format!("Bearer {a}"));
        }
        let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
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
        let (app, _dir) = app(Some("a-long-enough-token-0123")).await;
        assert_eq!(call(&app, "GET", "/task/get", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/task/get", Some("nope")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/task/get", Some("a-long-enough-token-0123")).await.0, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/health", None).await.0, StatusCode::OK);
        let page = app.clone().oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    }
}
