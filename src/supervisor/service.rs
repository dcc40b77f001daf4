//! One task per service: it alone runs the service's start and stop, watches its program, runs its
//! health checks and restarts it; others talk to it through a [`ServiceHandle`].
//!
//! Theory of operation: the task waits in one `select!` on controls (start, stop, restart, apply),
//! events (a watched pid exited, a health check answered) and the next deadline (backoff over, next
//! check due); there is no polling tick. Every run of the program has a generation; watchers and
//! checks of an older generation are cancelled, and their late events are ignored.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::state::{Backoff, Health, State, TaskSnapshot};
use crate::allow::Policy;
use crate::config::{Probe, Resolved, ServiceInfo, Settings};
use crate::health;
use crate::logfile::ServiceLog;
use crate::process::{self, ProcTable};
use crate::reaper::{Exit, Reaper};

/// What a caller asks of a service.
#[derive(Debug)]
pub enum Control {
    Start,
    /// Start at boot: adopt from this snapshot of /proc (one scan for a whole group).
    Boot(Arc<ProcTable>),
    Stop,
    Restart,
    /// Use this configuration from now on: start it, or restart it if it changed. With the
    /// allow-list it came in under when it came from a request (checked again at every start).
    Apply(Box<ServiceInfo>, Option<Arc<Policy>>),
    /// Use this configuration from the next start on; a stopped service stays stopped (a running
    /// one is restarted with it, as with `Apply`).
    Update(Box<ServiceInfo>),
}

struct Request {
    control: Control,
    reply: oneshot::Sender<Result<(), String>>,
}

/// What happened, told to the service task.
enum Event {
    /// A watched process of generation `gen` is gone; `exit` is known for direct-mode children.
    Gone {
        gen: u64,
        pid: i32,
        exit: Option<Exit>,
    },
    Checked {
        gen: u64,
        result: Result<(), String>,
    },
}

/// Everything a service task hears, in one queue: one channel per service, not two.
enum Msg {
    Request(Request),
    Event(Event),
}

/// How watchers and checks report back: a weak sender, so that the task still ends when its last
/// handle goes, whatever watchers are left.
#[derive(Clone)]
struct Events(mpsc::WeakUnboundedSender<Msg>);

impl Events {
    fn send(&self, event: Event) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.send(Msg::Event(event));
        }
    }
}

/// The handle on one service task. Cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    tx: mpsc::UnboundedSender<Msg>,
    snapshot: watch::Receiver<Arc<TaskSnapshot>>,
    log: ServiceLog,
}

impl ServiceHandle {
    /// Asks the task to do `control` and waits until it is done; `Err` carries the reason it failed.
    pub async fn send(&self, control: Control) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Request(Request { control, reply })).map_err(|_| "the service task has ended".to_string())?;
        rx.await.map_err(|_| "the service task has ended".to_string())?
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
}

/// Starts the task for `info`, initially stopped. It ends when every handle is dropped.
pub fn spawn(info: ServiceInfo, settings: Arc<Settings>, reaper: Reaper) -> ServiceHandle {
    let log = ServiceLog::open(&settings.log_dir, &info.name, settings.log_max_bytes, settings.log_max_files);
    let (tx, inbox) = mpsc::unbounded_channel();
    let info = Arc::new(info);
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(TaskSnapshot::new(info.clone())));
    let events = Events(tx.downgrade());
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        ^ (info.name.len() as u64) << 32;
    let backoff = Backoff::new(settings.backoff_base, settings.backoff_max, settings.backoff_reset, seed);
    let task = ServiceTask {
        snap: TaskSnapshot::new(info),
        settings,
        reaper,
        log: log.clone(),
        run: Run::default(),
        gen: 0,
        gen_token: CancellationToken::new(),
        backoff,
        backoff_until: None,
        restart_absent: false,
        policy: None,
        paths: None,
        events,
        inbox,
        snapshot_tx,
    };
    tokio::spawn(task.run());
    ServiceHandle { tx, snapshot, log }
}

