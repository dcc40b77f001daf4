//! The supervisor: owns the set of service tasks and the operator's persisted decisions; boots
//! services in order, applies changes (API, SIGHUP) and stops everything in reverse order at shutdown.
//!
//! Theory of operation: one actor task holds the map name → [`ServiceHandle`] and the operator's
//! [`Decisions`]. The [`Supervisor`] handle sends it commands. The actor only does bookkeeping: it
//! writes a decision, then queues the control on the service (so controls reach a service in the
//! order the actor decided them) and hands the caller the receiver of the outcome. Nothing slow is
//! awaited by the actor; the boot runs in its own task and asks the actor for each group, so a
//! decision made at any moment is the one the boot sees.

mod decisions;
pub mod machine;
mod service;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use decisions::Decisions;
pub use service::{Control, ControlError, Done, Outcome, ServiceHandle};
pub use state::{Health, State, TaskSnapshot};

use crate::allow::Policy;
use crate::cgroup::Cgroups;
use crate::config::{ServiceInfo, Settings};
use crate::logfile::ServiceLog;
use crate::process::ProcTable;
use crate::reaper::Reaper;
use crate::store::{ConfigStore, StoreError};

/// How long after a change of a task's state or health systemd's `STATUS=` summary is brought up
/// to date. The summary reads every task's snapshot (0.1–0.3 ms at N = 1000): done at each change,
/// it ran twice per restart right after the clone, on a CPU the restarted script and program
/// needed (a tenth of air-nanny's busy time over a run of respawns). A person reading
/// `systemctl status` does not see 100 ms; the changes meanwhile make one summary.
const STATUS_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no task named {0:?}")]
    NoTask(String),
    #[error("no service named {0:?} in services.json")]
    NoService(String),
    #[error("{0}")]
    Failed(String),
    #[error("too many requests are queued for {0:?}; try again")]
    Busy(String),
    #[error("cannot record the operator's decision in {file}: {reason}; nothing was changed")]
    Decision { file: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("air-nanny is shutting down")]
    ShuttingDown,
}

