//! The single reaper: the only code that calls `waitpid`. Every child is spawned through it, and
//! every exit (of a child, or of an orphan reparented to air-nanny as subreaper) is collected here.
//!
//! Theory of operation: a SIGCHLD wakes one task, which loops `waitpid(-1, WNOHANG)` until nothing is
//! left (one SIGCHLD may stand for many deaths) and hands each status to whoever spawned that pid.
//! Spawning and registering the pid happen under the same lock as reaping, so an exit can never be
//! collected before its waiter is known. Adopted orphans (daemonised programs) are just reaped; their
//! services learn of the death through a pidfd (`process::wait_exit`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use futures_util::StreamExt;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use signal_hook::consts::SIGCHLD;
use signal_hook_tokio::Signals;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// A spawned child: its pid (also its process group) and the receiver of its exit.
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
}

/// The waiters, process-wide: `waitpid(-1)` reaps any child of the process, so there can only be
/// one table of who waits for which pid, however many runtimes (tests) start a reaping task.
static WAITERS: OnceLock<Mutex<HashMap<i32, oneshot::Sender<Exit>>>> = OnceLock::new();

/// Cheap to clone handle on the reaper.
#[derive(Clone)]
pub struct Reaper {
    waiters: &'static Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task. Call inside the runtime, before any
    /// child is spawned. The task lives as long as the runtime: children must be reaped until the end.
    pub fn start() -> io::Result<Reaper> {
        let mut signals = Signals::new([SIGCHLD])?;
        let reaper = Reaper { waiters: WAITERS.get_or_init(Default::default) };
        let r = reaper.clone();
        tokio::spawn(async move {
            r.reap_all();
            while signals.next().await.is_some() {
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd` in its own process group (whose id is its pid), so that it and everything it
    /// starts can be signalled together, and a terminal's Ctrl-C never reaches it. The caller must
    /// never wait for it any other way.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        // systemd's notification and watchdog variables are air-nanny's, not its children's.
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            cmd.env_remove(var);
        }
        // A process group rather than a pre_exec setsid: std can then use posix_spawn (vfork), which
        // is what keeps a respawn near a millisecond.
        cmd.process_group(0);
        let mut waiters = self.waiters.lock().expect("reaper lock");
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Dropping a std Child neither waits nor kills: the reaper owns its exit from here.
        drop(child);
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok(Spawned { pid, exit: rx })
    }

    /// Collects every exited child, handing each status to its waiter.
    fn reap_all(&self) {
        let mut waiters = self.waiters.lock().expect("reaper lock");
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid, %exit, "reaped an adopted process"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that exits 0 is seen as exit 0 every time, while other children die around it, and
    /// no zombie is left (the trap in notes/reaping.md).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_exit_status_reaches_its_spawner() {
        let reaper = Reaper::start().unwrap();
        let mut waits = Vec::new();
        for i in 0..200 {
            let code = i % 3;
            let s = reaper.spawn(Command::new("sh").arg("-c").arg(format!("exit {code}"))).unwrap();
            waits.push((code, s));
        }
        for (code, s) in waits {
            let exit = tokio::time::timeout(std::time::Duration::from_secs(10), s.exit).await.unwrap().unwrap();
            assert_eq!(exit, Exit::Code(code));
        }
        let s = reaper.spawn(Command::new("sh").arg("-c").arg("kill -9 $$")).unwrap();
        assert_eq!(s.exit.await.unwrap(), Exit::Signal(9));
        let zombies = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|st| {
                let after = &st[st.rfind(')').unwrap() + 2..];
                let f: Vec<&str> = after.split(' ').collect();
                f[0] == "Z" && f[1] == std::process::id().to_string()
            })
            .count();
        assert_eq!(zombies, 0);
    }

    #[tokio::test]
    async fn children_get_their_own_process_group() {
        let reaper = Reaper::start().unwrap();
        let s = reaper.spawn(Command::new("sh").arg("-c").arg("[ $(ps -o pgid= -p $$) -eq $$ ]")).unwrap();
        assert_eq!(s.exit.await.unwrap(), Exit::Code(0));
    }
}