/// How `start` learns whether the program already runs (and must be adopted, not started).
enum Lookup {
    Scan,
    Table(Arc<ProcTable>),
    /// Just seen gone (it died, or was stopped, a moment ago): nothing to adopt, no scan.
    KnownAbsent,
}

/// The current run of the program: its processes and the health-check schedule.
#[derive(Default)]
struct Run {
    pids: Vec<i32>,
    started: Option<Instant>,
    /// Consecutive failed checks (outside the start period).
    failures: u32,
    in_start_period: bool,
    next_check: Option<Instant>,
}

struct ServiceTask {
    settings: Arc<Settings>,
    reaper: Reaper,
    log: ServiceLog,
    /// What observers see; `state`, `pids` and `health` always describe the truth.
    snap: TaskSnapshot,
    run: Run,
    gen: u64,
    gen_token: CancellationToken,
    backoff: Backoff,
    backoff_until: Option<Instant>,
    /// The pending restart follows at once a confirmed absence of the program.
    restart_absent: bool,
    /// The allow-list the configuration came in under, when it came from a request.
    policy: Option<Arc<Policy>>,
    /// The paths of the current configuration, resolved at the last start (or when first needed).
    paths: Option<Arc<Resolved>>,
    events: Events,
    inbox: mpsc::UnboundedReceiver<Msg>,
    snapshot_tx: watch::Sender<Arc<TaskSnapshot>>,
}

impl ServiceTask {
    async fn run(mut self) {
        loop {
            let wake = self.next_wakeup();
            if self.snap.state == State::Backoff && wake.is_some_and(|w| w <= Instant::now()) {
                // A restart due now (the first one after a death) does not wait for a timer tick.
                Box::pin(self.on_deadline()).await;
                self.publish();
                continue;
            }
            tokio::select! {
                msg = self.inbox.recv() => match msg {
                    // Boxed: the long start and stop sequences take memory only while they run, not
                    // for the whole life of an idle task (this is most of a service's footprint).
                    Some(Msg::Request(Request { control, reply })) => {
                        let r = Box::pin(self.on_control(control)).await;
                        let _ = reply.send(r);
                    }
                    Some(Msg::Event(ev)) => Box::pin(self.on_event(ev)).await,
                    None => break,
                },
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => Box::pin(self.on_deadline()).await,
            }
            self.publish();
        }
        // Every handle is gone (removed, or shut down): nothing of the service may outlive its task.
        if matches!(self.snap.state, State::Running | State::Backoff) {
            let _ = Box::pin(self.stop()).await;
        }
        self.gen_token.cancel();
    }

    fn next_wakeup(&self) -> Option<Instant> {
        match self.snap.state {
            State::Backoff => self.backoff_until,
            State::Running => self.run.next_check,
            _ => None,
        }
    }

    /// Publishes the snapshot when something observers can see changed (a new version invalidates
    /// what readers derived from the old one, such as the API's cached JSON).
    fn publish(&mut self) {
        self.snap.pids.clone_from(&self.run.pids);
        if *self.snapshot_tx.borrow().as_ref() == self.snap {
            return;
        }
        self.snap.version += 1;
        self.snapshot_tx.send_replace(Arc::new(self.snap.clone()));
    }

    fn set_state(&mut self, state: State) {
        if self.snap.state != state {
            self.snap.state = state;
            self.snap.since = SystemTime::now();
        }
        if state != State::Running {
            self.run = Run::default();
            self.snap.health = Health::None;
        }
        self.publish();
    }

    async fn on_control(&mut self, control: Control) -> Result<(), String> {
        match control {
            Control::Start | Control::Boot(_) if matches!(self.snap.state, State::Running) => Ok(()),
            Control::Start => {
                self.backoff.reset();
                self.start(Lookup::Scan).await
            }
            Control::Boot(table) => {
                self.backoff.reset();
                self.start(Lookup::Table(table)).await
            }
            Control::Stop => self.stop().await,
            Control::Restart => {
                let stopped = self.stop().await;
                self.backoff.reset();
                self.snap.restarts += 1;
                let started = self.start(Lookup::KnownAbsent).await;
                stopped.and(started)
            }
            Control::Update(info) if !matches!(self.snap.state, State::Running) => {
                self.snap.info = Arc::new(*info);
                (self.policy, self.paths) = (None, None);
                Ok(())
            }
            Control::Apply(info, policy) => self.apply(info, policy).await,
            Control::Update(info) => self.apply(info, None).await,
        }
    }

