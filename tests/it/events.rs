//! The event history end to end: why a service restarted is answered by `/task/events` and
//! `ctl events`, with its cause, also after air-nanny itself restarted; health is visible while it
//! fails (the streak, the check's output, `unhealthy` before the restart).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{kill9, wait_until, Fixture, AIR_NANNY};

fn events(n: &crate::common::Nanny<'_>, name: &str) -> Vec<Value> {
    n.ok("GET", &format!("/task/events?name={name}&limit=1000"), None)["events"].as_array().unwrap().clone()
}

fn has(events: &[Value], kind: &str, text: &str) -> bool {
    events.iter().any(|e| e["kind"] == kind && e["message"].as_str().unwrap_or("").contains(text))
}

#[test]
fn a_kill_a_failing_check_and_an_operator_stop_are_in_the_history_across_restarts() {
    // A stop of `checked` takes seconds (it ignores SIGTERM): its unhealthy state is seen meanwhile.
    let f = Fixture::new();
    let sick = f.path("sick");
    let mut checked = f.direct_service("checked", 0, &["--ignore-term"]);
    checked["healthCheck"] = json!({
        "isHealthCheck": true, "interval": 1, "timeout": 2, "start_period": 0, "retries": 2,
        "test": ["CMD-SHELL", format!("if [ -e {} ]; then echo sensor offline; exit 1; fi", sick.display())]
    });
    f.write_services(&json!([f.script_service("tele", 0, false, "--heartbeat-ms 20"), checked]));
    let mut n = f.start();
    let first = n.wait_running("tele");
    n.wait_running("checked");

    // 1. kill -9 of a script-mode program.
    kill9(first[0]);
    wait_until("tele restarted", Duration::from_secs(15), || {
        let p = n.pids("tele");
        (!p.is_empty() && p != first).then_some(())
    });
    let t = n.task("tele");
    assert_eq!(t["LastExit"], "killed by SIGKILL", "{t}");
    assert!(t["LastExitTime"].as_u64().is_some(), "{t}");
    // The respawn's notes are written after its clone (see `Later` in the service task), still in
    // the order they were decided: the end, the restart, the start command.
    let log = f.log("tele");
    let after = &log[log.find("program ended (killed by SIGKILL)").unwrap_or_else(|| panic!("{log}"))..];
    let restarting = after.find("restarting now (the program ended)").unwrap_or_else(|| panic!("{log}"));
    assert!(after[restarting..].contains("[air-nanny] start: "), "{log}");

    // 2. A health check that starts failing: the streak and the check's output are visible, then
    // `unhealthy` while it is stopped for its restart.
    std::fs::write(&sick, "").unwrap();
    let t = wait_until("a failed check", Duration::from_secs(10), || {
        let t = n.task("checked");
        (t["HealthStreak"] == 1).then_some(t)
    });
    assert_eq!(t["LastCheck"]["Ok"], false, "{t}");
    assert_eq!(t["LastCheck"]["Output"], "sensor offline", "{t}");
    assert!(t["LastCheck"]["DurationMs"].as_u64().is_some(), "{t}");
    let t = wait_until("unhealthy", Duration::from_secs(10), || {
        let t = n.task("checked");
        (t["Health"] == "unhealthy").then_some(t)
    });
    assert_eq!(t["StateName"], "stopping", "unhealthy is shown before the restart: {t}");
    std::fs::remove_file(&sick).unwrap();
    wait_until("healthy again", Duration::from_secs(20), || (n.task("checked")["Health"] == "healthy").then_some(()));
    // The last error stays after the recovery (here the forced stop of a program that ignored
    // SIGTERM, which came after "unhealthy"), with its time.
    let t = n.task("checked");
    assert!(t["LastError"].as_str().is_some_and(|e| !e.is_empty()) && t["LastErrorTime"].is_u64(), "{t}");

    // 3. An operator stop, over ctl.
    let (code, _, err) = f.cli(&["ctl", "stop", "tele"]);
    assert_eq!(code, 0, "{err}");

    let check_history = |n: &crate::common::Nanny<'_>| {
        let tele = events(n, "tele");
        assert!(has(&tele, "exit", "killed by SIGKILL"), "{tele:?}");
        assert!(has(&tele, "restart", "restarting now (the program ended)"), "{tele:?}");
        assert!(has(&tele, "operator", "POST /task/stop by anonymous from 127.0.0.1"), "{tele:?}");
        assert!(tele.iter().any(|e| e["kind"] == "state" && e["state"] == "stopped"), "{tele:?}");
        let seqs: Vec<u64> = tele.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let checked = events(n, "checked");
        let failed = checked
            .iter()
            .find(|e| e["kind"] == "health" && e["message"].as_str().unwrap().contains("health check failed (1/2)"))
            .unwrap_or_else(|| panic!("{checked:?}"));
        assert_eq!(failed["output"], "sensor offline");
        assert!(has(&checked, "health", "unhealthy after 2 failed checks"), "{checked:?}");
        assert!(has(&checked, "restart", "unhealthy: restarting"), "{checked:?}");
        assert!(has(&checked, "health", "healthy"), "{checked:?}");
        tele.last().unwrap()["seq"].as_u64().unwrap()
    };
    let last = check_history(&n);
    let (code, out, err) = f.cli(&["ctl", "events", "tele"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("killed by SIGKILL") && out.contains("POST /task/stop"), "{out}");

    // air-nanny restarts: the history is still there, and numbers on.
    // (Exit status 1: `checked` ignores SIGTERM, so its stop needed force.)
    assert_eq!(n.terminate().code(), Some(1));
    let n = f.start();
    n.wait_running("checked");
    check_history(&n);
    let newer = n.ok("GET", &format!("/task/events?name=tele&since={last}"), None);
    assert!(newer["events"].as_array().unwrap().iter().all(|e| e["seq"].as_u64().unwrap() > last), "{newer}");
}

#[test]
fn ctl_events_follows_and_the_api_checks_its_parameters() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("svc", 0, &[])]));
    let n = f.start();
    let first = n.wait_running("svc");
    let mut follow = Command::new(AIR_NANNY)
        .args(["ctl", "events", "svc", "-f", "-n", "5", "--config"])
        .arg(f.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    // What was there is printed first; then a kill shows up as it happens.
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("state") || line.contains("operator"), "{line}");
    kill9(first[0]);
    let seen = (0..50).map_while(|_| lines.next().and_then(Result::ok)).find(|l| l.contains("killed by SIGKILL"));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.is_some(), "ctl events -f did not show the kill");

    for (query, field) in [("limit=0", "limit"), ("limit=1001", "limit"), ("since=-1", "since"), ("wait=31", "wait")] {
        let (status, body) = n.call("GET", &format!("/task/events?name=svc&{query}"), None);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["msg"].as_str().unwrap().starts_with(field), "{query}: {body}");
    }
    let (status, _) = n.call("GET", "/task/events?name=nothing", None);
    assert_eq!(status, 404);
    // A long-poll with nothing newer answers empty when its time is up.
    let last = n.ok("GET", "/task/events?name=svc", None)["events"].as_array().unwrap().last().unwrap()["seq"].clone();
    let started = std::time::Instant::now();
    let v = n.ok("GET", &format!("/task/events?name=svc&since={last}&wait=1"), None);
    assert!(v["events"].as_array().unwrap().is_empty(), "{v}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
}
