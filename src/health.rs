//! Health probes with Docker HEALTHCHECK semantics: run one check, bounded by its timeout. The
//! schedule (interval, start_period, retries) is the service task's; a probe only answers once.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;

use crate::config::{Probe, Resolved};
use crate::http::{parse_socket_addr, Client, HttpError, Url, Want};
use crate::logfile::ServiceLog;
use crate::process;
use crate::reaper::Reaper;

/// Runs one check of `probe` (never [`Probe::ProcessAlive`], which the service task answers from
/// its own pids). `Ok` is healthy; `Err` says why not. A check that outlives `timeout` is killed
/// with its whole process group and fails. CMD and CMD-SHELL checks run in the service's working
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
) -> Result<(), String> {
    match probe {
        Probe::ProcessAlive => Ok(()),
        Probe::Cmd(argv) => {
            let mut cmd = match &paths.check_program {
                Some(resolved) => Command::new(resolved),
                None => Command::new(&argv[0]),
            };
            cmd.args(&argv[1..]).current_dir(&paths.work_dir);
            run_command(cmd, timeout, reaper, log).await
        }
        Probe::Shell(script) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script).current_dir(&paths.work_dir);
            run_command(cmd, timeout, reaper, log).await
        }
        Probe::Http(url) => {
            let u = Url::parse(url).map_err(|e| e.to_string())?;
            let target = u.probe_target()?;
            match Client::plain().want(Want::Status).probe(target, &u, timeout).await {
                Ok(r) if (200..300).contains(&r.status) => Ok(()),
                Ok(r) => Err(format!("GET {url} answered {}", r.status)),
                Err(HttpError::Malformed { .. }) => Err(format!("GET {url}: the answer is not an HTTP response")),
                Err(HttpError::Timeout(_)) => Err(format!("GET {url}: no answer within {}s", timeout.as_secs())),
                Err(HttpError::Connect { source, .. }) | Err(HttpError::Io { source, .. }) => {
                    Err(format!("GET {url}: {}", io_kind(&source)))
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Probe::Tcp(addr) => {
            let target = parse_socket_addr(addr)?;
            match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect to {target}: {}", io_kind(&e))),
                Err(_) => Err(format!("connect to {target} timed out after {}s", timeout.as_secs())),
            }
        }
    }
}

/// An I/O error as its kind only ("connection refused"), never with text from the other end.
fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => format!("{:?}", e.kind()),
    }
}

async fn run_command(mut cmd: Command, timeout: Duration, reaper: &Reaper, log: &ServiceLog) -> Result<(), String> {
    let out = log.output().map_err(|e| format!("cannot capture output: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("cannot capture output: {e}"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let spawned = reaper.spawn(&mut cmd).map_err(|e| format!("cannot run the check: {e}"))?;
    drop(cmd);
    match tokio::time::timeout(timeout, spawned.exit).await {
        Ok(Ok(exit)) if exit.success() => Ok(()),
        Ok(Ok(exit)) => Err(format!("check {exit}")),
        Ok(Err(_)) => Err("check's exit was lost".into()),
        Err(_) => {
            process::signal_group(spawned.pid, Signal::SIGKILL);
            Err(format!("check timed out after {}s and was killed", timeout.as_secs()))
        }
    }
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
        assert!(check(&Probe::Shell("exit 0".into()), t, &reaper, &log, &here()).await.is_ok());
        let e = check(&Probe::Cmd(vec!["false".into()]), t, &reaper, &log, &here()).await.unwrap_err();
        assert!(e.contains("exit status 1"), "{e}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(check(&Probe::Tcp(addr.clone()), t, &reaper, &log, &here()).await.is_ok());
        drop(listener);
        assert!(check(&Probe::Tcp(addr), t, &reaper, &log, &here()).await.is_err());
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
        assert!(check(&Probe::Http(serve("204 No Content")), t, &reaper, &log, &here()).await.is_ok());
        let e = check(&Probe::Http(serve("503 Busy")), t, &reaper, &log, &here()).await.unwrap_err();
        assert!(e.contains("answered 503"), "{e}");
    }

    #[tokio::test]
    async fn a_hanging_check_is_killed_with_its_group() {
        let reaper = Reaper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "t", 1 << 20, 1);
        let marker = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let e = check(&Probe::Shell(script), Duration::from_millis(300), &reaper, &log, &here()).await.unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(process::wait_all_exit(&[pid], deadline).await, "the check's own child must die too");
    }
}
