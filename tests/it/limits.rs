//! Resources air-nanny must not run out of, and exits nothing may hold up: the open-file limit,
//! and API connections at shutdown.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

fn open_files_limit(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    Some((nums.next()?, nums.next()?))
}

#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_one() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("counted", 0, &[])]));
    // systemd gives a service 1024 soft; here 256, under whatever hard limit the machine has.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("ulimit -Sn 256 && exec {AIR_NANNY} run --config {}", f.config().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (soft, hard) = wait_until("the limit raised", Duration::from_secs(20), || {
        open_files_limit(pid).filter(|(soft, hard)| soft == hard && *soft > 256)
    });
    assert!(soft > 256 && soft == hard, "{soft} {hard}");
    // Its signal handling is installed once the API answers.
    wait_until("the API", Duration::from_secs(20), || (f.http("GET", "/health", None, None).0 == 200).then_some(()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_until("air-nanny to exit", Duration::from_secs(30), || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_half_sent_request_does_not_hold_up_the_exit() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("quick", 0, &[])]));
    let mut n = f.start();
    n.wait_running("quick");
    // A client that sends half a request head and then nothing.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    half.write_all(b"GET /task/get HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    // And one that finished a request and keeps the connection open.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    n.signal(nix::sys::signal::Signal::SIGTERM);
    // The services stop at once; the connections may delay the exit by two seconds at most.
    let status = n.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(f.pids_of("quick").is_empty());
    drop((half, idle));
}

#[test]
fn a_thousand_idle_connections_neither_stop_a_respawn_nor_hold_up_the_exit() {
    let f = Fixture::new();
    f.write_services(&json!([f.direct_service("busy", 0, &[])]));
    let mut n = f.start();
    let first = n.wait_running("busy")[0];
    // 1000 clients that connect and say nothing (256 are served, the rest wait in the backlog).
    let idle: Vec<std::net::TcpStream> =
        (0..1000).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", f.port)).ok()).collect();
    assert!(idle.len() >= 900, "only {} connections", idle.len());
    kill9(first);
    wait_until("the respawn, despite the connections", Duration::from_secs(10), || {
        let p = f.pids_of("busy");
        (p.len() == 1 && p[0] as i64 != first).then_some(())
    });
    let t = std::time::Instant::now();
    n.signal(nix::sys::signal::Signal::SIGTERM);
    let status = n.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    // The service stops at once; the connections add two seconds at most.
    assert!(t.elapsed() < Duration::from_secs(3 + 2), "exit took {:?}", t.elapsed());
    drop(idle);
}
