//! One task per service: it owns the service's [`Machine`], runs the actions the machine decides
//! (starts and stops beside itself, watchers, health probes) and feeds their results back; others
//! talk to it through a [`ServiceHandle`].
//!
//! Theory of operation: the task waits in one `select!` on its queue (controls and events, bounded)
//! and the machine's next deadline; there is no polling tick. It never awaits a start, a stop or a
//! probe: those are spawned and report back as events tagged with their generation, so a stop can
//! always interrupt a start, and late events of an older run are ignored by the machine.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::machine::{Action, Answer, CheckPlan, Input, Level, Limits, Lookup, Machine, StartOutcome};
use super::state::{LastCheck, State, TaskSnapshot};
use crate::allow::Policy;
use crate::cgroup::{self, ServiceCgroup};
use crate::config::{Probe, Resolved, ServiceInfo, Settings};
use crate::events::{Journal, Kind};
use crate::health;
use crate::ledger::Ledger;
use crate::logfile::ServiceLog;
use crate::process::{self, Held, ProcTable};
use crate::reaper::{Exit, Launching, Life, Reaper};

/// Requests and events a service task can hold before a request is refused as busy. The task
/// drains its queue at once (it never awaits an action), so this is only reached by a flood.
const QUEUE: usize = 32;

/// What a caller asks of a service.
#[derive(Debug)]
pub enum Control {
    Start,
    /// Start at boot: adopt from this snapshot of /proc (one scan for a whole group).
    Boot(Arc<ProcTable>),
    Stop,
    /// Stop at shutdown or removal: one snapshot of /proc for all; a service at rest stays so.
    Shutdown(Arc<ProcTable>),
    Restart,
    /// Use this configuration from now on: start it, or restart it if it changed. With the
    /// allow-list it came in under when it came from a request (checked again at every start).
    Apply(Box<ServiceInfo>, Option<Arc<Policy>>),
    /// Use this configuration from the next start on; a stopped service stays stopped (a running
    /// one is restarted with it, as with `Apply`). With the allow-list it was written under, when
    /// a request wrote it.
    Update(Box<ServiceInfo>, Option<Arc<Policy>>),
    /// Read the service's membership now (its cgroup), so that `Pids` includes the latest forks.
    Refresh,
}

/// How a request ended well.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Done {
    /// The stop needed force (or its command failed): counted in StopFaultNum, but the service is
    /// stopped, which is what was asked.
    pub stop_fault: Option<String>,
}

/// Why a request could not be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("the service task has ended")]
    Ended,
    #[error("too many requests are queued for this service; try again")]
    Busy,
    #[error("{0}")]
    Failed(String),
}

pub type Outcome = Result<Done, ControlError>;

struct Request {
    control: Control,
    reply: oneshot::Sender<Outcome>,
}

/// Everything a service task hears, in one bounded queue. Boxed payloads keep a queue slot at
/// 16 bytes: tokio allocates a block of 32 slots per queue up front, once per service.
enum Msg {
    Request(Box<Request>),
    Event(Box<Input>),
    /// A health check of run `gen` ended: recorded, then fed to the machine as `Checked`.
    Checked(u64, Box<LastCheck>),
}

/// How actions and watchers report back: a weak sender, so that the task still ends when its last
/// handle goes, whatever watchers are left. Starts and stops hold a strong one while they run.
#[derive(Clone)]
struct Events(mpsc::WeakSender<Msg>);

impl Events {
    fn send(&self, input: Input) -> impl std::future::Future<Output = ()> + use<> {
        self.send_msg(Msg::Event(Box::new(input)))
    }

    /// Queues `msg` at once when there is room, which is nearly always (the task drains its
    /// queue without awaiting anything); only the wait for room is a future, boxed. Every watcher
    /// of every service holds a send in its state: the channel's own send future is about 250
    /// bytes, and an `async fn` here would keep copies of its arguments besides.
    fn send_msg(&self, msg: Msg) -> impl std::future::Future<Output = ()> + use<> {
        let wait = match self.0.upgrade().map(|tx| (tx.try_send(msg), tx)) {
            Some((Err(mpsc::error::TrySendError::Full(msg)), tx)) => Some(Box::pin(async move {
                let _ = tx.send(msg).await;
            })),
            _ => None,
        };
        async move {
            if let Some(wait) = wait {
                wait.await;
            }
        }
    }
}

/// The handle on one service task. Cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    tx: mpsc::Sender<Msg>,
    snapshot: watch::Receiver<Arc<TaskSnapshot>>,
    log: ServiceLog,
    populated_at_start: bool,
}

impl ServiceHandle {
    /// Queues `control` now (the order of queued controls is the order of the calls) and returns
    /// where its outcome will arrive. A caller that drops the receiver before a restart is taken
    /// from the queue cancels that restart.
    pub fn enqueue(&self, control: Control) -> Result<oneshot::Receiver<Outcome>, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Msg::Request(Box::new(Request { control, reply }))).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ControlError::Busy,
            mpsc::error::TrySendError::Closed(_) => ControlError::Ended,
        })?;
        Ok(rx)
    }

    /// Queues `control`, waiting for room if need be (shutdown, boot), and waits for its outcome.
    pub async fn send(&self, control: Control) -> Outcome {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Request(Box::new(Request { control, reply }))).await.map_err(|_| ControlError::Ended)?;
        rx.await.map_err(|_| ControlError::Ended)?
    }

    /// The latest snapshot (shared, not copied).
    pub fn snapshot(&self) -> Arc<TaskSnapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<TaskSnapshot>> {
        self.snapshot.clone()
    }

    pub fn log(&self) -> &ServiceLog {
        &self.log
    }

    /// Whether the service's cgroup held processes when its task started.
    pub fn members_at_start(&self) -> bool {
        self.populated_at_start
    }
}

/// A service's own cgroup and the events of its `cgroup.events`: every process of the service is
/// born in it, so its membership is exactly what the service runs.
#[derive(Clone)]
struct Owned {
    cg: ServiceCgroup,
    events: cgroup::EventsWatch,
    /// The cgroup its health checks run in (made at the first check).
    checks: ServiceCgroup,
}

impl Owned {
    /// The service's cgroup, made now or found (left by a previous air-nanny), and whether it was
    /// made now: then nothing is in it yet.
    fn new(cgroups: &cgroup::Cgroups, name: &str) -> std::io::Result<(Owned, bool)> {
        let cg = cgroups.hierarchy.service(name);
        let made = cg.create()?;
        let events = cgroups.monitor.watch(&cg)?;
        Ok((Owned { cg, events, checks: cgroups.hierarchy.checks(name) }, made))
    }

    fn members(&self) -> Vec<i32> {
        self.cg.procs().unwrap_or_default()
    }
}

