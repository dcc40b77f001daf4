//! Every (phase, input) pair that can occur, under paused time: the clock moves only when a test
//! advances it, so deadlines and backoffs are exact.

use super::*;

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn limits() -> Limits {
    Limits {
        daemon: true,
        direct: false,
        start_timeout: S(10),
        check: None,
        backoff_base: MS(100),
        backoff_max: S(2),
        backoff_reset: S(60),
        start_limit: 0,
    }
}

fn checked() -> Limits {
    Limits {
        check: Some(CheckPlan { interval: S(5), start_interval: S(1), start_period: S(3), retries: 2 }),
        ..limits()
    }
}

/// A machine under test with its limits.
struct T {
    m: Machine,
    l: Limits,
}

impl T {
    fn new(l: Limits) -> T {
        T { m: Machine::new(7), l }
    }

    fn step(&mut self, input: Input) -> Vec<Action> {
        self.m.step(input, &self.l, Instant::now())
    }

    fn state(&self) -> State {
        self.m.state()
    }

    /// Starting, with the start's generation.
    fn starting(&mut self) -> u64 {
        let a = self.step(Input::Start(Lookup::Scan));
        start_gen(&a).expect("a start")
    }

    /// Running pids 10 and 11, with the run's generation.
    fn running(&mut self) -> u64 {
        let gen = self.starting();
        let a =
            self.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![10, 11], adopted: false } });
        assert!(has_answer(&a, &Answer::Start(Ok(()))));
        assert_eq!(self.state(), State::Running);
        gen
    }

    /// Stopping (operator stop of a running program), with the stop's generation.
    fn stopping(&mut self) -> u64 {
        self.running();
        let a = self.step(Input::Stop);
        stop_gen(&a).expect("a stop")
    }

    /// In backoff after two failed starts (the first retry is immediate, the second waits).
    fn backoff(&mut self) {
        let gen = self.starting();
        let a = self.step(Input::Started { gen, outcome: StartOutcome::Failed("no".into()) });
        let gen = start_gen(&a).expect("the first retry is immediate");
        self.step(Input::Started { gen, outcome: StartOutcome::Failed("no".into()) });
        assert_eq!(self.state(), State::Backoff);
    }
}

fn start_gen(a: &[Action]) -> Option<u64> {
    a.iter().find_map(|a| match a {
        Action::Start { gen, .. } => Some(*gen),
        _ => None,
    })
}

fn start_lookup(a: &[Action]) -> Option<&Lookup> {
    a.iter().find_map(|a| match a {
        Action::Start { lookup, .. } => Some(lookup),
        _ => None,
    })
}

fn stop_gen(a: &[Action]) -> Option<u64> {
    a.iter().find_map(|a| match a {
        Action::Stop { gen, .. } => Some(*gen),
        _ => None,
    })
}

fn stop_pids(a: &[Action]) -> Option<Vec<i32>> {
    a.iter().find_map(|a| match a {
        Action::Stop { pids, .. } => Some(pids.clone()),
        _ => None,
    })
}

fn has_answer(a: &[Action], want: &Answer) -> bool {
    a.iter().any(|a| matches!(a, Action::Answer(x) if x == want))
}