impl SupervisorError {
    fn of(name: &str, e: ControlError) -> SupervisorError {
        match e {
            ControlError::Ended => SupervisorError::ShuttingDown,
            ControlError::Busy => SupervisorError::Busy(name.to_string()),
            ControlError::Failed(reason) => SupervisorError::Failed(reason),
        }
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// What shutdown ended with.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Services whose stop failed (stop command failed or timed out, or the program had to be killed).
    pub faults: Vec<(String, String)>,
}

type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;
/// The actor's answer to a change: where the service's outcome will arrive.
type Pending = oneshot::Receiver<Outcome>;

enum Command {
    List(oneshot::Sender<Vec<Arc<TaskSnapshot>>>),
    Get(String, oneshot::Sender<Option<Arc<TaskSnapshot>>>),
    Handle(String, oneshot::Sender<Option<ServiceHandle>>),
    Log(String, oneshot::Sender<Option<ServiceLog>>),
    /// The services the operator's stop holds (state.json).
    OperatorStopped(oneshot::Sender<std::collections::BTreeSet<String>>),
    Apply(Box<ServiceInfo>, Option<Arc<Policy>>, Reply<Pending>),
    Remove(String, Reply<Pending>),
    Verb(String, Verb, Reply<Pending>),
    Reload(Reply<ReloadSummary>),
    /// The boot asks to start group `n` of the boot order; the answer is what was started.
    BootGroup(usize, Arc<ProcTable>, oneshot::Sender<Option<Vec<(ServiceHandle, Pending)>>>),
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

/// The boot order: init services first, then by priority; services of one group start together.
/// The one computation of it (the CLI, the boot, shutdown and the API all use this).
pub fn boot_order(infos: &[ServiceInfo]) -> Vec<Vec<String>> {
    let mut keyed: BTreeMap<(bool, i64), Vec<String>> = BTreeMap::new();
    for i in infos {
        keyed.entry((!i.is_init, i.priority)).or_default().push(i.name.clone());
    }
    keyed.into_values().collect()
}

/// The handle the rest of air-nanny (the API, signals) uses. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::Sender<Command>,
    booted: watch::Receiver<bool>,
    cgroups: bool,
    journal: crate::events::Journal,
    /// Where the services' cgroups are (with cgroups).
    hierarchy: Option<crate::cgroup::Hierarchy>,
    changes: state::Changes,
}

impl Supervisor {
    /// Starts the actor, which boots every service in order. `shutdown` cancelled → every service is
    /// stopped in reverse order and the returned join handle yields the report. Fails when the
    /// operator's decisions cannot be read (state.json and its backup both unusable).
    pub fn start(
        settings: Arc<Settings>,
        store: ConfigStore,
        reaper: Reaper,
        cgroups: Option<Cgroups>,
        shutdown: CancellationToken,
    ) -> Result<(Supervisor, tokio::task::JoinHandle<ShutdownReport>), StoreError> {
        let state_file = settings.state_file();
        let (decisions, fell_back) = Decisions::load(&state_file)?;
        if let Some(reason) = fell_back {
            tracing::error!(
                file = %state_file.display(),
                "the operator's decisions are unreadable ({reason}); USING THE BACKUP; the bad file is kept as state.json.corrupt"
            );
        }
        let (tx, rx) = mpsc::channel(64);
        let (booted_tx, booted) = watch::channel(false);
        let has_cgroups = cgroups.is_some();
        let hierarchy = cgroups.as_ref().map(|c| c.hierarchy.clone());
        let ledger = cgroups.is_none().then(|| Arc::new(crate::ledger::Ledger::open(&settings.state_dir)));
        let journal = crate::events::Journal::new(&settings.state_dir);
        let changes = state::Changes::default();
        let actor = Actor {
            changes: changes.clone(),
            journal: journal.clone(),
            settings,
            store,
            reaper,
            ledger,
            cgroups,
            tasks: BTreeMap::new(),
            decisions,
            order: Vec::new(),
            detached: TaskTracker::new(),
            shutdown,
        };
        let join = tokio::spawn(actor.run(rx, tx.downgrade(), booted_tx));
        Ok((Supervisor { tx, booted, cgroups: has_cgroups, journal, hierarchy, changes }, join))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks for a change, then waits for the service's outcome. Dropping this future (the client
    /// went away, the request timed out) cancels a restart not yet begun.
    async fn change(&self, name: &str, make: impl FnOnce(Reply<Pending>) -> Command) -> Result<Done, SupervisorError> {
        let pending = self.ask(make).await.unwrap_or(Err(SupervisorError::ShuttingDown))?;
        match pending.await {
            Ok(r) => r.map_err(|e| SupervisorError::of(name, e)),
            Err(_) => Err(SupervisorError::ShuttingDown),
        }
    }

    /// Every task, in start order.
    pub async fn list(&self) -> Vec<Arc<TaskSnapshot>> {
        self.ask(Command::List).await.unwrap_or_default()
    }

    pub async fn get(&self, name: &str) -> Option<Arc<TaskSnapshot>> {
        self.ask(|tx| Command::Get(name.to_string(), tx)).await.flatten()
    }

    /// Like [`get`](Self::get), with the service's processes read from its cgroup at this moment
    /// (forks since the last event included).
    pub async fn get_fresh(&self, name: &str) -> Option<Arc<TaskSnapshot>> {
        let handle = self.ask(|tx| Command::Handle(name.to_string(), tx)).await.flatten()?;
        if let Ok(done) = handle.enqueue(Control::Refresh) {
            let _ = done.await;
        }
        Some(handle.snapshot())
    }

    /// How services' processes are owned: `cgroup` (one cgroup v2 per service) or `fallback`.
    pub fn ownership(&self) -> &'static str {
        if self.cgroups {
            "cgroup"
        } else {
            "fallback"
        }
    }

    /// Every service's history of events.
    pub fn journal(&self) -> &crate::events::Journal {
        &self.journal
    }

    /// The count of visible changes (snapshots, decisions, configurations), for long-polls.
    pub fn changes(&self) -> &state::Changes {
        &self.changes
    }

    /// The services whose operator's stop is in force (kept in state.json).
    pub async fn operator_stopped(&self) -> std::collections::BTreeSet<String> {
        self.ask(Command::OperatorStopped).await.unwrap_or_default()
    }

    /// The directory of a service's cgroup (with cgroups).
    pub fn cgroup_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        self.hierarchy.as_ref().map(|h| h.service(name).dir().to_path_buf())
    }