/// Starts the task for `info`, initially stopped. It ends when every handle is dropped and its
/// program is stopped. With `cgroups`, the service gets its own cgroup (else, or when that cannot
/// be made, its processes are found by path and pid: the fallback mode). `policy`: the allow-list
/// a request's entry passed, checked again at every start.
#[allow(clippy::too_many_arguments)] // the supervisor's shared handles, each needed by the task
pub fn spawn(
    info: ServiceInfo,
    policy: Option<Arc<Policy>>,
    settings: Arc<Settings>,
    reaper: Reaper,
    cgroups: Option<&cgroup::Cgroups>,
    ledger: Option<Arc<Ledger>>,
    journal: Journal,
    changes: super::state::Changes,
) -> ServiceHandle {
    // A cgroup made now holds nothing: only one found can hold what a previous air-nanny left.
    let mut found = false;
    let owned = cgroups.and_then(|c| match Owned::new(c, &info.name) {
        Ok((o, made)) => {
            found = !made;
            Some(o)
        }
        Err(e) => {
            tracing::error!(service = %info.name, "cannot make the service's cgroup ({e}); its processes are found by path instead");
            None
        }
    });
    let ledger = if owned.is_some() { None } else { ledger };
    let log = ServiceLog::open(&settings.log_dir, &info.name, settings.log_max_bytes, settings.log_max_files);
    crate::fdstore::attach(&info.name, &log);
    let (tx, inbox) = mpsc::channel(QUEUE);
    let info = Arc::new(info);
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(TaskSnapshot::new(info.clone())));
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        ^ (info.name.len() as u64) << 32;
    let task = ServiceTask {
        limits: limits(&settings, &info),
        snap: TaskSnapshot::new(info.clone()),
        info,
        settings,
        reaper,
        log: log.clone(),
        machine: Machine::new(seed),
        policy,
        paths: None,
        run_cfg: None,
        owned,
        owned_unused: !found,
        ledger,
        child: None,
        launched: Arc::default(),
        held: Vec::new(),
        start_token: None,
        run_token: None,
        start_waiters: Vec::new(),
        stop_waiters: Vec::new(),
        events: Events(tx.downgrade()),
        inbox,
        snapshot_tx,
        journal,
        changes,
        check_output: None,
        exits_seen: 0,
        errors_seen: 0,
        shut_down: false,
    };
    let populated_at_start = found && task.owned.as_ref().is_some_and(|o| !o.members().is_empty());
    // Boxed: an async fn keeps a copy of its by-value arguments beside its own state (rustc does
    // not overlap them), which made each service's task future twice the size of its state.
    tokio::spawn(Box::new(task).run());
    ServiceHandle { tx, snapshot, log, populated_at_start }
}

/// The machine's view of a configuration.
fn limits(settings: &Settings, info: &ServiceInfo) -> Limits {
    let hc = &info.health_check;
    Limits {
        daemon: info.is_daemon,
        direct: info.is_direct(),
        start_timeout: settings.start_timeout_of(info),
        check: hc.is_health_check.then(|| CheckPlan {
            interval: Duration::from_secs(hc.interval),
            start_interval: Duration::from_secs(hc.start_interval()),
            start_period: Duration::from_secs(hc.start_period),
            retries: hc.retries,
        }),
        backoff_base: settings.backoff_base,
        backoff_max: settings.backoff_max,
        backoff_reset: settings.backoff_reset,
        start_limit: settings.start_limit,
    }
}

/// What a run was started with: its stop and its checks use the same, even after a new
/// configuration was applied.
#[derive(Clone)]
struct RunCfg {
    info: Arc<ServiceInfo>,
    paths: Arc<Resolved>,
}

/// Everything a spawned start or stop needs, by value.
#[derive(Clone)]
struct Ctx {
    settings: Arc<Settings>,
    reaper: Reaper,
    log: ServiceLog,
    info: Arc<ServiceInfo>,
    paths: Option<Arc<Resolved>>,
    owned: Option<Owned>,
    ledger: Option<Arc<Ledger>>,
}

impl Ctx {
    /// Fallback mode: the program's processes by path, never one another service owns.
    fn find(&self, program: &Path) -> Vec<i32> {
        self.not_others(process::find_program(program))
    }

    /// `pids` without the processes another service owns: recorded as its own, or started by
    /// air-nanny for it (its tag in their environment).
    fn not_others(&self, pids: Vec<i32>) -> Vec<i32> {
        let Some(l) = &self.ledger else { return pids };
        let mine = self.tag();
        let pids = l.not_others(&self.info.name, pids);
        pids.into_iter().filter(|&p| process::owner_tag(p).is_none_or(|t| t == mine)).collect()
    }

    /// The tag of this service's processes (see [`process::OWNER_VAR`]).
    fn tag(&self) -> String {
        format!("{}:{}", self.settings.state_dir.display(), self.info.name)
    }
}

/// Where a direct-mode child launched beside the task waits for its run's watch: (run, pid, exit).
type LaunchSlot = Arc<std::sync::Mutex<Option<(u64, i32, oneshot::Receiver<Exit>)>>>;

/// What a step of the machine writes once its actions have run: a start's child is cloned first.
/// At N = 1000 the first note of a respawn (a log write, a journal record, a log line) took
/// 0.1–0.2 ms on a cold cache, all of it before the clone when written in order.
enum Later {
    /// The machine's note: the service log, the journal and air-nanny's log.
    Note(Level, Kind, String),
    /// A line of the service log only.
    Log(String),
}

struct ServiceTask {
    settings: Arc<Settings>,
    reaper: Reaper,
    log: ServiceLog,
    /// The current configuration and the machine's view of it.
    info: Arc<ServiceInfo>,
    limits: Limits,
    machine: Machine,
    /// The allow-list the configuration came in under, when it came from a request.
    policy: Option<Arc<Policy>>,
    /// The paths of the current configuration, resolved when first needed (finding the program).
    paths: Option<Arc<Resolved>>,
    /// What the current (or last) run was started with.
    run_cfg: Option<RunCfg>,
    /// The service's cgroup, when it has one.
    owned: Option<Owned>,
    /// Its cgroup was made by this task and nothing has been started in it yet: the first start
    /// has nothing to adopt and need not read the members (a boot of 1000 read 1000 empty ones).
    owned_unused: bool,
    /// Without a cgroup: the record of every service's processes.
    ledger: Option<Arc<Ledger>>,
    /// A direct-mode child's exit, from its start until it is watched.
    child: Option<(i32, oneshot::Receiver<Exit>)>,
    /// A direct-mode child launched beside the task (with cgroups): (run, pid, exit), taken by
    /// the run's watch.
    launched: LaunchSlot,
    /// Without cgroups: the run's processes held by pidfds since the spawn (a direct child) or
    /// since they were found, so that its stop signals exactly them.
    held: Vec<Held>,
    start_token: Option<CancellationToken>,
    /// Cancels the watchers and probes of the current run.
    run_token: Option<CancellationToken>,
    start_waiters: Vec<oneshot::Sender<Outcome>>,
    stop_waiters: Vec<oneshot::Sender<Outcome>>,
    /// What observers see, derived from the machine after every step.
    snap: TaskSnapshot,
    events: Events,
    inbox: mpsc::Receiver<Msg>,
    snapshot_tx: watch::Sender<Arc<TaskSnapshot>>,
    /// The service's history of events.
    journal: Journal,
    /// Bumped at every published snapshot (long-polls of the task list wait on it).
    changes: super::state::Changes,
    /// The output of the check being fed to the machine, for the health event it may cause.
    check_output: Option<String>,
    /// The machine's exit and error counts last published (a new one is stamped with the time).
    exits_seen: u64,
    errors_seen: u64,
    /// Stopped by air-nanny's shutdown (not removed): its cgroup is kept for the next start.
    shut_down: bool,
}

impl ServiceTask {
    async fn run(mut self: Box<Self>) {
        loop {
            let wake = self.machine.next_deadline();
            tokio::select! {
                msg = self.inbox.recv() => match msg {
                    Some(Msg::Request(r)) => self.on_request(*r),
                    Some(Msg::Event(input)) => self.feed(*input),
                    Some(Msg::Checked(gen, check)) => self.on_checked(gen, *check),
                    None if self.at_rest() => break,
                    None => self.wind_down(),
                },
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => self.feed(Input::Tick),
            }
            self.publish();
        }
        if let Some(t) = self.run_token.take() {
            t.cancel();
        }
        // Removed: its empty cgroup is not left behind (the kernel refuses to remove one that is
        // not empty, which is then left as it is). Shut down: the empty cgroup stays for the next
        // start, which makes it again anyway (under systemd, the unit's stop removes its delegated
        // cgroups): an rmdir of a cgroup costs the kernel tens of microseconds and holds kernfs
        // locks that every other cgroup file's open waits for, which made a 1000-service shutdown
        // 20 % longer, also from another thread.
        if let Some(o) = self.owned.as_ref().filter(|_| !self.shut_down) {
            let _ = o.cg.remove();
            // What a check left was killed as the check ended (or was cancelled, just above);
            // a cgroup not yet empty is left to the next start (`Actor::reclaim`).
            let _ = o.checks.kill_if_populated();
            let _ = o.checks.remove();
        }
        crate::fdstore::detach(&self.info.name, &self.log, !self.shut_down);
    }

