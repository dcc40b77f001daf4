//! The single reaper: the only code that calls `waitpid`. Every child is spawned through it, and
//! every exit (of a child, or of an orphan reparented to air-nanny as subreaper) is collected here.
//!
//! Theory of operation: a SIGCHLD wakes one task, which loops `waitpid(-1, WNOHANG)` until nothing is
//! left (one SIGCHLD may stand for many deaths) and hands each status to whoever spawned that pid.
//! Spawning and registering the pid happen under the same lock as reaping, so an exit can never be
//! collected before its waiter is known. Adopted orphans (daemonised programs) are just reaped; their
//! services learn of the death through a pidfd (`process::wait_exit`).
//!
//! With cgroups the walk waits ([`Reaper::start_deferring`]): `waitpid(-1)` looks at every child
//! (0.1–0.2 ms a call with a thousand programs, two calls a SIGCHLD), and it ran on the runtime
//! thread between a program's death and its restart. There every program's end is seen by its
//! cgroup emptying, whose watch reaps the members by pid ([`Reaper::collect`]: a wait for one pid
//! is O(1) since Linux 5.14); commands (control scripts, checks) are looked for by pid at every
//! SIGCHLD while few are running; the walk follows a little later for everything else (a helper a
//! program left behind) and serves every SIGCHLD of that moment. Without cgroups nothing else would
//! see a death: every SIGCHLD walks at once.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::exfiltrator::WithRawSiginfo;
use signal_hook_tokio::SignalsInfo;
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

/// A child cloned by [`Reaper::begin_launch`], its exec not yet confirmed.
pub struct Launching {
    reaper: Reaper,
    /// Kept for a second clone, moved in, where the cgroup turns out to have been killed before.
    cmd: Command,
    output: OwnedFd,
    cgroup: crate::cgroup::ServiceCgroup,
    extras: crate::spawn::Extras,
    life: Life,
    child: (Spawned, crate::spawn::Launch),
}

impl Launching {
    /// Awaits the child's exec: the spawned child, or why it did not run.
    pub async fn landed(self) -> io::Result<Spawned> {
        let Launching { reaper, cmd, output, cgroup, extras, life, mut child } = self;
        loop {
            let (spawned, launch) = child;
            let pid = launch.pid;
            // An exec that never completes (an executable on a hung network mount) must not hold
            // the start, or a stop waiting for it, forever: bounded, and the child killed.
            let exec = match tokio::time::timeout(EXEC_TIMEOUT, launch.exec()).await {
                Ok(r) => r,
                Err(_) => {
                    // Only while it is unreaped: its pid is still its own.
                    if reaper.waiters.lock().expect("reaper lock").waiters.contains_key(&pid) {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the exec did not complete within {}s; the child was killed", EXEC_TIMEOUT.as_secs()),
                    ));
                }
            };
            match exec {
                Ok(()) => return Ok(spawned),
                // Its cgroup had been killed before (the kernel kills children cloned into it):
                // nothing of it ran; again, moved in.
                Err(crate::spawn::ExecError::KilledAtBirth) if !cgroup.was_killed() => {
                    cgroup.mark_killed();
                    child = reaper.clone_into(&cmd, output.as_fd(), &cgroup, extras, life)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What a spawned child is to the reaper: how its exit is looked for when walks are deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// A command expected to end soon (a control script): looked for by pid at every SIGCHLD.
    Command,
    /// A check: a command whose process group is killed when it exits, before it is reaped (until
    /// then its zombie keeps the group's id from being taken by another process), so that nothing
    /// it started in the background runs on after it.
    Check,
    /// A program: its exit is found when its cgroup empties ([`Reaper::collect`]), or by the walk.
    Program,
}

/// Who waits for which pid, and the exits nobody waited for yet.
#[derive(Default)]
struct Table {
    waiters: HashMap<i32, Waiter>,
    /// Children looked for by pid at every SIGCHLD while the walk is deferred: running commands,
    /// and members of an emptied cgroup that were not yet zombies when it was seen empty.
    expected: Vec<i32>,
    /// The last [`RECENT`] exits of processes nobody had claimed (adopted orphans: programs that
    /// control scripts daemonised), for a [`Reaper::claim`] that comes a moment late.
    recent: std::collections::VecDeque<(i32, Reaped)>,
    /// Counts reaped processes: the order of deaths.
    seq: u64,
    /// Zombies whose exit was handed over by [`Reaper::collect`] before they were reaped: their
    /// reap (by pid at a SIGCHLD, or the walk) delivers nothing again.
    peeked: Vec<i32>,
    /// Running checks ([`Life::Check`]): their process groups are killed when they exit.
    groups: Vec<i32>,
}

/// An exit and its place in the order of reaping (a larger `seq` was reaped later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub seq: u64,
    pub exit: Exit,
}

enum Waiter {
    Spawned(oneshot::Sender<Exit>),
    Claimed(oneshot::Sender<Reaped>),
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Spawned(tx) => tx.is_closed(),
            Waiter::Claimed(tx) => tx.is_closed(),
        }
    }
}

