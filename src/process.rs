//! Processes on this machine: finding a program's processes in /proc, waiting for a pid to exit
//! (pidfd), and signalling process groups safely. Spawning lives in `reaper`, which owns exits.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgrp, Pid};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Parses `SIGTERM`, `TERM` or a number into a signal.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    full.parse::<Signal>().ok()
}

/// Every live process whose executable is `program`, found by `/proc/PID/exe` (an executable
/// replaced on disk, shown as `(deleted)`, still counts) and, for interpreted programs, by argv
/// (`interpreter program …`). Zombies and air-nanny itself are never included.
pub fn find_program(program: &Path) -> Vec<i32> {
    find_program_after(program, 0)
}

/// [`find_program`] among the processes whose pid is above `after` only: where a start script has
/// just daemonised the program, the newcomer is found without reading every process's `exe`.
/// Pids wrap around, so an empty answer means "look everywhere", not "absent".
pub fn find_program_after(program: &Path, after: i32) -> Vec<i32> {
    let want = program.as_os_str().as_bytes();
    let mut pids = Vec::new();
    scan_after(after, |pid, path| {
        if path == want {
            pids.push(pid);
        }
    });
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Those of `pids` whose executable (or interpreted script) is `program`: a look at a few known
/// processes (a service's cgroup members), not a scan of /proc.
pub fn program_among(pids: &[i32], program: &Path) -> Vec<i32> {
    let want = program.as_os_str().as_bytes();
    pids.iter().copied().filter(|&pid| stands_for(pid, |path| path == want)).collect()
}

/// Whether `matches` holds for one of the paths process `pid` stands for (see [`scan`]).
fn stands_for(pid: i32, mut matches: impl FnMut(&[u8]) -> bool) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let exe = exe.as_os_str().as_bytes();
    let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
    matches(exe) || (is_interpreter(exe) && interpreted_script(pid).is_some_and(|s| matches(&s)))
}

/// The environment variable that marks every process air-nanny starts for a service (and, by
/// inheritance, what those start): `STATE_DIR:NAME`. In the fallback mode it is how a stop finds
/// the service's descendants that left its process group (`setsid`) and were reparented.
pub const OWNER_VAR: &str = "AIR_NANNY_OWNER";

/// The `AIR_NANNY_OWNER` tag in process `pid`'s environment, if any.
pub fn owner_tag(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{OWNER_VAR}=");
    env.split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(prefix.as_bytes()))
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

/// Every program running on the machine, by path, from one pass over /proc: what boot uses to
/// adopt the programs of a whole group without scanning once per service. With tags, also every
/// process by its `AIR_NANNY_OWNER` tag (the fallback mode's stops, see [`shared_scan`]).
#[derive(Debug, Default)]
pub struct ProcTable {
    by_path: HashMap<PathBuf, Vec<i32>>,
    by_tag: HashMap<Vec<u8>, Vec<i32>>,
}

impl ProcTable {
    pub fn scan() -> ProcTable {
        ProcTable::scan_with(false)
    }

    fn scan_with(tags: bool) -> ProcTable {
        let mut table = ProcTable::default();
        let prefix = format!("{OWNER_VAR}=");
        scan(|pid, path| {
            let pids = table.by_path.entry(PathBuf::from(OsStr::from_bytes(path))).or_default();
            if pids.last() == Some(&pid) {
                return; // the script an interpreter runs: the same process again
            }
            pids.push(pid);
            if tags {
                if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
                    if let Some(tag) = env.split(|b| *b == 0).find_map(|v| v.strip_prefix(prefix.as_bytes())) {
                        table.by_tag.entry(tag.to_vec()).or_default().push(pid);
                    }
                }
            }
        });
        table
    }

    /// The live processes of `program`, as [`find_program`] would find them at scan time.
    pub fn find(&self, program: &Path) -> Vec<i32> {
        self.by_path.get(program).cloned().unwrap_or_default()
    }

    /// The processes whose environment held `AIR_NANNY_OWNER=tag` at scan time and that are still
    /// alive (not zombies), in pid order. Empty for a table scanned without tags.
    pub fn tagged(&self, tag: &str) -> Vec<i32> {
        let mut pids: Vec<i32> =
            self.by_tag.get(tag.as_bytes()).into_iter().flatten().copied().filter(|&p| p > 1 && is_alive(p)).collect();
        pids.sort_unstable();
        pids
    }
}

