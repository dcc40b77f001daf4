//! `air-nanny check`: exit 0 on the demo, exit 1 naming file, service and field on broken input.

use crate::common::Fixture;

fn fixture_with(services: &str) -> Fixture {
    let f = Fixture::new();
    f.write("conf/services.json", services);
    f
}

fn assert_invalid(f: &Fixture, needles: &[&str]) {
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 1, "must exit 1:\n{out}");
    for n in needles {
        assert!(out.contains(n), "missing {n:?} in:\n{out}");
    }
}

#[test]
fn the_demo_configuration_is_valid() {
    let out = std::process::Command::new(crate::common::AIR_NANNY)
        .args(["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/conf/config.yaml")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("5 service(s)"), "{text}");
    assert!(text.contains("[init, priority 0: timesync] -> [priority 1: sensor-bus]"), "{text}");
}

#[test]
fn malformed_json_is_named() {
    let f = fixture_with("[{\"name\": \"a\",");
    assert_invalid(&f, &["services.json: malformed JSON"]);
}

#[test]
fn a_duplicate_name_is_named() {
    let one = r#"{"name":"radar","script":{"programFilePath":"/bin/radar"}}"#;
    let f = fixture_with(&format!("[{one},{one}]"));
    assert_invalid(&f, &["services.json: radar: name: duplicate"]);
}

#[test]
fn neither_script_nor_program_is_named() {
    let f = fixture_with(r#"[{"name":"radar","script":{"startCommand":"start"}}]"#);
    assert_invalid(&f, &["services.json: radar: script.programFilePath: missing"]);
}

#[test]
fn every_problem_is_printed_not_just_the_first() {
    let f = fixture_with(
        r#"[{"name":"a b","script":{"programFilePath":"/x"}},{"name":"c","priority":"high","script":{"programFilePath":"/y"},"healthCheck":{"interval":0}}]"#,
    );
    assert_invalid(&f, &["a b: name: contains", "c: priority: expected an integer", "c: healthCheck.interval: is 0"]);
}

#[test]
fn port_zero_is_named() {
    let f = Fixture::new();
    let cfg = std::fs::read_to_string(f.config()).unwrap();
    let cfg = cfg.replace(&format!("SERVER_PORT: {}", f.port), "SERVER_PORT: 0");
    f.write("conf/config.yaml", &cfg);
    assert_invalid(&f, &["config.yaml: SERVER_PORT: is 0"]);
}

#[test]
fn a_missing_public_file_is_named() {
    let f = Fixture::new();
    std::fs::remove_file(f.path("conf/public.yaml")).unwrap();
    assert_invalid(&f, &["public.yaml: cannot read the public configuration (PUBLIC_CONF)"]);
}

#[test]
fn an_unknown_key_is_a_warning_only() {
    let f = Fixture::with_config("COLOR: blue\n");
    f.write("conf/services.json", r#"[{"name":"a","script":{"programFilePath":"/a"},"owner":"ops"}]"#);
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: ") && out.contains("COLOR: unknown key"), "{out}");
    assert!(out.contains("services.json: a: owner: unknown field"), "{out}");
}

#[test]
fn run_refuses_a_broken_configuration_and_says_why() {
    let f = fixture_with("[{\"name\": 1}]");
    std::fs::write(f.path("conf/services.json.bak"), "also broken").unwrap();
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 2);
    assert!(err.contains("services.json is unusable") && err.contains("services.json.bak"), "{err}");
}

#[test]
fn run_falls_back_to_the_backup_loudly() {
    let f = Fixture::new();
    let svc = f.direct_service("fallback", 0, &[]);
    f.write("conf/services.json.bak", &serde_json::to_string(&serde_json::json!([svc])).unwrap());
    f.write("conf/services.json", "[{ truncated");
    let mut n = f.start();
    n.wait_running("fallback");
    assert_eq!(n.terminate().code(), Some(0));
    let log = std::fs::read_to_string(f.path("nanny.log")).unwrap();
    assert!(log.contains("USING THE BACKUP"), "{log}");
    assert!(f.path("conf/services.json.corrupt").exists());
}

#[test]
fn version_and_help_are_readable() {
    let out = std::process::Command::new(crate::common::AIR_NANNY).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("air-nanny "));
    let out = std::process::Command::new(crate::common::AIR_NANNY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "ctl", "--config"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn services_sharing_a_program_are_warned_about_without_cgroups() {
    let f = Fixture::with_config("CGROUPS: off\n");
    let bridge = f.program("bridge");
    let mut a = f.direct_service("port1", 0, &["--heartbeat", "1"]);
    a["script"]["programFilePath"] = serde_json::json!(bridge);
    let mut b = f.direct_service("port2", 0, &["--heartbeat", "2"]);
    b["script"]["programFilePath"] = serde_json::json!(bridge);
    f.write_services(&serde_json::json!([a, b]));
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 0, "a warning, not an error:\n{out}");
    assert!(out.contains("services port1, port2 share") && out.contains("/bin/bridge"), "{out}");
}
