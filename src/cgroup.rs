//! cgroup v2: where the hierarchy is mounted (`/proc/self/mountinfo`), where air-nanny sits in it
//! (`/proc/self/cgroup`), and one child cgroup per service that holds every process of that
//! service — the truth about what the service runs, instead of a guess by path or pid.
//!
//! Layout: service cgroups are `BASE/svc-NAME` (the prefix keeps a service named like an interface
//! file, `cgroup.procs` say, from colliding), their health checks' `BASE/chk-NAME`. `BASE` is, by default, the parent of air-nanny's own
//! cgroup when systemd put it into a `supervisor` leaf (`Delegate=yes` + `DelegateSubgroup=supervisor`:
//! air-nanny and its services are then siblings, as the no-internal-processes rule wants), else
//! `air-nanny` under the root when air-nanny runs in the root cgroup, else its own cgroup — after
//! moving itself into a `supervisor` leaf of it (what `DelegateSubgroup=` does on newer systemd).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The mount point of the cgroup2 hierarchy, from the text of `/proc/self/mountinfo`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo writes a space as `\040` (and tab, newline, backslash likewise, in octal).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// air-nanny's own cgroup v2 path (relative to the hierarchy's root, starting with `/`), from the
/// text of `/proc/self/cgroup`.
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_string())
}

/// Where the services' cgroups go, relative to the hierarchy's root, for air-nanny in `own`.
pub fn default_base(own: &str) -> String {
    let own = own.trim_end_matches('/');
    match own.rsplit_once('/') {
        _ if own.is_empty() => "/air-nanny".to_string(),
        Some((parent, "supervisor")) if !parent.is_empty() => parent.to_string(),
        _ => own.to_string(),
    }
}

/// The directory under which every service's cgroup lives.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    base: PathBuf,
    /// The base directory, held open: the services' files are opened relative to it.
    base_fd: Arc<OwnedFd>,
}

impl Hierarchy {
    /// Finds the cgroup2 hierarchy and makes the base directory. `base`: a path relative to the
    /// hierarchy's root from the configuration (`CGROUP_BASE`), else [`default_base`]. `Err` says why
    /// cgroups cannot be used here (no cgroup2 mounted, not writable, …).
    pub fn open(base: Option<&str>) -> Result<Hierarchy, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 hierarchy is mounted")?;
        let base = match base {
            Some(b) => b.to_string(),
            None => {
                let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
                let own = own_cgroup(&own).ok_or("/proc/self/cgroup has no cgroup v2 line")?;
                let base = default_base(&own);
                if base == own.trim_end_matches('/') {
                    // systemd without DelegateSubgroup= (before v254) put air-nanny into the
                    // delegated cgroup itself: move into a `supervisor` leaf, so that the service
                    // cgroups beside it never sit under a cgroup with processes in it.
                    let leaf = mount.join(base.trim_start_matches('/')).join("supervisor");
                    fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
                    fs::write(leaf.join("cgroup.procs"), "0")
                        .map_err(|e| format!("cannot move air-nanny into {}: {e}", leaf.display()))?;
                }
                base
            }
        };
        if base.split('/').any(|c| c == "..") {
            return Err(format!("CGROUP_BASE: {base:?} may not contain `..`"));
        }
        let dir = mount.join(base.trim_start_matches('/'));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // A probe: a cgroup we cannot write into is no use.
        let probe = dir.join(format!("probe-{}", std::process::id()));
        fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup in {}: {e}", dir.display()))?;
        let _ = fs::remove_dir(&probe);
        let base_fd = open_at(libc::AT_FDCWD, &dir, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
        Ok(Hierarchy { base: dir, base_fd: Arc::new(base_fd) })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The cgroup of service `name` (not created yet).
    pub fn service(&self, name: &str) -> ServiceCgroup {
        self.named(format!("svc-{name}"))
    }

    /// The cgroup of service `name`'s health checks (not created yet): beside the service's, not
    /// in it, so that a running check is never taken for the program (its `Pids`, the cgroup's
    /// emptying at its death), and emptied after each check, so that nothing a check leaves
    /// behind (a background child, a `setsid` daemon) runs on.
    pub fn checks(&self, name: &str) -> ServiceCgroup {
        self.named(format!("chk-{name}"))
    }

    fn named(&self, rel: String) -> ServiceCgroup {
        let rel = PathBuf::from(rel);
        ServiceCgroup {
            dir: self.base.join(&rel),
            base_fd: self.base_fd.clone(),
            rel,
            killed: Arc::default(),
            events: Arc::default(),
        }
    }

    /// The names of the services that have a cgroup here (from a previous run, say).
    pub fn existing(&self) -> Vec<String> {
        self.existing_with("svc-")
    }

    /// The names of the services whose checks have a cgroup here.
    pub fn existing_checks(&self) -> Vec<String> {
        self.existing_with("chk-")
    }

    fn existing_with(&self, prefix: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.base) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(prefix)).map(str::to_string))
            .collect();
        names.sort();
        names
    }
}