fn answers(a: &[Action]) -> Vec<Answer> {
    a.iter()
        .filter_map(|a| match a {
            Action::Answer(x) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

fn cancels(a: &[Action]) -> bool {
    a.iter().any(|a| matches!(a, Action::CancelStart { .. }))
}

fn interrupted() -> Answer {
    Answer::Start(Err(INTERRUPTED.into()))
}

// ---- Stopped

#[tokio::test(start_paused = true)]
async fn stopped_start_restart_configure() {
    let mut t = T::new(limits());
    let a = t.step(Input::Start(Lookup::Scan));
    assert!(matches!(start_lookup(&a), Some(Lookup::Scan)), "a first start looks for the program");
    assert_eq!(t.state(), State::Starting);

    let mut t = T::new(limits());
    let a = t.step(Input::Restart);
    assert!(matches!(start_lookup(&a), Some(Lookup::Scan)));
    assert_eq!(t.m.restarts, 1);

    let mut t = T::new(limits());
    let a = t.step(Input::Configure { changed: true, start: true });
    assert!(start_gen(&a).is_some());

    let mut t = T::new(limits());
    let a = t.step(Input::Configure { changed: true, start: false });
    assert_eq!(answers(&a), vec![Answer::Start(Ok(()))], "an update leaves a stopped service stopped");
    assert_eq!(t.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn stopped_stop_looks_for_a_program_started_by_hand_but_shutdown_does_not() {
    let mut t = T::new(limits());
    let a = t.step(Input::Stop);
    assert!(matches!(&a[..], [Action::Stop { pids, lookup: Lookup::Scan, .. }] if pids.is_empty()), "{a:?}");
    assert_eq!(t.state(), State::Stopping);
    let gen = stop_gen(&a).unwrap();
    let a = t.step(Input::Stopped { gen, fault: None });
    assert!(has_answer(&a, &Answer::Stop(None)));
    assert_eq!(t.state(), State::Stopped);

    let mut t = T::new(limits());
    let a = t.step(Input::Shutdown(Lookup::Scan));
    assert_eq!(answers(&a), vec![Answer::Stop(None)]);
    assert!(stop_gen(&a).is_none(), "nothing to stop, nothing scanned");
}

#[tokio::test(start_paused = true)]
async fn late_events_of_no_run_change_nothing() {
    let mut t = T::new(limits());
    for input in [
        Input::Started { gen: 99, outcome: StartOutcome::Running { pids: vec![1], adopted: false } },
        Input::Stopped { gen: 99, fault: None },
        Input::Gone { gen: 99, pid: 1, exit: None },
        Input::Found { gen: 99, pids: vec![1] },
        Input::Checked { gen: 99, result: Ok(()) },
        Input::Tick,
    ] {
        assert!(t.step(input).is_empty());
        assert_eq!(t.m.phase, Phase::Stopped);
    }
}

// ---- Starting

#[tokio::test(start_paused = true)]
async fn starting_joins_starts_restarts_and_unchanged_configurations() {
    let mut t = T::new(limits());
    t.starting();
    for input in [Input::Start(Lookup::Scan), Input::Restart, Input::Configure { changed: false, start: true }] {
        assert!(t.step(input).is_empty(), "one start in flight is enough");
        assert_eq!(t.state(), State::Starting);
    }
    assert_eq!(t.m.restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_during_start_cancels_it_and_stops_what_it_launched() {
    let mut t = T::new(limits());
    let gen = t.starting();
    let a = t.step(Input::Stop);
    assert!(cancels(&a));
    assert!(has_answer(&a, &interrupted()), "the start's requester hears it was interrupted");
    assert!(stop_gen(&a).is_none(), "the stop waits for the start to say what it launched");
    assert_eq!(t.state(), State::Stopping);
    // The cancelled start reports the program it had launched: that is stopped.
    let a = t.step(Input::Started { gen, outcome: StartOutcome::Cancelled { pids: vec![42] } });
    assert_eq!(stop_pids(&a), Some(vec![42]));
    let stop = stop_gen(&a).unwrap();
    let a = t.step(Input::Stopped { gen: stop, fault: None });
    assert!(has_answer(&a, &Answer::Stop(None)));
    assert_eq!(t.state(), State::Stopped);
    assert_eq!(t.m.start_faults, 0, "an interrupted start is not a fault");
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_start_does_not_wait_for_the_start_timeout() {
    let mut t = T::new(limits());
    let gen = t.starting();
    let a = t.step(Input::Shutdown(Lookup::Scan));
    assert!(cancels(&a));
    let a = t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![5], adopted: false } });
    assert_eq!(stop_pids(&a), Some(vec![5]), "a start that got there anyway is stopped");
    assert_eq!(t.state(), State::Stopping);
}

#[tokio::test(start_paused = true)]
async fn a_new_configuration_during_start_starts_again() {
    let mut t = T::new(limits());
    let gen = t.starting();
    let a = t.step(Input::Configure { changed: true, start: true });
    assert!(cancels(&a));
    assert!(answers(&a).is_empty(), "its requesters wait for the new start");
    let a = t.step(Input::Started { gen, outcome: StartOutcome::Cancelled { pids: vec![] } });
    let stop = stop_gen(&a).unwrap();
    let a = t.step(Input::Stopped { gen: stop, fault: None });
    assert!(matches!(start_lookup(&a), Some(Lookup::Absent)), "stopped cleanly: nothing to look for");
    assert_eq!(t.state(), State::Starting);
}

#[tokio::test(start_paused = true)]
async fn a_start_script_failing_after_it_started_the_program_is_not_run_twice() {
    let mut t = T::new(limits());
    let gen = t.starting();
    let a = t.step(Input::Started { gen, outcome: StartOutcome::Failed("start command failed: exit status 1".into()) });
    assert_eq!(t.m.start_faults, 1);
    assert!(has_answer(&a, &Answer::Start(Err("start command failed: exit status 1".into()))));
    // The immediate retry must look for the program the failed script may have launched: it is
    // then adopted, not started a second time.
    assert!(matches!(start_lookup(&a), Some(Lookup::Scan)), "{a:?}");
    let gen = start_gen(&a).unwrap();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![77], adopted: true } });
    assert_eq!(t.m.pids(), &[77]);
    assert_eq!(t.m.last_error.as_deref(), Some("start command failed: exit status 1"), "adoption keeps the reason");
}

#[tokio::test(start_paused = true)]
async fn a_start_that_times_out_is_cancelled_stopped_and_retried_with_a_look() {
    let mut t = T::new(limits());
    let gen = t.starting();
    tokio::time::advance(S(9)).await;
    assert!(t.step(Input::Tick).is_empty(), "not yet");
    assert_eq!(t.m.next_deadline(), Some(Instant::now() + S(1)));
    tokio::time::advance(S(1)).await;
    let a = t.step(Input::Tick);
    assert!(cancels(&a));
    assert!(matches!(answers(&a)[..], [Answer::Start(Err(ref r))] if r.contains("within 10s")), "{a:?}");
    assert_eq!(t.m.start_faults, 1);
    // The program appears just as the start is cancelled: it is stopped, then the retry looks.
    let a = t.step(Input::Started { gen, outcome: StartOutcome::Cancelled { pids: vec![9] } });
    let stop = stop_gen(&a).unwrap();
    assert_eq!(stop_pids(&a), Some(vec![9]));
    let a = t.step(Input::Stopped { gen: stop, fault: None });
    assert!(matches!(start_lookup(&a), Some(Lookup::Scan)), "{a:?}");
    assert_eq!(t.m.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_reports_no_process_is_a_failure() {
    let mut t = T::new(limits());
    let gen = t.starting();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![], adopted: false } });
    assert_eq!(t.m.start_faults, 1);
    assert_eq!(t.state(), State::Starting, "retried at once");
}

#[tokio::test(start_paused = true)]
async fn late_events_of_an_older_start_are_ignored() {
    let mut t = T::new(limits());
    let old = t.starting();
    t.step(Input::Stop);
    let a = t.step(Input::Started { gen: old, outcome: StartOutcome::Cancelled { pids: vec![] } });
    let stop = stop_gen(&a).unwrap();
    t.step(Input::Start(Lookup::Scan));
    t.step(Input::Stopped { gen: stop, fault: None });
    assert_eq!(t.state(), State::Starting);
    // The old start's report again (a duplicate) and an old stop's: nothing happens.
    assert!(t.step(Input::Started { gen: old, outcome: StartOutcome::Failed("x".into()) }).is_empty());
    assert!(t.step(Input::Stopped { gen: stop, fault: Some("x".into()) }).is_empty());
    assert_eq!(t.m.start_faults + t.m.stop_faults, 0);
}

// ---- Running

#[tokio::test(start_paused = true)]
async fn running_start_is_answered_at_once_and_a_same_configuration_changes_nothing() {
    let mut t = T::new(limits());
    t.running();
    assert_eq!(answers(&t.step(Input::Start(Lookup::Scan))), vec![Answer::Start(Ok(()))]);
    assert_eq!(answers(&t.step(Input::Configure { changed: false, start: true })), vec![Answer::Start(Ok(()))]);
    assert_eq!(t.state(), State::Running);
}

#[tokio::test(start_paused = true)]
async fn running_restart_stop_shutdown_and_new_configuration_stop_the_run() {
    for (input, then_starts) in [
        (Input::Restart, true),
        (Input::Stop, false),
        (Input::Shutdown(Lookup::Scan), false),
        (Input::Configure { changed: true, start: true }, true),
        (Input::Configure { changed: true, start: false }, true),
    ] {
        let mut t = T::new(limits());
        t.running();
        let a = t.step(input.clone());
        assert_eq!(stop_pids(&a), Some(vec![10, 11]), "{input:?}");
        assert_eq!(t.state(), State::Stopping);
        assert_eq!(t.m.pids(), &[10, 11], "the pids stay visible while stopping");
        let a = t.step(Input::Stopped { gen: stop_gen(&a).unwrap(), fault: None });
        assert_eq!(start_gen(&a).is_some(), then_starts, "{input:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn one_death_of_two_processes_keeps_it_running() {
    let mut t = T::new(limits());
    let gen = t.running();
    assert!(t.step(Input::Gone { gen, pid: 10, exit: None }).is_empty());
    assert_eq!(t.m.pids(), &[11]);
}

#[tokio::test(start_paused = true)]
async fn the_last_death_in_script_mode_looks_again_before_restarting() {
    let mut t = T::new(limits());
    let gen = t.running();
    t.step(Input::Gone { gen, pid: 10, exit: None });
    let a = t.step(Input::Gone { gen, pid: 11, exit: None });
    assert!(matches!(&a[..], [Action::Relook { .. }]), "{a:?}");
    // It re-exec'd: found under a new pid, watched, still running.
    let a = t.step(Input::Found { gen, pids: vec![12] });
    assert!(matches!(&a[..], [Action::Watch { pids, .. }] if pids == &[12]));
    assert_eq!(t.state(), State::Running);
    // Then really gone: restarted at once, without a scan (it was just seen gone).
    t.step(Input::Gone { gen, pid: 12, exit: None });
    let a = t.step(Input::Found { gen, pids: vec![] });
    assert!(matches!(start_lookup(&a), Some(Lookup::Absent)), "{a:?}");
    assert_eq!(t.m.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_direct_child_death_records_the_exit_kills_its_group_and_backs_off_from_the_second() {
    let mut t = T::new(Limits { direct: true, ..limits() });
    let gen = t.starting();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![10], adopted: false } });
    let a = t.step(Input::Gone { gen, pid: 10, exit: Some("exit status 3".into()) });
    assert!(a.iter().any(|a| matches!(a, Action::KillGroup { pid: 10 })));
    assert_eq!(t.m.last_exit.as_deref(), Some("exit status 3"));
    let gen = start_gen(&a).expect("the first restart is immediate");
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![20], adopted: false } });
    t.step(Input::Gone { gen, pid: 20, exit: Some("killed by SIGKILL".into()) });
    assert_eq!(t.state(), State::Backoff, "the second failure in a row waits");
    let until = t.m.next_deadline().unwrap();
    assert!(until >= Instant::now() + MS(80) && until <= Instant::now() + MS(120));
}

