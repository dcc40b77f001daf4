//! The pure state machine of one service: [`Machine::step`] takes an input (a control, an event, a
//! tick of the clock), the service's [`Limits`] and the time, changes the [`Phase`] and returns the
//! [`Action`]s to run. It does no I/O and reads no clock, so every transition is unit-tested under
//! paused time; the service task (`service.rs`) runs the actions and feeds their results back.
//!
//! A pid exists only inside a phase that has a process (`Running`, `Stopping`); a start and a stop
//! are actions that run beside the task, so a stop can always interrupt a start.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{Health, State};
use crate::events::Kind;
use crate::process::ProcTable;

/// How a start (or a stop of a service with no known process) learns whether the program runs.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Scan /proc.
    Scan,
    /// Use this snapshot of /proc (one scan for a whole boot group, or for the whole shutdown).
    Table(Arc<ProcTable>),
    /// Just seen gone (it died or was stopped a moment ago): nothing to find, no scan.
    Absent,
}

/// What the machine needs of a service's configuration (and air-nanny's defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Restarted when it ends (`isDaemon`); otherwise it may end.
    pub daemon: bool,
    /// Direct mode: the program is air-nanny's child; its exit is final (no second look in /proc).
    pub direct: bool,
    pub start_timeout: Duration,
    pub check: Option<CheckPlan>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A run at least this long resets the backoff.
    pub backoff_reset: Duration,
    /// Consecutive failed runs after which a daemon is given up; 0 = never.
    pub start_limit: u32,
}

/// The health-check schedule (Docker HEALTHCHECK semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPlan {
    pub interval: Duration,
    pub start_interval: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

/// What the service is doing. Everything that belongs to one phase is inside it.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Not running: never started, stopped by the operator, or stopped at shutdown.
    Stopped,
    /// A start action (`gen`) runs beside the task; it is cancelled at `deadline`.
    Starting { gen: u64, deadline: Instant, attempt: u32 },
    /// The program runs; `attempt` counts the failed runs before this one.
    Running { run: Run, attempt: u32 },
    /// A stop action (`gen`) runs beside the task; `start` is a cancelled start still to report
    /// (what it launched is then stopped too). `then` says what follows.
    Stopping { gen: u64, pids: Vec<i32>, start: Option<u64>, then: Then },
    /// Waiting out the restart backoff. `known_absent`: the program was seen gone, so the next
    /// start need not look for it. `cause`: why it is restarted.
    Backoff { until: Instant, attempt: u32, known_absent: bool, cause: &'static str },
    /// A one-shot program (not a daemon) ended; it is not restarted.
    Exited { status: String },
    /// Given up: the start limit was reached, or a one-shot program failed to start.
    Failed { reason: String },
}

/// One run of the program.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub gen: u64,
    pub pids: Vec<i32>,
    pub since: Instant,
    pub checks: Option<Checks>,
}

/// The health-check state of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Checks {
    pub health: Health,
    /// Consecutive failed checks outside the start period.
    pub failures: u32,
    /// The next check is due; `None` while one is running.
    pub next: Option<Instant>,
    /// Failures before this instant are not counted (`start_period`).
    pub period_end: Option<Instant>,
}

/// What follows a stop.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Stay stopped.
    Stay,
    /// Start again (operator restart, new configuration).
    Start,
    /// The run failed (unhealthy): back off and restart as after a death.
    Retry { ran_for: Duration, attempt: u32, failures: u32 },
    /// The start failed (timed out): back off and retry as after a failed start.
    Fail { attempt: u32, reason: String },
}

/// How a start action ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// The program runs (`adopted`: it already ran, nothing was started).
    Running {
        pids: Vec<i32>,
        adopted: bool,
    },
    Failed(String),
    /// Cancelled; `pids` are the program's processes found at that moment.
    Cancelled {
        pids: Vec<i32>,
    },
}