    /// Uses `info` from now on: starts it, or restarts it if it changed.
    async fn apply(&mut self, info: Box<ServiceInfo>, policy: Option<Arc<Policy>>) -> Result<(), String> {
        let changed = *info != *self.snap.info;
        let running = matches!(self.snap.state, State::Running);
        if !changed && running {
            return Ok(());
        }
        let stopped = if running { self.stop().await } else { Ok(()) };
        if changed {
            self.log.note("configuration changed");
        }
        self.snap.info = Arc::new(*info);
        (self.policy, self.paths) = (policy, None);
        self.backoff.reset();
        let started = self.start(Lookup::Scan).await;
        stopped.and(started)
    }

    /// The program's path, for finding it in /proc.
    fn program_path(&mut self) -> std::path::PathBuf {
        match self.paths() {
            Some(p) => p.program.clone(),
            None => self.settings.program_path(&self.snap.info),
        }
    }

    /// The paths of the current configuration: those of the last start, else resolved now.
    fn paths(&mut self) -> Option<Arc<Resolved>> {
        if self.paths.is_none() {
            self.paths = self.settings.resolve(&self.snap.info, false).ok().map(Arc::new);
        }
        self.paths.clone()
    }

    /// Resolves the paths for a start (the one resolution: what is checked is what runs), and
    /// applies the request's allow-list to them again.
    fn resolve_for_start(&mut self) -> Result<Arc<Resolved>, String> {
        let resolved = self.settings.resolve(&self.snap.info, true).map_err(|p| p.to_string())?;
        if let Some(policy) = &self.policy {
            policy.check(&self.snap.info, &resolved).map_err(|r| format!("refused by the allow-list: {r}"))?;
        }
        let resolved = Arc::new(resolved);
        self.paths = Some(resolved.clone());
        Ok(resolved)
    }

    /// Starts the program: adopts it when it already runs, else runs the start command (script mode)
    /// or spawns it (direct mode). A failure is counted and leads to backoff (or Failed).
    async fn start(&mut self, lookup: Lookup) -> Result<(), String> {
        self.new_generation();
        self.set_state(State::Starting);
        let paths = match self.resolve_for_start() {
            Ok(p) => p,
            Err(reason) => return self.start_failed(reason),
        };
        let program = paths.program.clone();
        // Adopt a program that already runs (started before air-nanny, or by a previous air-nanny).
        let found = match lookup {
            Lookup::Scan => process::find_program(&program),
            Lookup::Table(table) => table.find(&program).into_iter().filter(|p| process::is_alive(*p)).collect(),
            Lookup::KnownAbsent => Vec::new(),
        };
        if !found.is_empty() {
            self.log.note(&format!("adopted running program {} (pids {found:?})", program.display()));
            tracing::info!(service = %self.snap.info.name, pids = ?found, "adopted running program");
            self.enter_running(found, None);
            return Ok(());
        }
        let result =
            if self.snap.info.is_direct() { self.start_direct(&paths) } else { self.start_script(&paths).await };
        match result {
            Ok((pids, child_exit)) => {
                self.snap.last_error = None;
                tracing::info!(service = %self.snap.info.name, pids = ?pids, "running");
                self.enter_running(pids, child_exit);
                Ok(())
            }
            Err(reason) => self.start_failed(reason),
        }
    }

    fn start_failed(&mut self, reason: String) -> Result<(), String> {
        self.snap.start_faults += 1;
        self.snap.last_error = Some(reason.clone());
        self.log.note(&format!("start failed: {reason}"));
        tracing::warn!(service = %self.snap.info.name, "start failed: {reason}");
        self.after_failure(Duration::ZERO);
        Err(reason)
    }

