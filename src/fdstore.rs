//! `LOG_OUTPUT: pipe`: each service's scripts and programs write into a pipe that air-nanny copies
//! into the service's log, and the pipe's read end is kept in systemd's file-descriptor store
//! (`FDSTORE=1`). When air-nanny dies, the store still holds a reader: no program gets SIGPIPE, what
//! it writes waits in the pipe (up to [`PIPE_BYTES`]; a program writing more then waits), and the
//! next air-nanny, handed the read ends back (`LISTEN_FDS`), copies it on — nothing is lost: the
//! copy is a `splice` from the pipe to the file ([`ServiceLog::copy_from`]), so no byte is ever in
//! air-nanny's memory alone when it is killed.
//! Without a store (no systemd, or `FileDescriptorStoreMax=` unset) the output stays direct to the
//! files: a pipe nobody else holds would kill its writers with its reader.
//!
//! This module owns the pipes: one per service name, shared by the service's tasks (a service
//! removed and added again while its old task still stops), created or taken back at the task's
//! start ([`attach`]) and dropped — removed from the store when the service was removed — at its
//! end ([`detach`]).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;

use crate::config::LogOutput;
use crate::logfile::ServiceLog;

/// What a pipe holds while nobody reads it (air-nanny restarting): 1 MiB.
pub const PIPE_BYTES: i32 = 1 << 20;
/// Reads of [`READ_CHUNK`] bytes per wake-up at most: a chatty program cannot hold up the thread
/// that supervises (128 KiB, then the others run).
const READS_PER_WAKE: usize = 8;
const READ_CHUNK: usize = 16 * 1024;
/// Reads that empty a full pipe.
const DRAIN_READS: usize = PIPE_BYTES as usize / READ_CHUNK + 1;
/// Environment variables of the descriptors passed at start, removed once read.
const LISTEN_VARS: [&str; 4] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID"];

/// One service's pipe: the write end children get (a copy each), the read end air-nanny copies
/// from and systemd keeps.
pub struct Pipe {
    fdname: String,
    write: OwnedFd,
    read: Arc<AsyncFd<OwnedFd>>,
    /// systemd has the read end.
    stored: AtomicBool,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Pipe {
    /// A new pipe: blocking for its writers, non-blocking for air-nanny, [`PIPE_BYTES`] large.
    fn fresh(fdname: String) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills two new descriptors, which we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; a refusal (pipe-max-size) keeps the default 64 KiB.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        Pipe::of(fdname, read, write, false)
    }

    /// The pipe whose read end systemd handed back: a write end is opened anew through /proc (a
    /// pipe opens like a FIFO, at once since we hold a reader).
    fn handed_back(fdname: String, read: OwnedFd) -> io::Result<Pipe> {
        let write = std::fs::OpenOptions::new().write(true).open(format!("/proc/self/fd/{}", read.as_raw_fd()))?;
        Pipe::of(fdname, read, write.into(), true)
    }

    fn of(fdname: String, read: OwnedFd, write: OwnedFd, stored: bool) -> io::Result<Pipe> {
        set_nonblocking(read.as_fd())?;
        // SAFETY: the AsyncFd owns the read end for its whole life; nothing closes it elsewhere
        // (systemd holds a duplicate, not this descriptor).
        let read = unsafe { AsyncFd::register_with_interest(read, tokio::io::Interest::READABLE) }?;
        Ok(Pipe { fdname, write, read: Arc::new(read), stored: AtomicBool::new(stored), reader: Mutex::new(None) })
    }

    /// A descriptor of the write end for a child's stdout and stderr. A read end systemd did not
    /// take yet (its socket was full) is offered again first.
    pub fn writer(&self) -> io::Result<OwnedFd> {
        if !self.stored.load(Ordering::Relaxed) {
            self.store();
        }
        self.write.try_clone()
    }

    fn store(&self) {
        // FDPOLL=0: kept also when every writer has gone (what they wrote last is still in it).
        let msg = format!("FDSTORE=1\nFDNAME={}\nFDPOLL=0", self.fdname);
        match crate::notify::send_with_fd(&msg, self.read.get_ref().as_fd()) {
            Ok(()) => self.stored.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(
                fdname = %self.fdname,
                "cannot hand a service's pipe to systemd's file-descriptor store ({e}); tried again at its next start"
            ),
        }
    }
}

/// The pipes in use, by FDNAME, and the read ends handed back at start not yet claimed.
struct Registry {
    live: HashMap<String, Entry>,
    handed_back: HashMap<String, OwnedFd>,
}

