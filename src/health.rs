//! Health probes with Docker HEALTHCHECK semantics: run one check, bounded by its timeout. The
//! schedule (interval, start_period, retries) is the service task's; a probe only answers once.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::cgroup::ServiceCgroup;
use crate::config::{Probe, Resolved};
use crate::http::{parse_socket_addr, Client, HttpError, Url, Want};
use crate::logfile::ServiceLog;
use crate::reaper::Reaper;

/// What one check found: `Ok` is healthy, `Err` says why not; `output` is the start of what a
/// command check printed (for an HTTP or TCP check, what it found).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub result: Result<(), String>,
    pub output: String,
}

impl Outcome {
    fn failed(reason: String) -> Outcome {
        Outcome { result: Err(reason), output: String::new() }
    }

    fn of(result: Result<(), String>, output: String) -> Outcome {
        Outcome { result, output }
    }
}

/// Runs one check of `probe` (never [`Probe::ProcessAlive`], which the service task answers from
/// its own pids). A command check's output goes to the service log, and its start is kept in the
/// outcome. A check that outlives `timeout` is killed and fails. Whatever a command check leaves
/// is killed when it ends — exits, times out, or is cancelled: its process group, and with
/// `cgroup` (the service's checks' cgroup, where the check then runs) everything in that cgroup
/// (`cgroup.kill`), a `setsid` daemon of the check included; without, a child that left the
/// check's process group runs on. CMD and CMD-SHELL checks run in the service's working
/// directory, a CMD check's program as resolved (what the allow-list checked is what runs).
///
/// What a remote port answered is never echoed into the reason (checks set over the API would
/// otherwise read other services' banners into `/task/logs`): only the status, or the kind of error.
pub async fn check(
    probe: &Probe,
    timeout: Duration,
    reaper: &Reaper,
    log: &ServiceLog,
    paths: &Resolved,
    cgroup: Option<&ServiceCgroup>,
) -> Outcome {
    match probe {
        Probe::ProcessAlive => Outcome::of(Ok(()), String::new()),
        Probe::Cmd(argv) => {
            let mut cmd = match &paths.check_program {
                Some(resolved) => Command::new(resolved),
                None => Command::new(&argv[0]),
            };
            cmd.args(&argv[1..]).current_dir(&paths.work_dir);
            run_command(cmd, timeout, reaper, log, cgroup).await
        }
        Probe::Shell(script) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script).current_dir(&paths.work_dir);
            run_command(cmd, timeout, reaper, log, cgroup).await
        }
        Probe::Http(url) => {
            let result = http_check(url, timeout).await;
            let output = match &result {
                Ok(status) => format!("HTTP {status}"),
                Err(e) => e.clone(),
            };
            Outcome::of(result.map(|_| ()), output)
        }
        Probe::Tcp(addr) => {
            let result = tcp_check(addr, timeout).await;
            let output = match &result {
                Ok(()) => format!("connected to {addr}"),
                Err(e) => e.clone(),
            };
            Outcome::of(result, output)
        }
    }
}

/// The status of a 2xx answer, or why the check failed.
async fn http_check(url: &str, timeout: Duration) -> Result<u16, String> {
    let u = Url::parse(url).map_err(|e| e.to_string())?;
    let target = u.probe_target()?;
    match Client::plain().want(Want::Status).probe(target, &u, timeout).await {
        Ok(r) if (200..300).contains(&r.status) => Ok(r.status),
        Ok(r) => Err(format!("GET {url} answered {}", r.status)),
        Err(HttpError::Malformed { .. }) => Err(format!("GET {url}: the answer is not an HTTP response")),
        Err(HttpError::Timeout(_)) => Err(format!("GET {url}: no answer within {}s", timeout.as_secs())),
        Err(HttpError::Connect { source, .. }) | Err(HttpError::Io { source, .. }) => {
            Err(format!("GET {url}: {}", io_kind(&source)))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn tcp_check(addr: &str, timeout: Duration) -> Result<(), String> {
    let target = parse_socket_addr(addr)?;
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {target}: {}", io_kind(&e))),
        Err(_) => Err(format!("connect to {target} timed out after {}s", timeout.as_secs())),
    }
}

/// An I/O error as its kind only ("connection refused"), never with text from the other end.
fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => format!("{:?}", e.kind()),
    }
}

