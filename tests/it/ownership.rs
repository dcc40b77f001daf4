//! Owning every process (issue: one cgroup per service): services sharing a binary, programs that
//! fork and daemonise, survival of air-nanny's death, exit reasons. Each test runs in cgroup mode
//! where cgroup v2 is writable here (saying loudly when it is not) and always in the fallback mode
//! (`CGROUPS: off`).

use std::time::Duration;

use serde_json::json;

use crate::common::{alive, cgroups_here, kill9, wait_until, Fixture, StandInStore};

/// The modes to run a test in: config.yaml lines.
fn modes(test: &str) -> Vec<&'static str> {
    let mut m = vec!["CGROUPS: off\n"];
    if cgroups_here(test) {
        m.insert(0, "CGROUPS: required\n");
    }
    m
}

fn pids(v: &serde_json::Value) -> Vec<i32> {
    v["Pids"].as_array().unwrap().iter().filter_map(|p| p.as_i64()).map(|p| p as i32).collect()
}

#[test]
fn services_sharing_one_binary_each_own_their_process() {
    for mode in modes("shared binary") {
        let f = Fixture::with_config(mode);
        let bridge = f.program("bridge");
        let mut services = Vec::new();
        for (name, beat) in [("echo", "1"), ("echo2", "2")] {
            let mut s = f.direct_service(name, 0, &["--heartbeat", beat]);
            s["script"]["programFilePath"] = json!(bridge);
            services.push(s);
        }
        for (name, beat) in [("s1", "1"), ("s2", "2")] {
            let mut s = f.script_service(name, 1, false, &format!("--heartbeat {beat}"));
            s["script"]["programFilePath"] = json!(bridge);
            services.push(s);
        }
        f.write_services(&json!(services));
        let mut n = f.start();
        let mut owned = Vec::new();
        for name in ["echo", "echo2", "s1", "s2"] {
            let p = n.wait_running(name);
            assert_eq!(p.len(), 1, "{mode}{name}: {p:?}");
            owned.push(p[0] as i32);
        }
        let mut distinct = owned.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{mode}each service has its own process: {owned:?}");
        assert_eq!(f.pids_of("bridge").len(), 4, "{mode}four instances of the shared binary");

        // Stopping one never touches the other; neither does deleting one.
        n.ok("POST", "/task/stop?name=echo2", None);
        n.ok("DELETE", "/task/del?name=s2", None);
        wait_until("echo2 and s2 gone", Duration::from_secs(10), || {
            (!alive(owned[1] as i64) && !alive(owned[3] as i64)).then_some(())
        });
        assert!(alive(owned[0] as i64) && alive(owned[2] as i64), "{mode}echo and s1 untouched");
        assert_eq!(pids(&n.task("echo")), vec![owned[0]]);
        assert_eq!(pids(&n.task("s1")), vec![owned[2]]);

        // After a crash of air-nanny, each adopts exactly its own again; a start of echo2 starts
        // its own process instead of taking echo's.
        n.kill9();
        let n = f.start();
        assert_eq!(n.wait_running("echo"), vec![owned[0] as i64], "{mode}echo adopted its own");
        assert_eq!(n.wait_running("s1"), vec![owned[2] as i64], "{mode}s1 adopted its own");
        n.ok("POST", "/task/start?name=echo2", None);
        let p2 = n.wait_running("echo2");
        assert!(!p2.contains(&(owned[0] as i64)) && !p2.contains(&(owned[2] as i64)), "{mode}{p2:?}");
        assert_eq!(f.pids_of("bridge").len(), 3, "{mode}");
    }
}

/// The family of processes one service runs: the program, two workers (forks of the same binary)
/// and a daemon started the classic way (fork, setsid, fork, exec of another binary).
fn family(f: &Fixture, name: &str, script: bool) -> serde_json::Value {
    let other = f.program("detached");
    let daemon = f.root().join(other.trim_start_matches('/')).display().to_string();
    if script {
        f.script_service(name, 0, false, &format!("--workers 2 --daemon {daemon}"))
    } else {
        f.direct_service(name, 0, &["--workers", "2", "--daemon", &daemon])
    }
}