#[tokio::test(start_paused = true)]
async fn a_long_run_resets_the_backoff() {
    let mut t = T::new(Limits { direct: true, ..limits() });
    let gen = t.starting();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![1], adopted: false } });
    let a = t.step(Input::Gone { gen, pid: 1, exit: None });
    let gen = start_gen(&a).unwrap();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![2], adopted: false } });
    tokio::time::advance(S(61)).await;
    let a = t.step(Input::Gone { gen, pid: 2, exit: None });
    assert!(start_gen(&a).is_some(), "after a minute of running, the restart is immediate again");
}

#[tokio::test(start_paused = true)]
async fn a_one_shot_program_that_ends_is_exited_and_one_that_cannot_start_failed() {
    let mut t = T::new(Limits { daemon: false, direct: true, ..limits() });
    let gen = t.starting();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![1], adopted: false } });
    let a = t.step(Input::Gone { gen, pid: 1, exit: Some("exit status 0".into()) });
    assert!(start_gen(&a).is_none());
    assert_eq!(t.m.phase, Phase::Exited { status: "exit status 0".into() });
    // Exited: start and restart run it again; stop and shutdown leave it stopped.
    assert!(start_gen(&t.clone_step(Input::Start(Lookup::Scan))).is_some());
    assert!(start_gen(&t.clone_step(Input::Restart)).is_some());
    assert!(start_gen(&t.clone_step(Input::Configure { changed: true, start: true })).is_some());
    assert_eq!(answers(&t.clone_step(Input::Configure { changed: true, start: false })), vec![Answer::Start(Ok(()))]);
    assert_eq!(answers(&t.step(Input::Stop)), vec![Answer::Stop(None)]);
    assert_eq!(t.state(), State::Stopped);

    let mut t = T::new(Limits { daemon: false, ..limits() });
    let gen = t.starting();
    t.step(Input::Started { gen, outcome: StartOutcome::Failed("cannot run".into()) });
    assert_eq!(t.m.phase, Phase::Failed { reason: "cannot run".into() });
}

