//! The supervision engine end to end: start order, respawn on death, backoff, health checks,
//! orderly shutdown, adoption after a crash of air-nanny, SIGHUP reload, persisted operator stops.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::{alive, kill9, wait_until, Fixture};

/// Position of the first record line equal to `line`.
fn pos(records: &[String], line: &str) -> usize {
    records.iter().position(|r| r == line).unwrap_or_else(|| panic!("{line:?} not in {records:?}"))
}

/// Zombie children of `parent`.
fn zombies_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            (f[0] == "Z" && f[1] == parent.to_string()).then_some(pid)
        })
        .collect()
}

#[test]
fn start_order_then_reverse_stop_and_no_orphan() {
    let f = Fixture::with_config("GROUP_START_TIMEOUT: 20\n");
    // The init service has the highest priority number but must still come first.
    f.write_services(&json!([
        f.script_service("late", 2, false, ""),
        f.script_service("mid-a", 1, false, ""),
        f.script_service("boot", 9, true, ""),
        f.script_service("mid-b", 1, false, ""),
    ]));
    let mut n = f.start();
    for s in ["boot", "mid-a", "mid-b", "late"] {
        n.wait_running(s);
    }
    let r = f.records();
    let boot = pos(&r, "script-start boot");
    let (a, b) = (pos(&r, "script-start mid-a"), pos(&r, "script-start mid-b"));
    let late = pos(&r, "script-start late");
    assert!(boot < a && boot < b, "init first: {r:?}");
    assert!(a < late && b < late, "a group waits for the previous one: {r:?}");

    let status = n.terminate();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(f.path("nanny.log")).unwrap());
    let r = f.records();
    let stop_late = pos(&r, "script-stop late");
    let (sa, sb) = (pos(&r, "script-stop mid-a"), pos(&r, "script-stop mid-b"));
    let stop_boot = pos(&r, "script-stop boot");
    assert!(stop_late < sa && stop_late < sb && sa < stop_boot && sb < stop_boot, "reverse order: {r:?}");
    for s in ["boot", "mid-a", "mid-b", "late"] {
        assert!(f.pids_of(s).is_empty(), "{s} left running");
    }
}

#[test]
fn a_killed_daemon_is_respawned_in_both_modes() {
    let f = Fixture::new();
    f.write_services(&json!([f.script_service("scripted", 0, false, ""), f.direct_service("direct", 0, &[])]));
    let n = f.start();
    for name in ["scripted", "direct"] {
        let before = n.wait_running(name);
        kill9(before[0]);
        let after = wait_until(&format!("{name} to be respawned"), Duration::from_secs(10), || {
            let t = n.task(name);
            let pids: Vec<i64> = t["Pids"].as_array().unwrap().iter().filter_map(|p| p.as_i64()).collect();
            (t["State"] == 2 && !pids.is_empty() && !pids.contains(&before[0])).then_some(pids)
        });
        assert_eq!(f.pids_of(name).len(), 1, "exactly one instance of {name}");
        assert!(alive(after[0]));
        assert_eq!(n.task(name)["Restarts"], 1);
        let log = f.log(name);
        // Driven by the death itself: the first restart has no backoff delay and no timer.
        assert!(log.contains("ended") && !log.contains("restarting in"), "{log}");
    }
    assert!(zombies_of(n.pid()).is_empty(), "every child is reaped");
    assert!(n.task("direct")["LastExit"].as_str().unwrap().contains("SIGKILL"));
}

#[test]
fn a_crash_loop_backs_off_and_a_one_shot_stays_down() {
    let f = Fixture::new();
    let mut crashy = f.direct_service("crashy", 0, &["--exit-after", "0", "--exit-code", "3"]);
    crashy["isDaemon"] = json!(true);
    let mut once = f.direct_service("once", 0, &[]);
    once["isDaemon"] = json!(false);
    f.write_services(&json!([crashy, once]));
    let n = f.start();
    // The delays announced in the log grow: 100 ms base, doubling, capped at 2 s.
    let delays = wait_until("three backoff delays", Duration::from_secs(20), || {
        let d: Vec<u64> = f
            .log("crashy")
            .lines()
            .filter_map(|l| l.split_once("[air-nanny] restarting in ")?.1.split_once(" ms")?.0.parse().ok())
            .collect();
        (d.len() >= 3).then_some(d)
    });
    assert!(delays[1] > delays[0] && delays[2] > delays[1], "backoff grows: {delays:?}");
    assert!(n.task("crashy")["LastExit"].as_str().unwrap().contains("exit status 3"));

    let pid = n.wait_running("once")[0];
    kill9(pid);
    let t = n.wait_state("once", 6);
    assert!(t["Pids"].as_array().unwrap().is_empty());
    assert!(f.pids_of("once").is_empty(), "a non-daemon service is not restarted");
    assert_eq!(t["Restarts"], 0);
}