struct Entry {
    service: String,
    pipe: Arc<Pipe>,
    users: usize,
}

/// `None` outside pipe mode: then [`attach`] and [`detach`] do nothing.
static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// What [`take_handed_back`] found, until [`init`].
static HANDED_BACK: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// The name a service's pipe has in the store: `out.NAME`, or for a name that is not plain ASCII
/// (the store's names are printable ASCII without `:`), `out#` and a 64-bit hash of it.
pub fn fdname(service: &str) -> String {
    if service.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        format!("out.{service}")
    } else {
        // FNV-1a: stable across builds and architectures (the name must match after an upgrade).
        let hash =
            service.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("out#{hash:016x}")
    }
}

/// Takes the descriptors systemd passed to this process (`LISTEN_FDS` from fd 3, named by
/// `LISTEN_FDNAMES`) and removes the variables, so no child sees them. Call it before any other
/// thread exists (it changes the environment); [`init`] decides what they are for.
pub fn take_handed_back() {
    let get = |v: &str| std::env::var(v).ok();
    let listed = parse_listen(
        get("LISTEN_PID").as_deref(),
        get("LISTEN_FDS").as_deref(),
        get("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for v in LISTEN_VARS {
        if std::env::var_os(v).is_some() {
            std::env::remove_var(v);
        }
    }
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("ignoring the descriptors systemd passed: {e}");
            return;
        }
    };
    let mut taken = HANDED_BACK.lock().expect("handed-back descriptors");
    for (name, fd) in listed {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours) and nothing
        // else in air-nanny takes it; from here on it is owned, and not inherited by children.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        taken.push((name, out_of_the_low_numbers(fd)));
    }
}

/// `fd` at a number of [`crate::spawn::SLOTS_BELOW`] or more, close-on-exec. systemd passes the
/// store from 3 on; the low numbers are for the three that spawns keep (taken next, see
/// `spawn::reserve_slots`): with 61 pipes or more in the way they were found no lower than 64,
/// and every child then got a copy of the whole table. Where no higher number can be had, `fd`
/// stays where it is.
fn out_of_the_low_numbers(fd: OwnedFd) -> OwnedFd {
    // SAFETY: fcntl on a descriptor we own; a new one is owned by the OwnedFd made of it.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, crate::spawn::SLOTS_BELOW) };
    if high < 0 {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        return fd;
    }
    // SAFETY: F_DUPFD_CLOEXEC just made it; `fd` is closed as it drops.
    unsafe { OwnedFd::from_raw_fd(high) }
}

/// The descriptors of `LISTEN_FDS` (3…) with their names, when `LISTEN_PID` is `me`.
fn parse_listen(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Vec<(String, RawFd)>, String> {
    let (Some(pid), Some(count)) = (pid, count) else { return Ok(Vec::new()) };
    let pid: u32 = pid.parse().map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != me {
        return Ok(Vec::new());
    }
    let count: u16 = count.parse().map_err(|_| format!("LISTEN_FDS={count:?} is not a count (0-65535)"))?;
    let mut names = names.unwrap_or_default().split(':');
    Ok((0..count).map(|i| (names.next().unwrap_or("unknown").to_string(), 3 + RawFd::from(i))).collect())
}

/// Whether systemd keeps descriptors for air-nanny: it says so in `$FDSTORE` (the unit's
/// `FileDescriptorStoreMax=`; systemd 254 and later set it, the packaged unit sets it for older
/// ones) besides `NOTIFY_SOCKET`.
pub fn store_size() -> Option<u64> {
    let n: u64 = std::env::var("FDSTORE").ok()?.trim().parse().ok()?;
    (n > 0 && crate::notify::enabled()).then_some(n)
}

/// Sets the output up at start, for `services`: in pipe mode with a store, the pipes of the
/// services (read ends handed back matched by name); descriptors handed back that no service
/// claims are removed from the store.
pub fn init(mode: LogOutput, services: &[String]) {
    let mut handed_back: HashMap<String, OwnedFd> = HashMap::new();
    for (name, fd) in std::mem::take(&mut *HANDED_BACK.lock().expect("handed-back descriptors")) {
        match is_pipe_read_end(fd.as_fd()) {
            true if mode == LogOutput::Pipe => {
                handed_back.insert(name, fd);
            }
            _ => forget(&name),
        }
    }
    if mode == LogOutput::File {
        return;
    }
    // Pipes handed back prove a store even where $FDSTORE does not say so (systemd before 254
    // without the unit's Environment= line): dropping them would leave their writers blocked.
    let proven = !handed_back.is_empty() && crate::notify::enabled();
    let size = store_size();
    if size.is_none() && !proven {
        tracing::warn!(
            "LOG_OUTPUT: pipe needs systemd's file-descriptor store (FileDescriptorStoreMax= in the unit, \
             and $FDSTORE, which systemd 254 and later set from it); without it a program would die with \
             air-nanny (SIGPIPE): the services write into their log files directly"
        );
        return;
    }
    if let Some(size) = size.filter(|n| (*n as usize) < services.len()) {
        tracing::warn!(
            "FileDescriptorStoreMax={size} is below the number of services ({}): the pipes of the others are not kept, and their programs die with air-nanny",
            services.len()
        );
    }
    let wanted: std::collections::HashSet<String> = services.iter().map(|s| fdname(s)).collect();
    handed_back.retain(|name, _| {
        let keep = wanted.contains(name);
        if !keep {
            forget(name);
        }
        keep
    });
    if !handed_back.is_empty() {
        tracing::info!("{} service pipes taken back from systemd's file-descriptor store", handed_back.len());
    }
    *REGISTRY.lock().expect("pipe registry") = Some(Registry { live: HashMap::new(), handed_back });
}

/// How the services' output reaches their logs now: `pipe` or `file` (`GET /health`).
pub fn in_force() -> &'static str {
    match REGISTRY.lock().expect("pipe registry").is_some() {
        true => "pipe",
        false => "file",
    }
}

