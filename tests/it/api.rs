//! The REST API end to end, over loopback against the real binary: the seed's requests verbatim,
//! tokens, a table of bad inputs that change nothing, concurrent writers, and `air-nanny ctl`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{wait_until, Fixture};

/// The seed README's `/serviceInfo/set` body, verbatim, with its elided `...` replaced by the four
/// documented healthCheck fields.
const SEED_SET_BODY: &str = include_str!("../data/godbproxy.json");

/// A fixture where the seed's relative execPath lands inside the allowed config directory:
/// WORK_DIR is conf/a/b, so `../../机载端数据处理/…` is conf/机载端数据处理/….
fn seed_fixture(extra: &str) -> Fixture {
    let f = Fixture::with_config(&format!("WORK_DIR: a/b\n{extra}"));
    std::fs::create_dir_all(f.path("conf/a/b")).unwrap();
    // The seed's program and its control script, for real.
    let program_dir = f.root().join("mnt/e/project/机载端数据处理/godbproxy");
    std::fs::create_dir_all(&program_dir).unwrap();
    std::fs::copy(crate::common::DEMO, program_dir.join("godbproxy")).unwrap();
    let script = f.script("godbproxy", "", None);
    let dest = f.path("conf/机载端数据处理/godbproxy/run.sh");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(script, &dest).unwrap();
    f
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_seed_endpoints_work_with_the_seed_bodies() {
    let f = seed_fixture("");
    let n = f.start();
    // serviceInfo: set, get, find, del.
    let data = n.ok("POST", "/serviceInfo/set", Some(SEED_SET_BODY));
    assert_eq!(data["name"], "godbproxy");
    let all = n.ok("GET", "/serviceInfo/get", None);
    assert_eq!(all.as_array().unwrap().len(), 1);
    let one = n.ok("GET", "/serviceInfo/find?name=godbproxy", None);
    assert_eq!(one["script"]["execPath"], "../../机载端数据处理/godbproxy/run.sh");
    assert_eq!(keys(&one), ["healthCheck", "isDaemon", "isInit", "name", "priority", "script"]);
    assert_eq!(n.ok("GET", "/task/get", None), json!([]), "serviceInfo/set does not touch tasks");
    n.ok("DELETE", "/serviceInfo/del?name=godbproxy", None);
    assert_eq!(n.ok("GET", "/serviceInfo/get", None), json!([]));

    // task: set (persists and starts), get, find, del (stops; configuration stays).
    n.ok("POST", "/task/set", Some(SEED_SET_BODY));
    let pids = n.wait_running("godbproxy");
    let tasks = n.ok("GET", "/task/get", None);
    let t = &tasks[0];
    for k in ["ServiceInfo", "State", "StartFaultNum", "StopFaultNum", "Pids"] {
        assert!(t.get(k).is_some(), "{k} missing in {t}");
    }
    assert_eq!(t["State"], 2);
    assert_eq!(t["ServiceInfo"]["name"], "godbproxy");
    assert_eq!(n.ok("GET", "/task/find?name=godbproxy", None)["Pids"], json!(pids));
    let on_disk: Value = serde_json::from_slice(&f.services_bytes()).unwrap();
    assert_eq!(on_disk[0]["name"], "godbproxy");
    n.ok("DELETE", "/task/del?name=godbproxy", None);
    assert!(f.pids_of_path("mnt/e/project/机载端数据处理/godbproxy/godbproxy").is_empty());
    assert_eq!(n.ok("GET", "/task/get", None), json!([]));
    assert_eq!(n.ok("GET", "/serviceInfo/get", None).as_array().unwrap().len(), 1, "configuration stays");
}

#[test]
fn extensions_start_stop_restart_logs_reload_health_openapi() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("radio", 0, &["--heartbeat", "1"])]));
    let n = f.start();
    let p1 = n.wait_running("radio");
    let t = n.ok("POST", "/task/restart?name=radio", None);
    assert_eq!(t["State"], 2);
    assert_ne!(n.pids("radio"), p1);
    assert_eq!(n.ok("POST", "/task/stop?name=radio", None)["State"], 0);
    assert_eq!(n.ok("POST", "/task/start?name=radio", None)["State"], 2);
    let logs = wait_until("heartbeats in the log", Duration::from_secs(10), || {
        let l = n.ok("GET", "/task/logs?name=radio&lines=5", None);
        l["lines"].as_array().unwrap().iter().any(|x| x.as_str().unwrap().contains("heartbeat")).then_some(l)
    });
    assert!(logs["lines"].as_array().unwrap().len() <= 5);
    let summary = n.ok("POST", "/reload", None);
    assert_eq!(summary["unchanged"], json!(["radio"]));
    assert_eq!(n.ok("GET", "/health", None)["server"], "test-nanny");
    let (status, doc) = n.call("GET", "/openapi.json", None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/task/set"]["post"].is_object());
}