#[test]
fn a_failing_health_check_restarts_after_retries() {
    let f = Fixture::new();
    let sick = f.path("sick");
    let mut svc = f.direct_service("checked", 0, &[]);
    svc["healthCheck"] = json!({
        "isHealthCheck": true, "interval": 1, "timeout": 2, "start_period": 0, "retries": 2,
        "test": ["CMD-SHELL", format!("test ! -e {}", sick.display())]
    });
    f.write_services(&json!([svc]));
    let n = f.start();
    let first = n.wait_running("checked");
    wait_until("healthy", Duration::from_secs(10), || (n.task("checked")["Health"] == "healthy").then_some(()));
    std::fs::write(&sick, "").unwrap();
    let second = wait_until("a restart after two failed checks", Duration::from_secs(20), || {
        let p = n.pids("checked");
        (!p.is_empty() && p != first).then_some(p)
    });
    std::fs::remove_file(&sick).unwrap();
    let log = f.log("checked");
    let fail1 = log.find("health check failed (1/2)").expect(&log);
    let fail2 = log.find("health check failed (2/2)").expect(&log);
    let restart = log.find("unhealthy: restarting").expect(&log);
    assert!(fail1 < fail2 && fail2 < restart, "{log}");
    assert!(!alive(first[0]) && alive(second[0]));
}

#[test]
fn failures_during_start_period_do_not_count() {
    let f = Fixture::new();
    let ready = f.path("ready");
    let mut svc = f.direct_service("slowboot", 0, &[]);
    // Fails until the `ready` file exists; retries 1 would restart at once if failures counted.
    svc["healthCheck"] = json!({
        "isHealthCheck": true, "interval": 1, "timeout": 2, "start_period": 30, "start_interval": 1, "retries": 1,
        "test": ["CMD-SHELL", format!("test -e {}", ready.display())]
    });
    f.write_services(&json!([svc]));
    let n = f.start();
    let pids = n.wait_running("slowboot");
    wait_until("two uncounted failures", Duration::from_secs(15), || {
        (f.log("slowboot").matches("during start_period (not counted)").count() >= 2).then_some(())
    });
    assert_eq!(n.pids("slowboot"), pids, "not restarted during start_period");
    assert_eq!(n.task("slowboot")["Health"], "starting");
    std::fs::write(&ready, "").unwrap();
    wait_until("healthy", Duration::from_secs(10), || (n.task("slowboot")["Health"] == "healthy").then_some(()));
    // A success ends the start period: the next failure counts, and with retries 1 it restarts.
    std::fs::remove_file(&ready).unwrap();
    wait_until("a restart once the start period ended", Duration::from_secs(15), || {
        let p = n.pids("slowboot");
        (!p.is_empty() && p != pids).then_some(())
    });
}