/// What the machine hears.
#[derive(Debug, Clone)]
pub enum Input {
    /// Start (operator, boot, reload of a new service).
    Start(Lookup),
    Restart,
    /// The operator's stop (also finds a program started by hand).
    Stop,
    /// Stop at shutdown or removal: a service at rest stays as it is.
    Shutdown(Lookup),
    /// A configuration was applied: `changed` from the running one; `start`: start it if it is
    /// not running (else it only takes effect at the next start).
    Configure {
        changed: bool,
        start: bool,
    },
    Started {
        gen: u64,
        outcome: StartOutcome,
    },
    Stopped {
        gen: u64,
        fault: Option<String>,
    },
    /// A watched process of run `gen` is gone; `exit` is known for a direct-mode child.
    Gone {
        gen: u64,
        pid: i32,
        exit: Option<String>,
    },
    /// The program's processes found after the last watched one was gone (script mode).
    Found {
        gen: u64,
        pids: Vec<i32>,
    },
    /// The processes of run `gen` as its cgroup lists them now (forks included).
    Members {
        gen: u64,
        pids: Vec<i32>,
    },
    /// Every process of run `gen` has exited (its cgroup is empty); `exit` is the last one's.
    Emptied {
        gen: u64,
        exit: Option<String>,
    },
    Checked {
        gen: u64,
        result: Result<(), String>,
    },
    /// The clock reached [`Machine::next_deadline`].
    Tick,
}

/// What the service task must do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Run a start; report `Input::Started{gen}`.
    Start {
        gen: u64,
        lookup: Lookup,
    },
    /// Cancel start `gen`; it still reports, with what it had launched.
    CancelStart {
        gen: u64,
    },
    /// Stop these processes (and the program wherever `lookup` finds it); report `Input::Stopped`.
    Stop {
        gen: u64,
        pids: Vec<i32>,
        lookup: Lookup,
    },
    /// Watch these processes of run `gen`; report each exit as `Input::Gone`.
    Watch {
        gen: u64,
        pids: Vec<i32>,
    },
    /// Look for the program's processes again; report `Input::Found`.
    Relook {
        gen: u64,
    },
    /// Run the health check once; report `Input::Checked`.
    Probe {
        gen: u64,
    },
    /// A direct-mode program ended: nothing of its process group may stay behind.
    KillGroup {
        pid: i32,
    },
    Answer(Answer),
    /// A line for the service log (and air-nanny's log at this level), and an event of this kind
    /// in the service's history.
    Note(Level, Kind, String),
}

/// The answer to the requests waiting on the service.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// To those waiting for it to run: running, or why not.
    Start(Result<(), String>),
    /// To those waiting for it to stop: stopped, with the fault when force was needed.
    Stop(Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// One service's state and counters. Only the service task owns it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub phase: Phase,
    pub restarts: u64,
    pub start_faults: u64,
    pub stop_faults: u64,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    /// Counts the exits and errors recorded: an observer stamps the time of a new one by these
    /// (the same text may come twice).
    pub exits: u64,
    pub errors: u64,
    next_gen: u64,
    jitter: u64,
}

/// Why a daemon is restarted (in its notes and its backoff).
const ENDED: &str = "the program ended";
const UNHEALTHY: &str = "unhealthy";
const START_FAILED: &str = "the start failed";

const INTERRUPTED: &str = "interrupted: a stop was requested before it was running";

