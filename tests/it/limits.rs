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
fn the_open_file_soft_limit_is_raised_to_the_hard_one_but_not_for_the_programs() {
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
    // Its programs get the limit air-nanny was given, not the raised one (select() breaks above 1023).
    let program = wait_until("the program", Duration::from_secs(20), || f.pids_of("counted").first().copied());
    let (psoft, phard) = open_files_limit(program as u32).unwrap();
    assert_eq!((psoft, phard), (256, hard), "the program's limit");
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

/// 1500 direct services under systemd's default soft limit of 1024 open files (a higher hard limit):
/// air-nanny raises its own soft limit, so every program runs, none crash-loops on EMFILE, a killed
/// one is respawned, the API answers, and a SIGTERM stops them all. Once with a cgroup per service
/// (where cgroup v2 is writable here) and once in the fallback mode.
#[test]
fn fifteen_hundred_direct_services_run_under_a_soft_limit_of_1024_open_files() {
    const N: usize = 1500;
    let mut modes = vec!["CGROUPS: off\n"];
    if cgroups_here("1500 services") {
        modes.insert(0, "CGROUPS: required\n");
    }
    for mode in modes {
        let f = Fixture::with_config(&format!("{mode}GROUP_START_TIMEOUT: 120\n"));
        let services: Vec<_> = (0..N)
            .map(|i| {
                let name = format!("s{i}");
                f.program_linked(&name); // before direct_service, which would copy the binary
                f.direct_service(&name, 0, &["--heartbeat", "60"])
            })
            .collect();
        f.write_services(&json!(services));
        let t0 = std::time::Instant::now();
        let mut n = f.start_with_nofile(1024, 8192);
        let (soft, _) = open_files_limit(n.pid() as u32).unwrap();
        assert!(soft > 1024, "{mode}the soft limit was not raised: {soft}");
        let all_running = || {
            let (status, v) = n.call("GET", "/task/get", None);
            let tasks = v["data"].as_array().cloned().unwrap_or_default();
            let running: Vec<i64> = tasks
                .iter()
                .filter(|t| t["State"] == 2 && t["Pids"].as_array().is_some_and(|p| p.len() == 1))
                .map(|t| t["Pids"][0].as_i64().unwrap())
                .collect();
            (status == 200 && tasks.len() == N && running.len() == N).then_some(running)
        };
        let pids = wait_until(&format!("{mode}all {N} services running"), Duration::from_secs(120), all_running);
        let mut distinct = pids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), N, "{mode}one process per service");
        assert!(pids.iter().all(|&p| crate::common::alive(p)), "{mode}every listed program is alive");
        let (psoft, _) = open_files_limit(pids[0] as u32).unwrap();
        assert_eq!(psoft, 1024, "{mode}a program gets the limit air-nanny was given");
        let nanny_fds = std::fs::read_dir(format!("/proc/{}/fd", n.pid())).unwrap().count();
        eprintln!("{mode}{N} services running after {:?}: air-nanny holds {nanny_fds} file descriptors", t0.elapsed());

        // A few programs killed at once all come back.
        let victims: Vec<(String, i64)> = (0..N).step_by(150).map(|i| (format!("s{i}"), pids[i])).collect();
        for (_, pid) in &victims {
            kill9(*pid);
        }
        for (name, old) in &victims {
            wait_until(&format!("{mode}{name} respawned"), Duration::from_secs(30), || {
                let t = n.task(name);
                (t["State"] == 2 && t["Pids"].as_array().is_some_and(|p| p.len() == 1 && p[0] != *old)).then_some(())
            });
        }
        let log = std::fs::read_to_string(f.path("nanny.log")).unwrap_or_default();
        assert!(!log.contains("Too many open files"), "{mode}EMFILE in air-nanny's log");
        let t1 = std::time::Instant::now();
        let status = n.wait_exit_after_term(Duration::from_secs(120));
        eprintln!("{mode}stopped in {:?}; respawns etc. took {:?}", t1.elapsed(), t1 - t0);
        assert_eq!(status.code(), Some(0), "{mode}");
        let left = f.live_programs();
        assert!(left.is_empty(), "{mode}{} programs left after the stop: {:?}", left.len(), &left[..left.len().min(5)]);
    }
}
