//! The supervisor: owns the set of service tasks and the operator's persisted decisions; boots
//! services in order, applies changes (API, SIGHUP) and stops everything in reverse order at shutdown.
//!
//! Theory of operation: one actor task holds the map name → [`ServiceHandle`] and the runtime state
//! (services stopped or unsupervised by the operator). The [`Supervisor`] handle sends it commands.
//! The actor only does bookkeeping; anything slow (a start, a stop) is awaited by a spawned task that
//! talks to the service task, so the actor never blocks.

mod service;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use service::{Control, ServiceHandle};
pub use state::{Health, State, TaskSnapshot};

use crate::allow::Policy;
use crate::config::{ServiceInfo, Settings};
use crate::logfile::ServiceLog;
use crate::process::ProcTable;
use crate::reaper::Reaper;
use crate::store::{ConfigStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no task named {0:?}")]
    NoTask(String),
    #[error("no service named {0:?} in services.json")]
    NoService(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("air-nanny is shutting down")]
    ShuttingDown,
}

/// The operator's decisions that must survive a restart of air-nanny (state.json).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct RuntimeState {
    /// Stopped through the API: not started at boot until started again.
    #[serde(default)]
    stopped: BTreeSet<String>,
    /// Removed from supervision (`/task/del`): no task at boot until set or started again.
    #[serde(default)]
    unsupervised: BTreeSet<String>,
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

enum Command {
    List(oneshot::Sender<Vec<Arc<TaskSnapshot>>>),
    Get(String, oneshot::Sender<Option<Arc<TaskSnapshot>>>),
    Log(String, oneshot::Sender<Option<ServiceLog>>),
    Apply(Box<ServiceInfo>, Option<Arc<Policy>>, Reply<()>),
    Remove(String, Reply<()>),
    Verb(String, Verb, Reply<()>),
    Reload(Reply<ReloadSummary>),
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

/// The handle the rest of air-nanny (the API, signals) uses. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::Sender<Command>,
    booted: watch::Receiver<bool>,
}

impl Supervisor {
    /// Starts the actor, which boots every service in order. `shutdown` cancelled → every service is
    /// stopped in reverse order and the returned join handle yields the report.
    pub fn start(
        settings: Arc<Settings>,
        store: ConfigStore,
        reaper: Reaper,
        shutdown: CancellationToken,
    ) -> (Supervisor, tokio::task::JoinHandle<ShutdownReport>) {
        let (tx, rx) = mpsc::channel(64);
        let (booted_tx, booted) = watch::channel(false);
        let runtime = load_runtime_state(&settings);
        let actor =
            Actor { settings, store, reaper, tasks: BTreeMap::new(), runtime, detached: TaskTracker::new(), shutdown };
        let join = tokio::spawn(actor.run(rx, booted_tx));
        (Supervisor { tx, booted }, join)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Every task, in start order.
    pub async fn list(&self) -> Vec<Arc<TaskSnapshot>> {
        self.ask(Command::List).await.unwrap_or_default()
    }

    pub async fn get(&self, name: &str) -> Option<Arc<TaskSnapshot>> {
        self.ask(|tx| Command::Get(name.to_string(), tx)).await.flatten()
    }

    /// The log of a service that has (or had) a task.
    pub async fn log(&self, name: &str) -> Option<ServiceLog> {
        self.ask(|tx| Command::Log(name.to_string(), tx)).await.flatten()
    }

    /// Persists `info` and applies it now: starts it, or restarts it if it changed. `policy`: the
    /// allow-list it came in under (a request), applied again to the paths of every start.
    pub async fn apply(&self, info: ServiceInfo, policy: Option<Arc<Policy>>) -> Result<(), SupervisorError> {
        self.ask(|tx| Command::Apply(Box::new(info), policy, tx)).await.unwrap_or(Err(SupervisorError::ShuttingDown))
    }

    /// Stops the service now and stops supervising it; its configuration stays.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        self.ask(|tx| Command::Remove(name.to_string(), tx)).await.unwrap_or(Err(SupervisorError::ShuttingDown))
    }