    async fn start_script(&mut self, paths: &Resolved) -> Result<(Vec<i32>, Option<oneshot::Receiver<Exit>>), String> {
        let Some(script) = paths.script.as_deref() else { return Err("no control script (direct mode)".into()) };
        let program = paths.program.as_path();
        let deadline = Instant::now() + self.settings.start_timeout_of(&self.snap.info);
        let command = self.snap.info.script.start_command.clone();
        self.log.note(&format!("start: {} {command}", script.display()));
        let (script_pid, exit) = self.run_script_pid(paths, &command, deadline).await?;
        if !exit.success() {
            return Err(format!("start command {} {command} failed: {exit}", script.display()));
        }
        // The script has daemonised the program; it usually runs already, under a pid newer than
        // the script's. Wait for it, bounded.
        let mut step = Duration::from_millis(2);
        loop {
            let mut pids = process::find_program_after(program, script_pid);
            if pids.is_empty() {
                pids = process::find_program(program);
            }
            if !pids.is_empty() {
                return Ok((pids, None));
            }
            if Instant::now() >= deadline {
                let secs = self.settings.start_timeout_of(&self.snap.info).as_secs();
                return Err(format!(
                    "start command succeeded but no process of {} appeared within {secs}s",
                    program.display()
                ));
            }
            tokio::time::sleep(step.min(deadline - Instant::now())).await;
            step = (step * 2).min(Duration::from_millis(200));
        }
    }

    /// Runs the control script with `arg`, output to the service log, killed with its group at
    /// `deadline`.
    async fn run_script(&self, paths: &Resolved, arg: &str, deadline: Instant) -> Result<Exit, String> {
        self.run_script_pid(paths, arg, deadline).await.map(|(_, exit)| exit)
    }

    /// [`Self::run_script`], also telling the script's pid. It runs as resolved, in the resolved
    /// working directory.
    async fn run_script_pid(&self, paths: &Resolved, arg: &str, deadline: Instant) -> Result<(i32, Exit), String> {
        let Some(script) = paths.script.as_deref() else { return Err("no control script (direct mode)".into()) };
        let mut cmd = Command::new(script);
        if !arg.is_empty() {
            cmd.arg(arg);
        }
        cmd.current_dir(&paths.work_dir)
            .env("AIR_NANNY_SERVICE", &self.snap.info.name)
            .env("AIR_NANNY_PROGRAM", &paths.program)
            .env("AIR_NANNY_ROOTPATH", &self.settings.rootpath);
        let spawned = self.spawn_logged(cmd).map_err(|e| spawn_error("script.execPath", script, &paths.work_dir, e))?;
        match tokio::time::timeout_at(deadline, spawned.exit).await {
            Ok(Ok(exit)) => {
                self.log.note(&format!("{} {arg}: {exit}", script.display()));
                Ok((spawned.pid, exit))
            }
            Ok(Err(_)) => Err(format!("the exit of {} {arg} was lost", script.display())),
            Err(_) => {
                process::signal_group(spawned.pid, Signal::SIGKILL);
                Err(format!("{} {arg} did not finish in time and was killed", script.display()))
            }
        }
    }

    fn spawn_logged(&self, mut cmd: Command) -> std::io::Result<crate::reaper::Spawned> {
        let out = self.log.pipe()?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // `cmd` (holding our copies of the pipe's write end) is dropped on return, so the log pump
        // sees end-of-file once the child and its descendants close it.
        self.reaper.spawn(&mut cmd)
    }

    fn start_direct(&mut self, paths: &Resolved) -> Result<(Vec<i32>, Option<oneshot::Receiver<Exit>>), String> {
        let s = &self.snap.info.script;
        let program = paths.program.as_path();
        let mut cmd = Command::new(program);
        cmd.args(&s.args).envs(&s.env).env("AIR_NANNY_SERVICE", &self.snap.info.name);
        cmd.current_dir(&paths.work_dir);
        if let Some(user) = &s.user {
            use std::os::unix::process::CommandExt;
            let (uid, gid) = process::lookup_user(user)?;
            cmd.uid(uid).gid(gid);
        }
        self.log.note(&format!("start: {} {}", program.display(), s.args.join(" ")));
        let spawned =
            self.spawn_logged(cmd).map_err(|e| spawn_error("script.programFilePath", program, &paths.work_dir, e))?;
        Ok((vec![spawned.pid], Some(spawned.exit)))
    }