const RECENT: usize = 64;

/// How long the walk over every child waits after a SIGCHLD where cgroups see the programs end.
pub const WALK_DEFER: Duration = Duration::from_millis(100);

/// With more children expected than this (a boot's or a shutdown's hundreds of scripts), a SIGCHLD
/// walks at once: one walk is then cheaper than that many waits by pid.
const EXPECTED_MAX: usize = 32;

/// How long a launched child may take to reach its exec.
const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Table {
    /// Makes the spawner of `pid` its waiter; a recent exit under that pid was another process's.
    fn register(&mut self, pid: i32, life: Life) -> Spawned {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(pid, Waiter::Spawned(tx));
        self.recent.retain(|(p, _)| *p != pid);
        if matches!(life, Life::Command | Life::Check) {
            self.expected.push(pid);
        }
        if life == Life::Check {
            self.groups.push(pid);
        }
        Spawned { pid, exit: rx }
    }

    /// Hands the exit of `pid`, just reaped, to its waiter, or keeps it among the recent ones.
    fn deliver(&mut self, pid: i32, exit: Exit) {
        if let Some(i) = self.peeked.iter().position(|p| *p == pid) {
            self.peeked.swap_remove(i);
            self.unexpect(pid);
            return;
        }
        self.seq += 1;
        let reaped = Reaped { seq: self.seq, exit };
        self.unexpect(pid);
        match self.waiters.remove(&pid) {
            Some(Waiter::Spawned(tx)) => {
                let _ = tx.send(exit);
            }
            Some(Waiter::Claimed(tx)) if !tx.is_closed() => {
                let _ = tx.send(reaped);
            }
            _ => {
                tracing::debug!(pid, %exit, "reaped an adopted process");
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back((pid, reaped));
            }
        }
    }

    /// `pid` is settled (reaped, or no child of air-nanny's): no longer looked for, and never
    /// again a group to kill (its id may be another's from now on).
    fn unexpect(&mut self, pid: i32) {
        if let Some(i) = self.expected.iter().position(|p| *p == pid) {
            self.expected.swap_remove(i);
        }
        if let Some(i) = self.groups.iter().position(|p| *p == pid) {
            self.groups.swap_remove(i);
        }
    }

    /// Hands over the exit of `pid` if it has exited, leaving it a zombie to be reaped by pid at
    /// the next SIGCHLD (or by the walk): true when it is settled (handed over now or before, or
    /// no child of air-nanny's to wait for), false while it runs.
    fn peek_pid(&mut self, pid: i32) -> bool {
        if self.peeked.contains(&pid) {
            return true;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let exit = match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => return false,
            Err(_) => {
                self.unexpect(pid);
                return true;
            }
        };
        self.deliver(pid, exit);
        self.peeked.push(pid);
        self.expected.push(pid);
        true
    }

    /// Kills the process group of `pid`, a check that has exited and is not reaped yet.
    fn end_group(&mut self, pid: i32) {
        if let Some(i) = self.groups.iter().position(|p| *p == pid) {
            self.groups.swap_remove(i);
            crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Reaps `pid` if it has exited: true when it is settled (reaped now, or no child of
    /// air-nanny's to wait for), false while it runs. A check's group is killed first.
    fn reap_pid(&mut self, pid: i32) -> bool {
        if self.groups.contains(&pid) {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => self.end_group(pid),
                Ok(_) | Err(nix::errno::Errno::EINTR) => return false,
                Err(_) => {}
            }
        }
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) => self.deliver(p.as_raw(), Exit::Code(code)),
            Ok(WaitStatus::Signaled(p, sig, _)) => self.deliver(p.as_raw(), Exit::Signal(sig as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => return false,
            // ECHILD: not a child of air-nanny's (its own parent reaps it), or reaped already.
            Err(_) => self.unexpect(pid),
        }
        true
    }
}

/// systemd's notification and watchdog variables are air-nanny's, not its children's.
fn scrub_env(cmd: &mut Command) {
    for var in
        ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "FDSTORE"]
    {
        cmd.env_remove(var);
    }
}

/// The waiters, process-wide: `waitpid(-1)` reaps any child of the process, so there can only be
/// one table of who waits for which pid, however many runtimes (tests) start a reaping task.
static WAITERS: OnceLock<Mutex<Table>> = OnceLock::new();

/// Cheap to clone handle on the reaper.
#[derive(Clone)]
pub struct Reaper {
    waiters: &'static Mutex<Table>,
    /// How long the walk over every child waits after a SIGCHLD (`None`: it runs at once).
    defer: Option<Duration>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task, which walks every child at every
    /// SIGCHLD. Call inside the runtime, before any child is spawned. The task lives as long as the
    /// runtime: children must be reaped until the end.
    pub fn start() -> io::Result<Reaper> {
        Self::start_deferring(None)
    }

    /// [`Reaper::start`], with the walk `defer`red (see the module documentation): only where
    /// every program's end is seen by its cgroup, whose watch calls [`Reaper::collect`].
    pub fn start_deferring(defer: Option<Duration>) -> io::Result<Reaper> {
        // With the pid each SIGCHLD names (the child that changed state; signals that arrive together
        // are merged into one, so the walk still follows).
        let mut signals = SignalsInfo::<WithRawSiginfo>::new([SIGCHLD])?;
        let reaper = Reaper { waiters: WAITERS.get_or_init(Default::default), defer };
        let r = reaper.clone();
        tokio::spawn(async move {
            r.reap_all();
            let mut walk_at: Option<tokio::time::Instant> = None;
            loop {
                let got = match walk_at {
                    Some(at) => tokio::select! {
                        got = signals.next() => got,
                        () = tokio::time::sleep_until(at) => {
                            walk_at = None;
                            r.reap_all();
                            continue;
                        }
                    },
                    None => signals.next().await,
                };
                let Some(info) = got else { break };
                // SAFETY: the kernel fills si_pid in for SIGCHLD, the only signal of this stream.
                let named = unsafe { info.si_pid() };
                match r.defer {
                    Some(defer) if r.reap_expected(Some(named).filter(|p| *p > 0)) => {
                        walk_at.get_or_insert_with(|| tokio::time::Instant::now() + defer);
                    }
                    _ => {
                        walk_at = None;
                        r.reap_all();
                    }
                }
            }
        });
        Ok(reaper)
    }

    /// Reaps `named` (the child a SIGCHLD named) and the expected children that have exited, each
    /// by pid; false (the expected ones left to a walk) when there are too many of them for that
    /// to beat one.
    fn reap_expected(&self, named: Option<i32>) -> bool {
        let mut t = self.waiters.lock().expect("reaper lock");
        if let Some(pid) = named {
            t.reap_pid(pid);
        }
        if t.expected.len() > EXPECTED_MAX {
            return false;
        }
        let mut i = 0;
        while i < t.expected.len() {
            let pid = t.expected[i];
            // A settled pid has left the list (swap_remove): look at the same index again.
            if !t.reap_pid(pid) {
                i += 1;
            }
        }
        true
    }

    /// Hands over the exits of those of `pids` (a cgroup's members, seen gone) that are
    /// air-nanny's children and have exited, each by its pid, without waiting for the deferred
    /// walk; the ones not yet zombies (a cgroup is marked empty a moment before the parent is told)
    /// are looked for at the next SIGCHLDs. Nothing to do where every SIGCHLD walks.
    ///
    /// The exit is read without reaping (`waitid(WNOWAIT)`): the reap, the kernel's release of the
    /// process (0.03–0.2 ms each at N = 1000, the flush of its /proc entries among it), happens at
    /// the SIGCHLD that names it or at the walk, after the restart this exit lets go ahead.
    pub fn collect(&self, pids: &[i32]) {
        if self.defer.is_none() {
            return;
        }
        let mut t = self.waiters.lock().expect("reaper lock");
        for &pid in pids {
            if !t.peek_pid(pid) && !t.expected.contains(&pid) {
                t.expected.push(pid);
            }
        }
    }

    /// Spawns `cmd` in its own process group (whose id is its pid), so that it and everything it
    /// starts can be signalled together, and a terminal's Ctrl-C never reaches it. The caller must
    /// never wait for it any other way.
    pub fn spawn(&self, cmd: &mut Command, life: Life) -> io::Result<Spawned> {
        scrub_env(cmd);
        // A process group rather than a pre_exec setsid: std can then use posix_spawn (vfork), which
        // is what keeps a respawn near a millisecond.
        cmd.process_group(0);
        crate::process::restore_nofile_limit_in(cmd);
        let mut table = self.waiters.lock().expect("reaper lock");
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Dropping a std Child neither waits nor kills: the reaper owns its exit from here.
        drop(child);
        Ok(table.register(pid, life))
    }

    /// Spawns `cmd` born in `cgroup` (see [`crate::spawn::launch_into`]), output to `output`, as
    /// `user` (uid, gid) when given, in its own process group like [`Reaper::spawn`]. Awaits the
    /// exec without blocking the thread: a boot or a shutdown forks the next child while the last
    /// one execs.
    pub async fn launch_into(
        &self,
        cmd: Command,
        output: OwnedFd,
        cgroup: &crate::cgroup::ServiceCgroup,
        user: Option<(u32, u32)>,
        life: Life,
    ) -> io::Result<Spawned> {
        self.begin_launch(cmd, output, cgroup, user, life, false)?.landed().await
    }

    /// [`Reaper::launch_into`]'s clone, now: the child is on its way to its exec when this
    /// returns, and [`Launching::landed`] awaits the exec. A respawn clones first and writes its
    /// notes after, while the child execs, and `hurry`s (see [`crate::spawn::Extras::hurry`]).
    pub fn begin_launch(
        &self,
        mut cmd: Command,
        output: OwnedFd,
        cgroup: &crate::cgroup::ServiceCgroup,
        user: Option<(u32, u32)>,
        life: Life,
        hurry: bool,
    ) -> io::Result<Launching> {
        scrub_env(&mut cmd);
        let extras = crate::spawn::Extras { user, nofile: crate::process::child_nofile_limit(), hurry };
        let child = self.clone_into(&cmd, output.as_fd(), cgroup, extras, life)?;
        Ok(Launching { reaper: self.clone(), cmd, output, cgroup: cgroup.clone(), extras, life, child })
    }

    /// Clones the child, registered before anything can reap it (a child that fails is reaped by
    /// the reaper and its exit dropped with the [`Spawned`]).
    fn clone_into(
        &self,
        cmd: &Command,
        output: BorrowedFd<'_>,
        cgroup: &crate::cgroup::ServiceCgroup,
        extras: crate::spawn::Extras,
        life: Life,
    ) -> io::Result<(Spawned, crate::spawn::Launch)> {
        let mut table = self.waiters.lock().expect("reaper lock");
        let launch = crate::spawn::launch_into(cmd, output, cgroup, extras)?;
        let spawned = table.register(launch.pid, life);
        drop(table);
        if extras.hurry {
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
        }
        Ok((spawned, launch))
    }

    /// Holds `pid`, a child spawned through this reaper, by a pidfd: exact, because a child whose
    /// exit has not been collected keeps its pid (the lock keeps the reaper from collecting it
    /// meanwhile). `None` once it has been reaped.
    pub fn hold(&self, pid: i32) -> Option<crate::process::Held> {
        let table = self.waiters.lock().expect("reaper lock");
        if !table.waiters.contains_key(&pid) {
            return None;
        }
        crate::process::Held::open(pid)
    }

    /// The exit of `pid`, a process of a service that air-nanny did not spawn itself (a program a
    /// control script daemonised: air-nanny, as subreaper, reaps it when it dies). `None` when
    /// someone already waits for it. The receiver fails if the process is reaped by someone else
    /// (its parent); it may never resolve for a process that is not air-nanny's child.
    pub fn claim(&self, pid: i32) -> Option<oneshot::Receiver<Reaped>> {
        let mut t = self.waiters.lock().expect("reaper lock");
        if t.waiters.get(&pid).is_some_and(|w| !w.is_closed()) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        // Reaped already (a death a moment before the claim)? Only if no live process has taken
        // that pid since (then the recorded exit is another's).
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err();
        if let Some(i) = t.recent.iter().rposition(|(p, _)| *p == pid) {
            let (_, exit) = t.recent.remove(i).expect("found above");
            if gone {
                let _ = tx.send(exit);
                return Some(rx);
            }
        }
        // Claims of processes reaped by their own parents are never answered: forget them when
        // their claimers have gone, before the table grows.
        if t.waiters.len() >= 256 && t.waiters.len().is_power_of_two() {
            t.waiters.retain(|_, w| !w.is_closed());
        }
        t.waiters.insert(pid, Waiter::Claimed(tx));
        Some(rx)
    }

    /// Collects every exited child, handing each status to its waiter. While checks run, each
    /// exit is looked at before it is collected, and a check's group killed in between.
    fn reap_all(&self) {
        let mut waiters = self.waiters.lock().expect("reaper lock");
        loop {
            let status = if waiters.groups.is_empty() {
                waitpid(None, Some(WaitPidFlag::WNOHANG))
            } else {
                let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
                match waitid(Id::All, flags) {
                    Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, ..)) => {
                        waiters.end_group(pid.as_raw());
                        waitpid(pid, Some(WaitPidFlag::WNOHANG))
                    }
                    other => other,
                }
            };
            let (pid, exit) = match status {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            waiters.deliver(pid, exit);
        }
    }

    /// Kills the process group of `pid`, a child spawned through this reaper, if it has not been
    /// reaped yet: exact, because until then its pid, the group's id, is nobody else's (the lock
    /// keeps the reaper from collecting it meanwhile). Nothing once it has been reaped.
    pub fn kill_group(&self, pid: i32) {
        let table = self.waiters.lock().expect("reaper lock");
        if matches!(table.waiters.get(&pid), Some(Waiter::Spawned(_))) {
            crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
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
        // Not while another test forces pids to be reused (see the claims below).
        let _alone = crate::process::PID_REUSE.lock().await;
        let reaper = Reaper::start().unwrap();
        let mut waits = Vec::new();
        for i in 0..200 {
            let code = i % 3;
            let s = reaper.spawn(Command::new("sh").arg("-c").arg(format!("exit {code}")), Life::Command).unwrap();
            waits.push((code, s));
        }
        for (code, s) in waits {
            let exit = tokio::time::timeout(std::time::Duration::from_secs(10), s.exit).await.unwrap().unwrap();
            assert_eq!(exit, Exit::Code(code));
        }
        let s = reaper.spawn(Command::new("sh").arg("-c").arg("kill -9 $$"), Life::Command).unwrap();
        assert_eq!(s.exit.await.unwrap(), Exit::Signal(9));
        // An orphan (a grandchild whose parent has exited) is reparented to us only when we are a
        // subreaper; claimed before or after its death, its exit reaches the claim.
        crate::process::become_subreaper().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 0.2 & echo $! > {}", pidfile.display());
        let s = reaper.spawn(Command::new("sh").arg("-c").arg(&script), Life::Command).unwrap();
        assert_eq!(s.exit.await.unwrap(), Exit::Code(0));
        let orphan: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let claim = reaper.claim(orphan).expect("nobody waits for it");
        let exit = tokio::time::timeout(std::time::Duration::from_secs(10), claim).await.unwrap().unwrap();
        assert_eq!(exit.exit, Exit::Code(0));
        // Claimed only after it was reaped: the recent exits answer.
        // The grandchild outlives its parent shell: one that died first could be reaped by that
        // shell, and its exit would never reach air-nanny (seen as a rare hang of this test).
        let script = format!("sh -c 'sleep 0.1; exit 7' & echo $! > {}", pidfile.display());
        let s = reaper.spawn(Command::new("sh").arg("-c").arg(&script), Life::Command).unwrap();
        assert_eq!(s.exit.await.unwrap(), Exit::Code(0));
        let orphan: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(orphan), None).is_ok() {
            assert!(std::time::Instant::now() < deadline, "the orphan was never reaped");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // The last RECENT unclaimed exits are kept: other tests of this process reap children of
        // their own meanwhile and may push this one out of the ring (never wait forever).
        let claim = reaper.claim(orphan).unwrap();
        match tokio::time::timeout(std::time::Duration::from_secs(10), claim).await {
            Ok(r) => assert_eq!(r.unwrap().exit, Exit::Code(7)),
            Err(_) => assert_eq!(
                reaper.waiters.lock().unwrap().recent.len(),
                RECENT,
                "the orphan's exit was lost while the ring of recent exits had room"
            ),
        }
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

    /// A check's process group is killed when it exits, before it is reaped, whether every SIGCHLD
    /// walks or the walk is deferred (the check then reaped by pid); a control script's is not (a
    /// start script leaves its program running in its group).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checks_group_ends_with_it_a_scripts_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let bg = |name: &str| {
            let f = dir.path().join(name);
            let script = format!("sleep 30 & echo $! > {}; exit 3", f.display());
            (f, script)
        };
        let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap().trim().parse::<i32>().unwrap();
        for defer in [None, Some(WALK_DEFER)] {
            let reaper = Reaper::start_deferring(defer).unwrap();
            let (f, script) = bg("script");
            let s = reaper.spawn(Command::new("sh").arg("-c").arg(&script), Life::Command).unwrap();
            assert_eq!(s.exit.await.unwrap(), Exit::Code(3));
            let daemon = read(&f);
            let (f, script) = bg("check");
            let s = reaper.spawn(Command::new("sh").arg("-c").arg(&script), Life::Check).unwrap();
            assert_eq!(s.exit.await.unwrap(), Exit::Code(3));
            let leftover = read(&f);
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            assert!(
                crate::process::wait_all_exit(&[leftover], deadline).await,
                "the check's child runs on ({defer:?})"
            );
            assert!(reaper.waiters.lock().unwrap().groups.iter().all(|p| *p != s.pid));
            // Killed (had it been) before the check's child was: gone by now.
            assert!(crate::process::is_alive(daemon), "a control script's child was killed ({defer:?})");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Launched without waiting for the exec: the exit still reaches the spawner, a missing
    /// program is an error, and a cgroup killed before (whose clone3 children the kernel kills at
    /// birth) still runs what is launched into it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn launched_children_report_exec_failures_and_exits() {
        let base = format!("/air-nanny-unit-launch-{}", std::process::id());
        let h = match crate::cgroup::Hierarchy::open(Some(&base)) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("!!! NO WRITABLE CGROUP V2 HERE ({e}): launch test skipped");
                return;
            }
        };
        let reaper = Reaper::start().unwrap();
        let cg = h.service("launch.test");
        cg.create().unwrap();
        let out = OwnedFd::from(std::fs::File::create("/dev/null").unwrap());
        let e = reaper
            .launch_into(Command::new("/nonexistent/script"), out.try_clone().unwrap(), &cg, None, Life::Command)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        for round in 0..2 {
            if round == 1 {
                // As an earlier air-nanny would have left it; this handle does not know.
                std::fs::write(cg.dir().join("cgroup.kill"), "1").unwrap();
            }
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "grep -q launch.test /proc/self/cgroup && exit 7"]);
            let s = reaper.launch_into(cmd, out.try_clone().unwrap(), &cg, None, Life::Command).await.unwrap();
            let exit = tokio::time::timeout(std::time::Duration::from_secs(10), s.exit).await.unwrap().unwrap();
            assert_eq!(exit, Exit::Code(7), "round {round}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cg.populated().unwrap() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        cg.remove().unwrap();
        std::fs::remove_dir(h.base()).unwrap();
    }

    #[tokio::test]
    async fn children_get_their_own_process_group() {
        let reaper = Reaper::start().unwrap();
        let s =
            reaper.spawn(Command::new("sh").arg("-c").arg("[ $(ps -o pgid= -p $$) -eq $$ ]"), Life::Command).unwrap();
        assert_eq!(s.exit.await.unwrap(), Exit::Code(0));
    }
}
