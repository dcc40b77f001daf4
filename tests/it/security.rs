//! The API as an attacker would use it, against the real binary: each bypass and defect found in
//! review is a test here. A program that must not run writes a marker file that must not appear.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{wait_until, Fixture};

/// A shell script at `path` that writes `marker` when it runs (the program that must not run).
fn evil(path: &Path, marker: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\necho ran > {}\nexec sleep 30\n", marker.display())).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Waits until the log of `name` shows a health check result (so a check has really run).
fn wait_checked(f: &Fixture, name: &str) {
    wait_until("a health check to run", Duration::from_secs(15), || {
        f.log(name).contains("health check failed").then_some(())
    });
}

#[test]
fn a_relative_cmd_check_runs_from_the_service_directory_not_air_nannys() {
    let f = Fixture::with_config("WORK_DIR: .\n");
    let marker = f.path("pwned");
    // air-nanny runs in `/` as under systemd; `./bin/sh` there is the system's shell.
    let n = f.start_in(&[], Some(Path::new("/")));
    let mut svc = f.direct_service("probe", 0, &[]);
    svc["healthCheck"] = json!({"isHealthCheck": true, "interval": 1, "retries": 100,
        "test": ["CMD", "./bin/sh", "-c", format!("echo ran > {}", marker.display())]});
    let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
    // Relative to the service's directory (root/bin) it names root/bin/bin/sh: inside the allowed
    // directories, and not there, so the check fails instead of running /bin/sh as root.
    assert_eq!(status, 200, "{v}");
    wait_checked(&f, "probe");
    assert!(!marker.exists(), "the CMD check ran air-nanny's ./bin/sh");
}

#[test]
fn a_symlink_then_dotdot_runs_what_was_checked() {
    let f = Fixture::new();
    let marker = f.path("pwned");
    // root/l -> root/x/y. Through the kernel, root/l/../../outside/evil is root/outside/evil (allowed);
    // cleaned as text it is <tmp>/outside/evil, outside every allowed directory.
    std::fs::create_dir_all(f.root().join("x/y")).unwrap();
    std::os::unix::fs::symlink(f.root().join("x/y"), f.root().join("l")).unwrap();
    std::fs::create_dir_all(f.root().join("outside")).unwrap();
    std::fs::copy(crate::common::DEMO, f.root().join("outside/evil")).unwrap();
    evil(&f.path("outside/evil"), &marker);
    let n = f.start();
    let mut svc = f.direct_service("linked", 0, &[]);
    svc["script"]["programFilePath"] = json!("/l/../../outside/evil");
    let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
    assert_eq!(status, 200, "{v}");
    let pids = n.wait_running("linked");
    let exe = std::fs::read_link(format!("/proc/{}/exe", pids[0])).unwrap();
    assert_eq!(exe, std::fs::canonicalize(f.root().join("outside/evil")).unwrap());
    assert!(!marker.exists(), "the textually cleaned path ran");
}

#[test]
fn work_dir_of_an_allowed_script_is_checked() {
    let f = Fixture::new();
    let n = f.start();
    let mut svc = f.direct_service("wd", 0, &[]);
    svc["script"]["workDir"] = json!("/");
    let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
    assert_eq!(status, 403, "{v}");
    assert!(v["msg"].as_str().unwrap().starts_with("script.workDir: \"/\" resolves to /"), "{v}");
    svc["script"]["workDir"] = json!(f.path("conf/missing").display().to_string());
    let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
    assert_eq!(status, 400, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("script.workDir:"), "{v}");
    assert_eq!(n.ok("GET", "/task/get", None), json!([]));
}

#[test]
fn loader_shell_and_interpreter_variables_are_refused_over_the_api() {
    let f = Fixture::new();
    let n = f.start();
    for key in [
        "LD_PRELOAD",
        "BASH_FUNC_x%%",
        "PATH",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "PERL5OPT",
        "RUBYOPT",
        "IFS",
        "ld_library_path",
    ] {
        let mut svc = f.direct_service("envy", 0, &[]);
        svc["script"]["env"] = json!({ key: "/tmp/x" });
        let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
        assert_eq!(status, 403, "{key}: {v}");
        assert!(v["msg"].as_str().unwrap().starts_with(&format!("script.env: {key}")), "{v}");
    }
    let mut svc = f.direct_service("envy", 0, &[]);
    svc["script"]["env"] = json!({ "RADIO_PORT": "/dev/ttyS1" });
    assert_eq!(n.call("POST", "/task/set", Some(&svc.to_string())).0, 200);
}

#[test]
fn cross_site_writes_are_refused() {
    let f = Fixture::new();
    let marker = f.path("pwned");
    evil(&f.root().join("bin/evil"), &marker);
    let n = f.start();
    let body = json!({"name": "csrf", "script": {"programFilePath": "/bin/evil"}}).to_string();
    let port = f.port;
    let send = |host: &str, ct: &str, origin: &str| {
        let origin = if origin.is_empty() { String::new() } else { format!("Origin: {origin}\r\n") };
        f.raw(
            format!(
                "POST /task/set HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ct}\r\n{origin}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    // A page's form post (text/plain needs no CORS preflight) from a rebinding name.
    assert_eq!(send("attacker.example", "text/plain", "http://attacker.example").0, 403);
    assert_eq!(send(&format!("127.0.0.1:{port}"), "text/plain", "").0, 415);
    assert_eq!(send(&format!("127.0.0.1:{port}"), "application/json", "http://attacker.example").0, 403);
    assert!(!marker.exists());
    assert_eq!(n.ok("GET", "/task/get", None), json!([]));
}

#[test]
fn the_token_is_compared_over_its_full_length_and_the_scheme_in_any_case() {
    let token = "s3cret-token-0123456789";
    let f = Fixture::with_config("API_TOKEN_FILE: token\n");
    f.write("conf/token", &format!("{token}\n"));
    let n = f.start();
    let get = |auth: &str| {
        f.raw(
            format!("GET /task/get HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    assert_eq!(get(&format!("bearer {token}")).0, 200);
    assert_eq!(get(&format!("BEARER {token}")).0, 200);
    assert_eq!(get(&format!("Bearer {token}{}", "A".repeat(65_536))).0, 401);
    assert_eq!(get(&format!("Bearer {token}x")).0, 401);
    // /health without the token says only that air-nanny answers.
    let (s, v) = f.http("GET", "/health", None, None);
    assert_eq!((s, &v["data"]), (200, &json!({"status": "ok"})));
    let log = std::fs::read_to_string(f.path("nanny.log")).unwrap();
    assert!(log.contains("refused: wrong token") && log.contains("peer=127.0.0.1:"), "{log}");
    drop(n);
}

/// A server on loopback that answers every connection with `head` and then `tail` for as long as
/// the client reads (or never closes).
fn serve(head: &'static str, tail: Option<&'static [u8]>) -> (String, std::net::TcpListener) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let listener = l.try_clone().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let _ = c.read(&mut [0u8; 2048]);
                let _ = c.write_all(head.as_bytes());
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while std::time::Instant::now() < deadline {
                    match tail {
                        Some(t) => {
                            if c.write_all(t).is_err() {
                                return;
                            }
                        }
                        None => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
    });
    (addr, l)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn http_checks_read_a_bounded_answer_and_stop_at_the_status() {
    let f = Fixture::new();
    let n = f.start();
    // A server that streams forever, with and without framing, and one that never closes.
    let (endless, _a) = serve("HTTP/1.1 200 OK\r\n\r\n", Some(&[b'x'; 65_536]));
    let (chunked, _b) = serve("HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n", Some(b"10000\r\n"));
    let (open, _c) = serve("HTTP/1.1 204 No Content\r\n\r\n", None);
    for (name, addr, healthy) in [("endless", &endless, true), ("chunky", &chunked, false), ("open", &open, true)] {
        let mut svc = f.direct_service(name, 0, &[]);
        svc["healthCheck"] = json!({"isHealthCheck": true, "interval": 1, "timeout": 5, "retries": 100,
            "test": ["HTTP", format!("http://{addr}/health")]});
        assert_eq!(n.call("POST", "/task/set", Some(&svc.to_string())).0, 200);
        let want = if healthy { "healthy" } else { "unhealthy" };
        wait_until(&format!("{name} to be {want}"), Duration::from_secs(15), || {
            let t = n.task(name);
            let h = t["Health"].as_str().unwrap_or_default().to_string();
            (if healthy { h == "healthy" } else { f.log(name).contains("answered 500") }).then_some(())
        });
    }
    assert!(rss_kib(n.pid()) < 64 * 1024, "air-nanny grew to {} KiB", rss_kib(n.pid()));
}

#[test]
fn check_targets_and_urls_over_the_api_are_limited() {
    let f = Fixture::with_config("ALLOWED_CHECK_HOSTS: [\"192.0.2.7\"]\n");
    let n = f.start();
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!(["HTTP", "http://127.0.0.1:1/x\r\nX-Injected: 1"]), 400, "printable ASCII"),
        (json!(["HTTP", "http://127.0.0.1:1/a b"]), 400, "printable ASCII"),
        (json!(["HTTP", "http://db.example:80/"]), 400, "does not resolve names"),
        (json!(["TCP", "not-an-address"]), 400, "not an address"),
        (json!(["TCP", "127.0.0.1:0"]), 400, "port"),
        // Other hosts: a port scanner with results in /task/logs. TEST-NET addresses, never contacted.
        (json!(["TCP", "192.0.2.1:22"]), 403, "not in ALLOWED_CHECK_HOSTS"),
        (json!(["HTTP", "http://198.51.100.1:80/"]), 403, "not in ALLOWED_CHECK_HOSTS"),
        (json!(["CMD-SHELL", "id > /tmp/x"]), 403, "CMD-SHELL"),
        (json!(["CMD", "sh", "-c", "id"]), 403, "looked up in PATH"),
    ];
    for (test, status, needle) in cases {
        let mut svc = f.direct_service("probe", 0, &[]);
        svc["healthCheck"] = json!({"isHealthCheck": true, "test": test});
        let (s, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
        assert_eq!(s, status, "{test}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(needle), "{test}: {v}");
    }
    // Stored switched off, it could be switched on later: refused all the same.
    let mut svc = f.direct_service("probe", 0, &[]);
    svc["healthCheck"] = json!({"isHealthCheck": false, "test": ["CMD-SHELL", "id"]});
    assert_eq!(n.call("POST", "/serviceInfo/set", Some(&svc.to_string())).0, 403);
    svc["healthCheck"] = json!({"isHealthCheck": true, "interval": 30, "test": ["TCP", "192.0.2.7:9"]});
    assert_eq!(n.call("POST", "/serviceInfo/set", Some(&svc.to_string())).0, 200, "an allowed check host");
    assert_eq!(n.ok("GET", "/task/get", None), json!([]));
}

#[test]
fn inputs_that_should_be_refused_are_refused_naming_the_field() {
    let f = Fixture::new();
    let n = f.start();
    let before = f.services_bytes();
    let base = f.direct_service("bad", 0, &[]).to_string();
    let cases: Vec<(String, &str)> = vec![
        (base.replace("\"args\":[]", "\"args\":[\"a\\u0000b\"]"), "script.args: an element contains a NUL byte"),
        (base.replace("\"args\":[]", "\"args\":[],\"env\":{\"A=B\":\"1\"}"), "script.env: \"A=B\" contains '='"),
        (base.replace("\"args\":[]", "\"args\":[],\"env\":{\"\":\"1\"}"), "script.env: an empty variable name"),
        (
            base.replace("\"args\":[]", "\"args\":[],\"env\":{\"X\":\"a\\u0000\"}"),
            "script.env: a name or value contains a NUL",
        ),
        (base.replace("\"args\":[]", "\"args\":[],\"user\":\"-1\""), "script.user:"),
        (base.replace("\"args\":[]", "\"args\":[],\"user\":\"4294967295\""), "script.user:"),
        (base.replace("\"args\":[]", "\"args\":[],\"user\":\"no-such-user-here\""), "script.user: no user named"),
        (
            base.replace("\"programFilePath\":", "\"programFilePath\":\"/bin/x\\u0000\",\"x\":"),
            "script.programFilePath: contains a NUL byte",
        ),
        (base.replace("\"name\":\"bad\"", "\"name\":\"bad\",\"name\":\"other\""), "duplicate key \"name\""),
        (
            base.replace("\"isHealthCheck\":false", "\"isHealthCheck\":true,\"interval\":18446744073709551615"),
            "healthCheck.interval:",
        ),
        (
            base.replace("\"isHealthCheck\":false", "\"isHealthCheck\":true,\"timeout\":86401"),
            "healthCheck.timeout: is 86401, but it must be at most 86400",
        ),
        (
            base.replace("\"args\":[]", "\"args\":[],\"stopTimeout\":100000000000"),
            "script.stopTimeout: is 100000000000",
        ),
        (
            base.replace("\"isHealthCheck\":false", "\"isHealthCheck\":false,\"retries\":4294967296"),
            "healthCheck.retries",
        ),
    ];
    for (body, needle) in cases {
        let (s, v) = n.call("POST", "/task/set", Some(&body));
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(needle), "{body}: {v} should contain {needle:?}");
        assert_eq!(f.services_bytes(), before);
    }
    assert_eq!(n.ok("GET", "/task/get", None), json!([]));
}

#[test]
fn check_refuses_what_run_refuses() {
    for (extra, files, needle) in [
        ("LOG_MAX_FILES: 1000\n", vec![], "LOG_MAX_FILES: is 1000, but it must be at most 100"),
        ("API_TOKEN_FILE: token\n", vec![("conf/token", "short\n")], "API_TOKEN_FILE: the token in"),
        ("API_TOKEN_FILE: missing-token\n", vec![], "API_TOKEN_FILE: cannot read"),
        ("LOG_DIR: afile\n", vec![("conf/afile", "x")], "LOG_DIR:"),
        ("SERVER_ADDR: 0.0.0.0\n", vec![], "SERVER_ADDR: 0.0.0.0 is not a loopback address"),
        ("API_TLS_CERT: nope.pem\n", vec![], "API_TLS_KEY: missing"),
        ("START_TIMEOUT: 99999999999\n", vec![], "START_TIMEOUT: is 99999999999, but it must be at most 86400"),
    ] {
        let f = Fixture::with_config(extra);
        for (p, text) in files {
            f.write(p, text);
        }
        let (code, out, _) = f.cli(&["check"]);
        assert_eq!(code, 1, "{extra}: {out}");
        assert!(out.contains(needle), "{extra}: {out}");
        let (code, _, err) = f.cli(&["run"]);
        assert_eq!(code, 2, "{extra}");
        assert!(err.contains(needle), "{extra}: {err}");
    }
}

/// The seed's own layout: air-nanny in `air-nanny/`, programs beside it (`../godbproxy/run.sh`),
/// the default allow-list (rootpath and the config directory).
#[test]
fn the_seed_layout_reposts_its_unchanged_configuration() {
    let f = Fixture::with_config("WORK_DIR: .\n");
    let script = f.script("godbproxy", "", None);
    std::fs::create_dir_all(f.path("godbproxy")).unwrap();
    std::fs::copy(&script, f.path("godbproxy/run.sh")).unwrap();
    f.program("godbproxy");
    let seed = json!({"name": "godbproxy", "priority": 3, "isInit": false, "isDaemon": true,
        "script": {"execPath": "../godbproxy/run.sh", "programFilePath": "/bin/godbproxy", "startCommand": "start", "stopCommand": "stop"},
        "healthCheck": {"isHealthCheck": true, "interval": 30, "start_period": 10, "retries": 3}});
    f.write_services(&json!([seed]));
    let n = f.start();
    n.wait_running("godbproxy");
    // Unchanged, and with another field changed: the path is the operator's, so it is allowed.
    n.ok("POST", "/task/set", Some(&seed.to_string()));
    let mut changed = seed.clone();
    changed["priority"] = json!(4);
    n.ok("POST", "/task/set", Some(&changed.to_string()));
    n.wait_running("godbproxy");
    // A new path outside the allowed directories is still refused, as is the same path for
    // another service.
    let mut other = seed.clone();
    other["name"] = json!("other");
    let (s, v) = n.call("POST", "/task/set", Some(&other.to_string()));
    assert_eq!(s, 403, "{v}");
}

#[test]
fn a_services_json_with_a_chinese_service_name_runs() {
    let f = Fixture::new();
    let mut svc = f.direct_service("数据处理-1", 0, &["--heartbeat", "1"]);
    svc["script"]["programFilePath"] = json!(f.program("dp"));
    f.write_services(&json!([svc]));
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    let n = f.start();
    let url_name = "%E6%95%B0%E6%8D%AE%E5%A4%84%E7%90%86-1";
    wait_until("数据处理-1 to run", Duration::from_secs(20), || {
        (n.ok("GET", &format!("/task/find?name={url_name}"), None)["State"] == 2).then_some(())
    });
    wait_until("its log", Duration::from_secs(10), || f.log("数据处理-1").contains("heartbeat").then_some(()));
    for bad in ["a/b", "..", "a\u{7}b", "a b"] {
        let mut s = f.direct_service("x", 0, &[]);
        s["name"] = json!(bad);
        assert_eq!(n.call("POST", "/task/set", Some(&s.to_string())).0, 400, "{bad:?}");
    }
}

#[test]
fn the_audit_trail_records_every_change_with_its_identity_and_survives_a_restart() {
    let f = Fixture::with_config("API_TOKEN_FILE: token\nAPI_READ_TOKEN_FILE: read\n");
    f.write("conf/token", "s3cret-token-0123456789\n");
    f.write("conf/read", "read-only-token-0123456789\n");
    let mut n = f.start();
    n.token = Some("s3cret-token-0123456789".into());
    n.ok("POST", "/task/set", Some(&f.direct_service("audited", 0, &[]).to_string()));
    n.ok("POST", "/task/stop?name=audited", None);
    let (s, _) = f.http("POST", "/task/start?name=audited", None, Some("read-only-token-0123456789"));
    assert_eq!(s, 403);
    let (s, _) = n.call("POST", "/task/set", Some("{\"name\": 1}"));
    assert_eq!(s, 400);
    assert_eq!(n.terminate().code(), Some(0));
    let mut n = f.start();
    n.token = Some("s3cret-token-0123456789".into());
    let trail = n.ok("GET", "/audit?limit=10", None);
    let rows: Vec<(String, String, String, u64)> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["endpoint"].as_str().unwrap().to_string(),
                r["identity"].as_str().unwrap().to_string(),
                r["service"].as_str().unwrap_or("-").to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = |e: &str, i: &str, s: &str, st: u64| (e.to_string(), i.to_string(), s.to_string(), st);
    assert_eq!(
        rows,
        vec![
            want("/task/set", "write", "audited", 200),
            want("/task/stop", "write", "audited", 200),
            want("/task/set", "write", "-", 400),
        ],
        "{trail}"
    );
    assert!(trail[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{trail}");
    assert!(trail[0]["time"].as_str().unwrap().ends_with('Z'), "{trail}");
    let (code, out, err) = f.cli(&["ctl", "audit"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/task/stop") && out.contains("write"), "{out}");
    drop(n);
}

#[test]
fn token_files_are_re_read_on_sighup() {
    let f = Fixture::with_config("API_TOKEN_FILE: token\n");
    f.write("conf/token", "first-token-0123456789\n");
    let mut n = f.start();
    assert_eq!(f.http("GET", "/task/get", None, Some("first-token-0123456789")).0, 200);
    f.write("conf/token", "second-token-0123456789\n");
    n.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the new token to be accepted", Duration::from_secs(10), || {
        (f.http("GET", "/task/get", None, Some("second-token-0123456789")).0 == 200).then_some(())
    });
    assert_eq!(f.http("GET", "/task/get", None, Some("first-token-0123456789")).0, 401);
    // A token file that became unusable keeps the token in force, loudly.
    f.write("conf/token", "short\n");
    n.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the refusal to be logged", Duration::from_secs(10), || {
        std::fs::read_to_string(f.path("nanny.log")).unwrap().contains("tokens not reloaded").then_some(())
    });
    assert_eq!(f.http("GET", "/task/get", None, Some("second-token-0123456789")).0, 200);
    assert_eq!(n.terminate().code(), Some(0));
}

/// root/bin/NAME as a link to an allowed copy of the demo program; returns its programFilePath.
fn linked_program(f: &Fixture, name: &str) -> String {
    f.program(&format!("{name}-real"));
    let _ = std::fs::remove_file(f.program_path(name));
    std::os::unix::fs::symlink(f.program_path(&format!("{name}-real")), f.program_path(name)).unwrap();
    format!("/bin/{name}")
}

/// A direct-mode service NAME whose program is [`linked_program`] `link`.
fn linked_service(f: &Fixture, name: &str, link: &str) -> Value {
    let mut svc = f.direct_service(name, 0, &[]);
    svc["script"]["programFilePath"] = json!(linked_program(f, link));
    svc
}

/// Turns root/bin/NAME to `target` (outside every allowed directory).
fn relink(f: &Fixture, name: &str, target: &Path) {
    std::fs::remove_file(f.program_path(name)).unwrap();
    std::os::unix::fs::symlink(target, f.program_path(name)).unwrap();
}

/// Waits until `name`'s start is refused by the allow-list (its LastError says so).
fn wait_refused(n: &crate::common::Nanny<'_>, name: &str) -> Value {
    wait_until(&format!("the start of {name} to be refused"), Duration::from_secs(20), || {
        let t = n.task(name);
        t["LastError"].as_str().is_some_and(|e| e.contains("refused by the allow-list")).then_some(t)
    })
}

/// Which entries requests wrote outlives air-nanny (`STATE_DIR/requested.json`): the boot after a
/// restart checks them again, while an entry the operator edits in services.json in between is
/// the operator's and runs as written. (Before, every entry was the operator's after a restart.)
#[test]
fn a_requested_entry_is_checked_again_at_the_boot_after_a_restart() {
    let f = Fixture::new();
    let marker = f.path("pwned");
    evil(&f.path("outside/evil"), &marker);
    let operators = f.path("operator-ran");
    evil(&f.path("outside/operators"), &operators);
    let mut n = f.start();
    for (name, link) in [("kept", "kept-link"), ("edited", "edited-link")] {
        let (status, v) = n.call("POST", "/serviceInfo/set", Some(&linked_service(&f, name, link).to_string()));
        assert_eq!(status, 200, "{v}");
    }
    assert!(n.terminate().success());
    relink(&f, "kept-link", &f.path("outside/evil"));
    relink(&f, "edited-link", &f.path("outside/operators"));
    let mut services: Value = serde_json::from_slice(&f.services_bytes()).unwrap();
    let edited = services.as_array_mut().unwrap().iter_mut().find(|s| s["name"] == "edited").unwrap();
    edited["script"]["args"] = json!(["--edited-by-hand"]);
    f.write_services(&services);
    let n = f.start();
    wait_refused(&n, "kept");
    wait_until("the operator's entry to run", Duration::from_secs(20), || operators.exists().then_some(()));
    assert!(!marker.exists(), "the program the requested entry's link was turned to ran");
}

/// A request that re-posts a running service's configuration unchanged (as seed clients do) makes
/// the entry that request's, and the next start of it — a respawn — is checked. (The running task
/// kept the operator's trust until a restart of air-nanny, while the store said otherwise.)
#[test]
fn a_running_entry_reposted_unchanged_is_checked_at_its_next_start() {
    let f = Fixture::new();
    let marker = f.path("pwned");
    evil(&f.path("outside/evil"), &marker);
    let svc = linked_service(&f, "reposted", "reposted-link");
    f.write_services(&json!([svc]));
    let n = f.start();
    n.wait_running("reposted");
    let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
    assert_eq!(status, 200, "{v}");
    relink(&f, "reposted-link", &f.path("outside/evil"));
    let pid = n.task("reposted")["Pids"][0].as_i64().unwrap();
    crate::common::kill9(pid);
    wait_refused(&n, "reposted");
    assert!(!marker.exists(), "the program the link was turned to ran");
}

#[test]
fn a_requested_entry_is_checked_again_when_it_starts_after_its_link_moved() {
    let f = Fixture::new();
    let marker = f.path("pwned");
    evil(&f.path("outside/evil"), &marker);
    let n = f.start();
    let svc = linked_service(&f, "moved", "moved");
    let (status, v) = n.call("POST", "/task/set", Some(&svc.to_string()));
    assert_eq!(status, 200, "{v}");
    n.wait_running("moved");
    n.ok("POST", "/task/stop?name=moved", None);
    relink(&f, "moved", &f.path("outside/evil"));
    let (status, _) = n.call("POST", "/task/start?name=moved", None);
    assert_ne!(status, 200, "a start of a link now outside the allowed directories succeeded");
    let t = wait_refused(&n, "moved");
    assert!(t["LastError"].as_str().unwrap().contains("script.programFilePath"), "{t}");
    assert!(!marker.exists(), "the program the link was turned to ran");
}

#[test]
fn an_entry_stored_by_serviceinfo_set_is_checked_again_when_a_reload_starts_it() {
    let f = Fixture::new();
    let marker = f.path("pwned");
    evil(&f.path("outside/evil"), &marker);
    let n = f.start();
    // Stored (checked now), not started: a reload applies it later.
    let svc = linked_service(&f, "stored", "stored");
    let (status, v) = n.call("POST", "/serviceInfo/set", Some(&svc.to_string()));
    assert_eq!(status, 200, "{v}");
    // The same for a service the operator has stopped: the reload gives it the entry without
    // starting it, and a start later must check it too.
    n.ok("POST", "/task/set", Some(&f.direct_service("held", 0, &[]).to_string()));
    n.wait_running("held");
    n.ok("POST", "/task/stop?name=held", None);
    let held = linked_service(&f, "held", "held-link");
    let (status, v) = n.call("POST", "/serviceInfo/set", Some(&held.to_string()));
    assert_eq!(status, 200, "{v}");
    relink(&f, "stored", &f.path("outside/evil"));
    relink(&f, "held-link", &f.path("outside/evil"));
    n.ok("POST", "/reload", None);
    wait_refused(&n, "stored");
    let (status, _) = n.call("POST", "/task/start?name=held", None);
    assert_ne!(status, 200, "a start of a link now outside the allowed directories succeeded");
    wait_refused(&n, "held");
    assert!(!marker.exists(), "the program the link was turned to ran");
}
