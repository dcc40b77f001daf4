//! The reaper with its walk deferred (air-nanny's mode with cgroups), in a process of its own: a
//! reaper that walks at every SIGCHLD, as the unit tests start, would collect every exit at once
//! and hide what is tested here.

use std::process::Command;
use std::time::{Duration, Instant};

use air_nanny::reaper::{Exit, Life, Reaper};

/// Waits until `pid` has exited (a zombie, or reaped already).
fn until_zombie_or_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return };
        if stat[stat.rfind(')').unwrap() + 2..].starts_with('Z') {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never exited");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// With the walk deferred (3 s here), no exit waits for it: a command's and a program's exits
/// arrive at once (the pid their SIGCHLD names is reaped by pid), a program collected by its watch
/// (what a cgroup's emptying does) too, and a collect made before the process was a zombie (a
/// cgroup reads empty a moment before the parent is told) is kept for its SIGCHLD. Were a SIGCHLD
/// walked late, every exit here would take the 3 s.
#[tokio::test(flavor = "current_thread")]
async fn with_the_walk_deferred_no_exit_waits_for_it() {
    let defer = Duration::from_secs(3);
    let reaper = Reaper::start_deferring(Some(defer)).unwrap();
    let soon = Duration::from_millis(1500);

    let command = reaper.spawn(Command::new("sh").args(["-c", "exit 3"]), Life::Command).unwrap();
    let exit = tokio::time::timeout(soon, command.exit).await.expect("a command's exit waited for the walk");
    assert_eq!(exit.unwrap(), Exit::Code(3));

    let program = reaper.spawn(Command::new("sh").args(["-c", "kill -9 $$"]), Life::Program).unwrap();
    let exit = tokio::time::timeout(soon, program.exit).await.expect("a program's exit waited for the walk");
    assert_eq!(exit.unwrap(), Exit::Signal(9));

    let early = reaper.spawn(Command::new("sh").args(["-c", "sleep 0.3; exit 5"]), Life::Program).unwrap();
    reaper.collect(&[early.pid]);
    let exit = tokio::time::timeout(soon, early.exit).await.expect("an early collect was lost");
    assert_eq!(exit.unwrap(), Exit::Code(5));

    // Many at once (their SIGCHLDs merge): commands are looked for by pid at every SIGCHLD, the
    // programs collected as their watch would; none waits for the walk.
    let started = Instant::now();
    let mut all = Vec::new();
    for i in 0..20 {
        let life = if i % 2 == 0 { Life::Command } else { Life::Program };
        all.push((i, reaper.spawn(Command::new("sh").args(["-c", &format!("exit {i}")]), life).unwrap()));
    }
    let pids: Vec<i32> = all.iter().map(|(_, s)| s.pid).collect();
    for &pid in &pids {
        until_zombie_or_gone(pid);
    }
    reaper.collect(&pids);
    for (i, s) in all {
        let exit = tokio::time::timeout(soon, s.exit).await.expect("an exit waited for the walk");
        assert_eq!(exit.unwrap(), Exit::Code(i));
    }
    assert!(started.elapsed() < defer);

    // A program collected once it is a zombie: its exit is handed over at once, and the zombie is
    // left to the SIGCHLD that names it (the kernel's release of it then comes after the restart
    // this exit lets go ahead), reaped then, and nothing of it is delivered again.
    let mut ended = reaper.spawn(Command::new("sh").args(["-c", "exit 6"]), Life::Program).unwrap();
    // No await since the spawn: the reaper's task has not run, whatever its SIGCHLD.
    until_zombie_or_gone(ended.pid);
    assert!(zombie(ended.pid), "reaped before the collect");
    reaper.collect(&[ended.pid]);
    assert_eq!(ended.exit.try_recv().expect("the exit was not handed over at the collect"), Exit::Code(6));
    assert!(zombie(ended.pid), "the collect reaped it: the restart would wait for the release");
    let deadline = Instant::now() + soon;
    while zombie(ended.pid) {
        assert!(Instant::now() < deadline, "the zombie was left for the walk");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut late = reaper.claim(ended.pid).expect("nobody else waits for it");
    assert!(late.try_recv().is_err(), "its exit was delivered twice");
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
}