#[test]
fn every_process_of_a_service_is_in_pids_and_none_outlives_fifty_stops() {
    for mode in modes("fork and setsid") {
        let f = Fixture::with_config(mode);
        f.write_services(&json!([family(&f, "fam", false), family(&f, "sfam", true)]));
        let cgroups = mode.contains("required");
        for cycle in 0..50 {
            let mut n = f.start();
            for name in ["fam", "sfam"] {
                // The program, its two workers and the detached daemon, all running.
                wait_until(
                    &format!("{mode}cycle {cycle}: {name} with all its processes"),
                    Duration::from_secs(20),
                    || (n.task(name)["State"] == 2 && f.pids_of(name).len() == 3).then_some(()),
                );
                if cycle == 0 && cgroups {
                    // Pids are exactly the cgroup's members: program, workers and daemon.
                    wait_until(&format!("{name}: Pids are its cgroup's members"), Duration::from_secs(10), || {
                        let mut members = f.cgroup_members(name);
                        members.sort_unstable();
                        let p = pids(&n.task(name));
                        (p.len() == 4 && p == members).then_some(())
                    });
                }
            }
            wait_until(&format!("{mode}cycle {cycle}: both daemons"), Duration::from_secs(20), || {
                (f.pids_of("detached").len() == 2).then_some(())
            });
            let code = n.terminate().code();
            if code != Some(0) {
                let log = std::fs::read_to_string(f.path("nanny.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let fam = f.log("fam") + &f.log("sfam");
                let ftail: Vec<&str> = fam.lines().filter(|l| l.contains("[air-nanny]")).rev().take(20).collect();
                panic!(
                    "{mode}cycle {cycle}: not a clean stop ({code:?}):\n{}\n---\n{}",
                    tail.join("\n"),
                    ftail.join("\n")
                );
            }
            let left: Vec<i32> = ["fam", "sfam", "detached"].iter().flat_map(|p| f.pids_of(p)).collect();
            assert!(left.is_empty(), "{mode}cycle {cycle}: processes left after the stop: {left:?}");
            if cgroups {
                assert!(f.cgroup_members("fam").is_empty() && f.cgroup_members("sfam").is_empty());
            }
        }
    }
}

#[test]
fn a_chatty_program_survives_the_death_of_air_nanny_and_keeps_logging() {
    for mode in modes("chatty program") {
        let f = Fixture::with_config(mode);
        f.write_services(&json!([
            f.direct_service("chatty", 0, &["--heartbeat-ms", "10"]),
            f.script_service("schatty", 0, false, "--heartbeat-ms 10"),
        ]));
        let mut n = f.start();
        let before: Vec<i64> = ["chatty", "schatty"].iter().map(|s| n.wait_running(s)[0]).collect();
        n.kill9();
        // Output goes on while no air-nanny runs: the log grows with new heartbeats.
        for name in ["chatty", "schatty"] {
            let size = f.log(name).len();
            wait_until(&format!("{mode}{name} logging without air-nanny"), Duration::from_secs(10), || {
                (f.log(name).len() > size + 200).then_some(())
            });
        }
        let n = f.start();
        for (name, pid) in ["chatty", "schatty"].iter().zip(&before) {
            assert_eq!(n.wait_running(name), vec![*pid], "{mode}{name}: the same process, adopted");
            assert!(alive(*pid));
            let size = f.log(name).len();
            wait_until(&format!("{mode}{name} logging after the restart"), Duration::from_secs(10), || {
                (f.log(name).len() > size + 200).then_some(())
            });
            let last = f.log(name).lines().last().unwrap_or_default().to_string();
            assert!(last.contains("heartbeat"), "{mode}{name}: {last}");
        }
    }
}

/// The heartbeat numbers of `program` in `log`, in order.
fn heartbeats(log: &str, program: &str) -> Vec<u64> {
    let prefix = format!("{program}: heartbeat ");
    log.lines().filter_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).collect()
}

/// `LOG_OUTPUT: pipe` under a stand-in for systemd's file-descriptor store (the tests run without
/// systemd; `StandInStore` keeps what air-nanny sends with `FDSTORE=1` and hands it back at the
/// next start as systemd does, `LISTEN_FDS` from fd 3 with `LISTEN_FDNAMES`): a program writing
/// every 10 ms keeps its pid across a `kill -9` of air-nanny, what it writes meanwhile waits in the
/// pipe the store holds, and the next air-nanny copies it on — not one line lost.
#[test]
fn with_pipes_in_the_fd_store_a_chatty_programs_output_survives_a_crash_without_a_lost_line() {
    for mode in modes("pipe output") {
        let f = Fixture::with_config(&format!("{mode}LOG_OUTPUT: pipe\n"));
        let kept = json!([
            f.direct_service("chatty", 0, &["--heartbeat-ms", "10"]),
            f.script_service("schatty", 0, false, "--heartbeat-ms 10"),
        ]);
        let mut all = kept.as_array().unwrap().clone();
        all.push(f.direct_service("gone", 0, &["--heartbeat", "1"]));
        f.write_services(&json!(all));
        let store = StandInStore::new(f.path("notify.sock"));
        let env = store.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut n = f.start_with_env(&env);
        assert_eq!(n.ok("GET", "/health", None)["output"], "pipe", "{mode}");
        let before: Vec<i64> = ["chatty", "schatty"].iter().map(|s| n.wait_running(s)[0]).collect();
        wait_until(&format!("{mode}the three pipes in the store"), Duration::from_secs(10), || {
            (store.names() == ["out.chatty", "out.gone", "out.schatty"]).then_some(())
        });
        for name in ["chatty", "schatty"] {
            wait_until(&format!("{mode}{name}'s heartbeats in its log"), Duration::from_secs(10), || {
                (heartbeats(&f.log(name), name).len() > 5).then_some(())
            });
        }
        n.kill9();
        // Deleted while no air-nanny runs: its pipe is not claimed at the next start.
        f.write_services(&kept);
        // Nobody reads now: the output gathers in the pipes the store holds.
        for name in ["chatty", "schatty"] {
            wait_until(&format!("{mode}{name} writing while air-nanny is dead"), Duration::from_secs(10), || {
                (store.pending(&format!("out.{name}")) > 300).then_some(())
            });
        }
        // Handed back by a systemd that does not say `FDSTORE` (before 254): the pipes prove the
        // store, and are taken back all the same.
        let no_fdstore: Vec<(&'static str, String)> =
            store.env().into_iter().filter(|(k, _)| *k != "FDSTORE").collect();
        let n = f.start_handing_back_with(&store, no_fdstore);
        assert_eq!(n.ok("GET", "/health", None)["output"], "pipe", "{mode}");
        for (name, pid) in ["chatty", "schatty"].iter().zip(&before) {
            assert_eq!(n.wait_running(name), vec![*pid], "{mode}{name}: the same process, adopted");
            let at_restart = heartbeats(&f.log(name), name).last().copied().unwrap_or(0);
            let beats = wait_until(&format!("{mode}{name} logging after the restart"), Duration::from_secs(10), || {
                let b = heartbeats(&f.log(name), name);
                (b.last().copied().unwrap_or(0) > at_restart + 30).then_some(b)
            });
            let gaps: Vec<(u64, u64)> = beats.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| (w[0], w[1])).collect();
            assert!(gaps.is_empty(), "{mode}{name}: heartbeats lost between {gaps:?}");
        }
        // Taken back (one entry per pipe, as systemd keeps them); gone's removed from the store.
        wait_until(
            &format!("{mode}the store to hold chatty's and schatty's pipes only"),
            Duration::from_secs(10),
            || (store.names() == ["out.chatty", "out.schatty"]).then_some(()),
        );
        // A removed service's pipe leaves the store.
        n.ok("DELETE", "/task/del?name=schatty", None);
        wait_until(&format!("{mode}schatty's pipe out of the store"), Duration::from_secs(10), || {
            (store.names() == ["out.chatty"]).then_some(())
        });
    }
}

/// A service's whole log, oldest file first, with air-nanny's own notes cut out: a note lands
/// between two copies of the pipe, which may split one of the program's lines (the program's
/// bytes are all there, in order, around it).
fn program_output(f: &Fixture, service: &str, files: u32) -> String {
    let mut all = String::new();
    for i in (1..=files).rev() {
        all += &std::fs::read_to_string(f.path(&format!("conf/logs/{service}.log.{i}"))).unwrap_or_default();
    }
    all += &f.log(service);
    // A note: a 24-character timestamp, " [air-nanny] ", the message, a newline.
    while let Some(at) = all.find(" [air-nanny] ") {
        let end = all[at..].find('\n').map_or(all.len(), |e| at + e + 1);
        all.replace_range(at.saturating_sub(24)..end, "");
    }
    all
}

/// The same with a program that writes as fast as it can (a shell loop of numbered lines), so
/// that air-nanny is always in the middle of a copy when it is killed: four `kill -9`s, a rotation
/// or more on the way, and the lines are all in the log, each once, in order. A copy that reads
/// the pipe and then writes the file loses what it had read when the kill comes between the two.
#[test]
fn a_flood_of_output_survives_kill_9_after_kill_9_without_a_lost_or_doubled_line() {
    for mode in modes("pipe flood") {
        let f = Fixture::with_config(&format!("{mode}LOG_OUTPUT: pipe\nLOG_MAX_SIZE: 4194304\nLOG_MAX_FILES: 20\n"));
        f.write("root/bin/flood", "#!/bin/sh\ni=0\nwhile :; do echo \"flood $i\"; i=$((i+1)); done\n");
        std::fs::set_permissions(f.program_path("flood"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut flood = f.direct_service("flood", 0, &[]);
        flood["script"]["programFilePath"] = json!("/bin/flood");
        f.write_services(&json!([flood]));
        let store = StandInStore::new(f.path("notify.sock"));
        let env = store.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut n = f.start_with_env(&env);
        let pid = n.wait_running("flood")[0];
        wait_until(&format!("{mode}flood's pipe in the store"), Duration::from_secs(10), || {
            (store.names() == ["out.flood"]).then_some(())
        });
        let written = || -> u64 {
            let file = |i: u32| {
                f.path(&if i == 0 { "conf/logs/flood.log".into() } else { format!("conf/logs/flood.log.{i}") })
            };
            (0..=20).filter_map(|i| std::fs::metadata(file(i)).ok()).map(|m| m.len()).sum()
        };
        for kill in 0..4 {
            let size = written();
            wait_until(&format!("{mode}flood copied on ({kill})"), Duration::from_secs(20), || {
                (written() > size + (1 << 20)).then_some(())
            });
            n.kill9();
            wait_until(
                &format!("{mode}flood writing while air-nanny is dead ({kill})"),
                Duration::from_secs(10),
                || (store.pending("out.flood") > 64 * 1024).then_some(()),
            );
            n = f.start_handing_back(&store);
            assert_eq!(n.wait_running("flood"), vec![pid], "{mode}: the same process, adopted");
        }
        let size = written();
        wait_until(&format!("{mode}flood copied on at the end"), Duration::from_secs(20), || {
            (written() > size + (1 << 20)).then_some(())
        });
        n.terminate();
        assert!(f.path("conf/logs/flood.log.1").exists(), "{mode}: the log rotated on the way");
        let out = program_output(&f, "flood", 20);
        let mut expected = 0u64;
        for line in out.lines() {
            let got: u64 = line
                .strip_prefix("flood ")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{mode}: not a line of the program at line {expected}: {line:?}"));
            assert_eq!(got, expected, "{mode}: line {expected} is followed by {got} (lost or doubled)");
            expected += 1;
        }
        assert!(expected > 5 << 20 >> 4, "{mode}: only {expected} lines");
    }
}

/// systemd hands the store back from descriptor 3 on: with 62 pipes, 3…64 are theirs. air-nanny
/// keeps three low numbers for its children's descriptors (a child sharing its table keeps only
/// what is below them, see `spawn::Slots`); the pipes are moved out of the way first, so it still
/// gets them — it gave up (every child then copied the whole table) when they were higher than 63.
#[test]
fn sixty_two_pipes_handed_back_leave_the_low_descriptors_to_the_spawns() {
    let f = Fixture::with_config("CGROUPS: off\nLOG_OUTPUT: pipe\n");
    let names: Vec<String> = (0..62).map(|i| format!("p{i:02}")).collect();
    let services: Vec<_> = names
        .iter()
        .map(|name| {
            let mut s = f.direct_service(name, 0, &["--heartbeat", "3600"]);
            s["script"]["programFilePath"] = json!(f.program_linked("shared"));
            s
        })
        .collect();
    f.write_services(&json!(services));
    let store = StandInStore::new(f.path("notify.sock"));
    let env = store.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut n = f.start_with_env(&env);
    wait_until("the 62 pipes in the store", Duration::from_secs(20), || (store.names().len() == 62).then_some(()));
    n.kill9();
    let n = f.start_handing_back(&store);
    let pid = n.wait_running("p61")[0];
    assert_eq!(store.names().len(), 62);
    let log = std::fs::read_to_string(f.path("nanny.log")).unwrap();
    assert!(!log.contains("no low descriptor slots"), "{log}");
    // And a restart there works, its output in its log.
    kill9(pid);
    wait_until("p61 restarted", Duration::from_secs(10), || (n.pids("p61").first() != Some(&pid)).then_some(()));
    wait_until("p61's new run in its log", Duration::from_secs(10), || {
        (f.log("p61").matches("shared: started").count() >= 2).then_some(())
    });
}

/// A health check's processes are the service's too: what a check leaves behind — a background
/// child, or a daemon that left the check's process group with `setsid` — ends with the check
/// (with cgroups: the check runs in a cgroup of the service's checks, `chk-NAME`, emptied after
/// each check), instead of running on beside the service, one more at every interval. Without
/// cgroups see the next test.
#[test]
fn a_health_checks_leftovers_end_with_the_check() {
    if !cgroups_here("check leftovers") {
        return;
    }
    checks_leave_nothing("CGROUPS: required\n", &[("bg", false), ("escaped", true)]);
}

/// Without cgroups a check's process group ends with it: what it started in the background is
/// killed when the check exits, before its exit is collected (the check's zombie keeps the group's
/// id from being taken by another process). A child that left the group (`setsid`) is out of reach
/// in this mode (README, "Without cgroups").
#[test]
fn without_cgroups_a_checks_background_children_end_with_it() {
    checks_leave_nothing("CGROUPS: off\n", &[("bg", false)]);
}

/// A service whose check (every second) starts each of `leftovers` — programs installed here,
/// `(name, setsid)` — in the background and exits: after four checks at most the last check's are
/// alive (on their way out), not one per check, and none after the stop.
fn checks_leave_nothing(config: &str, leftovers: &[(&str, bool)]) {
    let f = Fixture::with_config(config);
    let marker = f.path("checks");
    let mut script = String::new();
    for &(name, setsid) in leftovers {
        f.program(name);
        let setsid = if setsid { "setsid " } else { "" };
        script += &format!("{setsid}{} --heartbeat 3600 </dev/null >/dev/null 2>&1 & ", f.program_path(name).display());
    }
    script += &format!("echo x >> {}; echo ok", marker.display());
    let mut s = f.direct_service("checked", 0, &["--heartbeat", "3600"]);
    s["healthCheck"] = json!({
        "isHealthCheck": true, "interval": 1, "timeout": 5, "start_period": 0, "retries": 3,
        "test": ["CMD-SHELL", script]
    });
    f.write_services(&json!([s]));
    let mut n = f.start();
    n.wait_running("checked");
    let checks = || std::fs::read_to_string(&marker).unwrap_or_default().lines().count();
    wait_until("four checks", Duration::from_secs(15), || (checks() >= 4).then_some(()));
    assert_eq!(n.task("checked")["LastCheck"]["Ok"], true);
    let most = |k: usize| leftovers.iter().all(|(name, _)| f.pids_of(name).len() <= k);
    wait_until("the checks' leftovers gone", Duration::from_secs(5), || most(1).then_some(()));
    assert!(!n.pids("checked").is_empty());
    n.terminate();
    wait_until("nothing of the checks after the stop", Duration::from_secs(5), || most(0).then_some(()));
}

/// `service` with a check that starts the program `bg` (installed here) in the background and
/// then takes 30 s: while it runs, `bg` is in the checks' cgroup.
fn with_a_long_check(f: &Fixture, mut service: serde_json::Value) -> serde_json::Value {
    f.program("bg");
    service["healthCheck"] = json!({
        "isHealthCheck": true, "interval": 1, "timeout": 60, "start_period": 0, "retries": 3,
        "test": ["CMD-SHELL", format!("{} --heartbeat 3600 </dev/null >/dev/null 2>&1 & sleep 30", f.program_path("bg").display())]
    });
    service
}

/// A service deleted while its check runs: the check and what it started end, and the checks'
/// cgroup goes with the service's.
#[test]
fn deleting_a_service_ends_its_running_check_and_removes_the_checks_cgroup() {
    if !cgroups_here("check of a deleted service") {
        return;
    }
    let f = Fixture::with_config("CGROUPS: required\n");
    f.write_services(&json!([with_a_long_check(&f, f.direct_service("checked", 0, &["--heartbeat", "3600"]))]));
    let n = f.start();
    n.wait_running("checked");
    wait_until("a check running", Duration::from_secs(10), || (!f.pids_of("bg").is_empty()).then_some(()));
    let dir = f.cgroup_dir().unwrap();
    assert!(dir.join("chk-checked").exists());
    n.ok("DELETE", "/task/del?name=checked", None);
    wait_until("the check's processes gone", Duration::from_secs(5), || f.pids_of("bg").is_empty().then_some(()));
    wait_until("both cgroups removed", Duration::from_secs(5), || {
        (!dir.join("chk-checked").exists() && !dir.join("svc-checked").exists()).then_some(())
    });
}

/// air-nanny killed in the middle of a check: what the check had started is found in the checks'
/// cgroup at the next start and ended there (here the check is no longer configured, so no later
/// check would end it).
#[test]
fn what_a_check_left_at_a_crash_is_ended_at_the_next_start() {
    if !cgroups_here("check leftovers at a crash") {
        return;
    }
    let f = Fixture::with_config("CGROUPS: required\n");
    let plain = f.direct_service("checked", 0, &["--heartbeat", "3600"]);
    f.write_services(&json!([with_a_long_check(&f, plain.clone())]));
    let mut n = f.start();
    let pid = n.wait_running("checked")[0];
    let left = wait_until("a check running", Duration::from_secs(10), || {
        let p = f.pids_of("bg");
        (!p.is_empty()).then_some(p)
    });
    n.kill9();
    assert!(alive(left[0] as i64));
    f.write_services(&json!([plain]));
    let n = f.start();
    assert_eq!(n.wait_running("checked"), vec![pid], "the program adopted");
    wait_until("the check's leftover ended", Duration::from_secs(5), || f.pids_of("bg").is_empty().then_some(()));
    let checks = f.cgroup_dir().unwrap().join("chk-checked");
    wait_until("the checks' cgroup removed", Duration::from_secs(5), || (!checks.exists()).then_some(()));
}

/// Without a store (no systemd, or none configured) a pipe would die with air-nanny and take its
/// writers with it (SIGPIPE): `LOG_OUTPUT: pipe` then keeps the files, and says so.
#[test]
fn pipe_output_without_a_store_keeps_the_files_and_says_so() {
    let f = Fixture::with_config("LOG_OUTPUT: pipe\n");
    f.write_services(&json!([f.direct_service("chatty", 0, &["--heartbeat-ms", "10"])]));
    let mut n = f.start();
    assert_eq!(n.ok("GET", "/health", None)["output"], "file");
    let pid = n.wait_running("chatty")[0];
    n.kill9();
    let size = f.log("chatty").len();
    wait_until("chatty logging without air-nanny", Duration::from_secs(10), || {
        (f.log("chatty").len() > size + 200).then_some(())
    });
    assert!(alive(pid));
    let log = std::fs::read_to_string(f.path("nanny.log")).unwrap();
    assert!(log.contains("LOG_OUTPUT: pipe needs systemd's file-descriptor store"), "{log}");
}

#[test]
fn a_start_script_that_starts_the_program_and_fails_never_leaves_two() {
    for mode in modes("failing start script") {
        let f = Fixture::with_config(mode);
        let mut svc = f.script_service("twice", 0, false, "");
        // The program detaches from the script's process group (setsid), then the script fails.
        svc["script"]["execPath"] =
            json!(f.script_with("twice", "setsid \"$AIR_NANNY_PROGRAM\" </dev/null & exit 1", "exit 0"));
        f.write_services(&json!([svc]));
        let n = f.start();
        // Fifty tries: the operator's starts (each runs the script at once, whatever the backoff)
        // besides the engine's own retries.
        for i in 0..50 {
            let (status, v) = n.call("POST", "/task/start?name=twice", None);
            assert_ne!(status, 0, "{v}");
            let running = f.pids_of("twice");
            assert!(running.len() <= 1, "{mode}try {i}: {} instances: {running:?}", running.len());
        }
        let faults = n.task("twice")["StartFaultNum"].as_u64().unwrap();
        let log = f.log("twice");
        let notes: Vec<&str> = log.lines().filter(|l| l.contains("[air-nanny]")).rev().take(30).collect();
        let notes = notes.join("\n");
        if mode.contains("required") {
            // Each failed start's cgroup is emptied: every try is a real start that fails.
            assert!(faults >= 50, "{mode}{faults} failed starts:\n{notes}");
        } else {
            // The detached program escapes the failed start's process group; the next try finds
            // and adopts it instead of starting a second one.
            assert!(faults >= 1, "{mode}{faults} failed starts:\n{notes}");
        }
    }
}

/// A launcher that leaves the start command's process group and execs the program a moment later
/// (setup first, as real launchers do), from a start command that then fails: the retry's look
/// must not run before the launch has become the program, or it starts a second one.
#[test]
fn a_late_exec_after_a_failed_start_is_adopted_not_started_again() {
    for mode in modes("late exec after a failed start") {
        let f = Fixture::with_config(mode);
        let mut svc = f.script_service("late", 0, false, "");
        svc["script"]["execPath"] = json!(f.script_with(
            "late",
            "setsid sh -c 'sleep 0.3; exec \"$AIR_NANNY_PROGRAM\" --heartbeat 1' </dev/null & sleep 0.1; exit 1",
            "exit 0"
        ));
        f.write_services(&json!([svc]));
        let n = f.start();
        for i in 0..10 {
            let (status, v) = n.call("POST", "/task/start?name=late", None);
            assert_ne!(status, 0, "{v}");
            // Long enough for a launch in flight to exec: a second instance would show.
            let deadline = std::time::Instant::now() + Duration::from_millis(600);
            while std::time::Instant::now() < deadline {
                let running = f.pids_of("late");
                assert!(running.len() <= 1, "{mode}try {i}: {} instances: {running:?}", running.len());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn kill_9_of_a_script_mode_program_is_its_last_exit() {
    for mode in modes("LastExit in script mode") {
        let f = Fixture::with_config(mode);
        f.write_services(&json!([f.script_service("victim", 0, false, "")]));
        let n = f.start();
        let pid = n.wait_running("victim")[0];
        kill9(pid);
        let t = wait_until(&format!("{mode}a new run"), Duration::from_secs(10), || {
            let t = n.task("victim");
            (t["State"] == 2 && !pids(&t).contains(&(pid as i32))).then_some(t)
        });
        let last = t["LastExit"].as_str().unwrap_or_default().to_string();
        assert!(last.contains("SIGKILL"), "{mode}LastExit: {last:?}");
        let h = n.ok("GET", "/health", None);
        let want = if mode.contains("off") { "fallback" } else { "cgroup" };
        assert_eq!(h["ownership"], want);
    }
}

#[test]
fn a_cgroup_left_by_a_removed_service_is_stopped_at_start() {
    if !cgroups_here("orphan cgroup") {
        return;
    }
    let f = Fixture::with_config("CGROUPS: required\n");
    f.write_services(&json!([f.direct_service("gone", 0, &[])]));
    let mut n = f.start();
    let pid = n.wait_running("gone")[0];
    // Deleted from services.json by hand, then air-nanny crashes: the program runs on unseen.
    n.kill9();
    f.write_services(&json!([]));
    assert!(alive(pid));
    let n = f.start();
    wait_until("the orphan stopped", Duration::from_secs(10), || (!alive(pid)).then_some(()));
    f.wait_log("no longer configured", Duration::from_secs(5));
    let dir = f.cgroup_dir().unwrap().join("svc-gone");
    wait_until("its cgroup removed", Duration::from_secs(10), || (!dir.exists()).then_some(()));
    drop(n);
}

/// A deleted service's cgroup goes with it; a shutdown leaves the services' cgroups, empty, and
/// the next start uses them again: nothing is adopted from them, the program starts anew in it.
#[test]
fn a_deleted_services_cgroup_is_removed_and_a_shutdown_leaves_the_others_empty_for_the_next_start() {
    if !cgroups_here("cgroup removal") {
        return;
    }
    let f = Fixture::with_config("CGROUPS: required\n");
    f.write_services(&json!([f.direct_service("kept", 0, &[]), f.direct_service("dropped", 0, &[])]));
    let mut n = f.start();
    let old = n.wait_running("kept");
    n.wait_running("dropped");
    let dir = f.cgroup_dir().unwrap();
    assert!(dir.join("svc-dropped").is_dir());
    n.ok("DELETE", "/task/del?name=dropped", None);
    wait_until("the deleted service's cgroup removed", Duration::from_secs(10), || {
        (!dir.join("svc-dropped").exists()).then_some(())
    });
    assert!(n.terminate().success());
    assert!(dir.join("svc-kept").is_dir(), "a shutdown keeps the services' cgroups");
    assert!(f.cgroup_members("kept").is_empty(), "and nothing is left in them");
    assert!(!alive(old[0]));
    let n = f.start();
    let new = n.wait_running("kept");
    assert_ne!(new, old);
    assert_eq!(f.cgroup_members("kept"), vec![new[0] as i32], "the new program runs in the kept cgroup");
    assert!(!f.log("kept").contains("adopted"), "{}", f.log("kept"));
}