/// One service's cgroup.
#[derive(Debug, Clone)]
pub struct ServiceCgroup {
    dir: PathBuf,
    /// The base directory and this cgroup's name in it. Its files are opened relative to the
    /// base: a path walk through kernfs costs a lookup and a revalidation per component, and the
    /// whole path (eight components on a hybrid layout) made `openat` the largest system call
    /// cost of a 1000-service shutdown.
    base_fd: Arc<OwnedFd>,
    rel: PathBuf,
    /// Set once `cgroup.kill` was written (by any clone of this handle): from then on a child
    /// cloned straight into it would be killed at birth (see `spawn.rs`), so spawns move children
    /// in instead.
    killed: Arc<AtomicBool>,
    /// Its `cgroup.events`, held open by the [`Monitor`] once watched: `populated` is read from
    /// it without opening the file again.
    events: Arc<OnceLock<Arc<fs::File>>>,
}

impl PartialEq for ServiceCgroup {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir
    }
}

impl Eq for ServiceCgroup {}

impl ServiceCgroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes it if it does not exist; true when it was made now (so it is empty).
    pub fn create(&self) -> io::Result<bool> {
        match fs::create_dir(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens one of its files, relative to the base.
    fn open_file(&self, name: &str, flags: libc::c_int) -> io::Result<fs::File> {
        open_at(self.base_fd.as_raw_fd(), &self.rel.join(name), flags).map(fs::File::from)
    }

    /// Its directory, open (for `clone3(CLONE_INTO_CGROUP)`).
    pub fn open_dir(&self) -> io::Result<fs::File> {
        open_at(self.base_fd.as_raw_fd(), &self.rel, libc::O_RDONLY | libc::O_DIRECTORY).map(fs::File::from)
    }

    /// Every process in it (forks included), in pid order.
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        // Not held open: a read from offset 0 of a held `cgroup.procs` costs the kernel as
        // much as an open does (a new walk of the members), and its close comes at the end anyway.
        let text = read_all(&self.open_file("cgroup.procs", libc::O_RDONLY)?, false)?;
        let text = String::from_utf8_lossy(&text);
        let mut pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Whether any process is in it (`cgroup.events`).
    pub fn populated(&self) -> io::Result<bool> {
        let text = match self.events.get() {
            // A cgroup removed since reads as an error (ENODEV), like one whose file is gone.
            Some(f) => read_all(f, true)?,
            None => read_all(&self.open_file("cgroup.events", libc::O_RDONLY)?, false)?,
        };
        Ok(text.split(|&b| b == b'\n').any(|l| l == b"populated 1"))
    }

    /// SIGKILLs every process in it, forks racing the kill included (`cgroup.kill`, Linux ≥ 5.14;
    /// before that, each member by pid, until none is left to signal). Asynchronous: the cgroup is
    /// empty a moment later.
    pub fn kill(&self) -> io::Result<()> {
        self.mark_killed();
        match fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.kill")) {
            Ok(mut f) => f.write_all(b"1"),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.dir.exists() => {
                for _ in 0..100 {
                    let pids = self.procs()?;
                    if pids.is_empty() {
                        break;
                    }
                    for p in pids {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// [`ServiceCgroup::kill`] when anything is in it: an empty cgroup is left unkilled, so that
    /// children can still be cloned straight into it (see `spawn.rs`). True when it killed.
    pub fn kill_if_populated(&self) -> io::Result<bool> {
        if !self.populated()? {
            return Ok(false);
        }
        self.kill().map(|()| true)
    }

    /// Waits until no process is left in it, or `deadline`. True when empty. `events` is its
    /// [`Monitor::watch`]; without one (or when the watch ends) it looks every 20 ms.
    pub async fn wait_empty(&self, events: Option<&mut EventsWatch>, deadline: Instant) -> bool {
        let mut events = events;
        loop {
            if let Some(rx) = events.as_deref_mut() {
                rx.mark_seen();
            }
            // A cgroup that has gone (removed) holds nothing either.
            if !self.populated().unwrap_or(false) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let wake = async {
                let watched = match events.as_deref_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => false,
                };
                if !watched {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout_at(deadline, wake).await;
        }
    }

    /// [`wait_empty`](Self::wait_empty) for a caller that took `events` as seen before it made
    /// the members exit: `populated` is first read after the next change (it was just 1), one
    /// read of `cgroup.events` instead of two for most stops.
    pub async fn wait_emptied(&self, events: &mut EventsWatch, deadline: Instant) -> bool {
        if tokio::time::timeout_at(deadline, events.changed()).await.is_err() {
            return !self.populated().unwrap_or(false);
        }
        self.wait_empty(Some(events), deadline).await
    }

    /// Sends `sig` to every process in it; the number signalled.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> usize {
        signal_each(&self.procs().unwrap_or_default(), sig)
    }

    /// Removes it; it must be empty.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether `cgroup.kill` was ever written to it, as far as this air-nanny knows.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Records that it was killed (also when a child cloned into it was killed at birth, the sign
    /// of a kill before this air-nanny started).
    pub fn mark_killed(&self) {
        self.killed.store(true, Ordering::Relaxed);
    }
}

/// Sends `sig` to each of `pids` (members read a moment before) but init and air-nanny itself;
/// the number signalled.
pub fn signal_each(pids: &[i32], sig: nix::sys::signal::Signal) -> usize {
    let me = crate::process::own_pid();
    pids.iter()
        .filter(|&&p| p > 1 && p != me)
        .filter(|&&p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig).is_ok())
        .count()
}

/// `openat(dir, path, flags | O_CLOEXEC)` as one system call (std's `File::open` adds an `fcntl`
/// under musl to set close-on-exec again; a shutdown of 1000 services opens such files thousands
/// of times).
fn open_at(dir: RawFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: openat on a NUL-terminated path; the descriptor returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_openat, dir, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The whole of a small cgroup file (no `fstat` for a size hint, which `fs::read` would add), from
/// the start of the file with `from_start` (a kernfs file held open is read again from offset 0
/// by `pread`, which makes the kernel generate it anew, a new walk of the members included).
///
/// Most often one system call: cgroup files are seq_files, whose read fills the request from
/// records until they run out, so a read of at most a page that returns less than it asked for
/// has reached the end (the seq_file's own buffer, a page or more, cannot fill up first).
fn read_all(mut f: &fs::File, from_start: bool) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 512;
    let mut out = Vec::new();
    let mut chunk = [0u8; CHUNK];
    loop {
        let read = if from_start { f.read_at(&mut chunk, out.len() as u64) } else { f.read(&mut chunk) };
        match read {
            Ok(0) => return Ok(out),
            Ok(n) if n < CHUNK => {
                out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                return Ok(out);
            }
            Ok(n) => out.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the engine needs for cgroup ownership: where the services' cgroups go, and their events.
#[derive(Clone)]
pub struct Cgroups {
    pub hierarchy: Hierarchy,
    pub monitor: Monitor,
}

/// Every service cgroup's `cgroup.events`, watched through one epoll descriptor of its own: a
/// change of `populated` is an event that wakes whoever waits on that cgroup, never a polling tick.
///
/// Each watched cgroup costs one open `cgroup.events` (kernfs wakes its pollers at once on a
/// change). inotify would cost one descriptor for all, and was used first, but closing an inotify
/// descriptor that holds watches waits for an SRCU grace period (10–20 ms measured here), which
/// every exit of air-nanny paid: a third of a ten-service shutdown.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<MonitorInner>,
}

struct MonitorInner {
    epoll: AsyncFd<OwnedFd>,
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    /// `cgroup.events` path → its watch.
    by_path: HashMap<PathBuf, Watched>,
    /// epoll key → path.
    by_key: HashMap<u64, PathBuf>,
    next_key: u64,
}

struct Watched {
    key: u64,
    /// Kept open for as long as someone watches: closing it removes it from the epoll set. The
    /// watched cgroup reads `populated` from it too.
    file: Arc<fs::File>,
    tx: Arc<EventCount>,
}

impl Watched {
    /// How many [`EventsWatch`]es of it are held.
    fn receiver_count(&self) -> usize {
        Arc::strong_count(&self.tx) - 1
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.tx.closed.store(true, Ordering::Release);
        self.tx.notify.notify_waiters();
    }
}

/// How often a `cgroup.events` file changed, bumped by the monitor. An atomic and one `Notify`:
/// a tokio `watch` channel costs about 350 bytes per service (its notifier is eight-way).
#[derive(Default)]
struct EventCount {
    count: AtomicU64,
    /// When the monitor last saw a change ([`since_epoch`]).
    last_ns: AtomicU64,
    /// The monitor stopped watching the file.
    closed: AtomicBool,
    notify: Notify,
}

/// A watch of one cgroup's `cgroup.events` ([`Monitor::watch`]): says when the file changed
/// since this watch last looked.
#[derive(Clone)]
pub struct EventsWatch {
    shared: Arc<EventCount>,
    seen: u64,
}

/// Nanoseconds since the first call (a monotonic clock of the process's own), at least 1.
fn since_epoch() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64 + 1
}

/// The monitor no longer watches the file (its cgroup was removed, or the monitor ended).
#[derive(Debug)]
pub struct Unwatched;

impl EventsWatch {
    /// Takes every change so far as seen.
    pub fn mark_seen(&mut self) {
        self.seen = self.shared.count.load(Ordering::Acquire);
    }

    /// Whether the file changed less than `window` ago. The kernel holds back a cgroup's
    /// notification until 10 ms (a jiffy or two more at HZ = 100) after the one before: a change
    /// now, so soon after the last, may be told that much later.
    pub fn changed_within(&self, window: std::time::Duration) -> bool {
        let last = self.shared.last_ns.load(Ordering::Acquire);
        last != 0 && since_epoch().saturating_sub(last) < window.as_nanos() as u64
    }

    /// Waits for a change after the last one seen, and takes it as seen.
    pub async fn changed(&mut self) -> Result<(), Unwatched> {
        loop {
            // Registered before the count is read, so a bump in between still wakes it.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.shared.count.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Unwatched);
            }
            notified.await;
        }
    }
}

impl Watches {
    /// Forgets the watches nobody holds a receiver of any more (their cgroups stopped or removed).
    fn sweep(&mut self) {
        let gone: Vec<PathBuf> =
            self.by_path.iter().filter(|(_, w)| w.receiver_count() == 0).map(|(p, _)| p.clone()).collect();
        for p in gone {
            if let Some(w) = self.by_path.remove(&p) {
                self.by_key.remove(&w.key);
            }
        }
    }
}

impl Monitor {
    /// The epoll descriptor and the task that reads it. Inside the runtime.
    pub fn start() -> io::Result<Monitor> {
        // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just handed us this fd; nothing else owns it, and the AsyncFd owns it
        // for its whole life.
        let epoll =
            unsafe { AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), tokio::io::Interest::READABLE) }?;
        let inner = Arc::new(MonitorInner { epoll, watches: Mutex::new(Watches::default()) });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            // SAFETY: epoll_event is plain data; zeroes are a valid value.
            let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; 64];
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let Ok(mut guard) = inner.epoll.readable().await else { return };
                // SAFETY: epoll_wait into a buffer we own, of its length; timeout 0.
                let n =
                    unsafe { libc::epoll_wait(inner.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    tracing::error!("cgroup monitor: {e}");
                    return;
                }
                if n == 0 {
                    guard.clear_ready();
                    continue;
                }
                inner.dispatch(&events[..n as usize]);
            }
        });
        Ok(Monitor { inner })
    }

    /// A receiver that changes whenever `cg`'s `cgroup.events` does (the cgroup must exist).
    pub fn watch(&self, cg: &ServiceCgroup) -> io::Result<EventsWatch> {
        let path = cg.dir.join("cgroup.events");
        let mut watches = self.inner.watches.lock().expect("monitor lock");
        // The same file gives the same counter, while it is watched (once nobody watches, the
        // cgroup may have been removed and made again: a new descriptor then).
        if let Some(w) = watches.by_path.get(&path) {
            if w.receiver_count() > 0 {
                let _ = cg.events.set(w.file.clone());
                return Ok(EventsWatch { shared: w.tx.clone(), seen: w.tx.count.load(Ordering::Acquire) });
            }
        }
        if watches.by_path.len() >= 64 && watches.by_path.len().is_power_of_two() {
            watches.sweep();
        }
        let file = Arc::new(cg.open_file("cgroup.events", libc::O_RDONLY)?);
        let key = watches.next_key;
        watches.next_key += 1;
        // Edge-triggered EPOLLPRI: kernfs wakes pollers on every change of the file; nothing has
        // to be read to re-arm it.
        let mut ev = libc::epoll_event { events: (libc::EPOLLPRI | libc::EPOLLET) as u32, u64: key };
        // SAFETY: epoll_ctl on our epoll fd with an open fd and an event we own.
        if unsafe { libc::epoll_ctl(self.inner.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, file.as_raw_fd(), &mut ev) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let tx = Arc::new(EventCount::default());
        let rx = EventsWatch { shared: tx.clone(), seen: 0 };
        let _ = cg.events.set(file.clone());
        watches.by_key.insert(key, path.clone());
        if let Some(old) = watches.by_path.insert(path, Watched { key, file, tx }) {
            watches.by_key.remove(&old.key);
        }
        Ok(rx)
    }
}