/// How much of a check's output is read (and copied into the service log); the rest is drained.
const OUTPUT_READ_MAX: usize = 64 * 1024;
/// How long output is still read after the check's process has exited (a background child of
/// the check may hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// Kills what is left of a check when the check ends, however it ends (the future may be dropped:
/// the service stops, its run ends): whatever is in the checks' cgroup, and the check's process
/// group while the check is not collected yet (once it is, the reaper has killed that group:
/// [`crate::reaper::Life::Check`]).
struct Leftovers<'a> {
    cgroup: Option<&'a ServiceCgroup>,
    group: Option<(&'a Reaper, i32)>,
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        if let Some((reaper, pid)) = self.group {
            reaper.kill_group(pid);
        }
        if let Some(cg) = self.cgroup {
            if let Err(e) = cg.kill_if_populated() {
                tracing::warn!(cgroup = %cg.dir().display(), "cannot end what a check left: {e}");
            }
        }
    }
}

async fn run_command(
    mut cmd: Command,
    timeout: Duration,
    reaper: &Reaper,
    log: &ServiceLog,
    cgroup: Option<&ServiceCgroup>,
) -> Outcome {
    use tokio::io::AsyncReadExt;
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return Outcome::failed(format!("cannot capture output: {e}")),
    };
    if let Some(cg) = cgroup {
        if let Err(e) = cg.create() {
            return Outcome::failed(format!("cannot make the checks' cgroup {}: {e}", cg.dir().display()));
        }
    }
    let mut leftovers = Leftovers { cgroup, group: None };
    let spawned = match cgroup {
        Some(cg) => {
            // Output into the pipe (stdout and stderr), stdin on /dev/null, born in the cgroup.
            reaper.launch_into(cmd, write_end, cg, None, crate::reaper::Life::Check).await
        }
        None => {
            let err = match write_end.try_clone() {
                Ok(e) => e,
                Err(e) => return Outcome::failed(format!("cannot capture output: {e}")),
            };
            cmd.stdin(Stdio::null()).stdout(write_end).stderr(err);
            let spawned = reaper.spawn(&mut cmd, crate::reaper::Life::Check);
            // The parent's write ends close here: the pipe ends when the check (and its children) do.
            drop(cmd);
            spawned
        }
    };
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("cannot run the check: {e}")),
    };
    leftovers.group = Some((reaper, spawned.pid));
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::debug!("check output: {e}");
            None
        }
    };
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    let mut exit = spawned.exit;
    let mut status = None;
    let mut until = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            read = async { rx.as_mut().expect("guarded").read(&mut buf).await }, if rx.is_some() => match read {
                Ok(0) | Err(_) => rx = None,
                Ok(n) => {
                    let keep = n.min(OUTPUT_READ_MAX.saturating_sub(output.len()));
                    output.extend_from_slice(&buf[..keep]);
                }
            },
            e = &mut exit, if status.is_none() => {
                status = Some(e);
                until = until.min(tokio::time::Instant::now() + OUTPUT_GRACE);
            }
            _ = tokio::time::sleep_until(until) => {
                if status.is_none() {
                    // Killed with its group by `leftovers` as this returns.
                    log.append(&output);
                    return Outcome {
                        result: Err(format!("check timed out after {}s and was killed", timeout.as_secs())),
                        output: head(&output),
                    };
                }
                break;
            }
        }
        if rx.is_none() && status.is_some() {
            break;
        }
    }
    log.append(&output);
    let result = match status {
        Some(Ok(exit)) if exit.success() => Ok(()),
        Some(Ok(exit)) => Err(format!("check {exit}")),
        _ => Err("check's exit was lost".into()),
    };
    Outcome { result, output: head(&output) }
}

