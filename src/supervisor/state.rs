//! What a service is doing, as observers see it (`TaskSnapshot`): the API's numeric states and the
//! health. The service task alone changes a service's state; everyone else reads snapshots.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::ServiceInfo;

/// A service's state. The numbers are the API's `State` (2 = running, as in the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running: never started, stopped by the operator, or stopped at shutdown.
    Stopped = 0,
    /// The start command (or the program, in direct mode) is being started.
    Starting = 1,
    /// The program has at least one live process.
    Running = 2,
    /// The stop command (or stop signal) is running.
    Stopping = 3,
    /// The program died or failed; waiting out the backoff before the next start.
    Backoff = 4,
    /// Given up: a start limit was reached, or a non-daemon service failed to start.
    Failed = 5,
    /// A non-daemon service whose program has ended; it is not restarted.
    Exited = 6,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Stopped,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Backoff,
        State::Failed,
        State::Exited,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Exited => "exited",
        }
    }
}

/// The health of a service with a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check configured, or the service is not running.
    None,
    /// Running, no check has decided yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Woken when a task's state or health changes: the supervisor then brings systemd's `STATUS=`
/// line up to date (only when systemd listens). One permit is kept when nobody waits, so no change
/// is missed, and a burst of changes is one update.
pub static STATUS_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The one-line summary systemd shows in `systemctl status`: "12/12 running, 1 unhealthy".
pub fn status_line<'a>(snapshots: impl Iterator<Item = &'a TaskSnapshot>) -> String {
    let (mut total, mut running, mut unhealthy, mut backoff, mut failed) = (0, 0, 0, 0, 0);
    for s in snapshots {
        total += 1;
        match s.state {
            State::Running => running += 1,
            State::Backoff => backoff += 1,
            State::Failed => failed += 1,
            _ => {}
        }
        if s.health == Health::Unhealthy {
            unhealthy += 1;
        }
    }
    let mut line = format!("{running}/{total} running");
    for (n, what) in [(unhealthy, "unhealthy"), (backoff, "in backoff"), (failed, "failed")] {
        if n > 0 {
            line.push_str(&format!(", {n} {what}"));
        }
    }
    line
}

/// A count of the changes an observer can see: a task's published snapshot, an operator's
/// decision, a configuration written. The console's long-poll (`/task/get?since=&wait=`) waits
/// on it; nothing runs when nobody waits.
#[derive(Clone)]
pub struct Changes(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Changes(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl Changes {
    pub fn bump(&self) {
        self.0.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn current(&self) -> u64 {
        *self.0.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// One health check as it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct LastCheck {
    pub at: SystemTime,
    pub took: std::time::Duration,
    /// `None` when it passed, else why it failed.
    pub failure: Option<String>,
    /// The start of what the check printed (or, for HTTP and TCP checks, what it found).
    pub output: String,
}

/// A copy of one task's state, published by its service task after every change.
#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    /// The configuration this task runs (shared with the service task: one copy per service).
    pub info: Arc<ServiceInfo>,
    pub state: State,
    pub start_faults: u64,
    pub stop_faults: u64,
    pub pids: Vec<i32>,
    pub restarts: u64,
    pub health: Health,
    /// When the current state was entered.
    pub since: SystemTime,
    pub last_exit: Option<String>,
    /// When `last_exit` happened.
    pub last_exit_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// Consecutive failed health checks of the current run.
    pub streak: u32,
    /// The latest health check of the current run.
    pub last_check: Option<LastCheck>,
    /// In backoff: when the next start is due, and why it restarts.
    pub next_try: Option<(SystemTime, &'static str)>,
    /// Grows with every published change: readers may cache what they derive from a snapshot.
    pub version: u64,
}

/// Equal when everything but `version` is: what decides whether a change is worth publishing.
impl PartialEq for TaskSnapshot {
    fn eq(&self, o: &Self) -> bool {
        (Arc::ptr_eq(&self.info, &o.info) || self.info == o.info)
            && self.state == o.state
            && self.start_faults == o.start_faults
            && self.stop_faults == o.stop_faults
            && self.pids == o.pids
            && self.restarts == o.restarts
            && self.health == o.health
            && self.since == o.since
            && self.last_exit == o.last_exit
            && self.last_exit_at == o.last_exit_at
            && self.last_error == o.last_error
            && self.last_error_at == o.last_error_at
            && self.streak == o.streak
            && self.last_check == o.last_check
            && self.next_try == o.next_try
    }
}

impl TaskSnapshot {
    pub fn new(info: Arc<ServiceInfo>) -> TaskSnapshot {
        TaskSnapshot {
            info,
            state: State::Stopped,
            start_faults: 0,
            stop_faults: 0,
            pids: Vec::new(),
            restarts: 0,
            health: Health::None,
            since: SystemTime::now(),
            last_exit: None,
            last_exit_at: None,
            last_error: None,
            last_error_at: None,
            streak: 0,
            last_check: None,
            next_try: None,
            version: 0,
        }
    }

    /// Whether a boot group may move on past this service: it runs (and is healthy when it has a
    /// check), or it has given up (failed, exited, stopped by the operator). A service backing
    /// off between attempts has not settled: it may still come up.
    pub fn settled(&self) -> bool {
        match self.state {
            State::Running => match self.health {
                Health::None | Health::Healthy => true,
                Health::Starting => false,
                // A daemon is about to be restarted; a one-shot program stays as it is.
                Health::Unhealthy => !self.info.is_daemon,
            },
            State::Starting | State::Stopping | State::Backoff => false,
            State::Stopped | State::Failed | State::Exited => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_compare_without_their_version() {
        let info = Arc::new(ServiceInfo::from_json(br#"{"name":"a","script":{"programFilePath":"/a"}}"#).unwrap());
        let a = TaskSnapshot::new(info);
        let mut b = a.clone();
        b.version += 5;
        assert_eq!(a, b, "a new version alone is no change");
        b.pids = vec![7];
        assert_ne!(a, b);
    }

    #[test]
    fn state_codes_are_stable() {
        let codes: Vec<u8> = State::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(State::Running.code(), 2, "2 means running, as in the seed");
    }
}
