//! The engine's regression tests: each reproduction of the engine-core issue (a program started
//! twice, an operator stop undone during boot, a stop that could not interrupt a start, abandoned
//! restarts that kept restarting, boot moving on after one failure, temp files and state.json),
//! against the real binary with real scripts.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// A control script with this `start` body and a stop that kills the program by its path.
fn script_with_start(f: &Fixture, name: &str, start: &str) -> String {
    f.script_with(name, start, "pkill -TERM -f \"^$AIR_NANNY_PROGRAM\" ; exit 0")
}

fn count(records: &[String], line: &str) -> usize {
    records.iter().filter(|r| *r == line).count()
}

#[test]
fn a_start_script_that_fails_after_launching_the_program_does_not_start_it_twice() {
    let f = Fixture::new();
    let once = f.path("failed-once");
    let mut svc = f.script_service("twice", 0, false, "");
    // Like many real init scripts: the daemon is launched, then something else fails (here, the
    // first time only).
    svc["script"]["execPath"] = json!(script_with_start(
        &f,
        "twice",
        &format!(
            "nohup \"$AIR_NANNY_PROGRAM\" </dev/null >/dev/null 2>&1 &\n  [ -e {o} ] || {{ touch {o}; exit 1; }}",
            o = once.display()
        )
    ));
    f.write_services(&json!([svc]));
    let n = f.start();
    let mut most = 0;
    let t = wait_until("running after the failed start", Duration::from_secs(15), || {
        most = most.max(f.pids_of("twice").len());
        let t = n.task("twice");
        (t["State"] == 2 && t["StartFaultNum"] == 1).then_some(t)
    });
    assert_eq!(f.pids_of("twice").len(), 1, "one instance: {t}");
    assert_eq!(t["Pids"].as_array().unwrap().len(), 1, "{t}");
    assert!(most <= 1, "{most} instances at once");
    // The failed start stays the last error after the service runs (with its time).
    assert!(t["LastError"].as_str().unwrap_or("").contains("exit status 1"), "{t}");
}

#[test]
fn a_program_that_appears_only_after_the_start_timeout_is_never_running_twice() {
    let f = Fixture::new();
    let mut svc = f.script_service("late", 0, false, "");
    // The launcher waits longer than the start timeout before starting the program.
    svc["script"]["execPath"] =
        json!(script_with_start(&f, "late", "(sleep 2; exec \"$AIR_NANNY_PROGRAM\") </dev/null >/dev/null 2>&1 &"));
    svc["script"]["startTimeout"] = json!(1);
    f.write_services(&json!([svc]));
    let n = f.start();
    // Through timed-out starts and their retries, there is never more than one instance.
    let mut most = 0;
    wait_until("two timed-out starts", Duration::from_secs(30), || {
        most = most.max(f.pids_of("late").len());
        (n.task("late")["StartFaultNum"].as_u64() >= Some(2)).then_some(())
    });
    assert!(most <= 1, "{most} instances at once");
    assert!(n.task("late")["LastError"].as_str().unwrap().contains("within 1s"));
}