    fn enter_running(&mut self, pids: Vec<i32>, child_exit: Option<oneshot::Receiver<Exit>>) {
        self.set_state(State::Running);
        let now = Instant::now();
        let hc = &self.snap.info.health_check;
        self.run =
            Run { pids: pids.clone(), started: Some(now), failures: 0, in_start_period: false, next_check: None };
        if hc.is_health_check {
            self.run.in_start_period = hc.start_period > 0;
            let first = if self.run.in_start_period { hc.start_interval() } else { hc.interval };
            self.run.next_check = Some(now + Duration::from_secs(first));
            self.snap.health = Health::Starting;
        }
        match child_exit {
            Some(exit) => self.watch_child(pids[0], exit),
            None => self.watch_pids(&pids),
        }
        self.publish();
    }

    fn new_generation(&mut self) {
        self.gen_token.cancel();
        self.gen_token = CancellationToken::new();
        self.gen += 1;
    }

    /// Direct mode: the reaper tells us the child's exit and its status.
    fn watch_child(&self, pid: i32, exit: oneshot::Receiver<Exit>) {
        let (gen, tx, token) = (self.gen, self.events.clone(), self.gen_token.clone());
        tokio::spawn(async move {
            tokio::select! {
                e = exit => { tx.send(Event::Gone { gen, pid, exit: e.ok() }); }
                _ = token.cancelled() => {}
            }
        });
    }