    /// Nothing of the service runs, and nothing is in flight.
    fn at_rest(&self) -> bool {
        matches!(self.machine.state(), State::Stopped | State::Exited | State::Failed)
            || matches!(self.machine.phase, super::machine::Phase::Backoff { known_absent: true, .. })
    }

    /// Every handle is gone (removed, or shut down) while the program runs: nothing of the service
    /// may outlive its task. The queue has closed, so the stop gets a fresh one to report on.
    fn wind_down(&mut self) {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.inbox = rx;
        self.events = Events(tx.downgrade());
        self.feed(Input::Shutdown(Lookup::Scan));
        // The stop now holds the only strong sender: the queue closes again when it has reported.
    }

    fn on_request(&mut self, Request { control, reply }: Request) {
        let input = match control {
            Control::Start => {
                self.start_waiters.push(reply);
                Input::Start(Lookup::Scan)
            }
            Control::Boot(table) => {
                self.start_waiters.push(reply);
                Input::Start(Lookup::Table(table))
            }
            Control::Restart => {
                // Its requester gave up (timed out, went away): a restart must not happen later.
                if reply.is_closed() {
                    return;
                }
                self.start_waiters.push(reply);
                Input::Restart
            }
            Control::Stop => {
                self.stop_waiters.push(reply);
                Input::Stop
            }
            Control::Shutdown(table) => {
                self.shut_down = true;
                self.stop_waiters.push(reply);
                Input::Shutdown(Lookup::Table(table))
            }
            Control::Apply(info, policy) => {
                let changed = self.configure(*info);
                // A request's allow-list applies from the next start on, also when it re-posted the
                // running configuration unchanged (the store keeps the entry as that request's).
                if changed || policy.is_some() || self.machine.state() != State::Running {
                    self.policy = policy;
                }
                self.start_waiters.push(reply);
                Input::Configure { changed, start: true }
            }
            Control::Update(info, policy) => {
                let changed = self.configure(*info);
                // An allow-list given for the same configuration only narrows what may run.
                if changed || policy.is_some() {
                    self.policy = policy;
                }
                self.start_waiters.push(reply);
                Input::Configure { changed, start: false }
            }
            Control::Refresh => {
                let _ = reply.send(Ok(Done::default()));
                match (&self.owned, self.machine.run_gen()) {
                    (Some(o), Some(gen)) => Input::Members { gen, pids: o.members() },
                    _ => return,
                }
            }
        };
        self.feed(input);
    }

    /// Takes `info` as the configuration from now on; true when it differs.
    fn configure(&mut self, info: ServiceInfo) -> bool {
        if info == *self.info {
            return false;
        }
        self.info = Arc::new(info);
        self.limits = limits(&self.settings, &self.info);
        self.paths = None;
        true
    }

    /// Steps the machine and runs what it decides, feeding back what actions answer at once; the
    /// notes last, in their order (see [`Later`]).
    fn feed(&mut self, input: Input) {
        let mut later = Vec::new();
        let mut todo: VecDeque<Action> = self.machine.step(input, &self.limits, Instant::now()).into();
        while let Some(action) = todo.pop_front() {
            if let Some(next) = self.act(action, &mut later) {
                todo.extend(self.machine.step(next, &self.limits, Instant::now()));
            }
        }
        for note in later {
            self.write(note);
        }
    }

    fn write(&mut self, note: Later) {
        let (level, kind, text) = match note {
            Later::Log(text) => return self.log.note(&text),
            Later::Note(level, kind, text) => (level, kind, text),
        };
        self.log.note(&text);
        let name = &self.info.name;
        match kind {
            Kind::Health => self.journal.health(name, text.clone(), self.check_output.take()),
            _ => self.journal.record(name, kind, text.clone()),
        }
        match level {
            Level::Info => tracing::info!(service = %name, "{text}"),
            Level::Warn => tracing::warn!(service = %name, "{text}"),
            Level::Error => tracing::error!(service = %name, "{text}"),
        }
    }

    fn act(&mut self, action: Action, later: &mut Vec<Later>) -> Option<Input> {
        match action {
            Action::Start { gen, lookup } => return self.start(gen, lookup, later),
            Action::CancelStart { .. } => {
                if let Some(t) = self.start_token.take() {
                    t.cancel();
                }
            }
            Action::Stop { gen, pids, lookup } => self.stop(gen, pids, lookup),
            Action::Watch { gen, pids } => self.watch(gen, &pids),
            Action::Relook { gen } => {
                let pids = match &self.owned {
                    Some(o) => o.members(),
                    None => {
                        let program = self.program_path();
                        self.ctx().find(&program)
                    }
                };
                return Some(Input::Found { gen, pids });
            }
            Action::Probe { gen } => return self.probe(gen),
            // What the dead program left: its cgroup's members (exact: nothing signalled by a
            // number that may be another's by now), or without one, its process group.
            Action::KillGroup { pid } => match &self.owned {
                Some(o) => {
                    if let Err(e) = o.cg.kill_if_populated() {
                        tracing::warn!(service = %self.info.name, "cgroup.kill: {e}");
                    }
                }
                None => process::signal_group(pid, Signal::SIGKILL),
            },
            Action::Answer(Answer::Start(r)) => {
                for w in self.start_waiters.drain(..) {
                    let _ = w.send(r.clone().map(|()| Done::default()).map_err(ControlError::Failed));
                }
            }
            Action::Answer(Answer::Stop(fault)) => {
                for w in self.stop_waiters.drain(..) {
                    let _ = w.send(Ok(Done { stop_fault: fault.clone() }));
                }
            }
            Action::Note(level, kind, text) => later.push(Later::Note(level, kind, text)),
        }
        None
    }

    /// Publishes the snapshot when something observers can see changed (a new version invalidates
    /// what readers derived from the old one, such as the API's cached JSON).
    fn publish(&mut self) {
        let m = &self.machine;
        let state = m.state();
        let now = SystemTime::now();
        if state != self.snap.state {
            self.snap.state = state;
            self.snap.since = now;
        }
        if m.exits != self.exits_seen {
            self.exits_seen = m.exits;
            self.snap.last_exit_at = Some(now);
        }
        if m.errors != self.errors_seen {
            self.errors_seen = m.errors;
            self.snap.last_error_at = Some(now);
        }
        self.snap.streak = m.streak();
        self.snap.next_try =
            m.backoff().map(|(until, cause)| (now + until.saturating_duration_since(Instant::now()), cause));
        if m.run_gen().is_none() && state != State::Stopping {
            self.snap.last_check = None;
        }
        if !Arc::ptr_eq(&self.snap.info, &self.info) {
            self.snap.info = self.info.clone();
        }
        if self.snap.pids != m.pids() {
            self.snap.pids = m.pids().to_vec();
            if let Some(l) = &self.ledger {
                l.record(&self.info.name, &self.snap.pids);
            }
        }
        self.snap.health = m.health();
        self.snap.restarts = m.restarts;
        self.snap.start_faults = m.start_faults;
        self.snap.stop_faults = m.stop_faults;
        self.snap.last_exit.clone_from(&m.last_exit);
        self.snap.last_error.clone_from(&m.last_error);
        if *self.snapshot_tx.borrow().as_ref() == self.snap {
            return;
        }
        self.snap.version += 1;
        let before = self.snapshot_tx.send_replace(Arc::new(self.snap.clone()));
        self.changes.bump();
        if before.state != self.snap.state || before.health != self.snap.health {
            super::state::STATUS_CHANGED.notify_one();
        }
        if before.state != self.snap.state {
            self.journal.state(&self.info.name, self.snap.state.name(), describe(&self.snap));
        }
    }