#[test]
fn an_operator_stop_or_delete_during_boot_stays_in_force() {
    let f = Fixture::new();
    let started = f.path("first-started");
    let mut first = f.script_service("first", 0, true, "");
    // The first group takes a while: it waits for a file the test writes.
    let gate = f.path("gate");
    first["script"]["execPath"] = json!(script_with_start(
        &f,
        "first",
        &format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.05; done; nohup \"$AIR_NANNY_PROGRAM\" </dev/null >/dev/null 2>&1 &",
            started.display(),
            gate.display()
        )
    ));
    f.write_services(&json!([
        first,
        f.script_service("parked", 5, false, ""),
        f.script_service("dropped", 5, false, "")
    ]));
    let mut n = f.start();
    wait_until("the first group starting", Duration::from_secs(10), || started.exists().then_some(()));
    // The second group has not started: the operator stops one service and removes another.
    let t = n.ok("POST", "/task/stop?name=parked", None);
    assert_eq!(t["State"], 0, "{t}");
    n.ok("DELETE", "/task/del?name=dropped", None);
    let state = std::fs::read_to_string(f.path("conf/state.json")).unwrap();
    assert!(state.contains("parked") && state.contains("dropped"), "written before the answer: {state}");
    std::fs::write(&gate, "").unwrap();
    f.wait_log("boot order complete", Duration::from_secs(15));
    let records = f.records();
    assert_eq!(count(&records, "script-start parked"), 0, "{records:?}");
    assert_eq!(count(&records, "script-start dropped"), 0, "{records:?}");
    assert!(f.pids_of("parked").is_empty() && f.pids_of("dropped").is_empty());
    assert_eq!(n.task("parked")["State"], 0);
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn a_stop_interrupts_a_slow_start_and_stops_what_it_launched() {
    let f = Fixture::new();
    let mut svc = f.script_service("slow", 0, false, "");
    let marker = f.path("slow-launching");
    // Launches the program at once, then takes 30 s to "finish" starting (the start timeout is 60 s).
    svc["script"]["execPath"] = json!(script_with_start(
        &f,
        "slow",
        &format!("nohup \"$AIR_NANNY_PROGRAM\" </dev/null >/dev/null 2>&1 &\n  touch {}; sleep 30", marker.display())
    ));
    svc["script"]["startTimeout"] = json!(60);
    f.write_services(&json!([svc]));
    let mut n = f.start();
    wait_until("the slow start under way", Duration::from_secs(10), || {
        (marker.exists() && !f.pids_of("slow").is_empty()).then_some(())
    });
    assert_eq!(n.task("slow")["State"], 1, "still starting");
    // The HTTP client gives up after 30 s: the stop must not wait out the start.
    let begun = Instant::now();
    let t = n.ok("POST", "/task/stop?name=slow", None);
    assert!(begun.elapsed() < Duration::from_secs(20), "the stop waited for the start");
    assert_eq!(t["State"], 0, "{t}");
    assert!(f.pids_of("slow").is_empty(), "what the start launched was stopped");
    assert!(n.task("slow")["Pids"].as_array().unwrap().is_empty());
    // The start command's `sleep 30` went with it.
    let leftovers = std::process::Command::new("pgrep").args(["-f", "^sleep 30$"]).output().unwrap();
    let ours: Vec<String> = String::from_utf8_lossy(&leftovers.stdout)
        .lines()
        .filter(|p| {
            let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&env).contains(&*f.path("conf").display().to_string())
                || String::from_utf8_lossy(&env).contains(&*f.root().display().to_string())
        })
        .map(str::to_string)
        .collect();
    assert!(ours.is_empty(), "the start command is still running: {ours:?}");
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn restarts_abandoned_by_their_clients_do_not_keep_the_service_restarting() {
    let f = Fixture::new();
    let mut svc = f.script_service("bouncy", 0, false, "");
    // Each start takes half a second, so requests pile up behind it.
    svc["script"]["execPath"] =
        json!(script_with_start(&f, "bouncy", "sleep 0.5; nohup \"$AIR_NANNY_PROGRAM\" </dev/null >/dev/null 2>&1 &"));
    f.write_services(&json!([svc]));
    let n = f.start();
    n.wait_running("bouncy");
    let before = count(&f.records(), "script-start bouncy");
    // Twenty clients ask for a restart and hang up after 0.2 s.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let port = f.port;
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.write_all(
                    b"POST /task/restart?name=bouncy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(200));
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    n.wait_running("bouncy");
    // A start queued behind them is answered once the service runs after every pending restart.
    n.ok("POST", "/task/start?name=bouncy", None);
    let t = n.task("bouncy");
    let restarts = count(&f.records(), "script-start bouncy") - before;
    assert!(restarts <= 2, "{restarts} restarts for 20 abandoned requests: {t}");
    assert!(t["Restarts"].as_u64().unwrap() <= 2, "{t}");
    // And none follow later: the service stays up with the same pid for several start durations.
    let pids = n.pids("bouncy");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(n.pids("bouncy"), pids, "restarted after its requesters had gone");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&f.records(), "script-start bouncy") - before, restarts);
}