/// Removes `fdname` from the store (a service removed, or a descriptor nobody claims).
fn forget(fdname: &str) {
    crate::notify::send(&format!("FDSTOREREMOVE=1\nFDNAME={fdname}"));
}

fn is_pipe_read_end(fd: BorrowedFd<'_>) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) else { return false };
    // SAFETY: fcntl F_GETFL on a descriptor we hold.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    st.st_mode & libc::S_IFMT == libc::S_IFIFO && flags >= 0 && flags & libc::O_ACCMODE == libc::O_RDONLY
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `service`'s log its pipe (pipe mode only; inside the runtime): the one in use, the one
/// systemd handed back, or a new one handed to the store. Its copy into the log starts here.
pub fn attach(service: &str, log: &ServiceLog) {
    let mut reg = REGISTRY.lock().expect("pipe registry");
    let Some(reg) = reg.as_mut() else { return };
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let name = fdname(service);
    if let Some(e) = reg.live.get_mut(&name) {
        if e.service == service {
            e.users += 1;
            log.set_pipe(Some(e.pipe.clone()));
        } else {
            tracing::warn!(service, other = %e.service, "two services' pipes would share the name {name}: this one writes into its log file directly");
        }
        return;
    }
    let made = match reg.handed_back.remove(&name) {
        Some(read) => Pipe::handed_back(name.clone(), read),
        None => Pipe::fresh(name.clone()),
    };
    let pipe = match made {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::warn!(service, "cannot make the service's pipe ({e}): it writes into its log file directly");
            return;
        }
    };
    let copying = tokio::spawn(copy(pipe.read.clone(), log.clone()));
    *pipe.reader.lock().expect("pipe reader") = Some(copying.abort_handle());
    if !pipe.stored.load(Ordering::Relaxed) {
        pipe.store();
    }
    log.set_pipe(Some(pipe.clone()));
    reg.live.insert(name, Entry { service: service.to_string(), pipe, users: 1 });
}

/// `service`'s task has ended: when it was the pipe's last user, what the pipe holds is copied
/// into the log and the pipe closed; `removed` (not a shutdown): also taken out of the store.
pub fn detach(service: &str, log: &ServiceLog, removed: bool) {
    let name = fdname(service);
    let pipe = {
        let mut reg = REGISTRY.lock().expect("pipe registry");
        let Some(reg) = reg.as_mut() else { return };
        let Some(e) = reg.live.get_mut(&name).filter(|e| e.service == service) else { return };
        e.users -= 1;
        if e.users > 0 {
            return;
        }
        reg.live.remove(&name).map(|e| e.pipe)
    };
    let Some(pipe) = pipe else { return };
    if let Some(copying) = pipe.reader.lock().expect("pipe reader").take() {
        copying.abort();
    }
    // What the pipe holds (a writer still alive cannot keep this loop going).
    let _ = copy_available(pipe.read.get_ref().as_fd(), log, DRAIN_READS);
    log.set_pipe(None);
    if removed && pipe.stored.load(Ordering::Relaxed) {
        forget(&pipe.fdname);
    }
}