    /// The log of a service that has (or had) a task.
    pub async fn log(&self, name: &str) -> Option<ServiceLog> {
        self.ask(|tx| Command::Log(name.to_string(), tx)).await.flatten()
    }

    /// Persists `info` and applies it now: starts it, or restarts it if it changed. `policy`: the
    /// allow-list it came in under (a request), applied again to the paths of every start.
    pub async fn apply(&self, info: ServiceInfo, policy: Option<Arc<Policy>>) -> Result<Done, SupervisorError> {
        let name = info.name.clone();
        self.change(&name, |tx| Command::Apply(Box::new(info), policy, tx)).await
    }

    /// Stops the service now and stops supervising it; its configuration stays.
    pub async fn remove(&self, name: &str) -> Result<Done, SupervisorError> {
        self.change(name, |tx| Command::Remove(name.to_string(), tx)).await
    }

    pub async fn control(&self, name: &str, verb: Verb) -> Result<Done, SupervisorError> {
        self.change(name, |tx| Command::Verb(name.to_string(), verb, tx)).await
    }

    /// Re-reads services.json and applies only the difference.
    pub async fn reload(&self) -> Result<ReloadSummary, SupervisorError> {
        self.ask(Command::Reload).await.unwrap_or(Err(SupervisorError::ShuttingDown))
    }

    /// Resolves once the boot order has completed (every group started, failed or timed out).
    pub async fn booted(&self) {
        let mut rx = self.booted.clone();
        let _ = rx.wait_for(|b| *b).await;
    }
}