impl T {
    /// Steps a copy, leaving this one as it was.
    fn clone_step(&self, input: Input) -> Vec<Action> {
        let mut m = self.m.clone();
        m.step(input, &self.l, Instant::now())
    }
}

#[tokio::test(start_paused = true)]
async fn health_failures_during_start_period_do_not_count_then_two_make_it_unhealthy_and_restart() {
    let mut t = T::new(checked());
    let gen = t.running();
    assert_eq!(t.m.health(), Health::Starting);
    assert_eq!(t.m.next_deadline(), Some(Instant::now() + S(1)), "start_interval during start_period");
    tokio::time::advance(S(1)).await;
    let a = t.step(Input::Tick);
    assert!(matches!(&a[..], [Action::Probe { .. }]));
    assert_eq!(t.m.next_deadline(), None, "no second probe while one runs");
    t.step(Input::Checked { gen, result: Err("refused".into()) });
    assert_eq!(t.m.health(), Health::Starting, "not counted in start_period");
    tokio::time::advance(S(3)).await;
    t.step(Input::Tick);
    t.step(Input::Checked { gen, result: Err("refused".into()) });
    assert_eq!(t.m.health(), Health::Starting, "one failure of two");
    assert_eq!(t.m.next_deadline(), Some(Instant::now() + S(5)), "interval after start_period");
    tokio::time::advance(S(5)).await;
    t.step(Input::Tick);
    let a = t.step(Input::Checked { gen, result: Err("refused".into()) });
    assert_eq!(t.m.last_error.as_deref(), Some("unhealthy: refused"));
    assert_eq!(stop_pids(&a), Some(vec![10, 11]), "a daemon is restarted: stopped first");
    assert_eq!((t.m.health(), t.m.streak()), (Health::Unhealthy, 2), "while it is stopped, it shows why");
    let a = t.step(Input::Stopped { gen: stop_gen(&a).unwrap(), fault: None });
    assert!(matches!(start_lookup(&a), Some(Lookup::Absent)), "restarted at once after its first failure: {a:?}");
    assert_eq!(t.m.streak(), 0, "a new run starts a new streak");
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_makes_it_healthy_and_a_one_shot_stays_unhealthy() {
    let mut t =
        T::new(Limits { check: Some(CheckPlan { start_period: S(0), ..checked().check.unwrap() }), ..checked() });
    let gen = t.running();
    assert_eq!(t.m.next_deadline(), Some(Instant::now() + S(5)));
    t.step(Input::Checked { gen, result: Ok(()) });
    assert_eq!(t.m.health(), Health::Healthy);

    let mut t = T::new(Limits { daemon: false, ..checked() });
    let gen = t.running();
    tokio::time::advance(S(4)).await;
    for _ in 0..2 {
        let a = t.step(Input::Checked { gen, result: Err("down".into()) });
        assert!(stop_gen(&a).is_none());
    }
    assert_eq!(t.m.health(), Health::Unhealthy);
    assert_eq!(t.state(), State::Running, "a one-shot program is not restarted");
}

#[tokio::test(start_paused = true)]
async fn check_results_of_another_run_are_ignored() {
    let mut t = T::new(checked());
    let gen = t.running();
    assert!(t.step(Input::Checked { gen: gen + 100, result: Ok(()) }).is_empty());
    assert_eq!(t.m.health(), Health::Starting);
}

// ---- Stopping

#[tokio::test(start_paused = true)]
async fn restart_during_stop_starts_after_it_once() {
    let mut t = T::new(limits());
    let stop = t.stopping();
    for _ in 0..10 {
        assert!(t.step(Input::Restart).is_empty());
    }
    assert_eq!(t.m.restarts, 1, "ten restarts queued = one restart");
    let a = t.step(Input::Stopped { gen: stop, fault: None });
    assert_eq!(answers(&a), vec![Answer::Stop(None)]);
    assert!(start_gen(&a).is_some());
}

#[tokio::test(start_paused = true)]
async fn start_and_configure_during_stop_start_after_it_and_an_update_does_not() {
    let mut t = T::new(limits());
    let stop = t.stopping();
    assert_eq!(answers(&t.step(Input::Configure { changed: true, start: false })), vec![Answer::Start(Ok(()))]);
    t.step(Input::Start(Lookup::Scan));
    assert!(start_gen(&t.clone_step(Input::Stopped { gen: stop, fault: None })).is_some());
    t.step(Input::Configure { changed: true, start: true });
    assert!(start_gen(&t.step(Input::Stopped { gen: stop, fault: None })).is_some());
}

#[tokio::test(start_paused = true)]
async fn stop_during_a_restart_interrupts_the_start_waiters_and_stays_stopped() {
    let mut t = T::new(limits());
    t.running();
    let a = t.step(Input::Restart);
    let stop = stop_gen(&a).unwrap();
    let a = t.step(Input::Stop);
    assert_eq!(answers(&a), vec![interrupted()]);
    assert!(t.step(Input::Shutdown(Lookup::Scan)).is_empty(), "already stopping to stay stopped");
    let a = t.step(Input::Stopped { gen: stop, fault: None });
    assert!(start_gen(&a).is_none());
    assert_eq!(t.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn death_during_stop_changes_nothing_and_a_forced_stop_is_a_counted_success() {
    let mut t = T::new(limits());
    let run = t.running();
    let stop = stop_gen(&t.step(Input::Stop)).unwrap();
    assert!(t.step(Input::Gone { gen: run, pid: 10, exit: None }).is_empty(), "the stop waits for its pids itself");
    assert!(t.step(Input::Checked { gen: run, result: Err("late".into()) }).is_empty());
    assert!(t.step(Input::Tick).is_empty());
    assert_eq!(t.state(), State::Stopping);
    let a = t.step(Input::Stopped { gen: stop, fault: Some("killed it".into()) });
    assert_eq!(answers(&a), vec![Answer::Stop(Some("killed it".into()))]);
    assert_eq!((t.m.stop_faults, t.m.last_error.as_deref()), (1, Some("killed it")));
    assert_eq!(t.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_a_forced_stop_looks_for_leftovers() {
    let mut t = T::new(limits());
    t.running();
    let stop = stop_gen(&t.step(Input::Restart)).unwrap();
    let a = t.step(Input::Stopped { gen: stop, fault: Some("forced".into()) });
    assert!(matches!(start_lookup(&a), Some(Lookup::Scan)));
}

// ---- Backoff

#[tokio::test(start_paused = true)]
async fn backoff_waits_then_restarts_with_a_look_after_failed_starts() {
    let mut t = T::new(limits());
    t.backoff();
    assert_eq!(t.m.start_faults, 2);
    assert!(t.step(Input::Tick).is_empty(), "before its time");
    tokio::time::advance(MS(120)).await;
    let a = t.step(Input::Tick);
    assert!(matches!(start_lookup(&a), Some(Lookup::Scan)), "failed starts may have launched it: {a:?}");
    assert_eq!(t.m.restarts, 2);
}

#[tokio::test(start_paused = true)]
async fn stop_during_backoff_stops_what_a_failed_start_may_have_left_and_shutdown_uses_the_table() {
    let mut t = T::new(limits());
    t.backoff();
    let a = t.clone_step(Input::Stop);
    assert!(matches!(&a[..], [Action::Stop { lookup: Lookup::Scan, .. }]), "{a:?}");
    let table = Arc::new(ProcTable::default());
    let a = t.step(Input::Shutdown(Lookup::Table(table)));
    assert!(matches!(&a[..], [Action::Stop { lookup: Lookup::Table(_), .. }]), "{a:?}");
}

#[tokio::test(start_paused = true)]
async fn stop_and_shutdown_during_backoff_after_a_death_scan_nothing() {
    let mut t = T::new(Limits { direct: true, ..limits() });
    let gen = t.starting();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![1], adopted: false } });
    let gen = start_gen(&t.step(Input::Gone { gen, pid: 1, exit: None })).unwrap();
    t.step(Input::Started { gen, outcome: StartOutcome::Running { pids: vec![2], adopted: false } });
    t.step(Input::Gone { gen, pid: 2, exit: None });
    assert!(matches!(t.m.phase, Phase::Backoff { known_absent: true, .. }));
    assert_eq!(answers(&t.clone_step(Input::Stop)), vec![Answer::Stop(None)]);
    let a = t.step(Input::Shutdown(Lookup::Scan));
    assert_eq!(a.len(), 1, "answered at once, no stop action, no scan: {a:?}");
    assert_eq!(t.state(), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn start_restart_and_configure_during_backoff_start_now() {
    for input in [Input::Start(Lookup::Scan), Input::Restart, Input::Configure { changed: true, start: true }] {
        let mut t = T::new(limits());
        t.backoff();
        assert!(start_gen(&t.step(input.clone())).is_some(), "{input:?}");
    }
    let mut t = T::new(limits());
    t.backoff();
    assert_eq!(answers(&t.step(Input::Configure { changed: true, start: false })), vec![Answer::Start(Ok(()))]);
    assert_eq!(t.state(), State::Backoff);
}

#[tokio::test(start_paused = true)]
async fn the_start_limit_gives_up() {
    let mut t = T::new(Limits { start_limit: 2, direct: true, ..limits() });
    let gen = t.starting();
    let a = t.step(Input::Started { gen, outcome: StartOutcome::Failed("x".into()) });
    let gen = start_gen(&a).unwrap();
    t.step(Input::Started { gen, outcome: StartOutcome::Failed("x".into()) });
    assert!(matches!(&t.m.phase, Phase::Failed { reason } if reason.contains("gave up after 2")));
    // Failed: start and restart try again from scratch; a stop looks for leftovers.
    assert!(start_gen(&t.clone_step(Input::Start(Lookup::Scan))).is_some());
    assert!(start_gen(&t.clone_step(Input::Restart)).is_some());
    assert!(start_gen(&t.clone_step(Input::Configure { changed: true, start: true })).is_some());
    assert!(matches!(&t.clone_step(Input::Stop)[..], [Action::Stop { lookup: Lookup::Scan, .. }]));
    assert_eq!(answers(&t.step(Input::Shutdown(Lookup::Scan))), vec![Answer::Stop(None)]);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_grows_to_its_cap() {
    let mut t = T::new(Limits { direct: true, ..limits() });
    let mut gen = t.starting();
    let mut waits = Vec::new();
    for _ in 0..12 {
        let a = t.step(Input::Started { gen, outcome: StartOutcome::Failed("x".into()) });
        gen = match start_gen(&a) {
            Some(g) => g,
            None => {
                let until = t.m.next_deadline().unwrap();
                waits.push(until - Instant::now());
                tokio::time::advance(until - Instant::now()).await;
                start_gen(&t.step(Input::Tick)).unwrap()
            }
        };
    }
    assert_eq!(waits.len(), 11, "only the first retry is immediate");
    assert!(waits[0] >= MS(80) && waits[0] <= MS(120), "{waits:?}");
    assert!(waits[1] >= MS(160) && waits[1] <= MS(240), "{waits:?}");
    assert!(waits.iter().all(|w| *w <= S(2)), "{waits:?}");
    assert!(waits[10] >= MS(1600), "stays near the cap: {waits:?}");
}

#[tokio::test(start_paused = true)]
async fn the_largest_durations_do_not_overflow() {
    let day = S(86_400);
    let l = Limits {
        start_timeout: day,
        backoff_base: day,
        backoff_max: day,
        backoff_reset: day,
        check: Some(CheckPlan { interval: day, start_interval: day, start_period: day, retries: u32::MAX }),
        ..limits()
    };
    let mut t = T::new(l);
    let gen = t.running();
    for _ in 0..3 {
        t.step(Input::Checked { gen, result: Err("x".into()) });
    }
    assert!(t.m.next_deadline().is_some());
    // And a deadline that could not be represented is "now", never a panic.
    assert_eq!(at(Instant::now(), Duration::MAX), Instant::now());
}
