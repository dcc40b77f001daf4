//! Following air-nanny live, as the console and `ctl logs -f` do: the task list long-polls on a
//! count of changes (`X-Tasks-Version`), an operator's stop is shown as such (`OperatorStop`, also
//! after a restart of air-nanny), and a service's log is followed over the API across rotations.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{wait_until, Fixture, AIR_NANNY};

/// A GET over a plain socket: (status, the X-Tasks-Version header, the body as JSON).
fn get(port: u16, path: &str) -> (u16, Option<u64>, Value) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = head
        .lines()
        .find_map(|l| l.strip_prefix("x-tasks-version: ").or_else(|| l.strip_prefix("X-Tasks-Version: ")))
        .and_then(|v| v.trim().parse().ok());
    (status, version, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn task<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["data"].as_array().unwrap().iter().find(|t| t["ServiceInfo"]["name"] == name).unwrap()
}

#[test]
fn the_task_list_long_polls_for_the_next_change_and_shows_an_operator_stop() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("nav", 0, &[]), f.direct_service("gps", 1, &[])]));
    let mut n = f.start();
    n.wait_running("nav");
    n.wait_running("gps");
    let (status, version, list) = get(f.port, "/task/get");
    assert_eq!(status, 200);
    let v0 = version.expect("X-Tasks-Version");
    assert!(task(&list, "nav").get("OperatorStop").is_none(), "{list}");

    // Nothing changes: the wait ends with the same version.
    let (status, same, _) = get(f.port, &format!("/task/get?since={v0}&wait=1"));
    assert_eq!((status, same), (200, Some(v0)));

    // A change answers a waiting request at once, long before its wait is up.
    let port = f.port;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let answer = get(port, &format!("/task/get?since={v0}&wait=30"));
        let _ = tx.send((answer, started.elapsed()));
    });
    // The request is waiting (nothing has changed); then the operator stops nav.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "answered before any change");
    n.ok("POST", "/task/stop?name=nav", None);
    let ((status, v1, _), took) = rx.recv_timeout(Duration::from_secs(20)).expect("the long-poll answered");
    assert_eq!(status, 200);
    assert!(v1.unwrap() > v0, "a new version: {v1:?} after {v0}");
    assert!(took < Duration::from_secs(20), "answered at the change, not at the end of its wait: {took:?}");

    // The operator's stop is shown as such (an exit or a shutdown is not).
    let (_, _, list) = get(f.port, "/task/get");
    assert_eq!(task(&list, "nav")["State"], 0);
    assert_eq!(task(&list, "nav")["OperatorStop"], true, "{list}");
    assert_eq!(n.task("nav")["OperatorStop"], true, "/task/find says so too");
    assert!(task(&list, "gps").get("OperatorStop").is_none());

    // Bad parameters are named.
    let (status, _, body) = get(f.port, "/task/get?since=1&wait=31");
    assert_eq!(status, 400);
    assert!(body["msg"].as_str().unwrap().starts_with("wait:"), "{body}");

    // After a restart of air-nanny, the decision (state.json) is still shown.
    n.terminate();
    let n = f.start();
    n.wait_running("gps");
    let (_, _, list) = get(f.port, "/task/get");
    assert_eq!(task(&list, "nav")["OperatorStop"], true, "{list}");
    n.ok("POST", "/task/start?name=nav", None);
    n.wait_running("nav");
    assert!(n.task("nav").get("OperatorStop").is_none(), "started again: no longer held");
}

/// The heartbeat numbers in lines like `NAME: heartbeat N`.
fn beats(lines: &[String]) -> Vec<u64> {
    lines.iter().filter_map(|l| l.rsplit_once("heartbeat ").and_then(|(_, n)| n.trim().parse().ok())).collect()
}

#[test]
fn ctl_logs_follow_prints_new_lines_as_they_are_written_and_across_a_rotation() {
    // A small log limit: the chatty program fills it within seconds, and the periodic sweep
    // rotates it (copy and truncate) under the follower.
    let f = Fixture::with_config("LOG_MAX_SIZE: 4096\nLOG_MAX_FILES: 2\n");
    f.write_services(&json!([f.direct_service("chatty", 0, &["--heartbeat-ms", "10"])]));
    let n = f.start();
    n.wait_running("chatty");
    let mut ctl = Command::new(AIR_NANNY)
        .args(["ctl", "logs", "chatty", "-n", "1", "-f", "--config"])
        .arg(f.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out = ctl.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed: Vec<String> = Vec::new();
    let drain = |printed: &mut Vec<String>| {
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            printed.push(l);
        }
    };
    // New lines keep coming (the tail alone was one line).
    wait_until("ctl logs -f to print new lines", Duration::from_secs(20), || {
        drain(&mut printed);
        (beats(&printed).len() >= 20).then_some(())
    });
    // Wait for a rotation, then for a line written into the new file to be printed.
    let rotated = f.path("conf/logs/chatty.log.1");
    wait_until("the log to rotate", Duration::from_secs(40), || rotated.exists().then_some(()));
    let after_rotation = wait_until("a heartbeat in the new file", Duration::from_secs(10), || {
        let fresh: Vec<String> = f.log("chatty").lines().map(str::to_string).collect();
        beats(&fresh).first().copied()
    });
    wait_until("a line written after the rotation", Duration::from_secs(20), || {
        drain(&mut printed);
        beats(&printed).contains(&after_rotation).then_some(())
    });
    let numbers = beats(&printed);
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "every line printed once, in order (a rotation may lose what was written during its copy): {numbers:?}"
    );
    let _ = ctl.kill();
    let _ = ctl.wait();
    let mut err = String::new();
    let _ = ctl.stderr.take().unwrap().read_to_string(&mut err);
    assert!(err.is_empty(), "{err}");

    // The API behind it: an offset past the end of a rotated file starts again at its beginning.
    let (status, _, body) = get(f.port, "/task/logs?name=chatty&after=99999999&wait=1");
    assert_eq!(status, 200);
    assert_eq!(body["data"]["rotated"], true, "{body}");
    let (status, _, body) = get(f.port, "/task/logs?name=chatty&after=x");
    assert_eq!(status, 400);
    assert!(body["msg"].as_str().unwrap().starts_with("after:"), "{body}");
}