/// `now + d`; durations are bounded at validation (a day at most), so this cannot overflow, but
/// a deadline is never allowed to panic.
fn at(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

impl Machine {
    pub fn new(seed: u64) -> Machine {
        Machine {
            phase: Phase::Stopped,
            restarts: 0,
            start_faults: 0,
            stop_faults: 0,
            last_exit: None,
            last_error: None,
            exits: 0,
            errors: 0,
            next_gen: 0,
            jitter: seed | 1,
        }
    }

    /// The state as the API numbers it.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Stopped => State::Stopped,
            Phase::Starting { .. } => State::Starting,
            Phase::Running { .. } => State::Running,
            Phase::Stopping { .. } => State::Stopping,
            Phase::Backoff { .. } => State::Backoff,
            Phase::Exited { .. } => State::Exited,
            Phase::Failed { .. } => State::Failed,
        }
    }

    pub fn pids(&self) -> &[i32] {
        match &self.phase {
            Phase::Running { run, .. } => &run.pids,
            Phase::Stopping { pids, .. } => pids,
            _ => &[],
        }
    }

    /// The generation of the run in progress, when the program runs.
    pub fn run_gen(&self) -> Option<u64> {
        match &self.phase {
            Phase::Running { run, .. } => Some(run.gen),
            _ => None,
        }
    }

    pub fn health(&self) -> Health {
        match &self.phase {
            Phase::Running { run: Run { checks: Some(c), .. }, .. } => c.health,
            // Stopped for being unhealthy, before its restart: that is what observers should see.
            Phase::Stopping { then: Then::Retry { .. }, .. } => Health::Unhealthy,
            _ => Health::None,
        }
    }

    /// Consecutive failed health checks of the run in progress (outside its start period).
    pub fn streak(&self) -> u32 {
        match &self.phase {
            Phase::Running { run: Run { checks: Some(c), .. }, .. } => c.failures,
            // Stopped for being unhealthy: the streak that made it so stays visible.
            Phase::Stopping { then: Then::Retry { failures, .. }, .. } => *failures,
            _ => 0,
        }
    }

    /// In backoff: when the next start is due, and why the service is restarted.
    pub fn backoff(&self) -> Option<(Instant, &'static str)> {
        match &self.phase {
            Phase::Backoff { until, cause, .. } => Some((*until, cause)),
            _ => None,
        }
    }

    /// When the machine wants a [`Input::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Starting { deadline, .. } => Some(*deadline),
            Phase::Running { run, .. } => run.checks.as_ref().and_then(|c| c.next),
            Phase::Backoff { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Decides: the new phase and what to do.
    pub fn step(&mut self, input: Input, l: &Limits, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Stopped);
        self.phase = self.decide(phase, input, l, now, &mut out);
        out
    }

    fn set_error(&mut self, e: String) {
        self.last_error = Some(e);
        self.errors += 1;
    }

    fn set_exit(&mut self, e: String) {
        self.last_exit = Some(e);
        self.exits += 1;
    }

    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    fn decide(&mut self, phase: Phase, input: Input, l: &Limits, now: Instant, out: &mut Vec<Action>) -> Phase {
        use Input as I;
        use Phase as P;
        match (phase, input) {
            // ---- start
            (p @ P::Running { .. }, I::Start(_)) => {
                out.push(Action::Answer(Answer::Start(Ok(()))));
                p
            }
            (p @ P::Starting { .. }, I::Start(_) | I::Restart) => p,
            (P::Stopping { gen, pids, start, .. }, I::Start(_)) => P::Stopping { gen, pids, start, then: Then::Start },
            (P::Stopped | P::Exited { .. } | P::Failed { .. } | P::Backoff { .. }, I::Start(lookup)) => {
                self.start(0, lookup, l, now, out)
            }

            // ---- restart
            (P::Running { run, .. }, I::Restart) => {
                self.restarts += 1;
                self.stop(run.pids, Lookup::Absent, None, Then::Start, out)
            }
            (P::Stopping { gen, pids, start, then }, I::Restart) => {
                if then != Then::Start {
                    self.restarts += 1;
                }
                P::Stopping { gen, pids, start, then: Then::Start }
            }
            (P::Backoff { known_absent, .. }, I::Restart) => {
                self.restarts += 1;
                self.start(0, if known_absent { Lookup::Absent } else { Lookup::Scan }, l, now, out)
            }
            (P::Stopped | P::Exited { .. } | P::Failed { .. }, I::Restart) => {
                self.restarts += 1;
                self.start(0, Lookup::Scan, l, now, out)
            }

            // ---- stop (operator) and shutdown
            (P::Stopped | P::Exited { .. } | P::Failed { .. }, I::Shutdown(_)) | (P::Exited { .. }, I::Stop) => {
                out.push(Action::Answer(Answer::Stop(None)));
                P::Stopped
            }
            (P::Backoff { known_absent: true, .. }, I::Stop | I::Shutdown(_)) => {
                out.push(Action::Answer(Answer::Stop(None)));
                P::Stopped
            }
            (P::Backoff { known_absent: false, .. }, I::Shutdown(lookup)) => {
                self.stop(vec![], lookup, None, Then::Stay, out)
            }
            (P::Backoff { .. } | P::Failed { .. } | P::Stopped, I::Stop) => {
                self.stop(vec![], Lookup::Scan, None, Then::Stay, out)
            }
            (P::Running { run, .. }, I::Stop | I::Shutdown(_)) => {
                self.stop(run.pids, Lookup::Absent, None, Then::Stay, out)
            }
            (P::Starting { gen, .. }, I::Stop | I::Shutdown(_)) => {
                out.push(Action::Answer(Answer::Start(Err(INTERRUPTED.into()))));
                out.push(Action::CancelStart { gen });
                let stop = self.gen();
                P::Stopping { gen: stop, pids: vec![], start: Some(gen), then: Then::Stay }
            }
            (P::Stopping { gen, pids, start, then }, I::Stop | I::Shutdown(_)) => {
                if then == Then::Start {
                    out.push(Action::Answer(Answer::Start(Err(INTERRUPTED.into()))));
                }
                P::Stopping { gen, pids, start, then: Then::Stay }
            }

            // ---- a new configuration
            (p @ P::Running { .. }, I::Configure { changed: false, .. }) => {
                out.push(Action::Answer(Answer::Start(Ok(()))));
                p
            }
            (P::Running { run, .. }, I::Configure { changed: true, .. }) => {
                out.push(Action::Note(Level::Info, Kind::Config, "configuration changed: restarting".into()));
                self.stop(run.pids, Lookup::Absent, None, Then::Start, out)
            }
            (p @ P::Starting { .. }, I::Configure { changed: false, .. }) => p,
            (P::Starting { gen, .. }, I::Configure { changed: true, .. }) => {
                out.push(Action::Note(
                    Level::Info,
                    Kind::Config,
                    "configuration changed during the start: starting again".into(),
                ));
                out.push(Action::CancelStart { gen });
                let stop = self.gen();
                P::Stopping { gen: stop, pids: vec![], start: Some(gen), then: Then::Start }
            }
            (P::Stopping { gen, pids, start, .. }, I::Configure { start: true, .. }) => {
                P::Stopping { gen, pids, start, then: Then::Start }
            }
            (p @ P::Stopping { .. }, I::Configure { start: false, .. }) => {
                out.push(Action::Answer(Answer::Start(Ok(()))));
                p
            }
            (P::Backoff { known_absent, .. }, I::Configure { start: true, .. }) => {
                self.start(0, if known_absent { Lookup::Absent } else { Lookup::Scan }, l, now, out)
            }
            (P::Stopped | P::Exited { .. } | P::Failed { .. }, I::Configure { start: true, .. }) => {
                self.start(0, Lookup::Scan, l, now, out)
            }
            (
                p @ (P::Backoff { .. } | P::Stopped | P::Exited { .. } | P::Failed { .. }),
                I::Configure { start: false, .. },
            ) => {
                out.push(Action::Answer(Answer::Start(Ok(()))));
                p
            }

            // ---- a start reports
            (P::Starting { gen, attempt, .. }, I::Started { gen: g, outcome }) if g == gen => match outcome {
                // `last_error` stays: it is the last error, with its time, until there is another.
                StartOutcome::Running { pids, .. } if !pids.is_empty() => {
                    out.push(Action::Answer(Answer::Start(Ok(()))));
                    out.push(Action::Watch { gen, pids: pids.clone() });
                    P::Running { run: Run { gen, pids, since: now, checks: Self::checks(l, now) }, attempt }
                }
                StartOutcome::Running { .. } | StartOutcome::Cancelled { .. } => {
                    self.start_failed("the start ended without a process of the program".into(), attempt, l, now, out)
                }
                StartOutcome::Failed(reason) => self.start_failed(reason, attempt, l, now, out),
            },
            (P::Stopping { gen, start: Some(s), then, .. }, I::Started { gen: g, outcome }) if g == s => {
                // A cancelled start reports: stop whatever it had launched (the stop command runs
                // in script mode whenever the program is found).
                let pids = match outcome {
                    StartOutcome::Running { pids, .. } | StartOutcome::Cancelled { pids } => pids,
                    StartOutcome::Failed(_) => vec![],
                };
                out.push(Action::Stop { gen, pids: pids.clone(), lookup: Lookup::Absent });
                P::Stopping { gen, pids, start: None, then }
            }
            (P::Starting { gen, attempt, deadline }, I::Tick) if deadline <= now => {
                let reason = format!("the program did not start within {}s (start timeout)", l.start_timeout.as_secs());
                self.count_start_fault(&reason, out);
                out.push(Action::Answer(Answer::Start(Err(reason.clone()))));
                out.push(Action::CancelStart { gen });
                let stop = self.gen();
                P::Stopping { gen: stop, pids: vec![], start: Some(gen), then: Then::Fail { attempt, reason } }
            }

            // ---- a stop reports
            (P::Stopping { gen, start: None, then, .. }, I::Stopped { gen: g, fault }) if g == gen => {
                if let Some(f) = &fault {
                    self.stop_faults += 1;
                    self.set_error(f.clone());
                    out.push(Action::Note(Level::Warn, Kind::Stop, format!("stop fault: {f}")));
                } else {
                    out.push(Action::Note(Level::Info, Kind::Stop, "stopped".into()));
                }
                let clean = fault.is_none();
                out.push(Action::Answer(Answer::Stop(fault)));
                match then {
                    Then::Stay => P::Stopped,
                    Then::Start => self.start(0, if clean { Lookup::Absent } else { Lookup::Scan }, l, now, out),
                    Then::Retry { ran_for, attempt, .. } => {
                        self.after_failure(ran_for, attempt, clean, None, UNHEALTHY, l, now, out)
                    }
                    Then::Fail { attempt, reason } => {
                        self.after_failure(Duration::ZERO, attempt, false, Some(reason), START_FAILED, l, now, out)
                    }
                }
            }

            // ---- the program's processes
            (P::Running { mut run, attempt }, I::Gone { gen, pid, exit }) if gen == run.gen => {
                if let Some(e) = &exit {
                    self.set_exit(e.clone());
                }
                run.pids.retain(|p| *p != pid);
                // A direct-mode child (its exit is known) is the program: when it ends, the run
                // ends, whatever it forked.
                if l.direct && exit.is_some() {
                    out.push(Action::KillGroup { pid });
                    return self.died(run, attempt, exit, l, now, out);
                }
                if !run.pids.is_empty() {
                    return P::Running { run, attempt };
                }
                if l.direct {
                    out.push(Action::KillGroup { pid });
                    return self.died(run, attempt, exit, l, now, out);
                }
                // A daemonised program may have handed over to another process (a re-exec, a fork).
                out.push(Action::Relook { gen });
                P::Running { run, attempt }
            }
            (P::Running { mut run, attempt }, I::Found { gen, pids }) if gen == run.gen && run.pids.is_empty() => {
                if pids.is_empty() {
                    return self.died(run, attempt, None, l, now, out);
                }
                out.push(Action::Watch { gen, pids: pids.clone() });
                run.pids = pids;
                P::Running { run, attempt }
            }

            (P::Running { mut run, attempt }, I::Members { gen, pids }) if gen == run.gen && !pids.is_empty() => {
                run.pids = pids;
                P::Running { run, attempt }
            }
            (P::Running { run, attempt }, I::Emptied { gen, exit }) if gen == run.gen => {
                if let Some(e) = &exit {
                    self.set_exit(e.clone());
                }
                self.died(run, attempt, exit, l, now, out)
            }

            // ---- health checks
            (P::Running { mut run, attempt }, I::Tick) => {
                if let Some(c) = run.checks.as_mut().filter(|c| c.next.is_some_and(|n| n <= now)) {
                    c.next = None;
                    out.push(Action::Probe { gen: run.gen });
                }
                P::Running { run, attempt }
            }
            (P::Running { run, attempt }, I::Checked { gen, result }) if gen == run.gen && run.checks.is_some() => {
                self.checked(run, attempt, result, l, now, out)
            }

            // ---- backoff over
            (P::Backoff { until, attempt, known_absent, .. }, I::Tick) if until <= now => {
                self.restarts += 1;
                self.start(attempt, if known_absent { Lookup::Absent } else { Lookup::Scan }, l, now, out)
            }

            // Anything else (a late event of an older run, a tick before its time) changes nothing.
            (p, _) => p,
        }
    }

    fn checks(l: &Limits, now: Instant) -> Option<Checks> {
        let plan = l.check?;
        let in_period = !plan.start_period.is_zero();
        let first = if in_period { plan.start_interval } else { plan.interval };
        Some(Checks {
            health: Health::Starting,
            failures: 0,
            next: Some(at(now, first)),
            period_end: in_period.then(|| at(now, plan.start_period)),
        })
    }

    fn start(&mut self, attempt: u32, lookup: Lookup, l: &Limits, now: Instant, out: &mut Vec<Action>) -> Phase {
        let gen = self.gen();
        out.push(Action::Start { gen, lookup });
        Phase::Starting { gen, deadline: at(now, l.start_timeout), attempt }
    }

    fn stop(&mut self, pids: Vec<i32>, lookup: Lookup, start: Option<u64>, then: Then, out: &mut Vec<Action>) -> Phase {
        let gen = self.gen();
        out.push(Action::Stop { gen, pids: pids.clone(), lookup });
        Phase::Stopping { gen, pids, start, then }
    }

    fn count_start_fault(&mut self, reason: &str, out: &mut Vec<Action>) {
        self.start_faults += 1;
        self.set_error(reason.to_string());
        out.push(Action::Note(Level::Warn, Kind::Start, format!("start failed: {reason}")));
    }

    fn start_failed(&mut self, reason: String, attempt: u32, l: &Limits, now: Instant, out: &mut Vec<Action>) -> Phase {
        self.count_start_fault(&reason, out);
        out.push(Action::Answer(Answer::Start(Err(reason.clone()))));
        // The start may have launched the program before failing: the retry must look for it.
        self.after_failure(Duration::ZERO, attempt, false, Some(reason), START_FAILED, l, now, out)
    }

    fn died(
        &mut self,
        run: Run,
        attempt: u32,
        exit: Option<String>,
        l: &Limits,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Phase {
        let how = exit.unwrap_or_else(|| "exited".into());
        let level = if l.daemon { Level::Warn } else { Level::Info };
        out.push(Action::Note(level, Kind::Exit, format!("program ended ({how})")));
        let ran_for = now.saturating_duration_since(run.since);
        if !l.daemon {
            return Phase::Exited { status: how };
        }
        self.after_failure(ran_for, attempt, true, None, ENDED, l, now, out)
    }

    /// After a failed run or start: back off and restart (daemon), or stay down.
    #[allow(clippy::too_many_arguments)]
    fn after_failure(
        &mut self,
        ran_for: Duration,
        attempt: u32,
        known_absent: bool,
        start_failure: Option<String>,
        cause: &'static str,
        l: &Limits,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Phase {
        if !l.daemon {
            return match start_failure {
                Some(reason) => Phase::Failed { reason },
                None => Phase::Exited { status: self.last_exit.clone().unwrap_or_else(|| "exited".into()) },
            };
        }
        let attempt = if ran_for >= l.backoff_reset { 0 } else { attempt };
        let delay = self.delay(attempt, l);
        let attempt = attempt.saturating_add(1);
        if l.start_limit > 0 && attempt >= l.start_limit {
            let reason = format!("gave up after {} consecutive failures (START_LIMIT)", l.start_limit);
            self.set_error(reason.clone());
            out.push(Action::Note(Level::Error, Kind::Restart, format!("{reason} (last: {cause})")));
            return Phase::Failed { reason };
        }
        let lookup = if known_absent { Lookup::Absent } else { Lookup::Scan };
        if delay.is_zero() {
            self.restarts += 1;
            out.push(Action::Note(Level::Info, Kind::Restart, format!("restarting now ({cause})")));
            return self.start(attempt, lookup, l, now, out);
        }
        out.push(Action::Note(Level::Info, Kind::Restart, format!("restarting in {} ms ({cause})", delay.as_millis())));
        Phase::Backoff { until: at(now, delay), attempt, known_absent, cause }
    }

    /// Exponential backoff with a cap and ±20 % jitter (so that services failing together do not
    /// restart in lockstep); the first restart after a good run is immediate.
    fn delay(&mut self, attempt: u32, l: &Limits) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let exp = l.backoff_base.saturating_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX));
        let capped = exp.min(l.backoff_max);
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let permille = 800 + (self.jitter % 401) as u32;
        (capped * permille / 1000).min(l.backoff_max)
    }

    fn checked(
        &mut self,
        mut run: Run,
        attempt: u32,
        result: Result<(), String>,
        l: &Limits,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Phase {
        let (Some(plan), Some(c)) = (l.check, run.checks.as_mut()) else { return Phase::Running { run, attempt } };
        let in_period = c.period_end.is_some_and(|e| now < e);
        match result {
            Ok(()) => {
                if c.health != Health::Healthy {
                    out.push(Action::Note(Level::Info, Kind::Health, "healthy".into()));
                }
                c.failures = 0;
                c.period_end = None;
                c.health = Health::Healthy;
                c.next = Some(at(now, plan.interval));
            }
            Err(reason) if in_period => {
                out.push(Action::Note(
                    Level::Info,
                    Kind::Health,
                    format!("health check failed during start_period (not counted): {reason}"),
                ));
                c.next = Some(at(now, plan.start_interval));
            }
            Err(reason) => {
                c.period_end = None;
                c.failures = c.failures.saturating_add(1);
                out.push(Action::Note(
                    Level::Info,
                    Kind::Health,
                    format!("health check failed ({}/{}): {reason}", c.failures, plan.retries),
                ));
                c.next = Some(at(now, plan.interval));
                if c.failures >= plan.retries {
                    c.health = Health::Unhealthy;
                    self.set_error(format!("unhealthy: {reason}"));
                    out.push(Action::Note(
                        Level::Warn,
                        Kind::Health,
                        format!("unhealthy after {} failed checks: {reason}", plan.retries),
                    ));
                    if l.daemon {
                        out.push(Action::Note(Level::Info, Kind::Restart, "unhealthy: restarting".into()));
                        let ran_for = now.saturating_duration_since(run.since);
                        let failures = c.failures;
                        return self.stop(
                            run.pids,
                            Lookup::Absent,
                            None,
                            Then::Retry { ran_for, attempt, failures },
                            out,
                        );
                    }
                }
            }
        }
        Phase::Running { run, attempt }
    }
}

#[cfg(test)]
mod tests;