    pub async fn control(&self, name: &str, verb: Verb) -> Result<(), SupervisorError> {
        self.ask(|tx| Command::Verb(name.to_string(), verb, tx)).await.unwrap_or(Err(SupervisorError::ShuttingDown))
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
    tasks: BTreeMap<String, ServiceHandle>,
    runtime: RuntimeState,
    /// Stops of removed services still in progress; shutdown waits for them.
    detached: TaskTracker,
    shutdown: CancellationToken,
}

/// The start order: init services first, then by priority; services of one group start together.
fn start_groups(infos: &[ServiceInfo]) -> Vec<Vec<String>> {
    let mut keyed: BTreeMap<(bool, i64), Vec<String>> = BTreeMap::new();
    for i in infos {
        keyed.entry((!i.is_init, i.priority)).or_default().push(i.name.clone());
    }
    keyed.into_values().collect()
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, booted: watch::Sender<bool>) -> ShutdownReport {
        let infos = self.store.list().await;
        for info in &infos {
            if !self.runtime.unsupervised.contains(&info.name) {
                self.add_task(info.clone());
            }
        }
        let boot_cancel = self.shutdown.child_token();
        let boot =
            tokio::spawn(boot(self.boot_plan(&infos), self.settings.group_start_timeout, boot_cancel.clone(), booted));
        let watchdog = crate::notify::watchdog_interval();
        let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                _ = tick.tick(), if watchdog.is_some() => crate::notify::send("WATCHDOG=1"),
                _ = self.shutdown.cancelled() => break,
            }
        }
        boot_cancel.cancel();
        let _ = boot.await;
        rx.close();
        self.stop_all().await
    }

    fn boot_plan(&self, infos: &[ServiceInfo]) -> Vec<Vec<ServiceHandle>> {
        start_groups(infos)
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .filter(|n| !self.runtime.stopped.contains(n))
                    .filter_map(|n| self.tasks.get(&n).cloned())
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .collect()
    }

    fn add_task(&mut self, info: ServiceInfo) -> ServiceHandle {
        let name = info.name.clone();
        let handle = service::spawn(info, self.settings.clone(), self.reaper.clone());
        self.tasks.insert(name, handle.clone());
        handle
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
            Command::Get(name, reply) => {
                let _ = reply.send(self.tasks.get(&name).map(ServiceHandle::snapshot));
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
                if let Err(e) = self.store.upsert((*info).clone()).await {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                let name = info.name.clone();
                self.forget_decision(&name).await;
                let handle = match self.tasks.get(&name) {
                    Some(h) => h.clone(),
                    None => self.add_task((*info).clone()),
                };
                tokio::spawn(async move {
                    let r = handle.send(Control::Apply(info, policy)).await.map_err(SupervisorError::Failed);
                    let _ = reply.send(r);
                });
            }
            Command::Remove(name, reply) => {
                let Some(handle) = self.tasks.remove(&name) else {
                    let _ = reply.send(Err(SupervisorError::NoTask(name)));
                    return;
                };
                self.runtime.stopped.remove(&name);
                self.runtime.unsupervised.insert(name.clone());
                self.save_runtime_state().await;
                self.detached.spawn(async move {
                    let r = handle.send(Control::Stop).await.map_err(SupervisorError::Failed);
                    let _ = reply.send(r);
                });
            }
            Command::Verb(name, verb, reply) => {
                let handle = match self.tasks.get(&name) {
                    Some(h) => h.clone(),
                    None => match (verb, self.store.get(&name).await) {
                        (Verb::Stop, _) | (_, None) => {
                            let _ = reply.send(Err(if self.store.get(&name).await.is_some() {
                                SupervisorError::NoTask(name)
                            } else {
                                SupervisorError::NoService(name)
                            }));
                            return;
                        }
                        (_, Some(info)) => self.add_task(info),
                    },
                };
                match verb {
                    Verb::Stop => {
                        self.runtime.stopped.insert(name.clone());
                        self.save_runtime_state().await;
                    }
                    Verb::Start | Verb::Restart => self.forget_decision(&name).await,
                }
                let control = match verb {
                    Verb::Start => Control::Start,
                    Verb::Stop => Control::Stop,
                    Verb::Restart => Control::Restart,
                };
                tokio::spawn(async move {
                    let r = handle.send(control).await.map_err(SupervisorError::Failed);
                    let _ = reply.send(r);
                });
            }
            Command::Reload(reply) => {
                let _ = reply.send(self.reload().await);
            }
        }
    }

    /// The operator starts or sets a service: it is supervised and started at boot again.
    async fn forget_decision(&mut self, name: &str) {
        let a = self.runtime.stopped.remove(name);
        let b = self.runtime.unsupervised.remove(name);
        if a || b {
            self.save_runtime_state().await;
        }
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
                let handle = self.tasks.remove(&name).expect("listed above");
                summary.removed.push(name);
                self.detached.spawn(async move {
                    let _ = handle.send(Control::Stop).await;
                });
            }
        }
        for (name, info) in wanted {
            if self.runtime.unsupervised.contains(&name) {
                continue;
            }
            match self.tasks.get(&name) {
                Some(h) if *h.snapshot().info == info => summary.unchanged.push(name),
                Some(h) => {
                    summary.changed.push(name);
                    let (h, stopped) = (h.clone(), self.runtime.stopped.contains(&info.name));
                    tokio::spawn(async move {
                        // A service the operator stopped takes the new configuration but stays stopped.
                        let control = if stopped {
                            Control::Update(Box::new(info))
                        } else {
                            Control::Apply(Box::new(info), None)
                        };
                        let _ = h.send(control).await;
                    });
                }
                None => {
                    summary.added.push(name.clone());
                    let h = self.add_task(info);
                    if !self.runtime.stopped.contains(&name) {
                        tokio::spawn(async move {
                            let _ = h.send(Control::Start).await;
                        });
                    }
                }
            }
        }
        tracing::info!(?summary, "reloaded services.json");
        Ok(summary)
    }

    async fn save_runtime_state(&self) {
        let path = self.settings.state_file();
        let bytes = serde_json::to_vec_pretty(&self.runtime).expect("runtime state serialises");
        let r = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::atomic::write(&path, &bytes, false)
        })
        .await
        .expect("write task never panics");
        if let Err(e) = r {
            tracing::error!(file = %self.settings.state_file().display(), "cannot persist the operator's decision: {e}");
        }
    }

    /// Stops every service in reverse start order (groups in reverse; inside a group together).
    async fn stop_all(mut self) -> ShutdownReport {
        tracing::info!("stopping all services in reverse order");
        let infos: Vec<ServiceInfo> = self.tasks.values().map(|h| (*h.snapshot().info).clone()).collect();
        let mut faults = Vec::new();
        for group in start_groups(&infos).into_iter().rev() {
            let stops =
                group.into_iter().filter_map(|n| self.tasks.remove(&n).map(|h| (n, h))).map(|(n, h)| async move {
                    let r = h.send(Control::Stop).await;
                    (n, r)
                });
            for (name, r) in futures_util::future::join_all(stops).await {
                if let Err(e) = r {
                    faults.push((name, e));
                }
            }
        }
        self.detached.close();
        self.detached.wait().await;
        ShutdownReport { faults }
    }
}