    /// The program's path, for finding it in /proc: the running one's, else the configuration's.
    fn program_path(&mut self) -> PathBuf {
        if let Some(run) = &self.run_cfg {
            return run.paths.program.clone();
        }
        if self.paths.is_none() {
            self.paths = self.settings.resolve(&self.info, false).ok().map(Arc::new);
        }
        match &self.paths {
            Some(p) => p.program.clone(),
            None => self.settings.program_path(&self.info),
        }
    }

    /// Resolves the paths for a start (the one resolution: what is checked is what runs), and
    /// applies the request's allow-list to them again.
    fn resolve_for_start(&mut self) -> Result<Arc<Resolved>, String> {
        let resolved = self.settings.resolve(&self.info, true).map_err(|p| p.to_string())?;
        if let Some(policy) = &self.policy {
            policy.check(&self.info, &resolved).map_err(|r| format!("refused by the allow-list: {r}"))?;
        }
        let resolved = Arc::new(resolved);
        self.paths = Some(resolved.clone());
        Ok(resolved)
    }

    fn ctx(&self) -> Ctx {
        let (info, paths) = match &self.run_cfg {
            Some(r) => (r.info.clone(), Some(r.paths.clone())),
            None => (self.info.clone(), self.paths.clone()),
        };
        Ctx {
            settings: self.settings.clone(),
            reaper: self.reaper.clone(),
            log: self.log.clone(),
            info,
            paths,
            owned: self.owned.clone(),
            ledger: self.ledger.clone(),
        }
    }

    /// Starts run `gen`: adopts the program when the lookup finds it, spawns it (direct mode, at
    /// once), or runs the start command beside the task (script mode). The child is cloned here,
    /// before the notes of the step are written (`later`); its exec is awaited beside the task.
    fn start(&mut self, gen: u64, lookup: Lookup, later: &mut Vec<Later>) -> Option<Input> {
        // A restart (the program known gone: after its death, a backoff or a clean stop), not a
        // boot's or a start request's: its child is given air-nanny's CPU (`Extras::hurry`).
        let hurry = matches!(lookup, Lookup::Absent);
        self.cancel_run();
        self.child = None;
        self.held.clear();
        let paths = match self.resolve_for_start() {
            Ok(p) => p,
            Err(reason) => return Some(Input::Started { gen, outcome: StartOutcome::Failed(reason) }),
        };
        self.run_cfg = Some(RunCfg { info: self.info.clone(), paths: paths.clone() });
        let program = paths.program.as_path();
        // Adopt a program that already runs (started before air-nanny, by a previous air-nanny, or
        // by a start that failed after launching it).
        let unused = std::mem::take(&mut self.owned_unused);
        let found = match (&self.owned, &lookup) {
            (_, Lookup::Absent) => Vec::new(),
            (Some(_), _) if unused => Vec::new(),
            // Whatever is in the service's cgroup is the service's, and nothing else is.
            (Some(o), _) => o.members(),
            (None, Lookup::Scan) => self.ctx().find(program),
            // At boot, the record of the previous air-nanny says exactly what is the service's;
            // without one (a first boot), the group's scan, minus other services' processes.
            (None, Lookup::Table(table)) => match self.ledger.as_ref().and_then(|l| l.recorded(&self.info.name)) {
                Some(recorded) => recorded,
                None => {
                    self.ctx().not_others(table.find(program).into_iter().filter(|p| process::is_alive(*p)).collect())
                }
            },
        };
        if !found.is_empty() {
            later.push(Later::Log(match &self.owned {
                Some(o) => format!("adopted the processes in {} (pids {found:?})", o.cg.dir().display()),
                None => format!("adopted running program {} (pids {found:?})", program.display()),
            }));
            tracing::info!(service = %self.info.name, pids = ?found, "adopted running program");
            return Some(Input::Started { gen, outcome: StartOutcome::Running { pids: found, adopted: true } });
        }
        let ctx = self.ctx();
        if let Some(o) = self.owned.as_ref().filter(|_| self.info.is_direct()) {
            // Forked into the cgroup beside the task, the exec confirmed without holding up the
            // runtime: a boot forks the next program while the last one execs.
            let (slot, name) = (self.launched.clone(), self.info.name.clone());
            let tx = self.events.0.upgrade()?;
            let begun = begin_direct(&ctx, o, &paths, hurry, later);
            tokio::spawn(async move {
                let outcome = match landed_direct(begun, &paths).await {
                    Ok(spawned) => {
                        tracing::info!(service = %name, pid = spawned.pid, "running");
                        let pid = spawned.pid;
                        *slot.lock().expect("launch slot") = Some((gen, pid, spawned.exit));
                        StartOutcome::Running { pids: vec![pid], adopted: false }
                    }
                    Err(reason) => StartOutcome::Failed(reason),
                };
                let _ = tx.send(Msg::Event(Box::new(Input::Started { gen, outcome }))).await;
            });
            return None;
        }
        if self.info.is_direct() {
            let outcome = match start_direct(&ctx, &paths, later) {
                Ok(spawned) => {
                    tracing::info!(service = %self.info.name, pid = spawned.pid, "running");
                    if self.owned.is_none() {
                        self.held.extend(self.reaper.hold(spawned.pid));
                    }
                    let pids = vec![spawned.pid];
                    self.child = Some((spawned.pid, spawned.exit));
                    StartOutcome::Running { pids, adopted: false }
                }
                Err(reason) => StartOutcome::Failed(reason),
            };
            return Some(Input::Started { gen, outcome });
        }
        let token = CancellationToken::new();
        self.start_token = Some(token.clone());
        let tx = self.events.0.upgrade()?;
        let command = self.info.script.start_command.clone();
        if let Some(script) = &paths.script {
            later.push(Later::Log(format!("start: {} {command}", script.display())));
        }
        let begun = begin_script(&ctx, &paths, &command, hurry);
        tokio::spawn(async move {
            let outcome = start_script(&ctx, &paths, begun, &token).await;
            let _ = tx.send(Msg::Event(Box::new(Input::Started { gen, outcome }))).await;
        });
        None
    }

    fn cancel_run(&mut self) {
        if let Some(t) = self.run_token.take() {
            t.cancel();
        }
    }

    /// Stops `pids` (and the program wherever `lookup` finds it) beside the task.
    fn stop(&mut self, gen: u64, pids: Vec<i32>, lookup: Lookup) {
        self.cancel_run();
        // The reaper still reaps the child; a stop waits on it through its pidfd.
        self.child = None;
        let held = std::mem::take(&mut self.held);
        let ctx = self.ctx();
        let Some(tx) = self.events.0.upgrade() else { return };
        tokio::spawn(async move {
            let fault = stop(&ctx, pids, lookup, held).await;
            let _ = tx.send(Msg::Event(Box::new(Input::Stopped { gen, fault }))).await;
        });
    }