struct Actor {
    settings: Arc<Settings>,
    store: ConfigStore,
    reaper: Reaper,
    /// One cgroup per service (`None`: the fallback mode, processes found by path and pid).
    cgroups: Option<Cgroups>,
    /// Without cgroups: the record of each service's processes (pid, start time).
    ledger: Option<Arc<crate::ledger::Ledger>>,
    /// Every service's history of events.
    journal: crate::events::Journal,
    changes: state::Changes,
    tasks: BTreeMap<String, ServiceHandle>,
    decisions: Decisions,
    /// The boot order of services.json, computed at start and at each reload.
    order: Vec<Vec<String>>,
    /// Stops of removed services still in progress; shutdown waits for them.
    detached: TaskTracker,
    shutdown: CancellationToken,
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        me: mpsc::WeakSender<Command>,
        booted: watch::Sender<bool>,
    ) -> ShutdownReport {
        let infos = self.store.list().await;
        for info in &infos {
            if !self.decisions.unsupervised.contains(&info.name) {
                self.add_task(info.clone());
            }
        }
        self.order = boot_order(&infos);
        self.reclaim();
        // The histories of services no longer configured go (the history stays bounded).
        let (journal, names) = (self.journal.clone(), infos.iter().map(|i| i.name.clone()).collect::<Vec<_>>());
        // The tasks hold what they need: this copy would otherwise live as long as the actor.
        drop(infos);
        tokio::task::spawn_blocking(move || journal.prune(|n| names.iter().any(|k| k == n)));
        let boot_cancel = self.shutdown.child_token();
        let scan = self.cgroups.is_none();
        let boot = tokio::spawn(boot(me, self.settings.group_start_timeout, scan, boot_cancel.clone(), booted));
        let watchdog = crate::notify::watchdog_interval();
        let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        // systemd's STATUS= line ("12/12 running, 1 unhealthy"), updated STATUS_DELAY after a
        // task's state or health changes (one summary for all the changes meanwhile); nothing at
        // all when systemd does not listen.
        let systemd = crate::notify::enabled();
        let mut status = String::new();
        let mut status_due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                _ = tick.tick(), if watchdog.is_some() => crate::notify::send("WATCHDOG=1"),
                _ = state::STATUS_CHANGED.notified(), if systemd && status_due.is_none() => {
                    status_due = Some(tokio::time::Instant::now() + STATUS_DELAY);
                }
                _ = tokio::time::sleep_until(status_due.unwrap_or_else(tokio::time::Instant::now)), if status_due.is_some() => {
                    status_due = None;
                    let snapshots: Vec<_> = self.tasks.values().map(ServiceHandle::snapshot).collect();
                    let line = state::status_line(snapshots.iter().map(Arc::as_ref));
                    if line != status {
                        crate::notify::send(&format!("STATUS={line}"));
                        status = line;
                    }
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
        boot_cancel.cancel();
        // The boot may be waiting for the actor: answer it (with nothing) until it has ended.
        let mut boot = boot;
        loop {
            tokio::select! {
                _ = &mut boot => break,
                Some(cmd) = rx.recv() => if let Command::BootGroup(_, _, reply) = cmd { let _ = reply.send(None); },
            }
        }
        rx.close();
        self.stop_all().await
    }

    /// What a previous air-nanny left running that no service owns now: the cgroup of a service
    /// no longer configured (deleted, then air-nanny crashed), or of a service the operator had
    /// stopped. Stopped and reported, never left running invisibly; empty ones are removed.
    fn reclaim(&mut self) {
        let Some(cgroups) = self.cgroups.clone() else { return };
        // Health checks' cgroups: no check runs yet, so what is in one was left by a previous
        // air-nanny killed during a check. Ended and removed (the next check makes it again).
        for name in cgroups.hierarchy.existing_checks() {
            let cg = cgroups.hierarchy.checks(&name);
            match cg.kill_if_populated() {
                Ok(false) => {
                    let _ = cg.remove();
                }
                killed => {
                    tracing::warn!(cgroup = %cg.dir().display(), "ending what a health check left running (left by a previous air-nanny)");
                    if let Err(e) = killed {
                        tracing::error!(cgroup = %cg.dir().display(), "cannot kill the cgroup: {e}");
                    }
                    self.detached.spawn(async move {
                        if cg.wait_empty(None, tokio::time::Instant::now() + Duration::from_secs(5)).await {
                            let _ = cg.remove();
                        }
                    });
                }
            }
        }
        for name in cgroups.hierarchy.existing() {
            let owner = self.tasks.get(&name);
            if let Some(h) = owner {
                if self.decisions.stopped.contains(&name) && h.members_at_start() {
                    tracing::warn!(service = %name, "processes of a service the operator stopped are running (left by a previous air-nanny): stopping them");
                    let h = h.clone();
                    self.detached.spawn(async move {
                        let _ = h.send(Control::Stop).await;
                    });
                }
                continue;
            }
            let cg = cgroups.hierarchy.service(&name);
            let members = cg.procs().unwrap_or_default();
            if members.is_empty() {
                let _ = cg.remove();
                continue;
            }
            tracing::warn!(
                cgroup = %cg.dir().display(), pids = ?members,
                "processes of a service that is no longer configured or supervised are running (left by a previous air-nanny): stopping them"
            );
            let (grace, monitor) = (self.settings.stop_timeout, cgroups.monitor.clone());
            self.detached.spawn(async move {
                let mut events = monitor.watch(&cg).ok();
                cg.signal(nix::sys::signal::Signal::SIGTERM);
                if !cg.wait_empty(events.as_mut(), tokio::time::Instant::now() + grace).await {
                    let _ = cg.kill();
                    cg.wait_empty(events.as_mut(), tokio::time::Instant::now() + Duration::from_secs(5)).await;
                }
                match cg.remove() {
                    Ok(()) => {
                        tracing::warn!(cgroup = %cg.dir().display(), "stopped what a removed service had left running")
                    }
                    Err(e) => tracing::error!(cgroup = %cg.dir().display(), "cannot remove the cgroup: {e}"),
                }
            });
        }
    }

    fn add_task(&mut self, info: ServiceInfo) -> ServiceHandle {
        let name = info.name.clone();
        // An entry a request wrote is checked at its first start too (the boot after a restart).
        let policy = self.store.policy_of(&name);
        let handle = service::spawn(
            info,
            policy,
            self.settings.clone(),
            self.reaper.clone(),
            self.cgroups.as_ref(),
            self.ledger.clone(),
            self.journal.clone(),
            self.changes.clone(),
        );
        self.tasks.insert(name, handle.clone());
        handle
    }

    /// Records `next` as the operator's decisions, on disk first: a failed write changes nothing.
    async fn decide(&mut self, next: Decisions) -> Result<(), SupervisorError> {
        if next == self.decisions {
            return Ok(());
        }
        let path = self.settings.state_file();
        let to_save = next.clone();
        let written = tokio::task::spawn_blocking(move || to_save.save(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match written {
            Ok(()) => {
                self.decisions = next;
                self.changes.bump();
                Ok(())
            }
            Err(e) => {
                let file = self.settings.state_file().display().to_string();
                tracing::error!(file = %file, "cannot persist the operator's decision: {e}");
                Err(SupervisorError::Decision { file, reason: e.to_string() })
            }
        }
    }

    /// The decisions with `name` supervised and not stopped (the operator starts or sets it).
    fn cleared(&self, name: &str) -> Decisions {
        let mut next = self.decisions.clone();
        next.stopped.remove(name);
        next.unsupervised.remove(name);
        next
    }

    fn enqueue(handle: &ServiceHandle, name: &str, control: Control) -> Result<Pending, SupervisorError> {
        handle.enqueue(control).map_err(|e| SupervisorError::of(name, e))
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::List(reply) => {
                let mut all: Vec<Arc<TaskSnapshot>> = self.tasks.values().map(ServiceHandle::snapshot).collect();
                all.sort_by(|a, b| {
                    (!a.info.is_init, a.info.priority, &a.info.name).cmp(&(
                        !b.info.is_init,
                        b.info.priority,
                        &b.info.name,
                    ))
                });
                let _ = reply.send(all);
            }
            Command::OperatorStopped(reply) => {
                let _ = reply.send(self.decisions.stopped.clone());
            }
            Command::Get(name, reply) => {
                let _ = reply.send(self.tasks.get(&name).map(ServiceHandle::snapshot));
            }
            Command::Handle(name, reply) => {
                let _ = reply.send(self.tasks.get(&name).cloned());
            }
            Command::Log(name, reply) => {
                let log = match self.tasks.get(&name) {
                    Some(h) => Some(h.log().clone()),
                    None => self.store.get(&name).await.map(|_| {
                        ServiceLog::open(
                            &self.settings.log_dir,
                            &name,
                            self.settings.log_max_bytes,
                            self.settings.log_max_files,
                        )
                    }),
                };
                let _ = reply.send(log);
            }
            Command::Apply(info, policy, reply) => {
                let _ = reply.send(self.apply(info, policy).await);
            }
            Command::Remove(name, reply) => {
                let _ = reply.send(self.remove(name).await);
            }
            Command::Verb(name, verb, reply) => {
                let _ = reply.send(self.verb(name, verb).await);
            }
            Command::Reload(reply) => {
                let _ = reply.send(self.reload().await);
            }
            Command::BootGroup(n, table, reply) => {
                let _ = reply.send(self.boot_group(n, table));
            }
        }
    }

    async fn apply(&mut self, info: Box<ServiceInfo>, policy: Option<Arc<Policy>>) -> Result<Pending, SupervisorError> {
        let name = info.name.clone();
        let before = self.decisions.clone();
        self.decide(self.cleared(&name)).await?;
        if let Err(e) = self.store.upsert_requested((*info).clone(), policy.clone()).await {
            // Put the decisions back as they were: a failed request changes nothing.
            let _ = self.decide(before).await;
            return Err(e.into());
        }
        let handle = match self.tasks.get(&name) {
            Some(h) => h.clone(),
            None => self.add_task((*info).clone()),
        };
        Self::enqueue(&handle, &name, Control::Apply(info, policy))
    }

    async fn remove(&mut self, name: String) -> Result<Pending, SupervisorError> {
        if !self.tasks.contains_key(&name) {
            return Err(SupervisorError::NoTask(name));
        }
        let mut next = self.decisions.clone();
        next.stopped.remove(&name);
        next.unsupervised.insert(name.clone());
        self.decide(next).await?;
        let handle = self.tasks.remove(&name).ok_or_else(|| SupervisorError::NoTask(name.clone()))?;
        let outcome = Self::enqueue(&handle, &name, Control::Stop).or_else(|_| {
            // Its queue is full: the stop must still happen; wait for room beside the actor.
            let (tx, rx) = oneshot::channel();
            let h = handle.clone();
            self.detached.spawn(async move {
                let _ = tx.send(h.send(Control::Stop).await);
            });
            Ok::<_, SupervisorError>(rx)
        })?;
        // Shutdown waits for this stop: track it until the service has stopped.
        let (tx, rx) = oneshot::channel();
        self.detached.spawn(async move {
            let r = outcome.await.unwrap_or(Err(ControlError::Ended));
            drop(handle);
            let _ = tx.send(r);
        });
        Ok(rx)
    }

    async fn verb(&mut self, name: String, verb: Verb) -> Result<Pending, SupervisorError> {
        let existing = self.tasks.get(&name).cloned();
        let info = match existing {
            Some(_) => None,
            None => match (verb, self.store.get(&name).await) {
                (_, None) => return Err(SupervisorError::NoService(name)),
                (Verb::Stop, Some(_)) => return Err(SupervisorError::NoTask(name)),
                (_, Some(info)) => Some(info),
            },
        };
        let next = match verb {
            Verb::Stop => {
                let mut next = self.decisions.clone();
                next.stopped.insert(name.clone());
                next
            }
            Verb::Start | Verb::Restart => self.cleared(&name),
        };
        self.decide(next).await?;
        let handle = match (existing, info) {
            (Some(h), _) => h,
            (None, Some(info)) => self.add_task(info),
            (None, None) => return Err(SupervisorError::NoService(name)),
        };
        let control = match verb {
            Verb::Start => Control::Start,
            Verb::Stop => Control::Stop,
            Verb::Restart => Control::Restart,
        };
        Self::enqueue(&handle, &name, control)
    }

    /// Starts group `n` of the boot order, as the operator's decisions stand now; `None` past the
    /// last group.
    fn boot_group(&mut self, n: usize, table: Arc<ProcTable>) -> Option<Vec<(ServiceHandle, Pending)>> {
        let group = self.order.get(n)?;
        let mut started = Vec::new();
        for name in group {
            if self.decisions.stopped.contains(name) {
                continue;
            }
            let Some(h) = self.tasks.get(name) else { continue };
            match h.enqueue(Control::Boot(table.clone())) {
                Ok(pending) => started.push((h.clone(), pending)),
                Err(e) => tracing::warn!(service = %name, "not started at boot: {e}"),
            }
        }
        Some(started)
    }

    async fn reload(&mut self) -> Result<ReloadSummary, SupervisorError> {
        let (infos, warnings) = self.store.reload().await?;
        for w in warnings.warnings() {
            tracing::warn!("{w}");
        }
        let mut summary = ReloadSummary::default();
        let wanted: BTreeMap<String, ServiceInfo> = infos.into_iter().map(|i| (i.name.clone(), i)).collect();
        let current: Vec<String> = self.tasks.keys().cloned().collect();
        for name in current {
            if !wanted.contains_key(&name) {
                if let Some(handle) = self.tasks.remove(&name) {
                    summary.removed.push(name);
                    self.detached.spawn(async move {
                        let _ = handle.send(Control::Stop).await;
                    });
                }
            }
        }
        for (name, info) in wanted {
            if self.decisions.unsupervised.contains(&name) {
                continue;
            }
            // The operator's decision as it stands now: a stopped service takes the new
            // configuration but stays stopped.
            let stopped = self.decisions.stopped.contains(&name);
            // An entry a request wrote is checked again, at every start, against the allow-list
            // it passed (`/serviceInfo/set` stores without starting: this is where it starts).
            let policy = self.store.policy_of(&name);
            let (handle, control) = match self.tasks.get(&name) {
                Some(h) if *h.snapshot().info == info => {
                    summary.unchanged.push(name);
                    continue;
                }
                Some(h) => {
                    summary.changed.push(name.clone());
                    let info = Box::new(info);
                    let control = if stopped { Control::Update(info, policy) } else { Control::Apply(info, policy) };
                    (h.clone(), control)
                }
                None => {
                    summary.added.push(name.clone());
                    let h = self.add_task(info.clone());
                    match (stopped, policy) {
                        (true, None) => continue,
                        (true, Some(p)) => (h, Control::Update(Box::new(info), Some(p))),
                        (false, p) => (h, Control::Apply(Box::new(info), p)),
                    }
                }
            };
            tokio::spawn(async move {
                if let Err(e) = handle.send(control).await {
                    tracing::warn!(service = %name, "after reload: {e}");
                }
            });
        }
        self.order = boot_order(&self.store.list().await);
        tracing::info!(?summary, "reloaded services.json");
        Ok(summary)
    }

    /// Stops every service in reverse start order (groups in reverse; inside a group together).
    /// One pass over /proc serves every service that has to look for its program.
    async fn stop_all(mut self) -> ShutdownReport {
        tracing::info!("stopping all services in reverse order");
        self.journal.stopping();
        let table = match self.cgroups {
            Some(_) => Arc::new(ProcTable::default()),
            None => Arc::new(tokio::task::spawn_blocking(ProcTable::scan).await.unwrap_or_default()),
        };
        let infos: Vec<ServiceInfo> = self.tasks.values().map(|h| (*h.snapshot().info).clone()).collect();
        let mut faults = Vec::new();
        for group in boot_order(&infos).into_iter().rev() {
            let stops = group.into_iter().filter_map(|n| self.tasks.remove(&n).map(|h| (n, h))).map(|(n, h)| {
                let table = table.clone();
                async move {
                    let r = h.send(Control::Shutdown(table)).await;
                    (n, r)
                }
            });
            for (name, r) in futures_util::future::join_all(stops).await {
                match r {
                    Ok(Done { stop_fault: Some(f) }) => faults.push((name, f)),
                    Ok(_) => {}
                    Err(e) => faults.push((name, e.to_string())),
                }
            }
        }
        self.detached.close();
        self.detached.wait().await;
        // The services' cgroups stay, empty, for the next start (see `ServiceTask::run`).
        ShutdownReport { faults }
    }
}

/// Starts the groups in order; a group starts when every service of the previous one runs (and is
/// healthy, if checked) or has given up, or after `group_timeout`. Each group is asked of the actor,
/// which starts it as the operator's decisions stand at that moment.
async fn boot(
    actor: mpsc::WeakSender<Command>,
    group_timeout: Duration,
    scan: bool,
    cancel: CancellationToken,
    booted: watch::Sender<bool>,
) {
    for n in 0.. {
        if cancel.is_cancelled() {
            return;
        }
        // One pass over /proc finds the programs to adopt for the whole group (with cgroups, each
        // service reads its own: no scan).
        let table = match scan {
            true => Arc::new(tokio::task::spawn_blocking(ProcTable::scan).await.unwrap_or_default()),
            false => Arc::new(ProcTable::default()),
        };
        let Some(tx) = actor.upgrade() else { return };
        let (reply, rx) = oneshot::channel();
        if tx.send(Command::BootGroup(n, table, reply)).await.is_err() {
            return;
        }
        drop(tx);
        let group = match rx.await {
            Ok(Some(g)) => g,
            Ok(None) if !cancel.is_cancelled() => break,
            _ => return,
        };
        if group.is_empty() {
            // Every service of this group stopped by the operator (or unsupervised).
            continue;
        }
        let names: Vec<String> = group.iter().map(|(h, _)| h.snapshot().info.name.clone()).collect();
        tracing::info!(group = n + 1, services = ?names, "starting group");
        let starts = group.into_iter().map(|(h, pending)| async move {
            // First its start's outcome (so that the snapshot is not the one from before it),
            // then until it has settled.
            let _ = pending.await;
            let mut rx = h.watch();
            let _ = rx.wait_for(|s| s.settled()).await;
        });
        tokio::select! {
            r = tokio::time::timeout(group_timeout, futures_util::future::join_all(starts)) => {
                if r.is_err() {
                    tracing::warn!(group = n + 1, "group did not settle within {}s; going on", group_timeout.as_secs());
                }
            }
            _ = cancel.cancelled() => return,
        }
    }
    tracing::info!("boot order complete");
    let _ = booted.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, is_init: bool, priority: i64) -> ServiceInfo {
        let mut i =
            ServiceInfo::from_json(format!(r#"{{"name":"{name}","script":{{"programFilePath":"/x"}}}}"#).as_bytes())
                .unwrap();
        i.is_init = is_init;
        i.priority = priority;
        i
    }

    #[test]
    fn init_services_come_first_whatever_the_priority() {
        let groups = boot_order(&[
            info("late", false, -5),
            info("init2", true, 9),
            info("b", false, 1),
            info("a", false, 1),
            info("init1", true, 0),
        ]);
        assert_eq!(groups, vec![vec!["init1"], vec!["init2"], vec!["late"], vec!["b", "a"]]);
    }
}