    /// Script mode and adopted programs: a pidfd tells us when each process exits.
    fn watch_pids(&self, pids: &[i32]) {
        for &pid in pids {
            let (gen, tx, token) = (self.gen, self.events.clone(), self.gen_token.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = process::wait_exit(pid) => { tx.send(Event::Gone { gen, pid, exit: None }); }
                    _ = token.cancelled() => {}
                }
            });
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Gone { gen, pid, exit } if gen == self.gen && self.snap.state == State::Running => {
                if let Some(exit) = exit {
                    self.snap.last_exit = Some(exit.to_string());
                }
                self.run.pids.retain(|p| *p != pid);
                if !self.run.pids.is_empty() {
                    return;
                }
                // A daemonised program may have handed over to another process (a re-exec, a fork):
                // look again. A direct-mode child is the program itself, so its exit is final.
                let program = self.program_path();
                let others = if self.snap.info.is_direct() { Vec::new() } else { process::find_program(&program) };
                if !others.is_empty() {
                    self.run.pids = others.clone();
                    self.watch_pids(&others);
                    return;
                }
                let how = exit.map(|e| e.to_string()).unwrap_or_else(|| "exited".into());
                self.log.note(&format!("program {} ended ({how})", program.display()));
                if self.snap.info.is_daemon {
                    tracing::warn!(service = %self.snap.info.name, "program ended ({how})");
                } else {
                    tracing::info!(service = %self.snap.info.name, "one-shot program ended ({how})");
                }
                let ran = self.run.started.map(|s| s.elapsed()).unwrap_or_default();
                self.kill_leftovers(&[pid]);
                self.after_failure(ran);
            }
            Event::Checked { gen, result } if gen == self.gen && self.snap.state == State::Running => {
                self.on_check(result).await;
            }
            _ => {}
        }
    }

    /// After the program died or failed to start: back off and restart (daemon), or stay down.
    fn after_failure(&mut self, ran_for: Duration) {
        if !self.snap.info.is_daemon {
            let state = if self.snap.start_faults > 0 && ran_for.is_zero() { State::Failed } else { State::Exited };
            self.set_state(state);
            return;
        }
        let delay = self.backoff.next_delay(ran_for);
        let limit = self.settings.start_limit;
        if limit > 0 && self.backoff.attempt() >= limit {
            let msg = format!("gave up after {limit} consecutive failures (START_LIMIT)");
            self.log.note(&msg);
            tracing::error!(service = %self.snap.info.name, "{msg}");
            self.snap.last_error = Some(msg);
            self.set_state(State::Failed);
            return;
        }
        if !delay.is_zero() {
            self.log.note(&format!("restarting in {} ms", delay.as_millis()));
        }
        self.backoff_until = Some(Instant::now() + delay);
        // Every path here has just seen the program gone; after a delay, someone may have started it.
        self.restart_absent = delay.is_zero();
        self.set_state(State::Backoff);
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        match self.snap.state {
            State::Backoff if self.backoff_until.is_some_and(|u| u <= now) => {
                self.backoff_until = None;
                self.snap.restarts += 1;
                let lookup = if std::mem::take(&mut self.restart_absent) { Lookup::KnownAbsent } else { Lookup::Scan };
                let _ = self.start(lookup).await;
            }
            State::Running if self.run.next_check.is_some_and(|c| c <= now) => {
                self.run.next_check = None;
                let probe = self.snap.info.health_check.probe();
                if probe == Probe::ProcessAlive {
                    let result = self.process_alive();
                    self.on_check(result).await;
                    return;
                }
                let timeout = Duration::from_secs(self.snap.info.health_check.timeout);
                let (gen, tx, token) = (self.gen, self.events.clone(), self.gen_token.clone());
                let (reaper, log) = (self.reaper.clone(), self.log.clone());
                let paths = self.paths();
                tokio::spawn(async move {
                    let Some(paths) = paths else {
                        tx.send(Event::Checked { gen, result: Err("the check's paths cannot be resolved".into()) });
                        return;
                    };
                    tokio::select! {
                        result = health::check(&probe, timeout, &reaper, &log, &paths) => {
                            tx.send(Event::Checked { gen, result });
                        }
                        _ = token.cancelled() => {}
                    }
                });
            }
            _ => {}
        }
    }

    /// The default check: the program has at least one live process.
    fn process_alive(&mut self) -> Result<(), String> {
        self.run.pids.retain(|p| process::is_alive(*p));
        if self.run.pids.is_empty() {
            let found = process::find_program(&self.program_path());
            self.watch_pids(&found);
            self.run.pids = found;
        }
        if self.run.pids.is_empty() {
            Err("no live process of the program".into())
        } else {
            Ok(())
        }
    }

    async fn on_check(&mut self, result: Result<(), String>) {
        let hc = self.snap.info.health_check.clone();
        let now = Instant::now();
        let in_period = self.run.in_start_period
            && self.run.started.is_some_and(|s| now < s + Duration::from_secs(hc.start_period));
        self.run.in_start_period = in_period;
        match result {
            Ok(()) => {
                if self.snap.health != Health::Healthy {
                    self.log.note("healthy");
                }
                self.run.failures = 0;
                self.run.in_start_period = false;
                self.snap.health = Health::Healthy;
            }
            Err(reason) if in_period => {
                self.log.note(&format!("health check failed during start_period (not counted): {reason}"));
            }
            Err(reason) => {
                self.run.failures += 1;
                self.log.note(&format!("health check failed ({}/{}): {reason}", self.run.failures, hc.retries));
                if self.run.failures >= hc.retries {
                    self.snap.health = Health::Unhealthy;
                    self.snap.last_error = Some(format!("unhealthy: {reason}"));
                    tracing::warn!(service = %self.snap.info.name, "unhealthy after {} failed checks: {reason}", hc.retries);
                    if self.snap.info.is_daemon {
                        self.publish();
                        self.log.note("unhealthy: restarting");
                        let ran = self.run.started.map(|s| s.elapsed()).unwrap_or_default();
                        let _ = self.stop().await;
                        self.after_failure(ran);
                        return;
                    }
                }
            }
        }
        let next = if self.run.in_start_period { hc.start_interval() } else { hc.interval };
        self.run.next_check = Some(Instant::now() + Duration::from_secs(next));
    }

    /// Stops the program: stop command (script mode) or stop signal (direct mode), bounded by the
    /// stop timeout; then SIGTERM and SIGKILL by process group for whatever is left. A stop that
    /// needed force, or whose command failed, counts in StopFaultNum and is returned as `Err`.
    async fn stop(&mut self) -> Result<(), String> {
        let was = self.snap.state;
        let mut pids = std::mem::take(&mut self.run.pids);
        self.new_generation();
        self.backoff_until = None;
        let program = self.program_path();
        let paths = self.paths();
        if was != State::Running {
            // Nothing of ours should run; but a process of the program may (started by hand).
            pids = process::find_program(&program);
            if pids.is_empty() {
                self.set_state(State::Stopped);
                return Ok(());
            }
        }
        self.set_state(State::Stopping);
        let groups: Vec<i32> = pids.iter().filter_map(|p| process::pgid_of(*p)).collect();
        let timeout = self.settings.stop_timeout_of(&self.snap.info);
        let deadline = Instant::now() + timeout;
        let mut fault: Option<String> = None;
        if let Some((paths, script)) = paths.as_ref().and_then(|p| p.script.clone().map(|s| (p, s))) {
            let command = self.snap.info.script.stop_command.clone();
            self.log.note(&format!("stop: {} {command}", script.display()));
            match self.run_script(paths, &command, deadline).await {
                Ok(exit) if exit.success() => {}
                Ok(exit) => fault = Some(format!("stop command {} {command} failed: {exit}", script.display())),
                Err(e) => fault = Some(e),
            }
        } else {
            let sig =
                self.snap.info.script.stop_signal.as_deref().and_then(process::parse_signal).unwrap_or(Signal::SIGTERM);
            self.log.note(&format!("stop: sending {sig}"));
            process::signal_all(&pids, sig);
        }
        let mut gone = process::wait_all_exit(&pids, deadline).await;
        let mut left: Vec<i32> = pids.iter().copied().filter(|p| process::is_alive(*p)).collect();
        // A daemonised program may live on under another pid (a re-exec, a fork); a direct-mode
        // child is the program itself, and its process group is killed below.
        if !self.snap.info.is_direct() {
            for p in process::find_program(&program) {
                if !left.contains(&p) {
                    left.push(p);
                }
            }
        }
        gone &= left.is_empty();
        if !gone {
            let why = format!("program still running {}s after stop; killing it", timeout.as_secs());
            self.log.note(&why);
            fault.get_or_insert(why);
            if !self.snap.info.is_direct() {
                process::signal_all(&left, Signal::SIGTERM);
                if !process::wait_all_exit(&left, Instant::now() + self.settings.kill_grace).await {
                    process::signal_all(&left, Signal::SIGKILL);
                }
            } else {
                process::signal_all(&left, Signal::SIGKILL);
            }
            process::wait_all_exit(&left, Instant::now() + Duration::from_secs(5)).await;
        }
        // Nothing of the service may outlive its stop: helpers left in its process groups too.
        for g in groups {
            process::signal_group(g, Signal::SIGKILL);
        }
        self.set_state(State::Stopped);
        match fault {
            Some(reason) => {
                self.snap.stop_faults += 1;
                self.snap.last_error = Some(reason.clone());
                tracing::warn!(service = %self.snap.info.name, "stop fault: {reason}");
                Err(reason)
            }
            None => {
                self.log.note("stopped");
                Ok(())
            }
        }
    }

    /// After the program ended on its own: nothing else of its process group may stay behind.
    fn kill_leftovers(&self, pids: &[i32]) {
        if self.snap.info.is_direct() {
            for &p in pids {
                process::signal_group(p, Signal::SIGKILL);
            }
        }
    }
}

/// A spawn failure, naming the field at fault: a missing working directory is not the program's.
fn spawn_error(field: &str, path: &Path, work_dir: &Path, e: std::io::Error) -> String {
    if !work_dir.is_dir() {
        return format!("script.workDir: {} is not an existing directory", work_dir.display());
    }
    format!("{field}: cannot run {}: {e}", path.display())
}