    fn watch(&mut self, gen: u64, pids: &[i32]) {
        let token = self.run_token.get_or_insert_with(CancellationToken::new).clone();
        if let Some(o) = self.owned.clone() {
            // The program's death is its cgroup emptying. A direct-mode child's own exit (with
            // its status) comes from the reaper and ends the run first.
            let launched = self.launched.lock().expect("launch slot").take();
            if let Some((g, pid, exit)) = launched {
                if g == gen {
                    self.child = Some((pid, exit));
                }
            }
            let child = self.child.take();
            let report_empty = child.is_none();
            let (tx, reaper) = (self.events.clone(), self.reaper.clone());
            let first = pids.to_vec();
            // One task watches both (a task per watcher cost a few hundred bytes per service).
            tokio::spawn(async move {
                let gone = async {
                    if let Some((pid, exit)) = child {
                        let exit = exit.await.ok().map(|e| e.to_string());
                        tx.send(Input::Gone { gen, pid, exit }).await;
                    }
                };
                tokio::select! {
                    _ = async { tokio::join!(gone, watch_cgroup(o, reaper, gen, first, report_empty, &tx)) } => {}
                    _ = token.cancelled() => {}
                }
            });
            return;
        }
        // Each process of the run held from now on (a direct child since its spawn): held, then
        // checked to be the program, so the hold is exact.
        let program = self.program_path();
        for &pid in pids {
            if !self.held.iter().any(|h| h.pid() == pid) {
                if let Some(h) = Held::open(pid) {
                    if !process::program_among(&[pid], &program).is_empty() {
                        self.held.push(h);
                    }
                }
            }
        }
        for &pid in pids {
            let (tx, token) = (self.events.clone(), token.clone());
            match self.child.take() {
                // Direct mode: the reaper tells us the child's exit and its status.
                Some((child, exit)) if child == pid => {
                    tokio::spawn(async move {
                        tokio::select! {
                            e = exit => tx.send(Input::Gone { gen, pid, exit: e.ok().map(|e| e.to_string()) }).await,
                            _ = token.cancelled() => {}
                        }
                    });
                }
                // Script mode and adopted programs: a pidfd tells us when each process exits; the
                // reaper, its status when it was air-nanny's child (a daemonised program is).
                other => {
                    self.child = other;
                    let claim = self.reaper.claim(pid);
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = process::wait_exit(pid) => {
                                let exit = match claim {
                                    Some(rx) => tokio::time::timeout(Duration::from_millis(500), rx).await.ok().and_then(Result::ok),
                                    None => None,
                                };
                                tx.send(Input::Gone { gen, pid, exit: exit.map(|r| r.exit.to_string()) }).await
                            }
                            _ = token.cancelled() => {}
                        }
                    });
                }
            }
        }
    }

    fn probe(&mut self, gen: u64) -> Option<Input> {
        let Some(run) = self.run_cfg.clone() else {
            return Some(Input::Checked { gen, result: Err("the check's paths are not resolved".into()) });
        };
        let probe = run.info.health_check.probe();
        if probe == Probe::ProcessAlive {
            let started = std::time::Instant::now();
            let alive = match &self.owned {
                Some(o) => !o.members().is_empty(),
                None => self.machine.pids().iter().any(|p| process::is_alive(*p)),
            };
            let result = if alive { Ok(()) } else { Err("no live process of the program".into()) };
            let check = LastCheck {
                at: SystemTime::now(),
                took: started.elapsed(),
                failure: result.clone().err(),
                output: String::new(),
            };
            self.snap.last_check = Some(check);
            return Some(Input::Checked { gen, result });
        }
        let timeout = Duration::from_secs(run.info.health_check.timeout);
        let token = self.run_token.get_or_insert_with(CancellationToken::new).clone();
        let (tx, reaper, log) = (self.events.clone(), self.reaper.clone(), self.log.clone());
        let checks = self.owned.as_ref().map(|o| o.checks.clone());
        tokio::spawn(async move {
            let at = SystemTime::now();
            let started = std::time::Instant::now();
            tokio::select! {
                outcome = health::check(&probe, timeout, &reaper, &log, &run.paths, checks.as_ref()) => {
                    let check = LastCheck { at, took: started.elapsed(), failure: outcome.result.err(), output: outcome.output };
                    tx.send_msg(Msg::Checked(gen, Box::new(check))).await;
                }
                _ = token.cancelled() => {}
            }
        });
        None
    }

    /// A check of run `gen` ended: what it found is shown, and the machine decides.
    fn on_checked(&mut self, gen: u64, check: LastCheck) {
        if self.machine.run_gen() != Some(gen) {
            return;
        }
        let result = match &check.failure {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        };
        self.check_output = Some(check.output.clone());
        self.snap.last_check = Some(check);
        self.feed(Input::Checked { gen, result });
        self.check_output = None;
    }
}

/// What a state event says besides the state: the processes of a run, the cause and time of a
/// restart, how a one-shot program ended, why a service was given up.
fn describe(t: &TaskSnapshot) -> String {
    let name = t.state.name();
    match t.state {
        State::Running if !t.pids.is_empty() => {
            let pids: Vec<String> = t.pids.iter().map(i32::to_string).collect();
            format!("{name} (pid {})", pids.join(", "))
        }
        State::Backoff => match t.next_try {
            Some((at, cause)) => {
                let ms = at.duration_since(SystemTime::now()).unwrap_or_default().as_millis();
                format!("{name}: {cause}; next start in {ms} ms")
            }
            None => name.to_string(),
        },
        State::Exited => match &t.last_exit {
            Some(e) => format!("{name} ({e})"),
            None => name.to_string(),
        },
        State::Failed => match &t.last_error {
            Some(e) => format!("{name}: {e}"),
            None => name.to_string(),
        },
        _ => name.to_string(),
    }
}

/// Watches run `gen` in its cgroup: reports its membership when it changes and, when the cgroup
/// is empty, `Emptied` with the exit of the process that died last (air-nanny, as subreaper, reaps
/// every process of the service whose parent has gone before it: the last one always).
/// With `report_empty` false (a direct-mode child, whose own exit ends the run) it only reports
/// the membership.
///
/// A plain function returning an `async move` block, which uses what it captured in place (an
/// `async fn` keeps a second copy of its arguments: one per service, for as long as it runs).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn watch_cgroup(
    mut o: Owned,
    reaper: Reaper,
    gen: u64,
    mut known: Vec<i32>,
    report_empty: bool,
    tx: &Events,
) -> impl std::future::Future<Output = ()> + '_ {
    async move {
        let mut claims: Vec<oneshot::Receiver<crate::reaper::Reaped>> = Vec::new();
        let mut claimed: Vec<i32> = Vec::new();
        loop {
            o.events.mark_seen();
            let pids = o.cg.procs().unwrap_or_default();
            for &p in pids.iter().chain(known.iter()) {
                if !claimed.contains(&p) {
                    claimed.push(p);
                    claims.extend(reaper.claim(p));
                }
            }
            if pids.is_empty() {
                // Every process that was seen in it has ended: reaped by pid now (see `reaper`).
                reaper.collect(&claimed);
                break;
            }
            if pids != known {
                known.clone_from(&pids);
                tx.send(Input::Members { gen, pids }).await;
            }
            if o.events.changed().await.is_err() {
                // The watch has gone (the cgroup was removed under us): look now and then.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !report_empty {
            return;
        }
        // The kernel marks the cgroup empty a moment before the parent is told: give the reaper that
        // moment. Claims of processes that other members reaped never answer.
        // Boxed: this wait runs once, at the end; kept inline it would size the watch's state.
        let all = Box::pin(tokio::time::timeout(Duration::from_millis(500), futures_util::future::join_all(claims)));
        let reaped = all.await.unwrap_or_default();
        let last = reaped.into_iter().flatten().max_by_key(|r| r.seq);
        tx.send(Input::Emptied { gen, exit: last.map(|r| r.exit.to_string()) }).await;
    }
}

/// Direct mode's start: the program's command, the user to run it as (uid, gid), and the note
/// saying what starts.
type DirectStart = (Command, Option<(u32, u32)>, String);