/// A pass over /proc (paths and tags) that began after this call, shared with every caller that
/// asked while the previous pass ran, on a blocking thread: N services stopping at once (a
/// shutdown in the fallback mode) cost a few passes, not N, and none runs on the runtime thread.
pub async fn shared_scan() -> std::sync::Arc<ProcTable> {
    use std::sync::{Arc, Mutex};
    use tokio::sync::watch;
    type Batch = watch::Sender<Option<Arc<ProcTable>>>;
    #[derive(Default)]
    struct Scans {
        /// The batch the next pass serves: callers that asked since the current pass began.
        next: Option<Arc<Batch>>,
        running: bool,
    }
    static SCANS: Mutex<Scans> = Mutex::new(Scans { next: None, running: false });

    fn passes() {
        loop {
            let batch = {
                let mut s = SCANS.lock().unwrap_or_else(|p| p.into_inner());
                match s.next.take() {
                    Some(b) => b,
                    None => {
                        s.running = false;
                        return;
                    }
                }
            };
            let table = Arc::new(ProcTable::scan_with(true));
            batch.send_replace(Some(table));
        }
    }

    let mut rx = {
        let mut s = SCANS.lock().unwrap_or_else(|p| p.into_inner());
        let rx = s.next.get_or_insert_with(|| Arc::new(watch::channel(None).0)).subscribe();
        if !s.running {
            s.running = true;
            tokio::task::spawn_blocking(passes);
        }
        rx
    };
    let done = rx.wait_for(Option::is_some).await.ok().and_then(|t| t.clone());
    // Without a table the pass's thread is gone (the runtime is shutting down): scan here.
    done.unwrap_or_else(|| Arc::new(ProcTable::scan_with(true)))
}

/// Calls `found(pid, path)` for each path a live process stands for: its executable (without a
/// ` (deleted)` suffix) and, when that is an interpreter, the script it runs.
fn scan(found: impl FnMut(i32, &[u8])) {
    scan_after(0, found)
}

fn scan_after(after: i32, mut found: impl FnMut(i32, &[u8])) {
    let me = own_pid();
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    let mut buf = PathBuf::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = std::str::from_utf8(name.as_bytes()).ok().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || pid <= after {
            continue;
        }
        buf.clear();
        buf.push("/proc");
        buf.push(&name);
        buf.push("exe");
        // Kernel threads and zombies have no exe link; they are never a program.
        let Ok(exe) = std::fs::read_link(&buf) else { continue };
        let exe = exe.as_os_str().as_bytes();
        let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
        found(pid, exe);
        if is_interpreter(exe) {
            if let Some(script) = interpreted_script(pid) {
                found(pid, &script);
            }
        }
    }
}

fn is_interpreter(exe: &[u8]) -> bool {
    const INTERPRETERS: &[&[u8]] = &[b"python", b"perl", b"ruby", b"node", b"lua", b"java", b"bash", b"sh", b"dash"];
    let base = Path::new(OsStr::from_bytes(exe)).file_name().map(|n| n.as_bytes()).unwrap_or_default();
    INTERPRETERS.iter().any(|i| base.starts_with(i))
}

/// The first non-flag argument of an interpreter (`python3 -u /opt/x/prog.py` → the script).
fn interpreted_script(pid: i32) -> Option<Vec<u8>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.split(|b| *b == 0).skip(1).find(|a| a.first() != Some(&b'-')).map(<[u8]>::to_vec)
}

/// A zombie (or a pid that is gone): its state in /proc/PID/stat, after the command name.
fn is_zombie(pid: i32) -> bool {
    zombie_in(std::fs::read_to_string(format!("/proc/{pid}/stat")))
}

/// What a read of /proc/PID/stat says: gone or a zombie. A read that failed for another reason
/// (EMFILE when file descriptors run out, say) says nothing about the process: it is taken as
/// alive, never as a death that would restart a running program beside itself.
fn zombie_in(stat: std::io::Result<String>) -> bool {
    match stat {
        Ok(stat) => {
            let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
            state.is_none_or(|s| s == "Z" || s == "X")
        }
        Err(e) => matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)),
    }
}