/// The first [`crate::events::OUTPUT_MAX`] bytes of a check's output, as text.
fn head(output: &[u8]) -> String {
    let cut = &output[..output.len().min(crate::events::OUTPUT_MAX)];
    String::from_utf8_lossy(cut).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn here() -> Resolved {
        Resolved {
            script: None,
            program: PathBuf::from("/bin/true"),
            work_dir: PathBuf::from("/"),
            check_program: None,
        }
    }

    #[tokio::test]
    async fn probes_answer() {
        let reaper = Reaper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "t", 1 << 20, 1);
        let t = Duration::from_secs(5);
        assert!(check(&Probe::Shell("exit 0".into()), t, &reaper, &log, &here(), None).await.result.is_ok());
        let e = check(&Probe::Cmd(vec!["false".into()]), t, &reaper, &log, &here(), None).await.result.unwrap_err();
        assert!(e.contains("exit status 1"), "{e}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(check(&Probe::Tcp(addr.clone()), t, &reaper, &log, &here(), None).await.result.is_ok());
        drop(listener);
        assert!(check(&Probe::Tcp(addr), t, &reaper, &log, &here(), None).await.result.is_err());
    }

    #[tokio::test]
    async fn http_probe_wants_2xx() {
        let reaper = Reaper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "t", 1 << 20, 1);
        let serve = |status: &'static str| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/health", l.local_addr().unwrap());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut c, _) = l.accept().unwrap();
                let _ = c.read(&mut [0u8; 1024]);
                let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            });
            url
        };
        let t = Duration::from_secs(5);
        assert!(check(&Probe::Http(serve("204 No Content")), t, &reaper, &log, &here(), None).await.result.is_ok());
        let e = check(&Probe::Http(serve("503 Busy")), t, &reaper, &log, &here(), None).await.result.unwrap_err();
        assert!(e.contains("answered 503"), "{e}");
    }

    #[tokio::test]
    async fn a_command_checks_output_is_kept_and_logged() {
        let reaper = Reaper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "t", 1 << 20, 1);
        let t = Duration::from_secs(5);
        let o = check(&Probe::Shell("echo disk full >&2; exit 3".into()), t, &reaper, &log, &here(), None).await;
        assert_eq!(o.result, Err("check exit status 3".into()));
        assert_eq!(o.output, "disk full", "stderr is captured");
        // Long output: the first 512 bytes are kept, all of it (up to 64 KiB) reaches the log.
        let o = check(&Probe::Shell("yes abcdefgh | head -c 20000".into()), t, &reaper, &log, &here(), None).await;
        assert!(o.result.is_ok());
        assert_eq!(o.output.len(), crate::events::OUTPUT_MAX);
        let logged = std::fs::read_to_string(log.path()).unwrap();
        assert!(logged.contains("disk full") && logged.len() >= 20000, "{}", logged.len());
        // A background child holding the pipe open does not hold the check past its exit.
        let started = std::time::Instant::now();
        let o = check(&Probe::Shell("echo ok; sleep 5 &".into()), t, &reaper, &log, &here(), None).await;
        assert_eq!((o.result, o.output.as_str()), (Ok(()), "ok"));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let o = check(&Probe::Tcp(addr.clone()), t, &reaper, &log, &here(), None).await;
        assert_eq!(o.output, format!("connected to {addr}"));
    }

    #[tokio::test]
    async fn a_hanging_check_is_killed_with_its_group() {
        let reaper = Reaper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "t", 1 << 20, 1);
        let marker = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let e = check(&Probe::Shell(script), Duration::from_millis(300), &reaper, &log, &here(), None)
            .await
            .result
            .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(crate::process::wait_all_exit(&[pid], deadline).await, "the check's own child must die too");
    }
}