fn direct_command(ctx: &Ctx, paths: &Resolved) -> Result<DirectStart, String> {
    let s = &ctx.info.script;
    let program = paths.program.as_path();
    let mut cmd = Command::new(program);
    cmd.args(&s.args).envs(&s.env).env("AIR_NANNY_SERVICE", &ctx.info.name).env(process::OWNER_VAR, ctx.tag());
    cmd.current_dir(&paths.work_dir);
    let user = s.user.as_deref().map(process::lookup_user).transpose()?;
    Ok((cmd, user, format!("start: {} {}", program.display(), s.args.join(" "))))
}

/// Direct mode without cgroups: the program as the service's child, at once (std's posix_spawn).
fn start_direct(ctx: &Ctx, paths: &Resolved, later: &mut Vec<Later>) -> Result<crate::reaper::Spawned, String> {
    let (cmd, user, note) = direct_command(ctx, paths)?;
    later.push(Later::Log(note));
    spawn_logged(ctx, cmd, user, Life::Program)
        .map_err(|e| spawn_error("script.programFilePath", &paths.program, &paths.work_dir, e))
}

/// Direct mode with cgroups: the program cloned into its cgroup now; [`landed_direct`] awaits its
/// exec beside the runtime.
fn begin_direct(
    ctx: &Ctx,
    o: &Owned,
    paths: &Resolved,
    hurry: bool,
    later: &mut Vec<Later>,
) -> Result<Launching, String> {
    let (cmd, user, note) = direct_command(ctx, paths)?;
    later.push(Later::Log(note));
    begin_logged(ctx, o, cmd, user, Life::Program, hurry)
        .map_err(|e| spawn_error("script.programFilePath", &paths.program, &paths.work_dir, e))
}

async fn landed_direct(begun: Result<Launching, String>, paths: &Resolved) -> Result<crate::reaper::Spawned, String> {
    begun?.landed().await.map_err(|e| spawn_error("script.programFilePath", &paths.program, &paths.work_dir, e))
}

/// Script mode: runs the start command, then waits for the program to appear. Cancelled (a stop,
/// the start timeout), it kills the start command's process group and says which processes of the
/// program it can see, so that the stop that follows stops them too.
async fn start_script(
    ctx: &Ctx,
    paths: &Resolved,
    begun: Result<Begun, String>,
    token: &CancellationToken,
) -> StartOutcome {
    let Some(script) = paths.script.as_deref() else {
        return StartOutcome::Failed("no control script (direct mode)".into());
    };
    let program = paths.program.as_path();
    let command = ctx.info.script.start_command.clone();
    let spawned = match landed_script(begun, paths).await {
        Ok(s) => s,
        Err(e) => return StartOutcome::Failed(e),
    };
    let script_pid = spawned.pid;
    let exit = tokio::select! {
        e = spawned.exit => e,
        _ = token.cancelled() => {
            process::signal_group(script_pid, Signal::SIGKILL);
            ctx.log.note(&format!("{} {command}: cancelled", script.display()));
            let pids = match &ctx.owned {
                Some(o) => o.members(),
                None => ctx.find(program),
            };
            return StartOutcome::Cancelled { pids };
        }
    };
    let exit = match exit {
        Ok(exit) => exit,
        Err(_) => return StartOutcome::Failed(format!("the exit of {} {command} was lost", script.display())),
    };
    ctx.log.note(&format!("{} {command}: {exit}", script.display()));
    if !exit.success() {
        // A failed start leaves nothing behind (a program it launched before failing would
        // otherwise run beside the one the retry starts): with a cgroup, nothing at all; without,
        // nothing in its process group, and what escaped the group is adopted by the retry.
        process::signal_group(script_pid, Signal::SIGKILL);
        let why = format!("start command {} {command} failed: {exit}", script.display());
        if let Some(o) = &ctx.owned {
            let _ = o.cg.kill_if_populated();
            let mut events = o.events.clone();
            if !o.cg.wait_empty(Some(&mut events), Instant::now() + Duration::from_secs(5)).await {
                return StartOutcome::Failed(format!("{why}; what it started survived cgroup.kill"));
            }
        } else {
            settle_escaped(ctx, program, token).await;
        }
        return StartOutcome::Failed(why);
    }
    if let Some(o) = &ctx.owned {
        return wait_program_in(ctx, o, program, script_pid, token).await;
    }
    // The script has daemonised the program; it usually runs already, under a pid newer than the
    // script's. Wait for it until found or cancelled (the machine's start deadline).
    let mut step = Duration::from_millis(2);
    loop {
        let mut pids = ctx.not_others(process::find_program_after(program, script_pid));
        if pids.is_empty() {
            pids = ctx.find(program);
        }
        if !pids.is_empty() {
            tracing::info!(service = %ctx.info.name, pids = ?pids, "running");
            return StartOutcome::Running { pids, adopted: false };
        }
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = token.cancelled() => {
                // Whatever the start command left behind in its process group (a launcher still
                // sleeping, say) belongs to this failed start: it must not start a program later.
                process::signal_group(script_pid, Signal::SIGKILL);
                return StartOutcome::Cancelled { pids: ctx.find(program) };
            }
        }
        step = (step * 2).min(Duration::from_millis(200));
    }
}

/// The longest a failed start waits for what escaped its process group to become the program.
const ESCAPED_SETTLE: Duration = Duration::from_secs(5);

/// Without a cgroup, after a failed start: a launch that left the start command's process group
/// (`setsid prog &`, then a failure) carries the service's tag but may not have exec'd the program
/// yet, so the retry's look would miss it and start a second one. Waits (bounded, cancellable)
/// until every such process has become the program or ended; the retry then adopts the program.
async fn settle_escaped(ctx: &Ctx, program: &Path, token: &CancellationToken) {
    let tag = ctx.tag();
    let deadline = Instant::now() + ESCAPED_SETTLE;
    let mut step = Duration::from_millis(2);
    loop {
        // `tagged` keeps only live processes; those not yet the program are still becoming it.
        let tagged = process::shared_scan().await.tagged(&tag);
        if process::program_among(&tagged, program).len() == tagged.len() || Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = token.cancelled() => return,
        }
        step = (step * 2).min(Duration::from_millis(50));
    }
}

/// Script mode with a cgroup: everything the start command started was born in the service's
/// cgroup. The start is done when the program is among its members (their executables are read,
/// nothing else: no scan of /proc); the cgroup empty means the command started nothing that runs.
async fn wait_program_in(
    ctx: &Ctx,
    o: &Owned,
    program: &Path,
    script_pid: i32,
    token: &CancellationToken,
) -> StartOutcome {
    let mut step = Duration::from_millis(1);
    loop {
        let members = o.members();
        if members.is_empty() || !process::program_among(&members, program).is_empty() {
            tracing::info!(service = %ctx.info.name, pids = ?members, "running");
            return StartOutcome::Running { pids: members, adopted: false };
        }
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = token.cancelled() => {
                process::signal_group(script_pid, Signal::SIGKILL);
                return StartOutcome::Cancelled { pids: o.members() };
            }
        }
        step = (step * 2).min(Duration::from_millis(100));
    }
}