#[test]
fn a_token_guards_every_request_but_health() {
    let f = Fixture::with_config("API_TOKEN_FILE: token\nAPI_READ_TOKEN_FILE: read-token\n");
    f.write("conf/token", "s3cret-token-0123456789\n");
    f.write("conf/read-token", "read-only-token-0123456789\n");
    f.write_services(&json!([f.direct_service("guarded", 0, &[])]));
    let mut n = f.start();
    n.token = Some("s3cret-token-0123456789".into());
    n.wait_running("guarded");
    let before = f.services_bytes();
    let new_svc = f.direct_service("intruder", 0, &[]).to_string();
    for token in [None, Some("wrong-token-0123456789")] {
        let (s, v) = f.http("GET", "/task/get", None, token);
        assert_eq!(s, 401, "{v}");
        let (s, _) = f.http("POST", "/task/set", Some(new_svc.as_bytes()), token);
        assert_eq!(s, 401);
        let (s, _) = f.http("POST", "/task/stop?name=guarded", None, token);
        assert_eq!(s, 401);
    }
    assert_eq!(f.services_bytes(), before);
    assert_eq!(n.task("guarded")["State"], 2, "nothing changed");
    let (s, v) = f.http("GET", "/health", None, None);
    assert_eq!((s, v["msg"].as_str()), (200, Some("SUCCESS")));
    // The read-only token reads but cannot change anything.
    let read = Some("read-only-token-0123456789");
    assert_eq!(f.http("GET", "/task/get", None, read).0, 200);
    assert_eq!(f.http("POST", "/task/stop?name=guarded", None, read).0, 403);
    assert_eq!(n.task("guarded")["State"], 2);
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn a_network_address_without_a_token_refuses_to_start() {
    let f = Fixture::with_config("SERVER_ADDR: 0.0.0.0\n");
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "SERVER_ADDR: 0.0.0.0 is not a loopback address, and neither API_TOKEN_FILE nor API_TLS_CLIENT_CA is set"
        ),
        "{err}"
    );
    // `check` says the same, so the two never disagree.
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 1);
    assert!(out.contains("SERVER_ADDR: 0.0.0.0 is not a loopback address"), "{out}");
}