/// Starts the groups in order; a group starts when every service of the previous one is up (and
/// healthy, if checked) or has failed, or after `group_timeout`.
async fn boot(
    plan: Vec<Vec<ServiceHandle>>,
    group_timeout: Duration,
    cancel: CancellationToken,
    booted: watch::Sender<bool>,
) {
    for (i, group) in plan.into_iter().enumerate() {
        let names: Vec<String> = group.iter().map(|h| h.snapshot().info.name.clone()).collect();
        tracing::info!(group = i + 1, services = ?names, "starting group");
        // One pass over /proc finds the programs to adopt for the whole group.
        let table = Arc::new(tokio::task::spawn_blocking(ProcTable::scan).await.unwrap_or_default());
        let starts = group.into_iter().map(|h| {
            let table = table.clone();
            async move {
                let _ = h.send(Control::Boot(table)).await;
                let mut rx = h.watch();
                let _ = rx.wait_for(|s| s.settled()).await;
            }
        });
        tokio::select! {
            r = tokio::time::timeout(group_timeout, futures_util::future::join_all(starts)) => {
                if r.is_err() {
                    tracing::warn!(group = i + 1, "group did not settle within {}s; going on", group_timeout.as_secs());
                }
            }
            _ = cancel.cancelled() => return,
        }
    }
    tracing::info!("boot order complete");
    let _ = booted.send(true);
}

fn load_runtime_state(settings: &Settings) -> RuntimeState {
    let path = settings.state_file();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(file = %path.display(), "runtime state is unreadable ({e}); starting every service");
            RuntimeState::default()
        }),
        Err(_) => RuntimeState::default(),
    }
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
        let groups = start_groups(&[
            info("late", false, -5),
            info("init2", true, 9),
            info("b", false, 1),
            info("a", false, 1),
            info("init1", true, 0),
        ]);
        assert_eq!(groups, vec![vec!["init1"], vec!["init2"], vec!["late"], vec!["b", "a"]]);
    }
}