/// Copies the pipe into the log for as long as the pipe lives.
async fn copy(read: Arc<AsyncFd<OwnedFd>>, log: ServiceLog) {
    loop {
        let Ok(mut ready) = read.readable().await else { return };
        match ready.try_io(|fd| copy_available(fd.get_ref().as_fd(), &log, READS_PER_WAKE)) {
            // More may be waiting: after the other tasks have had their turn.
            Ok(Ok(())) => tokio::task::yield_now().await,
            Ok(Err(e)) => {
                tracing::warn!(file = %log.path().display(), "a service's pipe ended ({e}); its output is no longer copied");
                return;
            }
            Err(_would_block) => {}
        }
    }
}

/// Moves what `fd` holds into `log` ([`ServiceLog::copy_from`]: in the kernel, nothing lost to a
/// kill), at most `reads` chunks: `Ok` when that many were moved, a `WouldBlock` error when the
/// pipe is empty, `UnexpectedEof` when every writer is gone.
fn copy_available(fd: BorrowedFd<'_>, log: &ServiceLog, reads: usize) -> io::Result<()> {
    let mut made = 0;
    while made < reads {
        match log.copy_from(fd, READ_CHUNK) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => made += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_printable_ascii_without_colons_and_stable() {
        assert_eq!(fdname("sensor-bus.1_a"), "out.sensor-bus.1_a");
        let chinese = fdname("数据记录");
        assert!(chinese.starts_with("out#") && chinese.len() == 20, "{chinese}");
        assert!(chinese.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
        assert_eq!(chinese, fdname("数据记录"));
        assert_ne!(chinese, fdname("数据记"));
        assert!(fdname(&"x".repeat(200)).len() <= 255);
    }

    #[test]
    fn listen_fds_are_taken_only_when_passed_to_this_process() {
        assert_eq!(parse_listen(None, None, None, 7), Ok(vec![]));
        assert_eq!(parse_listen(Some("8"), Some("2"), Some("a:b"), 7), Ok(vec![]), "another process's");
        assert_eq!(
            parse_listen(Some("7"), Some("3"), Some("out.a:out.b"), 7),
            Ok(vec![("out.a".into(), 3), ("out.b".into(), 4), ("unknown".into(), 5)])
        );
        assert!(parse_listen(Some("x"), Some("1"), None, 7).unwrap_err().contains("LISTEN_PID"));
        assert!(parse_listen(Some("7"), Some("99999999"), None, 7).unwrap_err().contains("LISTEN_FDS"));
    }

    /// The copy moves what is there and says when the pipe is empty or has no writer left; a
    /// full file is rotated by renaming (air-nanny the only writer: nothing is lost). By `splice`,
    /// and by a read and a write where the file system refuses it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_is_copied_into_the_log_and_rotated_without_loss() {
        for splice in [true, false] {
            copied_and_rotated(splice);
        }
    }

    fn copied_and_rotated(splice: bool) {
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "svc", 4096, 2);
        if !splice {
            log.refuse_splice();
        }
        let pipe = Arc::new(Pipe::fresh("out.svc".into()).unwrap());
        log.set_pipe(Some(pipe.clone()));
        let fd = pipe.read.get_ref().as_fd();
        let err = copy_available(fd, &log, 8).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let mut w = std::fs::File::from(pipe.write.try_clone().unwrap());
        let mut expected = String::new();
        for batch in 0..15 {
            for i in 0..20 {
                let line = format!("line {batch:02}.{i:02} {}\n", "x".repeat(38));
                io::Write::write_all(&mut w, line.as_bytes()).unwrap();
                expected.push_str(&line);
            }
            assert_eq!(copy_available(fd, &log, usize::MAX).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
        let all = format!("{}{}{}", read("svc.log.2"), read("svc.log.1"), read("svc.log"));
        // 15 000 bytes through a 4096-byte log with two old files: the last ones, whole.
        assert!(expected.ends_with(&all) && all.len() > 8000, "{} bytes kept:\n{all}", all.len());
        for n in ["svc.log", "svc.log.1", "svc.log.2"] {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= 4096, "{n}");
        }
        assert_eq!(log.splices(), splice, "the file system here splices");
        drop(w);
        log.set_pipe(None);
        let Pipe { write, read, .. } = Arc::try_unwrap(pipe).ok().unwrap();
        drop(write);
        assert_eq!(copy_available(read.get_ref().as_fd(), &log, 8).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