/// Whether `pid` is alive (a zombie is not).
pub fn is_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok() && !is_zombie(pid)
}

/// The process group of `pid`.
pub fn pgid_of(pid: i32) -> Option<i32> {
    nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok().map(Pid::as_raw)
}

/// Sends `sig` to the process group `pgid`, unless that group is air-nanny's own (or init's).
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 || pgid == getpgrp().as_raw() {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Sends `sig` to each pid and to each pid's process group (guarded as in [`signal_group`]).
pub fn signal_all(pids: &[i32], sig: Signal) {
    for &pid in pids {
        if let Some(pgid) = pgid_of(pid) {
            signal_group(pgid, sig);
        }
        if pid > 1 && pid != own_pid() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Waits until `pid` has exited (a zombie counts as exited). Uses a pidfd, so the wake-up is the
/// exit itself; where pidfd_open is unavailable (old kernels, some emulators) it checks every 100 ms.
pub async fn wait_exit(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just handed us this fd; nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the fd for its whole life; nothing else closes or replaces it.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) } {
            if let Ok(mut guard) = afd.readable().await {
                guard.retain_ready();
            }
            return;
        }
    }
    while is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process held by a pidfd (Linux ≥ 5.3): signals and waits reach exactly the process that had
/// the pid when it was held, also after it died and the pid went to another (pid_max is 32768 on
/// armv7). Without pidfds (older kernels) it falls back to the number.
#[derive(Debug)]
pub struct Held {
    pid: i32,
    fd: Option<OwnedFd>,
}

impl Held {
    /// Holds the process that has `pid` now; `None` when there is none (or it is air-nanny or
    /// init). The caller checks *after* holding that it is the process it meant (its exe, its tag):
    /// then the hold is exact.
    pub fn open(pid: i32) -> Option<Held> {
        if pid <= 1 || pid == own_pid() {
            return None;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the kernel just handed us this fd; nothing else owns it.
            return Some(Held { pid, fd: Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }) });
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => None,
            _ => is_alive(pid).then_some(Held { pid, fd: None }),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` (or only checks, with `None`); false when the process is gone.
    pub fn signal(&self, sig: Option<Signal>) -> bool {
        let Some(fd) = &self.fd else { return kill(Pid::from_raw(self.pid), sig).is_ok() };
        let sig = sig.map_or(0, |s| s as i32);
        // SAFETY: pidfd_send_signal on our pidfd, with no siginfo.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) == 0
        }
    }

    /// Alive, and not a zombie (while it is a zombie its pid is still its own). With a pidfd, the
    /// kernel's own answer: the pidfd is readable once the process has exited (every thread of it;
    /// a zombie counts), no /proc read (a fallback-mode shutdown at N = 1000 spent a tenth of its
    /// time reading /proc/PID/stat here).
    pub fn is_alive(&self) -> bool {
        if let Some(fd) = &self.fd {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on the pidfd we hold, without waiting.
            match unsafe { libc::poll(&mut p, 1, 0) } {
                0 => return true,
                n if n > 0 => return false,
                _ => {} // interrupted: ask the slow way
            }
        }
        self.signal(None) && !is_zombie(self.pid)
    }

    /// Its process group, while it is alive.
    pub fn group(&self) -> Option<i32> {
        if self.is_alive() {
            pgid_of(self.pid)
        } else {
            None
        }
    }

    /// Waits until it has exited (a zombie counts as exited).
    pub async fn exited(&self) {
        if let Some(fd) = self.fd.as_ref().and_then(|fd| fd.try_clone().ok()) {
            // SAFETY: the AsyncFd owns this duplicate for its whole life.
            if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                if let Ok(mut guard) = afd.readable().await {
                    guard.retain_ready();
                }
                return;
            }
        }
        while self.is_alive() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Holds each of `pids` that is alive.
pub fn hold_all(pids: &[i32]) -> Vec<Held> {
    pids.iter().filter_map(|&p| Held::open(p)).collect()
}

/// Sends `sig` to each held process and to its process group (guarded as in [`signal_group`]).
pub fn signal_held(held: &[Held], sig: Signal) {
    for h in held {
        if let Some(pgid) = h.group() {
            signal_group(pgid, sig);
        }
        h.signal(Some(sig));
    }
}

/// Waits until every held process has exited, or `deadline` passes. True when all are gone.
pub async fn wait_held(held: &[Held], deadline: Instant) -> bool {
    let all = futures_util::future::join_all(held.iter().map(Held::exited));
    tokio::time::timeout_at(deadline, all).await.is_ok()
}

/// Waits until every pid has exited, or `deadline` passes. True when all are gone.
pub async fn wait_all_exit(pids: &[i32], deadline: Instant) -> bool {
    let all = futures_util::future::join_all(pids.iter().map(|&p| wait_exit(p)));
    tokio::time::timeout_at(deadline, all).await.is_ok()
}

/// A uid and gid for a `user` field: a numeric uid, or a name looked up in /etc/passwd directly
/// (static builds cannot rely on NSS).
pub fn lookup_user(user: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let by_uid = user.parse::<u32>().ok();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else { continue };
        if f[0] == user || by_uid == Some(uid) {
            return Ok((uid, gid));
        }
    }
    match by_uid {
        Some(uid) => Ok((uid, uid)),
        None => Err(format!("no user named {user:?} in /etc/passwd")),
    }
}

/// air-nanny's own pid, asked of the kernel once (`std::process::id` asks at every call, and a
/// shutdown checks it before each signal).
pub fn own_pid() -> i32 {
    static PID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *PID.get_or_init(|| std::process::id() as i32)
}

/// Makes the calling process a child subreaper, so that orphans of its descendants (programs that
/// control scripts daemonise) are reparented to it and their death is seen through SIGCHLD.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// Raises the soft limit of open files to the hard one (systemd gives services 1024 soft, which
/// a few hundred services with their pipes and pidfds exhaust). Returns (before, after). Children
/// inherit the raised limit.
// rlim_t is 32 bits on some 32-bit targets (armv7 gnueabihf): the casts are not useless there.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = CHILD_NOFILE.set(before);
    }
    Ok((before.rlim_cur as u64, lim.rlim_cur as u64))
}

/// Descriptors air-nanny may hold per service at once: its log, its `cgroup.events`, and while a
/// start is in flight the report pipe's two ends, the cgroup directory and a pidfd.
pub const DESCRIPTORS_PER_SERVICE: usize = 6;

/// Grows the kernel's descriptor table, once, to what `services` services need (within the
/// open-file limit), and returns its size. The table only ever doubles, and in a process with
/// more than one thread each doubling waits for an RCU grace period (`expand_fdtable`: 4–14 ms
/// each on a small VM): a boot of 100 services crossed 64, 128, 256 and 512 descriptors while
/// its children were being spawned, about 30 ms of its 60. Called before the first service
/// starts (under the packaged binary, before any thread but the runtime's exists, where no grace
/// period is waited for); costs 8 bytes of kernel memory per slot and nothing per spawn (a child
/// copies only up to the highest open descriptor).
#[allow(clippy::unnecessary_cast)]
pub fn reserve_descriptors(services: usize) -> std::io::Result<usize> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer to an rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let limit = usize::try_from(lim.rlim_cur as u64).unwrap_or(usize::MAX);
    let want =
        services.saturating_mul(DESCRIPTORS_PER_SERVICE).saturating_add(64).min(limit).min(libc::c_int::MAX as usize);
    // The table is sized to hold the highest descriptor: one at want - 1 makes it hold `want`.
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: duplicates a descriptor we own to the lowest free number ≥ want - 1 (close-on-exec),
    // which is closed again at once; no other descriptor is touched.
    let high = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, want.saturating_sub(1) as libc::c_int) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` was just returned to us and nothing else knows it.
    unsafe { libc::close(high) };
    Ok(want)
}

/// The open-file limit air-nanny was given, when it raised its own: what its children get back.
static CHILD_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// The open-file limit (soft, hard) children get back, when air-nanny raised its own.
#[allow(clippy::unnecessary_cast)]
pub fn child_nofile_limit() -> Option<(u64, u64)> {
    CHILD_NOFILE.get().map(|l| (l.rlim_cur as u64, l.rlim_max as u64))
}

/// Makes `cmd`'s process start with the open-file limit air-nanny itself was started with, when
/// air-nanny raised its own (see [`raise_nofile_limit`]): a program written for `select()` breaks
/// on descriptors above 1023, which is why systemd's soft limit is 1024. Nothing to do, and no
/// cost, when the limit was not raised (under the packaged unit, `LimitNOFILE=` sets both).
pub fn restore_nofile_limit_in(cmd: &mut std::process::Command) {
    if let Some(&lim) = CHILD_NOFILE.get() {
        // SAFETY: the closure only calls setrlimit (async-signal-safe) with a value it owns.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
}

/// Held by the test that forces pid reuse and by tests that a forced reuse would confuse (a claim
/// of a reaped orphan by pid).
#[cfg(test)]
pub(crate) static PID_REUSE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::sync::Arc;

    fn fd_table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("FDSize:")).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn the_descriptor_table_is_grown_ahead_and_nothing_stays_open() {
        let services = 300;
        let want = reserve_descriptors(services).unwrap();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: a valid pointer to an rlimit we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(want, (services * DESCRIPTORS_PER_SERVICE + 64).min(lim.rlim_cur as usize));
        assert!(fd_table_size() >= want, "FDSize {} < {want}", fd_table_size());
        // The probe descriptor is closed again: nothing at or above want - 1 points at /dev/null.
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let n: usize = entry.file_name().to_string_lossy().parse().unwrap();
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            assert!(!(n + 1 >= want && target == Path::new("/dev/null")), "descriptor {n} left open");
        }
        // A count beyond any limit is held to the open-file limit, never an error or an overflow
        // (not tried where that limit is vast: it would size this process's table to it).
        if lim.rlim_cur <= 1 << 16 {
            let most = reserve_descriptors(usize::MAX).unwrap();
            assert_eq!(most, lim.rlim_cur as usize);
            assert!(fd_table_size() >= most);
        } else {
            eprintln!("open-file limit {} is vast: the clamp to it is not tried", lim.rlim_cur);
        }
    }

    fn wait_for_gone(pid: i32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    /// A held process is alive while it runs, and not once it has exited, as a zombie (its pidfd
    /// answers) or reaped.
    #[test]
    fn a_held_process_is_alive_until_it_exits() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let held = Held::open(child.id() as i32).unwrap();
        assert!(held.fd.is_some(), "pidfds are there on every kernel air-nanny supports here");
        assert!(held.is_alive());
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // A zombie now (not waited for), unless a reaper test of this process collected it.
        while held.is_alive() {
            assert!(std::time::Instant::now() < deadline, "a killed process still alive");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!is_alive(held.pid()), "the /proc answer agrees");
        let _ = child.wait();
        assert!(!held.is_alive());
    }

    /// The pid of a held process that died is given to another process (forced through
    /// ns_last_pid, as root): the hold reaches neither that process nor its group, and says gone.
    #[test]
    fn a_held_process_whose_pid_was_reused_is_never_signalled() {
        let _alone = PID_REUSE.blocking_lock();
        let mut reused = None;
        for _ in 0..50 {
            let mut a = std::process::Command::new("sleep").arg("30").spawn().unwrap();
            let pid = a.id() as i32;
            let held = Held::open(pid).unwrap();
            assert!(held.is_alive());
            a.kill().unwrap();
            // (A reaper test running beside this one may collect it first.)
            let _ = a.wait();
            // Ask the kernel to give the same pid to the next process.
            if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
                eprintln!("!!! cannot write ns_last_pid (not root?): pid reuse test skipped");
                return;
            }
            let b = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
            if b.id() as i32 == pid {
                reused = Some((held, b));
                break;
            }
            let mut b = b;
            b.kill().unwrap();
            let _ = b.wait();
        }
        let (held, mut b) = reused.expect("the pid was never reused in 50 tries");
        assert!(!held.is_alive());
        assert_eq!(held.group(), None);
        assert!(!held.signal(Some(Signal::SIGKILL)));
        signal_held(std::slice::from_ref(&held), Signal::SIGKILL);
        // The new owner of the pid lives on.
        assert!(b.try_wait().unwrap().is_none(), "the process that reused the pid was signalled");
        assert!(is_alive(b.id() as i32));
        b.kill().unwrap();
        let _ = b.wait();
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn finds_processes_by_exe_and_not_itself() {
        let me = std::env::current_exe().unwrap();
        assert!(!find_program(&me).contains(&(std::process::id() as i32)));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let sleep = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        assert!(find_program(&sleep).contains(&(child.id() as i32)));
        let pid = child.id() as i32;
        assert!(find_program_after(&sleep, pid - 1).contains(&pid));
        assert!(!find_program_after(&sleep, pid).contains(&pid), "only newer pids are read");
        child.kill().unwrap();
        // Another test's reaper may collect the zombie first; either way it is gone.
        let _ = child.wait();
        let pid = child.id() as i32;
        wait_for_gone(pid);
        assert!(!find_program(&sleep).contains(&pid));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_scans_find_tagged_processes_and_serve_concurrent_callers() {
        let tag = format!("/tmp/shared-scan-test:{}", std::process::id());
        let mut child = std::process::Command::new("sleep").arg("5").env(OWNER_VAR, &tag).spawn().unwrap();
        let pid = child.id() as i32;
        // Scans that began before the child existed cannot count: every caller's scan began after
        // it asked.
        let scans = futures_util::future::join_all((0..50).map(|_| shared_scan())).await;
        for t in &scans {
            assert_eq!(t.tagged(&tag), vec![pid]);
            assert!(t.tagged("no-such-tag").is_empty());
        }
        let distinct = scans.iter().map(|t| Arc::as_ptr(t) as usize).collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() <= 3, "50 concurrent callers shared the passes: {} passes", distinct.len());
        child.kill().unwrap();
        let _ = child.wait();
        wait_for_gone(pid);
        assert!(shared_scan().await.tagged(&tag).is_empty(), "a process gone is not listed");
        assert!(ProcTable::scan().tagged(&tag).is_empty(), "a table without tags lists none");
    }

    #[test]
    fn interpreted_programs_are_found_by_their_script() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("prog.sh");
        // Not a lone last command: dash would exec it in place of itself.
        std::fs::write(&script, "sleep 5\nexit 0\n").unwrap();
        let mut child = std::process::Command::new("sh").arg(&script).spawn().unwrap();
        let pid = child.id() as i32;
        // For a moment after it forks, the shell's child is still a copy of the shell running the
        // script; wait (bounded) until only the shell itself matches.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (mut found, mut table) = (Vec::new(), Vec::new());
        while std::time::Instant::now() < deadline {
            found = find_program(&script);
            table = ProcTable::scan().find(&script);
            if found == vec![pid] && table == vec![pid] {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        let _ = child.wait();
        assert_eq!(found, vec![pid]);
        assert_eq!(table, vec![pid]);
    }

    #[test]
    fn users_resolve_from_passwd() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        assert_eq!(lookup_user("0").unwrap(), (0, 0));
        assert!(lookup_user("no-such-user-here").is_err());
    }

    #[tokio::test]
    async fn wait_exit_wakes_on_exit() {
        let mut child = std::process::Command::new("sleep").arg("0.05").spawn().unwrap();
        let pid = child.id() as i32;
        let waited = tokio::time::timeout(Duration::from_secs(5), wait_exit(pid)).await;
        assert!(waited.is_ok());
        let _ = child.wait();
    }

    #[test]
    fn a_failed_read_of_proc_is_not_a_death() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!zombie_in(Err(emfile)), "out of file descriptors says nothing about the process");
        assert!(zombie_in(Err(std::io::Error::from_raw_os_error(libc::ENOENT))));
        assert!(zombie_in(Ok("12 (a b) Z 1 2".into())));
        assert!(!zombie_in(Ok("12 (a) b) S 1 2".into())));
        assert!(zombie_in(Ok("garbage".into())));
    }
}