impl MonitorInner {
    fn dispatch(&self, events: &[libc::epoll_event]) {
        let mut watches = self.watches.lock().expect("monitor lock");
        let mut unwatched = false;
        for ev in events {
            let key = ev.u64;
            let Some(path) = watches.by_key.get(&key) else { continue };
            let Some(w) = watches.by_path.get(path) else { continue };
            w.tx.last_ns.store(since_epoch(), Ordering::Release);
            w.tx.count.fetch_add(1, Ordering::AcqRel);
            w.tx.notify.notify_waiters();
            unwatched |= w.receiver_count() == 0;
        }
        if unwatched {
            watches.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base of a unit test's own (`prefix-PID`), or `None`, said loudly, where cgroup v2 is not
    /// writable here (`skipped` says what is not tested then).
    fn unit_hierarchy(prefix: &str, skipped: &str) -> Option<Hierarchy> {
        match Hierarchy::open(Some(&format!("{prefix}-{}", std::process::id()))) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("!!! NO WRITABLE CGROUP V2 HERE ({e}): {skipped}");
                None
            }
        }
    }

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 31 0:39 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let v1 = "42 31 0:39 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(cgroup2_mount(v1), None);
        assert_eq!(cgroup2_mount("41 31 0:38 / /mnt/a\\040b rw - cgroup2 none rw\n"), Some(PathBuf::from("/mnt/a b")));
        assert_eq!(cgroup2_mount("garbage\n - \n\n"), None);
    }

    #[test]
    fn own_cgroup_and_where_services_go() {
        assert_eq!(own_cgroup("9:name=systemd:/\n0::/\n").as_deref(), Some("/"));
        assert_eq!(own_cgroup("12:pids:/x\n").as_deref(), None);
        assert_eq!(default_base("/"), "/air-nanny");
        assert_eq!(default_base("/system.slice/air-nanny.service/supervisor"), "/system.slice/air-nanny.service");
        assert_eq!(default_base("/system.slice/air-nanny.service"), "/system.slice/air-nanny.service");
        assert_eq!(default_base("/supervisor"), "/supervisor");
    }

    /// Against the real hierarchy; says loudly when there is none to test with.
    #[test]
    fn a_service_cgroup_holds_forks_reports_population_and_kills_all() {
        let Some(h) = unit_hierarchy("/air-nanny-unit", "cgroup unit test skipped; the fallback mode is what runs")
        else {
            return;
        };
        let cg = h.service("unit.test");
        cg.create().unwrap();
        cg.create().unwrap();
        assert_eq!(h.existing(), vec!["unit.test".to_string()]);
        assert!(!cg.populated().unwrap());
        // Nothing to kill: it is not marked killed, so children are still cloned straight in.
        assert!(!cg.kill_if_populated().unwrap());
        assert!(!cg.was_killed());
        let mut cmd = std::process::Command::new("/bin/sh");
        // The shell forks a worker at once: born in the cgroup, the worker is there too.
        cmd.args(["-c", "sleep 30 & exec sleep 30"]);
        let out = fs::File::create("/dev/null").unwrap();
        let pid = crate::spawn::spawn_into(&cmd, std::os::fd::AsFd::as_fd(&out), &cg, Default::default()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cg.procs().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", cg.procs());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(cg.procs().unwrap().contains(&pid));
        assert!(cg.populated().unwrap());
        assert!(cg.kill_if_populated().unwrap());
        assert!(cg.was_killed());
        // A reaper test running beside this one may collect it first.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        while cg.populated().unwrap() {
            assert!(std::time::Instant::now() < deadline, "still populated after cgroup.kill");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        cg.remove().unwrap();
        fs::remove_dir(h.base()).unwrap();
    }

    /// The members are read whole however long their list is: a read that fills its buffer is
    /// followed by another (a short one ends it), as `fs::read_to_string` of the same file says.
    #[test]
    fn the_members_are_read_whole_however_many_there_are() {
        let Some(h) = unit_hierarchy("/air-nanny-unit-many", "cgroup unit test skipped") else { return };
        let cg = h.service("many");
        cg.create().unwrap();
        let mut cmd = std::process::Command::new("/bin/sh");
        // 300 workers: their pids take well over one 512-byte read.
        cmd.args(["-c", "i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; exec sleep 30"]);
        let out = fs::File::create("/dev/null").unwrap();
        let pid = crate::spawn::spawn_into(&cmd, std::os::fd::AsFd::as_fd(&out), &cg, Default::default()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while cg.procs().unwrap().len() < 301 {
            assert!(std::time::Instant::now() < deadline, "{} members", cg.procs().unwrap().len());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let text = fs::read_to_string(cg.dir().join("cgroup.procs")).unwrap();
        let mut kernel: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
        kernel.sort_unstable();
        assert!(text.len() > 512);
        assert_eq!(cg.procs().unwrap(), kernel);
        cg.kill().unwrap();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        while cg.populated().unwrap() {
            assert!(std::time::Instant::now() < deadline, "still populated after cgroup.kill");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        cg.remove().unwrap();
        fs::remove_dir(h.base()).unwrap();
    }

    /// The monitor wakes a waiter when the cgroup empties (an event, not the deadline), for
    /// several cgroups through one epoll descriptor, and forgets watches nobody holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_monitor_wakes_waiters_when_a_cgroup_empties() {
        let Some(h) = unit_hierarchy("/air-nanny-unit-monitor", "monitor test skipped") else { return };
        let monitor = Monitor::start().unwrap();
        let out = fs::File::create("/dev/null").unwrap();
        let mut cgs = Vec::new();
        for i in 0..3 {
            let cg = h.service(&format!("m{i}"));
            cg.create().unwrap();
            let rx = monitor.watch(&cg).unwrap();
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args(["-c", "sleep 30 & exec sleep 30"]);
            let pid = crate::spawn::spawn_into(&cmd, std::os::fd::AsFd::as_fd(&out), &cg, Default::default()).unwrap();
            cgs.push((cg, rx, pid));
        }
        for (i, (cg, rx, pid)) in cgs.iter_mut().enumerate() {
            let deadline = Instant::now() + std::time::Duration::from_secs(20);
            while !cg.populated().unwrap() {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let t0 = std::time::Instant::now();
            match i {
                0 => {
                    cg.kill().unwrap();
                    assert!(cg.wait_empty(Some(rx), deadline).await);
                }
                // Taken as seen before the kill, the first look after the change.
                1 => {
                    rx.mark_seen();
                    cg.kill().unwrap();
                    assert!(cg.wait_emptied(rx, deadline).await);
                }
                // Empty already when the wait begins: the change came after it was taken as seen.
                _ => {
                    rx.mark_seen();
                    cg.kill().unwrap();
                    while cg.populated().unwrap() {
                        assert!(Instant::now() < deadline);
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    assert!(cg.wait_emptied(rx, deadline).await);
                }
            }
            // The change is dated: a stop this soon after it cannot count on the next one.
            assert!(rx.changed_within(std::time::Duration::from_secs(60)));
            assert!(!rx.changed_within(std::time::Duration::ZERO));
            // Woken by the change, long before the deadline would have ended the wait.
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{:?}", t0.elapsed());
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(*pid), None);
        }
        let before = monitor.inner.watches.lock().unwrap().by_path.len();
        assert_eq!(before, 3);
        for (cg, _, _) in &cgs {
            cg.remove().unwrap();
        }
        drop(cgs);
        monitor.inner.watches.lock().unwrap().sweep();
        assert_eq!(monitor.inner.watches.lock().unwrap().by_path.len(), 0);
        fs::remove_dir(h.base()).unwrap();
    }
}