#[test]
fn a_stop_that_completes_by_force_answers_200_and_is_counted() {
    let f = Fixture::with_config("");
    let mut svc = f.script_service("stubborn", 0, false, "--ignore-term");
    svc["script"]["execPath"] = json!(f.script("stubborn", "--ignore-term", Some("sleep 1000")));
    svc["script"]["stopTimeout"] = json!(1);
    f.write_services(&json!([svc]));
    let mut n = f.start();
    let pid = n.wait_running("stubborn")[0];
    // The service is stopped, which is what was asked: 200, with the fault counted and explained.
    let (status, v) = n.call("POST", "/task/stop?name=stubborn", None);
    assert_eq!(status, 200, "{v}");
    let t = &v["data"];
    assert_eq!((t["State"].as_u64(), t["StopFaultNum"].as_u64()), (Some(0), Some(1)), "{t}");
    assert!(t["LastError"].as_str().unwrap().contains("did not finish in time"), "{t}");
    assert!(!alive(pid), "the program was killed");
    assert!(f.pids_of("stubborn").is_empty());
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn sigterm_with_a_stop_fault_exits_non_zero_and_leaves_nothing() {
    let f = Fixture::new();
    let mut svc = f.direct_service("deaf", 0, &["--ignore-term"]);
    svc["script"]["stopTimeout"] = json!(1);
    f.write_services(&json!([svc]));
    let mut n = f.start();
    let pid = n.wait_running("deaf")[0];
    let status = n.terminate();
    assert_eq!(status.code(), Some(1));
    assert!(!alive(pid));
}

#[test]
fn after_kill_9_of_air_nanny_programs_are_adopted_not_duplicated() {
    let f = Fixture::new();
    f.write_services(&json!([f.script_service("scripted", 0, false, ""), f.direct_service("direct", 1, &[])]));
    let mut n = f.start();
    let s1 = n.wait_running("scripted");
    let d1 = n.wait_running("direct");
    n.kill9();
    assert!(alive(s1[0]) && alive(d1[0]), "services survive a crash of air-nanny");
    let starts_before = f.records().iter().filter(|r| r.starts_with("script-start")).count();
    let mut n = f.start();
    assert_eq!(n.wait_running("scripted"), s1);
    assert_eq!(n.wait_running("direct"), d1);
    assert_eq!(f.pids_of("scripted").len(), 1);
    assert_eq!(f.pids_of("direct").len(), 1);
    assert_eq!(
        f.records().iter().filter(|r| r.starts_with("script-start")).count(),
        starts_before,
        "not started twice"
    );
    // An adopted program is still watched: its death is seen and it is respawned.
    kill9(s1[0]);
    wait_until("the adopted program to be respawned", Duration::from_secs(10), || {
        let p = n.pids("scripted");
        (!p.is_empty() && p != s1).then_some(())
    });
    assert_eq!(n.terminate().code(), Some(0));
    assert!(f.pids_of("direct").is_empty() && f.pids_of("scripted").is_empty());
}

#[test]
fn sighup_restarts_only_the_changed_service() {
    let f = Fixture::new();
    let a = f.direct_service("steady", 0, &[]);
    let b = f.direct_service("edited", 0, &[]);
    f.write_services(&json!([a, b]));
    let n = f.start();
    let steady = n.wait_running("steady");
    let edited = n.wait_running("edited");
    let mut b2 = b.clone();
    b2["script"]["args"] = json!(["--heartbeat", "2"]);
    let added = f.direct_service("added", 0, &[]);
    f.write_services(&json!([a, b2, added]));
    n.signal(Signal::SIGHUP);
    let new_edited = wait_until("the edited service to restart", Duration::from_secs(10), || {
        let p = n.pids("edited");
        (!p.is_empty() && p != edited).then_some(p)
    });
    n.wait_running("added");
    assert_eq!(n.pids("steady"), steady, "untouched services keep their pids");
    assert!(alive(new_edited[0]));
    assert_eq!(n.task("edited")["ServiceInfo"]["script"]["args"], json!(["--heartbeat", "2"]));

    // A broken file on SIGHUP changes nothing.
    f.write("conf/services.json", "[{ broken");
    n.signal(Signal::SIGHUP);
    wait_until("the refusal to be logged", Duration::from_secs(10), || {
        std::fs::read_to_string(f.path("nanny.log")).unwrap().contains("reload refused").then_some(())
    });
    assert_eq!(n.pids("steady"), steady);
    assert_eq!(n.ok("GET", "/task/get", None).as_array().unwrap().len(), 3);
}

#[test]
fn an_operator_stop_survives_a_restart_of_air_nanny() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("kept", 0, &[]), f.direct_service("parked", 0, &[])]));
    let mut n = f.start();
    n.wait_running("kept");
    n.wait_running("parked");
    n.ok("POST", "/task/stop?name=parked", None);
    assert!(f.pids_of("parked").is_empty());
    // A reload that changes the stopped service gives it the new configuration, without starting it.
    let mut parked = f.direct_service("parked", 0, &["--heartbeat", "7"]);
    parked["priority"] = json!(0);
    f.write_services(&json!([f.direct_service("kept", 0, &[]), parked]));
    let summary = n.ok("POST", "/reload", None);
    assert_eq!(summary["changed"], json!(["parked"]));
    wait_until("the new configuration", Duration::from_secs(10), || {
        (n.task("parked")["ServiceInfo"]["script"]["args"] == json!(["--heartbeat", "7"])).then_some(())
    });
    assert_eq!(n.task("parked")["State"], 0);
    assert!(f.pids_of("parked").is_empty(), "still stopped after the reload");
    assert_eq!(n.terminate().code(), Some(0));

    let mut n = f.start();
    n.wait_running("kept");
    let t = n.task("parked");
    assert_eq!(t["State"], 0, "{t}");
    assert!(f.pids_of("parked").is_empty(), "a service stopped by the operator stays stopped");
    n.ok("POST", "/task/start?name=parked", None);
    n.wait_running("parked");
    assert_eq!(n.terminate().code(), Some(0));
    let mut n = f.start();
    n.wait_running("parked");
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn a_failed_start_is_counted() {
    let f = Fixture::new();
    let mut svc = f.script_service("broken", 0, false, "");
    svc["script"]["execPath"] = json!(f.path("scripts/missing.sh").display().to_string());
    f.write_services(&json!([svc]));
    let n = f.start();
    let t = wait_until("a start fault", Duration::from_secs(10), || {
        let t = n.task("broken");
        (t["StartFaultNum"].as_u64().unwrap_or(0) >= 1).then_some(t)
    });
    assert!(t["LastError"].as_str().unwrap().contains("cannot run"), "{t}");
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping_and_children_do_not() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("notified", 0, &[])]));
    let sock_path = f.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut n = f.start_with_env(&[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")]);
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while !(heard.iter().any(|m: &String| m.starts_with("READY=1")) && heard.iter().any(|m| m == "WATCHDOG=1")) {
        let len = sock.recv(&mut buf).expect("a notification within 20 s");
        heard.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    // Readiness comes once the boot order has completed: the service runs by then.
    assert_eq!(n.task("notified")["State"], 2);
    let pid = n.pids("notified")[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET"), "a child must not inherit NOTIFY_SOCKET");
    assert_eq!(n.terminate().code(), Some(0));
    loop {
        let len = sock.recv(&mut buf).expect("STOPPING=1");
        if &buf[..len] == b"STOPPING=1" {
            break;
        }
    }
}

#[test]
fn a_start_limit_gives_up_and_says_so() {
    let f = Fixture::with_config("START_LIMIT: 2\n");
    f.write_services(&json!([f.direct_service("doomed", 0, &["--exit-after", "0", "--exit-code", "1"])]));
    let n = f.start();
    let t = n.wait_state("doomed", 5);
    assert!(t["LastError"].as_str().unwrap().contains("gave up after 2 consecutive failures"), "{t}");
    assert_eq!(t["Restarts"], 1, "two runs: the first start and one restart");
    assert!(f.pids_of("doomed").is_empty());
}

#[test]
fn direct_mode_runs_as_the_user_with_the_env_and_stops_with_the_stop_signal() {
    let f = Fixture::new();
    // The temp directory is private to root; the program must be reachable for `nobody`.
    std::fs::set_permissions(f.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut svc = f.direct_service("tuned", 0, &["--ignore-term"]);
    svc["script"]["user"] = json!("nobody");
    svc["script"]["env"] = json!({"FLIGHT_PHASE": "cruise"});
    svc["script"]["stopSignal"] = json!("SIGINT");
    f.write_services(&json!([svc]));
    let n = f.start();
    let pid = n.wait_running("tuned")[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(uid, air_nanny::process::lookup_user("nobody").unwrap().0.to_string());
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    assert!(environ.split('\0').any(|e| e == "FLIGHT_PHASE=cruise"), "{environ}");
    // It ignores SIGTERM, so only the configured SIGINT stops it cleanly (no fault, no SIGKILL).
    let t = n.ok("POST", "/task/stop?name=tuned", None);
    assert_eq!((t["State"].as_u64(), t["StopFaultNum"].as_u64()), (Some(0), Some(0)), "{t}");
    assert!(!alive(pid));
}

#[test]
fn a_removed_task_stays_unsupervised_across_a_restart_until_started() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("kept", 0, &[]), f.direct_service("dropped", 0, &[])]));
    let mut n = f.start();
    n.wait_running("kept");
    n.wait_running("dropped");
    n.ok("DELETE", "/task/del?name=dropped", None);
    assert!(f.pids_of("dropped").is_empty());
    assert_eq!(n.terminate().code(), Some(0));
    let mut n = f.start();
    n.wait_running("kept");
    let names: Vec<String> = n
        .ok("GET", "/task/get", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ServiceInfo"]["name"].to_string())
        .collect();
    assert_eq!(names, vec!["\"kept\""], "the removed task is not supervised after a restart");
    assert!(f.pids_of("dropped").is_empty());
    assert_eq!(n.ok("GET", "/serviceInfo/get", None).as_array().unwrap().len(), 2, "its configuration stayed");
    n.ok("POST", "/task/start?name=dropped", None);
    n.wait_running("dropped");
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn sigterm_during_a_slow_start_still_stops_everything() {
    let f = Fixture::new();
    let started = f.path("slow-started");
    // The fixture's service, with its control script replaced by one whose start is slow.
    let svc = f.script_service("slow", 0, false, "");
    let script = f.path("scripts/slow.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in\nstart) touch {started}; sleep 1; nohup \"$AIR_NANNY_PROGRAM\" </dev/null >/dev/null 2>&1 & ;;\nstop) pkill -f \"$AIR_NANNY_PROGRAM\" ;;\nesac\n",
            started = started.display()
        ),
    )
    .unwrap();
    f.write_services(&json!([svc]));
    let mut n = f.start();
    wait_until("the start script to be running", Duration::from_secs(10), || started.exists().then_some(()));
    // The stop signal arrives while the start command is still running.
    let status = n.terminate();
    assert_eq!(status.code(), Some(0), "the stop after the slow start was clean");
    assert!(f.pids_of("slow").is_empty(), "nothing of the service is left");
}
