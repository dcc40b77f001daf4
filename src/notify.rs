//! systemd notifications (sd_notify) written by hand over `NOTIFY_SOCKET`: readiness once the boot
//! order has completed, watchdog pings from the supervisor's loop, the `STATUS=` summary kept
//! current, and STOPPING at shutdown.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=…`); does nothing when
/// not run by systemd with `Type=notify`.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send_to(&path, state) {
        tracing::debug!("sd_notify {state:?} failed: {e}");
    }
}

/// Never waits: a listener that does not read (its queue full) must not stop the supervisor's
/// thread. The notification is then dropped; the next `STATUS=` carries the whole summary again.
fn send_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        send_abstract(&sock, abstract_name, state)
    } else {
        sock.send_to(state.as_bytes(), path)
    }
}

fn send_abstract(sock: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr)
}

/// Sends one notification with a descriptor (`FDSTORE=1`, SCM_RIGHTS) to systemd's socket. Never
/// waits (see `send_to`): a message the socket cannot take now is an error, to be sent again.
pub fn send_with_fd(state: &str, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let path = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "NOTIFY_SOCKET is not set"))?;
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(bytes)?,
    };
    let sock = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(state.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&addr),
    )?;
    if sent != state.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "notification cut short"));
    }
    Ok(())
}

/// Whether systemd listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Half of systemd's `WatchdogSec` when it asks for pings (`WATCHDOG_USEC`, for this pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        send("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_listener_that_does_not_read_never_blocks_the_sender() {
        // The benchmark's listener stopped reading after READY=1; STATUS= lines then filled its
        // queue and a blocking send hung air-nanny's only runtime thread.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _server = UnixDatagram::bind(&path).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let mut dropped = 0;
            for i in 0..1000 {
                if send_to(p.as_os_str(), &format!("STATUS={i}/1000 running")).is_err() {
                    dropped += 1;
                }
            }
            done.send(dropped).unwrap();
        });
        let dropped = finished.recv_timeout(Duration::from_secs(20)).expect("sending must not block");
        assert!(dropped > 0, "a full queue is reported as an error, not waited out");
    }
}