/// Stops the program: stop command (script mode) or stop signal (direct mode), bounded by the stop
/// timeout; then SIGTERM and SIGKILL by process group for whatever is left. Returns the fault when
/// force was needed or the stop command failed.
async fn stop(ctx: &Ctx, mut pids: Vec<i32>, lookup: Lookup, held: Vec<Held>) -> Option<String> {
    if let Some(o) = &ctx.owned {
        return stop_owned(ctx, o).await;
    }
    let info = &ctx.info;
    let program = match &ctx.paths {
        Some(p) => p.program.clone(),
        None => ctx.settings.program_path(info),
    };
    // Every /proc pass of a stop is a shared one off the runtime thread: a shutdown of N services
    // costs a few passes, not N (1500 direct services took 48 s to stop with one pass each).
    let found = match &lookup {
        Lookup::Scan => ctx.not_others(process::shared_scan().await.find(&program)),
        Lookup::Table(t) => ctx.not_others(t.find(&program).into_iter().filter(|p| process::is_alive(*p)).collect()),
        Lookup::Absent => Vec::new(),
    };
    for p in found {
        if !pids.contains(&p) {
            pids.push(p);
        }
    }
    // From here on every signal and wait goes through pidfds: those held since the spawn or the
    // start of the run, and the ones found now, held at once (and checked below).
    let mut program_held: Vec<Held> = held.into_iter().filter(|h| pids.contains(&h.pid()) && h.is_alive()).collect();
    for &p in &pids {
        if !program_held.iter().any(|h| h.pid() == p) {
            program_held.extend(Held::open(p));
        }
    }
    if program_held.is_empty() {
        return None;
    }
    // Descendants that left the process group (setsid) and were reparented: found by the tag
    // every process of the service inherits, and stopped after the program.
    let tag = ctx.tag();
    let mut extras: Vec<Held> = process::hold_all(
        &process::shared_scan().await.tagged(&tag).into_iter().filter(|p| !pids.contains(p)).collect::<Vec<_>>(),
    );
    if !info.is_direct() {
        // A pid seen as the program a moment ago may be something else now (a daemon caught
        // between its fork and its exec of another binary): that is stopped as a descendant, not
        // waited for as the program. Checked after holding: the holds are exact.
        let now: Vec<i32> = program_held.iter().map(Held::pid).collect();
        let now_program = process::program_among(&now, &program);
        let (prog, other): (Vec<Held>, Vec<Held>) =
            program_held.into_iter().partition(|h| now_program.contains(&h.pid()));
        program_held = prog;
        extras.extend(other.into_iter().filter(Held::is_alive));
        if program_held.is_empty() && extras.is_empty() {
            return None;
        }
    }
    // The process groups to clear at the end, each with its leader held: a group is signalled by
    // number only while its leader (or one of the held processes in it) shows it still exists.
    let groups: Vec<(i32, Option<Held>)> = {
        let mut g: Vec<i32> = program_held.iter().filter_map(Held::group).collect();
        g.dedup();
        g.into_iter().map(|pgid| (pgid, Held::open(pgid))).collect()
    };
    let timeout = ctx.settings.stop_timeout_of(info);
    let deadline = Instant::now() + timeout;
    let mut fault: Option<String> = None;
    match ctx.paths.as_ref().filter(|p| p.script.is_some()) {
        Some(paths) => {
            fault = run_stop_command(ctx, paths, deadline).await;
        }
        None => {
            let sig = stop_signal(info);
            ctx.log.note(&format!("stop: sending {sig}"));
            process::signal_held(&program_held, sig);
        }
    }
    let mut gone = process::wait_held(&program_held, deadline).await;
    let mut left: Vec<Held> = program_held.into_iter().filter(Held::is_alive).collect();
    // A daemonised program may live on under another pid (a re-exec, a fork); a direct-mode child
    // is the program itself, and its process group is killed below.
    if !info.is_direct() {
        for p in ctx.not_others(process::shared_scan().await.find(&program)) {
            if !left.iter().any(|h| h.pid() == p) {
                left.extend(Held::open(p).filter(Held::is_alive));
            }
        }
    }
    gone &= left.is_empty();
    if !gone {
        let why = format!("program still running {}s after stop; killing it", timeout.as_secs());
        ctx.log.note(&why);
        fault.get_or_insert(why);
        if !info.is_direct() || left.len() > 1 {
            process::signal_held(&left, Signal::SIGTERM);
            if !process::wait_held(&left, Instant::now() + ctx.settings.kill_grace).await {
                process::signal_held(&left, Signal::SIGKILL);
            }
        } else {
            process::signal_held(&left, Signal::SIGKILL);
        }
        process::wait_held(&left, Instant::now() + Duration::from_secs(5)).await;
    }
    // Nothing of the service may outlive its stop: helpers left in its process groups too, and
    // its detached descendants (the stop signal, then SIGKILL).
    for (pgid, leader) in &groups {
        let exists = leader.as_ref().is_some_and(|l| l.signal(None))
            || extras.iter().chain(&left).any(|h| h.group() == Some(*pgid));
        if exists {
            process::signal_group(*pgid, Signal::SIGKILL);
        }
    }
    let late: Vec<i32> = process::shared_scan()
        .await
        .tagged(&tag)
        .into_iter()
        .filter(|p| !extras.iter().any(|h| h.pid() == *p))
        .collect();
    extras.extend(process::hold_all(&late));
    extras.retain(Held::is_alive);
    if !extras.is_empty() {
        let sig = stop_signal(info);
        let pids: Vec<i32> = extras.iter().map(Held::pid).collect();
        ctx.log.note(&format!("stop: sending {sig} to detached processes {pids:?}"));
        process::signal_held(&extras, sig);
        if !process::wait_held(&extras, Instant::now() + ctx.settings.kill_grace).await {
            process::signal_held(&extras, Signal::SIGKILL);
            process::wait_held(&extras, Instant::now() + Duration::from_secs(5)).await;
        }
    }
    fault
}

/// How long after a change of a cgroup's `cgroup.events` its next notification may be held back
/// (the kernel's 10 ms, counted in jiffies, with room for HZ = 100).
const NOTIFY_HOLD_BACK: Duration = Duration::from_millis(50);

/// Stops what runs in the service's cgroup: the stop command (script mode, itself in the cgroup)
/// or the stop signal to every member (direct mode); what is left at the stop timeout gets the
/// stop signal (script mode) and then `cgroup.kill`. Done when the cgroup is empty: nothing of the
/// service is left, however it forked or detached, and nothing else was touched.
async fn stop_owned(ctx: &Ctx, o: &Owned) -> Option<String> {
    let members = o.members();
    if members.is_empty() {
        return None;
    }
    let info = &ctx.info;
    let mut events = o.events.clone();
    let script = ctx.paths.as_ref().filter(|p| p.script.is_some());
    if script.is_some_and(|p| process::program_among(&members, &p.program).is_empty()) {
        // Only what a cancelled start left (its command, a launcher): the program is not there,
        // so there is nothing for the stop command to stop.
        let _ = o.cg.kill();
        if !o.cg.wait_empty(Some(&mut events), Instant::now() + Duration::from_secs(5)).await {
            return Some(format!("processes {:?} survived cgroup.kill", o.members()));
        }
        return None;
    }
    let timeout = ctx.settings.stop_timeout_of(info);
    let deadline = Instant::now() + timeout;
    let sig = stop_signal(info);
    let mut fault: Option<String> = None;
    let why = format!("program still running {}s after stop; killing it", timeout.as_secs());
    match script {
        Some(paths) => {
            // The stop command stops the program; then whatever else the service left (helpers,
            // detached daemons) gets the stop signal, and what resists, cgroup.kill.
            let program = process::program_among(&members, &paths.program);
            fault = run_stop_command(ctx, paths, deadline).await;
            if !process::wait_all_exit(&program, deadline).await {
                ctx.log.note(&why);
                fault.get_or_insert(why.clone());
            }
            if !o.members().is_empty() {
                let n = o.cg.signal(sig);
                if n > 0 {
                    ctx.log.note(&format!("stop: sending {sig} to the {n} processes left"));
                }
            }
            let grace = deadline.max(Instant::now() + ctx.settings.kill_grace);
            if o.cg.wait_empty(Some(&mut events), grace).await {
                return fault;
            }
        }
        None => {
            ctx.log.note(&format!("stop: sending {sig}"));
            // The members just read: a fork racing this read is ended by cgroup.kill once the stop
            // timeout has passed (as before, when the members were read a second time).
            events.mark_seen();
            // The kernel holds back a cgroup's notification until 10 ms after the one before:
            // right after a (re)start, the members' own exits (pidfds) are seen sooner.
            let held_back = events.changed_within(NOTIFY_HOLD_BACK);
            cgroup::signal_each(&members, sig);
            // Otherwise done when the cgroup says it is empty: no pidfd per member (four system
            // calls and an epoll registration each, a tenth of a 1000-service shutdown's work on
            // the runtime thread).
            let emptied = if held_back {
                process::wait_all_exit(&members, deadline).await;
                o.cg.wait_empty(Some(&mut events), deadline).await
            } else {
                o.cg.wait_emptied(&mut events, deadline).await
            };
            if emptied {
                return fault;
            }
            ctx.log.note(&why);
            fault.get_or_insert(why);
        }
    }
    if let Err(e) = o.cg.kill() {
        ctx.log.note(&format!("cgroup.kill: {e}"));
    }
    if !o.cg.wait_empty(Some(&mut events), Instant::now() + Duration::from_secs(5)).await {
        let left = o.members();
        ctx.log.note(&format!("processes {left:?} survived cgroup.kill"));
        fault.get_or_insert(format!("processes {left:?} survived cgroup.kill"));
    }
    fault.or_else(|| Some("processes were left after the stop and were killed".into()))
}