#[test]
fn bad_inputs_get_a_clear_message_and_change_nothing() {
    let f = seed_fixture("API_BODY_LIMIT: 4096\n");
    let good = f.direct_service("known", 0, &[]);
    f.write_services(&json!([good]));
    std::fs::create_dir_all(f.path("outside")).unwrap();
    std::os::unix::fs::symlink("/usr/bin", f.root().join("escape")).unwrap();
    let n = f.start();
    let pids = n.wait_running("known");
    let before = f.services_bytes();
    let svc = |patch: Value| {
        let mut s = json!({"name": "fresh", "script": {"programFilePath": "/bin/known"}});
        json_merge(&mut s, patch);
        s.to_string()
    };
    let huge = format!(r#"{{"name":"big","script":{{"programFilePath":"/bin/x"}},"pad":"{}"}}"#, "x".repeat(10_000));
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("POST", "/task/set".into(), Some("{\"name\": \"x\",".into()), 400, "malformed JSON"),
        ("POST", "/serviceInfo/set".into(), Some("[1,2]".into()), 400, "expected a JSON object"),
        ("POST", "/task/set".into(), Some(svc(json!({"priority": "high"}))), 400, "priority: expected an integer"),
        ("POST", "/task/set".into(), Some(svc(json!({"isDaemon": "yes"}))), 400, "isDaemon: expected true or false"),
        ("POST", "/task/set".into(), Some(svc(json!({"name": ""}))), 400, "name: must not be empty"),
        ("POST", "/task/set".into(), Some(svc(json!({"name": "a/b"}))), 400, "name: contains '/'"),
        (
            "POST",
            "/task/set".into(),
            Some(r#"{"priority": 1, "script": {"programFilePath": "/x"}}"#.into()),
            400,
            "name: missing",
        ),
        (
            "POST",
            "/task/set".into(),
            Some(svc(json!({"script": {"programFilePath": ""}}))),
            400,
            "script.programFilePath: missing",
        ),
        (
            "POST",
            "/task/set".into(),
            Some(svc(json!({"healthCheck": {"interval": 0}}))),
            400,
            "healthCheck.interval: is 0",
        ),
        (
            "POST",
            "/task/set".into(),
            Some(svc(json!({"script": {"execPath": "/bin/sh"}}))),
            403,
            "script.execPath: \"/bin/sh\" resolves to",
        ),
        (
            "POST",
            "/task/set".into(),
            Some(svc(json!({"script": {"execPath": "../../../outside/run.sh"}}))),
            403,
            "outside the allowed directories",
        ),
        (
            "POST",
            "/serviceInfo/set".into(),
            Some(svc(json!({"script": {"programFilePath": "/escape/sh"}}))),
            403,
            "script.programFilePath",
        ),
        (
            "POST",
            "/task/set".into(),
            Some(svc(json!({"healthCheck": {"isHealthCheck": true, "test": ["CMD-SHELL", "rm -rf /"]}}))),
            403,
            "CMD-SHELL",
        ),
        (
            "POST",
            "/task/set".into(),
            Some(svc(json!({"script": {"env": {"LD_PRELOAD": "/tmp/x.so"}}}))),
            403,
            "LD_PRELOAD",
        ),
        ("POST", "/task/set".into(), Some(huge), 413, "larger than the limit"),
        ("GET", "/task/find?name=ghost".into(), None, 404, "no task named \"ghost\""),
        ("GET", "/serviceInfo/find?name=ghost".into(), None, 404, "no service named \"ghost\""),
        ("DELETE", "/serviceInfo/del?name=ghost".into(), None, 404, "no service named \"ghost\""),
        ("DELETE", "/task/del?name=ghost".into(), None, 404, "no task named \"ghost\""),
        ("POST", "/task/start?name=ghost".into(), None, 404, "no service named \"ghost\""),
        ("POST", "/task/stop?name=ghost".into(), None, 404, "ghost"),
        ("POST", "/task/restart?name=ghost".into(), None, 404, "ghost"),
        ("GET", "/task/logs?name=ghost".into(), None, 404, "ghost"),
        ("GET", "/task/find".into(), None, 400, "name: missing query parameter"),
        ("GET", "/task/logs?name=known&lines=zero".into(), None, 400, "lines:"),
        ("GET", "/task/set".into(), None, 405, "method not allowed"),
        ("POST", "/task/get".into(), None, 405, "method not allowed"),
        ("GET", "/nowhere".into(), None, 404, "no such endpoint"),
    ];
    assert!(cases.len() >= 15);
    for (method, path, body, status, needle) in &cases {
        let (s, v) = n.call(method, path, body.as_deref());
        assert_eq!(s, *status, "{method} {path}: {v}");
        let msg = v["msg"].as_str().unwrap_or_else(|| panic!("{method} {path}: no msg in {v}"));
        assert!(msg.contains(needle), "{method} {path}: {msg:?} should contain {needle:?}");
        assert_eq!(f.services_bytes(), before, "{method} {path} changed services.json");
    }
    assert_eq!(n.pids("known"), pids, "the runtime is untouched");
    assert_eq!(n.ok("GET", "/task/get", None).as_array().unwrap().len(), 1);
}

fn json_merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn concurrent_writers_leave_a_valid_consistent_file() {
    let f = Fixture::new();
    let n = f.start();
    let names: Vec<String> = (0..10).map(|i| format!("svc{i}")).collect();
    std::thread::scope(|s| {
        for c in 0..50 {
            let (f, names) = (&f, &names);
            s.spawn(move || {
                for i in 0..12 {
                    let name = &names[(c * 7 + i) % names.len()];
                    let body =
                        json!({"name": name, "priority": c, "script": {"programFilePath": format!("/bin/{name}")}})
                            .to_string();
                    let (status, v) = match (c + i) % 3 {
                        0 => f.http("POST", "/serviceInfo/set", Some(body.as_bytes()), None),
                        1 => f.http("DELETE", &format!("/serviceInfo/del?name={name}"), None, None),
                        _ => f.http("GET", "/serviceInfo/get", None, None),
                    };
                    assert!(status == 200 || status == 404, "{status} {v}");
                }
            });
        }
    });
    let on_disk: Value = serde_json::from_slice(&f.services_bytes()).expect("services.json stays valid JSON");
    let (_, problems) = air_nanny::config::parse_services(&f.services_bytes(), "services.json");
    assert!(!problems.has_errors(), "{problems}");
    assert_eq!(n.ok("GET", "/serviceInfo/get", None), on_disk, "the file equals the runtime's view");
}

#[test]
fn ctl_drives_a_running_instance() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("nav", 0, &[])]));
    let n = f.start();
    let p1 = n.wait_running("nav");
    let (code, out, err) = f.cli(&["ctl", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NAME") && out.contains("nav") && out.contains("running (2)"), "{out}");
    let (code, out, _) = f.cli(&["ctl", "--json", "status", "nav"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["State"], 2);
    assert_eq!(f.cli(&["ctl", "restart", "nav"]).0, 0);
    assert_ne!(n.pids("nav"), p1);
    assert_eq!(f.cli(&["ctl", "stop", "nav"]).0, 0);
    assert_eq!(n.task("nav")["State"], 0);
    // Exit status like `systemctl is-active`, and --json anywhere on the line.
    let (code, out, _) = f.cli(&["ctl", "status", "nav", "--json"]);
    assert_eq!(code, 3, "a stopped service: {out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["State"], 0);
    assert_eq!(f.cli(&["ctl", "status", "nav"]).0, 3);
    assert_eq!(f.cli(&["ctl", "status", "ghost"]).0, 1);
    assert_eq!(f.cli(&["ctl", "status"]).0, 2, "a usage error");
    assert_eq!(f.cli(&["ctl", "start", "nav"]).0, 0);
    assert_eq!(f.cli(&["ctl", "status", "nav"]).0, 0);
    assert_eq!(n.task("nav")["State"], 2);
    let file = f.path("cam.json");
    std::fs::write(&file, f.direct_service("cam", 1, &[]).to_string()).unwrap();
    let (code, _, err) = f.cli(&["ctl", "set", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    n.wait_running("cam");
    assert_eq!(f.cli(&["ctl", "del", "cam"]).0, 0);
    assert!(f.pids_of("cam").is_empty());
    let (code, _, err) = f.cli(&["ctl", "stop", "ghost"]);
    assert_eq!(code, 1);
    assert!(err.contains("ghost"), "{err}");
    let (code, out, _) = f.cli(&["ctl", "logs", "nav", "-n", "3"]);
    assert_eq!(code, 0);
    assert!(out.lines().count() <= 3 && out.contains("[air-nanny]"), "{out}");
    assert_eq!(f.cli(&["ctl", "reload"]).0, 0);
}

/// A service named in another script (the README's `数据处理`) through every ctl command that
/// names one: the name travels percent-encoded in the query.
#[test]
fn ctl_works_with_a_service_named_in_any_script() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("数据处理", 0, &[])]));
    let n = f.start();
    n.wait_running("%E6%95%B0%E6%8D%AE%E5%A4%84%E7%90%86");
    for args in [
        vec!["ctl", "status", "数据处理"],
        vec!["ctl", "logs", "数据处理", "-n", "5"],
        vec!["ctl", "events", "数据处理", "-n", "5"],
        vec!["ctl", "restart", "数据处理"],
        vec!["ctl", "stop", "数据处理"],
        vec!["ctl", "start", "数据处理"],
    ] {
        let (code, out, err) = f.cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let (code, out, _) = f.cli(&["ctl", "status", "数据处理"]);
    assert_eq!(code, 0);
    assert!(out.contains("● 数据处理 - running"), "{out}");
}

/// `ctl` as systemctl users expect it: `status` in detail for several names, `start|stop|restart`
/// of several names or `all`, `set -` from standard input, no colour when not on a terminal.
#[test]
fn ctl_status_in_detail_several_names_all_and_set_from_stdin() {
    let f = Fixture::new();
    let mut gps = f.direct_service("gps", 0, &["--heartbeat-ms", "50"]);
    gps["healthCheck"] = json!({"isHealthCheck": true, "interval": 1, "timeout": 2, "retries": 3,
                                "test": ["CMD-SHELL", "echo fix ok"]});
    f.write_services(&json!([gps, f.direct_service("imu", 1, &[])]));
    let n = f.start();
    n.wait_running("gps");
    n.wait_running("imu");
    wait_until("a check", Duration::from_secs(10), || (n.task("gps")["Health"] == "healthy").then_some(()));
    let (code, out, err) = f.cli(&["ctl", "status", "gps", "imu"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}'), "no colour off a terminal: {out}");
    for want in [
        "● gps - running since",
        "Health: healthy (failed in a row: 0); last check",
        "| fix ok",
        "Check: CMD-SHELL echo fix ok every 1s",
        "Pids: ",
        "Restarts: 0",
        "Program: ",
        "--heartbeat-ms 50",
        "Boot: priority 0",
        "[air-nanny] start:",
        "● imu - running",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // Several names, then `all` (stopped in reverse start order).
    assert_eq!(f.cli(&["ctl", "stop", "gps", "imu"]).0, 0);
    assert_eq!((n.task("gps")["State"].clone(), n.task("imu")["State"].clone()), (json!(0), json!(0)));
    let (code, out, _) = f.cli(&["ctl", "status", "gps", "imu"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("stopped since"), "{out}");
    let (code, out, err) = f.cli(&["ctl", "start", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gps") && out.contains("imu"), "{out}");
    assert_eq!(f.cli(&["ctl", "status", "gps", "imu"]).0, 0);
    let (code, out, _) = f.cli(&["ctl", "--json", "restart", "all"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(), 2, "{out}");
    let (code, _, err) = f.cli(&["ctl", "stop", "imu", "ghost"]);
    assert_eq!(code, 1, "one of them failed");
    assert!(err.contains("ghost"), "{err}");
    assert_eq!(n.task("imu")["State"], 0, "the others are still done");
    // `set -`: the service object on standard input.
    let out = std::process::Command::new(crate::common::AIR_NANNY)
        .args(["ctl", "set", "-", "--config"])
        .arg(f.config())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(f.direct_service("baro", 2, &[]).to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    n.wait_running("baro");
}

/// `GET /metrics` parses with Prometheus' own parser (prometheus_client, PyPI; tests/all.sh
/// installs it) and its values match `/task/get`, for a running service, one killed and
/// restarted, and one stopped by the operator.
#[test]
fn metrics_parse_with_a_real_parser_and_match_the_tasks() {
    let f = Fixture::new();
    f.write_services(&json!([
        f.direct_service("radio", 0, &[]),
        f.direct_service("gps", 1, &[]),
        f.direct_service("cam", 2, &[])
    ]));
    let n = f.start();
    let first = n.wait_running("radio");
    n.wait_running("gps");
    n.wait_running("cam");
    crate::common::kill9(first[0]);
    wait_until("radio restarted", Duration::from_secs(10), || {
        let p = n.pids("radio");
        (!p.is_empty() && p != first).then_some(())
    });
    n.ok("POST", "/task/stop?name=cam", None);
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", f.port)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        c.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        (head.to_string(), body.to_string())
    };
    let (head, text) = get("/metrics");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    let (_, tasks) = get("/task/get");
    std::fs::write(f.path("metrics.txt"), &text).unwrap();
    std::fs::write(f.path("tasks.json"), &tasks).unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metrics/check.py"))
        .arg(f.path("metrics.txt"))
        .arg(f.path("tasks.json"))
        .output()
        .expect("python3 (tests/all.sh installs prometheus-client)");
    assert!(
        out.status.success(),
        "{}{}\n(prometheus_client missing? tests/all.sh installs it)\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("air_nanny_service_restarts_total{service=\"radio\"} 1"), "{text}");
    if crate::common::cgroups_here("metrics: cgroup CPU time") {
        assert!(text.contains("air_nanny_service_cpu_seconds_total{service=\"gps\"}"), "{text}");
    }
}