#[test]
fn the_next_boot_group_waits_while_a_service_backs_off_after_a_failure() {
    let f = Fixture::new();
    let tries = f.path("tries");
    let mut first = f.script_service("first", 0, true, "");
    // Fails its first two starts, then starts.
    first["script"]["execPath"] = json!(script_with_start(
        &f,
        "first",
        &format!(
            "echo x >> {t}; [ $(wc -l < {t}) -ge 3 ] || exit 1\n  nohup \"$AIR_NANNY_PROGRAM\" </dev/null >/dev/null 2>&1 &",
            t = tries.display()
        )
    ));
    f.write_services(&json!([first, f.script_service("second", 5, false, "")]));
    let n = f.start();
    n.wait_running("second");
    let records = f.records();
    let firsts: Vec<usize> =
        records.iter().enumerate().filter(|(_, r)| *r == "script-start first").map(|(i, _)| i).collect();
    let second = records.iter().position(|r| r == "script-start second").unwrap();
    assert_eq!(firsts.len(), 3, "{records:?}");
    assert!(firsts.iter().all(|i| *i < second), "the second group started while the first backed off: {records:?}");
    assert_eq!(n.task("first")["State"], 2);
    // The order the boot used is the one the API and `check` show (one computation of it).
    assert_eq!(
        n.ok("GET", "/task/order", None),
        json!([{"isInit": true, "priority": 0, "services": ["first"]}, {"isInit": false, "priority": 5, "services": ["second"]}])
    );
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("start order: [init, priority 0: first] -> [priority 5: second]"), "{out}");
}

#[test]
fn temp_files_of_interrupted_writes_are_removed_at_start() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("kept", 0, &[])]));
    for name in [".services.json.tmp.4242", ".services.json.bak.tmp.17", ".state.json.tmp.99", ".requested.json.tmp.5"]
    {
        f.write(&format!("conf/{name}"), "half a write");
    }
    let mut n = f.start();
    n.wait_running("kept");
    let left: Vec<String> = std::fs::read_dir(f.path("conf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(n.terminate().code(), Some(0));
}

#[test]
fn a_corrupt_state_json_falls_back_to_its_backup_and_both_bad_refuse_to_start() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("a", 0, &[]), f.direct_service("b", 0, &[])]));
    let mut n = f.start();
    n.wait_running("a");
    n.wait_running("b");
    n.ok("POST", "/task/stop?name=a", None);
    n.ok("POST", "/task/stop?name=b", None);
    assert_eq!(n.terminate().code(), Some(0));
    // A power cut garbled state.json; its backup holds the decision before the last one.
    std::fs::write(f.path("conf/state.json"), "{\"stopped\": [\"a\", \"b").unwrap();
    let mut n = f.start();
    f.wait_log("boot order complete", Duration::from_secs(15));
    assert_eq!(n.task("a")["State"], 0, "the backup's decision holds: a stays stopped");
    assert!(f.pids_of("a").is_empty());
    assert!(std::fs::read_to_string(f.path("nanny.log")).unwrap().contains("USING THE BACKUP"));
    assert!(f.path("conf/state.json.corrupt").exists());
    assert_eq!(n.terminate().code(), Some(0));

    std::fs::write(f.path("conf/state.json"), "garbage").unwrap();
    std::fs::write(f.path("conf/state.json.bak"), "garbage").unwrap();
    let mut n = f.spawn(&[], None);
    let status = n.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(f.path("nanny.log")).unwrap();
    assert!(log.contains("state.json is unusable"), "{log}");
    assert!(f.pids_of("a").is_empty() && f.pids_of("b").is_empty(), "nothing was started");
}

#[test]
fn a_decision_that_cannot_be_written_is_an_error_and_changes_nothing() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("steady", 0, &[])]));
    let mut n = f.start();
    let pids = n.wait_running("steady");
    // state.json cannot be replaced: a directory stands where it would go.
    std::fs::create_dir(f.path("conf/state.json")).unwrap();
    let (status, v) = n.call("POST", "/task/stop?name=steady", None);
    assert_eq!(status, 500, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("state.json"), "{v}");
    assert_eq!(n.pids("steady"), pids, "still running: nothing changed");
    let (status, _) = n.call("DELETE", "/task/del?name=steady", None);
    assert_eq!(status, 500);
    assert_eq!(n.task("steady")["State"], 2);
    std::fs::remove_dir(f.path("conf/state.json")).unwrap();
    assert_eq!(n.terminate().code(), Some(0));
}