/// The stop command of `paths`' script, bounded by `deadline`; the fault when it failed.
async fn run_stop_command(ctx: &Ctx, paths: &Resolved, deadline: Instant) -> Option<String> {
    let command = &ctx.info.script.stop_command;
    let script = paths.script.as_deref().unwrap_or(Path::new("")).display().to_string();
    ctx.log.note(&format!("stop: {script} {command}"));
    match run_script(ctx, paths, command, deadline).await {
        Ok(exit) if exit.success() => None,
        Ok(exit) => Some(format!("stop command {script} {command} failed: {exit}")),
        Err(e) => Some(e),
    }
}

/// The service's stop signal (`script.stopSignal`, SIGTERM by default).
fn stop_signal(info: &ServiceInfo) -> Signal {
    info.script.stop_signal.as_deref().and_then(process::parse_signal).unwrap_or(Signal::SIGTERM)
}

/// Runs the control script with `arg`, output to the service log, killed with its group at
/// `deadline`. It runs as resolved, in the resolved working directory.
async fn run_script(ctx: &Ctx, paths: &Resolved, arg: &str, deadline: Instant) -> Result<Exit, String> {
    let spawned = spawn_script(ctx, paths, arg).await?;
    let script = paths.script.as_deref().unwrap_or(Path::new("")).display().to_string();
    match tokio::time::timeout_at(deadline, spawned.exit).await {
        Ok(Ok(exit)) => {
            ctx.log.note(&format!("{script} {arg}: {exit}"));
            Ok(exit)
        }
        Ok(Err(_)) => Err(format!("the exit of {script} {arg} was lost")),
        Err(_) => {
            process::signal_group(spawned.pid, Signal::SIGKILL);
            Err(format!("{script} {arg} did not finish in time and was killed"))
        }
    }
}

async fn spawn_script(ctx: &Ctx, paths: &Resolved, arg: &str) -> Result<crate::reaper::Spawned, String> {
    landed_script(begin_script(ctx, paths, arg, false), paths).await
}

/// A child of the control script, cloned (with cgroups, its exec still to be awaited) or spawned.
enum Begun {
    /// Boxed: a command and its launch are 400 bytes, held for the exec's moment only.
    Launching(Box<Launching>),
    Spawned(crate::reaper::Spawned),
}

/// The control script's child, awaited until it has exec'd.
async fn landed_script(begun: Result<Begun, String>, paths: &Resolved) -> Result<crate::reaper::Spawned, String> {
    match begun? {
        Begun::Spawned(s) => Ok(s),
        Begun::Launching(l) => l.landed().await.map_err(|e| {
            let script = paths.script.as_deref().unwrap_or(Path::new(""));
            spawn_error("script.execPath", script, &paths.work_dir, e)
        }),
    }
}

/// Starts the control script with `arg`: cloned into the service's cgroup now (its exec awaited by
/// [`landed_script`]), or without cgroups spawned.
fn begin_script(ctx: &Ctx, paths: &Resolved, arg: &str, hurry: bool) -> Result<Begun, String> {
    let Some(script) = paths.script.as_deref() else { return Err("no control script (direct mode)".into()) };
    let mut cmd = Command::new(script);
    if !arg.is_empty() {
        cmd.arg(arg);
    }
    cmd.current_dir(&paths.work_dir)
        .env("AIR_NANNY_SERVICE", &ctx.info.name)
        .env("AIR_NANNY_PROGRAM", &paths.program)
        .env("AIR_NANNY_ROOTPATH", &ctx.settings.rootpath)
        .env(process::OWNER_VAR, ctx.tag());
    let begun = match &ctx.owned {
        // In the cgroup, without holding up the runtime until the script has exec'd.
        Some(o) => begin_logged(ctx, o, cmd, None, Life::Command, hurry).map(|l| Begun::Launching(Box::new(l))),
        None => spawn_logged(ctx, cmd, None, Life::Command).map(Begun::Spawned),
    };
    begun.map_err(|e| spawn_error("script.execPath", script, &paths.work_dir, e))
}

/// Clones `cmd` into the service's cgroup with its output into the service's log, as `user`
/// (uid, gid) when given: the spawn with cgroups (see `Reaper::begin_launch`; `hurry` for a
/// restart's child).
fn begin_logged(
    ctx: &Ctx,
    o: &Owned,
    cmd: Command,
    user: Option<(u32, u32)>,
    life: Life,
    hurry: bool,
) -> std::io::Result<Launching> {
    ctx.reaper.begin_launch(cmd, ctx.log.output()?, &o.cg, user, life, hurry)
}

/// Spawns `cmd` with its output into the service's log, as `user` (uid, gid) when given: the
/// fallback mode's spawn (with cgroups, children are launched into their cgroup by
/// `Reaper::launch_into`, see `spawn.rs`).
fn spawn_logged(
    ctx: &Ctx,
    mut cmd: Command,
    user: Option<(u32, u32)>,
    life: Life,
) -> std::io::Result<crate::reaper::Spawned> {
    let out = ctx.log.output()?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    ctx.reaper.spawn(&mut cmd, life)
}

/// A spawn failure, naming the field at fault: a missing working directory is not the program's.
fn spawn_error(field: &str, path: &Path, work_dir: &Path, e: std::io::Error) -> String {
    if !work_dir.is_dir() {
        return format!("script.workDir: {} is not an existing directory", work_dir.display());
    }
    format!("{field}: cannot run {}: {e}", path.display())
}
#[cfg(test)]
mod sizes {
    //! Every service holds these futures for as long as it runs: at N = 1000 each 100 bytes is
    //! 0.1 MiB of what air-nanny keeps resident (see README, "what a service costs").

    fn size6<A, B, C, D, E, G, F: std::future::Future>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_services_watch_and_its_sends_stay_small() {
        let watch = size6(super::watch_cgroup as fn(_, _, _, _, _, &'static super::Events) -> _);
        // 600 bytes as an async fn sending through the channel's own future, 328 now.
        assert!(watch <= 400, "watch_cgroup's future is {watch} bytes");
        fn send<A, F: std::future::Future>(_: fn(&'static super::Events, A) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let sent = send(super::Events::send as fn(&'static super::Events, _) -> _);
        // The channel's send future is about 250 bytes: only the rare wait for room holds one, boxed.
        assert!(sent <= 32, "a watcher's send is {sent} bytes");
        fn run<F: std::future::Future>(_: fn(Box<super::ServiceTask>) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        // The task's state is boxed: taken by value, an async fn keeps it twice (976 bytes each).
        let task = run(super::ServiceTask::run as fn(Box<super::ServiceTask>) -> _);
        assert!(task <= 512, "a service task's future is {task} bytes");
    }
}
