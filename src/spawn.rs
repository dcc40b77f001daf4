//! Process creation straight into a service's cgroup: `clone3(CLONE_INTO_CGROUP)`, so a child is a
//! member from its first instruction and no process ever moves between cgroups.
//!
//! Why not std's `Command::spawn` with a `pre_exec` that writes `0` into `cgroup.procs` (what this
//! replaced): moving a process takes the kernel's cgroup-threadgroup lock for writing, which waits
//! for an RCU grace period whenever no move happened a moment before — measured at 2–16 ms on the
//! first spawn after an idle spell (a respawn, a boot of ten services), against well under a
//! millisecond for the whole spawn otherwise. A child born into the cgroup takes that lock only for
//! reading. Where `clone3` or `CLONE_INTO_CGROUP` is missing (kernels before 5.7, seccomp filters
//! that refuse `clone3`), the same child code runs after a plain fork and moves itself first, which
//! is what the old path did.
//!
//! The child shares air-nanny's memory (`CLONE_VM`, as posix_spawn's vfork does) on a small stack
//! of its own ([`Stack`]): a fork would copy the page tables of everything air-nanny has resident
//! and then take a write fault for every page either side touches — at 1000 services, 15 MiB of
//! it for every spawn. Unlike vfork, the parent is not suspended until the exec (a program on a
//! hung mount would freeze the runtime): it returns at once, and what the child reads — its stack,
//! its arguments — stays allocated in a [`Flight`] until the report pipe says the child has exec'd
//! or exited. Sharing memory with a running parent, the child runs only raw system calls
//! ([`sys`]: no libc call, nothing that writes `errno` or any other memory of the parent's), on
//! values prepared before the clone; signals are blocked around the clone and the child resets
//! every caught signal to its default before it unblocks them, so no handler of air-nanny's ever
//! runs in it. A failure there is sent back as an errno over a close-on-exec pipe; end of file on
//! that pipe means the exec happened (or the child exited) and its memory may be reused.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cgroup::ServiceCgroup;

/// `CLONE_VM` (linux/sched.h).
const CLONE_VM: u64 = 0x100;
/// `CLONE_INTO_CGROUP` (linux/sched.h, kernel 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLONE_FILES` and `CLONE_PIDFD` (linux/sched.h).
const CLONE_FILES: u64 = 0x400;
const CLONE_PIDFD: u64 = 0x1000;
/// `CLOSE_RANGE_UNSHARE` (linux/close_range.h, kernel 5.9).
const CLOSE_RANGE_UNSHARE: usize = 1 << 1;
/// `close_range`'s number: 436 on every architecture (numbers from 424 on are shared).
const SYS_CLOSE_RANGE: libc::c_long = 436;

/// `struct clone_args` as of kernel 5.7 (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Set once `clone3(CLONE_INTO_CGROUP)` turned out not to be available: later spawns go straight
/// to the fork-and-move path.
static NO_CLONE_INTO_CGROUP: AtomicBool = AtomicBool::new(false);

/// What to do about the child's user and limits, besides what the [`Command`] says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras {
    /// Run as (uid, gid), with no supplementary groups.
    pub user: Option<(u32, u32)>,
    /// The open-file limit to give the child (`None`: inherit air-nanny's).
    pub nofile: Option<(u64, u64)>,
    /// A restart, whose child's exec is what the service waits for: once the child has a table of
    /// its own and is registered, air-nanny yields its CPU (`sched_yield`, by the reaper, outside
    /// its lock: `Reaper::begin_launch`), so that a child cloned onto air-nanny's
    /// CPU goes on to its exec before air-nanny's own work after the clone (the restart's notes,
    /// its bookkeeping) instead of waiting for it — woken by the child's first step, air-nanny
    /// would otherwise take the CPU back from it at once. Where the child runs on another CPU, the
    /// yield returns at once. Not for a boot's or a shutdown's many children: each would get the
    /// CPU before the next is cloned (tried: bring-up and shutdown 5–9 % longer at N = 1000).
    pub hurry: bool,
}

/// Spawns `cmd` (program, arguments, environment changes, working directory) as a child in its own
/// process group, born in `cgroup`, with stdin on /dev/null and stdout and stderr on `output`.
/// Returns its pid once it has exec'd; an error (the program missing, the working directory
/// missing, the cgroup refusing members…) means no child is left running. The caller must reap the
/// child (see `reaper`).
///
/// `cmd`'s stdio settings and `pre_exec` closures are not used; the child always gets a new
/// process group and the default SIGPIPE disposition, as std gives it.
///
/// The blocking form of [`launch_into`], for tests (air-nanny itself never waits for an exec on
/// its runtime thread).
#[cfg(test)]
pub fn spawn_into(cmd: &Command, output: BorrowedFd<'_>, cgroup: &ServiceCgroup, extras: Extras) -> io::Result<i32> {
    Prepared::born_in(Arc::new(Prepared::new(cmd, output, extras)?), cgroup, Prepared::run)
}

/// For tests: makes every later [`spawn_into`] take the fork-and-move path.
#[doc(hidden)]
pub fn force_move_path() {
    NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed);
}

/// The errors of a kernel or a filter that lacks `clone3` or `CLONE_INTO_CGROUP` (5.3–5.6 answer
/// EINVAL to the unknown flag or E2BIG to the larger struct; container filters ENOSYS or EPERM).
fn clone3_missing(e: &SpawnError) -> bool {
    matches!(e, SpawnError::Clone(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM)))
}

#[derive(Clone, Copy)]
enum Birth<'a> {
    /// `clone3(CLONE_VM | CLONE_INTO_CGROUP)` with this cgroup directory.
    Into(BorrowedFd<'a>),
    /// A fork whose child writes itself into this `cgroup.procs` first.
    Move(BorrowedFd<'a>),
}

/// Why a spawn failed: the clone itself, a step in the child (named as the stage), or a kill
/// before the child ran a single instruction.
enum SpawnError {
    Clone(io::Error),
    Child(io::Error),
    KilledAtBirth,
}

impl From<SpawnError> for io::Error {
    fn from(e: SpawnError) -> io::Error {
        match e {
            SpawnError::Clone(e) | SpawnError::Child(e) => e,
            SpawnError::KilledAtBirth => {
                io::Error::other("the child was killed before it ran (its cgroup was being killed)")
            }
        }
    }
}

/// The byte a child sends first, before anything else: it is running.
const RUNNING: u8 = b'R';

/// Everything the child needs, built before the clone (the child may not allocate). The strings
/// are in one allocation and so are the pointers to them: a thousand children in flight at a boot
/// must not leave the allocator with a thousand scattered environments' worth of free slots.
struct Prepared {
    /// The program, the arguments, the environment and the working directory, each NUL-terminated.
    bytes: Box<[u8]>,
    /// The arguments' pointers into `bytes`, a null, the environment's, a null.
    ptrs: Box<[*const libc::c_char]>,
    /// Where the environment's pointers start in `ptrs`.
    envp: usize,
    /// Where the program's path starts in `bytes`.
    program: usize,
    /// Where the working directory starts in `bytes`.
    cwd: Option<usize>,
    stdin: &'static OwnedFd,
    /// The output descriptor, at a number above 2 so that the child's dup3s cannot clobber it.
    output: OwnedFd,
    extras: Extras,
    root: bool,
}

/// The steps of the child, reported with an errno when one fails.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Stage {
    Cgroup = 1,
    ProcessGroup,
    Stdio,
    WorkDir,
    Limit,
    Groups,
    Gid,
    Uid,
    Signals,
    Exec,
    Files,
}

impl Stage {
    fn describe(v: u32) -> &'static str {
        match v {
            1 => "joining the cgroup",
            2 => "setting the process group",
            3 => "setting up stdin/stdout/stderr",
            4 => "changing to the working directory",
            5 => "setting the open-file limit",
            6 => "dropping supplementary groups",
            7 => "setting the group id",
            8 => "setting the user id",
            9 => "resetting signals",
            11 => "taking a descriptor table of its own",
            _ => "exec",
        }
    }
}

// SAFETY: the raw pointers point into `bytes`, which is never changed after they are taken.
unsafe impl Send for Prepared {}
// SAFETY: as above; nothing of a `Prepared` is mutable.
unsafe impl Sync for Prepared {}

/// What a child reads while it runs beside its parent: its arguments, its stack. Boxed, so that it
/// does not move; freed (the stack back to the pool) only once the child has exec'd or exited.
struct Flight {
    prepared: Arc<Prepared>,
    /// `Some` for a child that shares air-nanny's memory.
    stack: Option<Stack>,
    /// The child's `cgroup.procs` to write itself into (the fork path).
    procs: Option<RawFd>,
    /// The numbers of its descriptors in the child's table.
    fds: ChildFds,
}

/// Where the child finds its descriptors: stdin, output, and the report pipe's write end (the
/// parent closes its own copy once the child has its own table).
#[derive(Clone, Copy)]
struct ChildFds {
    stdin: RawFd,
    output: RawFd,
    report: RawFd,
    /// Born sharing air-nanny's descriptor table ([`Slots`]): the child first takes a table of its
    /// own holding only the descriptors below this number.
    unshare_below: Option<RawFd>,
}

impl ChildFds {
    /// The descriptors at their own numbers, in a child that gets a copy of the whole table.
    fn copied(prepared: &Prepared, report: &OwnedFd) -> ChildFds {
        ChildFds {
            stdin: prepared.stdin.as_raw_fd(),
            output: prepared.output.as_raw_fd(),
            report: report.as_raw_fd(),
            unshare_below: None,
        }
    }
}

impl Flight {
    fn new(prepared: &Arc<Prepared>, procs: Option<RawFd>, fds: ChildFds, stack: Option<Stack>) -> Box<Flight> {
        Box::new(Flight { prepared: Arc::clone(prepared), stack, procs, fds })
    }
}

/// Three low descriptor numbers held for the child of a spawn: its stdin, output and report pipe
/// are put there (dup3) before a clone that shares air-nanny's descriptor table (`CLONE_FILES`),
/// and the child's first step is `close_range(below, ~0, CLOSE_RANGE_UNSHARE)`: a table of its own
/// with only the descriptors below `below`.
///
/// Why: a child that gets a copy of the whole table (a plain clone) copies a reference to every
/// descriptor air-nanny holds — two per service, 2000 at N = 1000 — and its exec then closes each
/// of them again, touching every file and inode cold: measured at 0.3–0.6 ms of a script's exec
/// (`do_close_on_exec`, 80 % of it), on the path from a death to the restarted program, and a
/// third of a second of CPU over a boot of a thousand. The numbers are held while a child may
/// still share the table: from the dup3s until its first byte arrives on the report pipe (or it
/// is gone), which is the child's first system calls after the clone. Kernels before 5.9 (no
/// `close_range`) get the whole copy through `unshare(CLONE_FILES)`.
struct Slots {
    stdin: RawFd,
    output: RawFd,
    report: RawFd,
    /// Held from the dup3s until the child has a table of its own.
    lock: std::sync::Mutex<()>,
}

/// Slots are only worth having at low numbers (the child's table keeps everything below them).
pub(crate) const SLOTS_BELOW: RawFd = 64;

static SLOTS: OnceLock<Option<Slots>> = OnceLock::new();

/// Takes the three slot numbers while the descriptor table is still nearly empty: call early, before
/// the services' files are opened (the first spawn would take them otherwise, perhaps high).
pub fn reserve_slots() {
    slots();
}

/// air-nanny's environment, taken once by [`keep_environment`]: what every child's starts from.
static ENVIRONMENT: OnceLock<Vec<(OsString, OsString)>> = OnceLock::new();

/// Takes air-nanny's environment as every child's base from now on (after the variables meant for
/// air-nanny alone have been taken out of it, see `fdstore::take_handed_back`), so that a spawn
/// does not copy and sort it again: a respawn at N = 1000 spent 0.2 ms there, most of it in the
/// allocator. Without it (unit tests, which change their environment), each spawn reads it anew.
pub fn keep_environment() {
    let _ = ENVIRONMENT.set(environment());
}

/// A child's environment: `base` without the variables `changes` names (sorted by name, as
/// `Command::get_envs` gives them), then those it sets.
fn child_environment<'a>(
    base: &'a [(OsString, OsString)],
    changes: &'a [(&'a OsStr, Option<&'a OsStr>)],
) -> impl Iterator<Item = (&'a OsStr, &'a OsStr)> + Clone + 'a {
    let changed = |k: &OsStr| changes.binary_search_by(|(c, _)| (*c).cmp(k)).is_ok();
    base.iter()
        .filter(move |(k, _)| !changed(k))
        .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
        .chain(changes.iter().filter_map(|&(k, v)| Some((k, v?))))
}

/// The process's environment, sorted by name, each name once.
fn environment() -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    env.sort_by(|a, b| a.0.cmp(&b.0));
    env.dedup_by(|a, b| a.0 == b.0);
    env
}

fn slots() -> Option<&'static Slots> {
    SLOTS
        .get_or_init(|| {
            let mut held = Vec::new();
            for _ in 0..3 {
                match File::options().read(true).write(true).open("/dev/null") {
                    Ok(f) => held.push(OwnedFd::from(f)),
                    Err(e) => {
                        tracing::debug!("no descriptor slots for spawns: {e}");
                        return None;
                    }
                }
            }
            // Not 0–2 (air-nanny started with one of them closed) and low.
            if held.iter().any(|f| f.as_raw_fd() <= 2 || f.as_raw_fd() >= SLOTS_BELOW) {
                tracing::debug!("no low descriptor slots for spawns; children copy the whole table");
                return None;
            }
            let [a, b, c] = [0, 1, 2].map(|i| held[i].as_raw_fd());
            std::mem::forget(held);
            Some(Slots { stdin: a, output: b, report: c, lock: std::sync::Mutex::new(()) })
        })
        .as_ref()
}

impl Slots {
    /// One past the highest slot: what the child keeps of the table.
    fn below(&self) -> RawFd {
        self.stdin.max(self.output).max(self.report) + 1
    }

    /// `fd` into `slot`, close-on-exec.
    fn put(fd: RawFd, slot: RawFd) -> io::Result<()> {
        // SAFETY: dup3 onto a number this module holds (never handed out by the kernel meanwhile,
        // since it is always open).
        if unsafe { libc::dup3(fd, slot, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Back to /dev/null: the slots no longer hold the child's output or keep its report pipe open.
    fn release(&self) {
        let null = self.stdin;
        let _ = Self::put(null, self.output);
        let _ = Self::put(null, self.report);
    }
}

/// Waits until the child cloned with a shared table has a table of its own: a byte on its report
/// pipe (the first thing it writes after unsharing, or its failure), or its end (killed at birth).
fn wait_unshared(report: &OwnedFd, pidfd: &OwnedFd) -> io::Result<()> {
    let mut fds = [
        libc::pollfd { fd: report.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: poll on two descriptors we hold, for at most UNSHARE_TIMEOUT_MS.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, UNSHARE_TIMEOUT_MS) };
        if n > 0 {
            return Ok(());
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the child did not start running"));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How long a child may take to run its first system calls (it is stopped, or the machine is
/// overloaded beyond use): then it is killed.
const UNSHARE_TIMEOUT_MS: libc::c_int = 10_000;

/// The entry of a child that shares air-nanny's memory, called on its own stack by
/// [`sys::clone3_then`].
///
/// # Safety
/// Only as the child of [`sys::clone3_then`], with `flight` a live [`Flight`].
unsafe extern "C" fn child_entry(flight: *const libc::c_void) -> ! {
    let f = &*flight.cast::<Flight>();
    f.prepared.child(f.procs, f.fds)
}

impl Prepared {
    /// Runs `start` (a clone that waits for the exec, or one that returns at once) with the child
    /// cloned into `cgroup`, or moving itself in where that cannot be: the kernel lacks it, the
    /// cgroup was killed before, or a child cloned into it was killed at birth.
    fn born_in<T>(
        this: Arc<Prepared>,
        cgroup: &ServiceCgroup,
        start: impl Fn(&Arc<Prepared>, Birth<'_>) -> Result<T, SpawnError>,
    ) -> io::Result<T> {
        if !NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed) && !cgroup.was_killed() {
            let dir = cgroup.open_dir()?;
            match start(&this, Birth::Into(dir.as_fd())) {
                Err(SpawnError::KilledAtBirth) => {
                    tracing::debug!(cgroup = %cgroup.dir().display(), "a child cloned into a cgroup killed before was killed at birth; moving children in");
                    cgroup.mark_killed();
                }
                Err(e) if clone3_missing(&e) => {
                    tracing::info!(
                        "clone3(CLONE_INTO_CGROUP) is not available ({}): children move into their cgroups",
                        io::Error::from(e)
                    );
                    NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed);
                }
                other => return other.map_err(io::Error::from),
            }
        }
        let procs = std::fs::OpenOptions::new().write(true).open(cgroup.dir().join("cgroup.procs"))?;
        start(&this, Birth::Move(procs.as_fd())).map_err(io::Error::from)
    }

    fn new(cmd: &Command, output: BorrowedFd<'_>, extras: Extras) -> io::Result<Prepared> {
        let program = resolve(cmd.get_program())?;
        // air-nanny's environment as it was at start, less what the command changes (sorted, each
        // name once), then what it sets.
        let changes: Vec<(&OsStr, Option<&OsStr>)> = cmd.get_envs().collect();
        let fresh;
        let base: &[(OsString, OsString)] = match ENVIRONMENT.get() {
            Some(e) => e,
            None => {
                fresh = environment();
                &fresh
            }
        };
        let env = child_environment(base, &changes);
        // Every string in one buffer, sized once: nothing is allocated per variable.
        let size = program.as_bytes().len()
            + std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.len() + 1).sum::<usize>()
            + env.clone().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()
            + cmd.get_current_dir().map_or(0, |d| d.as_os_str().len() + 1);
        let mut bytes = Vec::with_capacity(size + 1);
        let mut offsets = Vec::with_capacity(cmd.get_args().len() + 1 + base.len() + changes.len());
        let mut push = |parts: &[&[u8]], what: &str| {
            if parts.iter().any(|p| p.contains(&0)) {
                return Err(invalid(&format!("{what} contains a NUL byte")));
            }
            let at = bytes.len();
            parts.iter().for_each(|p| bytes.extend_from_slice(p));
            bytes.push(0);
            Ok(at)
        };
        let program = push(&[program.as_bytes()], "the program")?;
        offsets.push(push(&[cmd.get_program().as_bytes()], "the program")?);
        for a in cmd.get_args() {
            offsets.push(push(&[a.as_bytes()], "an argument")?);
        }
        let envp = offsets.len();
        for (k, v) in env {
            offsets.push(push(&[k.as_bytes(), b"=", v.as_bytes()], "an environment variable")?);
        }
        let cwd =
            cmd.get_current_dir().map(|d| push(&[d.as_os_str().as_bytes()], "the working directory")).transpose()?;
        let bytes = bytes.into_boxed_slice();
        let at = |o: usize| bytes.as_ptr().wrapping_add(o).cast::<libc::c_char>();
        let mut ptrs = Vec::with_capacity(offsets.len() + 2);
        ptrs.extend(offsets[..envp].iter().map(|&o| at(o)));
        ptrs.push(std::ptr::null());
        ptrs.extend(offsets[envp..].iter().map(|&o| at(o)));
        ptrs.push(std::ptr::null());
        Ok(Prepared {
            ptrs: ptrs.into_boxed_slice(),
            bytes,
            envp: envp + 1,
            program,
            cwd,
            stdin: dev_null()?,
            output: above_stdio(output)?,
            extras,
            // SAFETY: geteuid has no preconditions.
            root: unsafe { libc::geteuid() } == 0,
        })
    }

    /// Clones (as `birth` says), runs the child's steps and waits until it has exec'd or failed.
    #[cfg(test)]
    fn run(this: &Arc<Prepared>, birth: Birth<'_>) -> Result<i32, SpawnError> {
        let mut launch = Prepared::launch(this, birth)?;
        let pid = launch.pid;
        let mut r = File::from(launch.report.try_clone().map_err(SpawnError::Child)?);
        let mut report = [0u8; REPORT_MAX];
        let mut got = 0;
        loop {
            match io::Read::read(&mut r, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Cannot tell whether it exec'd: make sure it does not run unknown.
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    reap(pid);
                    return Err(SpawnError::Child(e));
                }
            }
            if got == report.len() {
                return Err(SpawnError::Child(io::Error::other("the child's report is too long")));
            }
        }
        launch.landed = true;
        match decode(&report[..got]) {
            Ok(()) => Ok(pid),
            Err(e) => {
                // The child failed or was killed before exec, and exits at once: collect it here,
                // so that no zombie and no stray exit is left for the reaper.
                reap(pid);
                Err(e)
            }
        }
    }

    /// Clones (as `birth` says) a child that runs its steps and execs; returns at once.
    fn launch(this: &Arc<Prepared>, birth: Birth<'_>) -> Result<Launch, SpawnError> {
        let (report_r, report_w) = pipe().map_err(SpawnError::Clone)?;
        let (pid, flight) = match birth {
            Birth::Into(dir) => {
                let stack = Stack::take().map_err(SpawnError::Clone)?;
                let (base, size) = (stack.base as u64, stack.len as u64);
                let slots = slots();
                let _held = slots.map(|sl| sl.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                let fds = match slots {
                    Some(sl) => {
                        let put = Slots::put(this.stdin.as_raw_fd(), sl.stdin)
                            .and_then(|()| Slots::put(this.output.as_raw_fd(), sl.output))
                            .and_then(|()| Slots::put(report_w.as_raw_fd(), sl.report));
                        if let Err(e) = put {
                            sl.release();
                            return Err(SpawnError::Clone(e));
                        }
                        ChildFds {
                            stdin: sl.stdin,
                            output: sl.output,
                            report: sl.report,
                            unshare_below: Some(sl.below()),
                        }
                    }
                    None => ChildFds::copied(this, &report_w),
                };
                let flight = Flight::new(this, None, fds, Some(stack));
                let mut pidfd: libc::c_int = -1;
                let mut args = CloneArgs {
                    flags: CLONE_VM | CLONE_INTO_CGROUP,
                    exit_signal: libc::SIGCHLD as u64,
                    stack: base,
                    stack_size: size,
                    cgroup: dir.as_raw_fd() as u64,
                    ..CloneArgs::default()
                };
                if slots.is_some() {
                    args.flags |= CLONE_FILES | CLONE_PIDFD;
                    args.pidfd = std::ptr::from_mut(&mut pidfd) as u64;
                }
                // SAFETY: the child runs `child_entry` on the flight's stack, reading only the
                // flight, which stays allocated until the report pipe is closed (see `Launch`).
                let ret = with_signals_blocked(|| unsafe {
                    sys::clone3_then(
                        &args,
                        std::mem::size_of::<CloneArgs>(),
                        child_entry,
                        std::ptr::from_ref::<Flight>(&flight).cast(),
                    )
                });
                if ret < 0 {
                    if let Some(sl) = slots {
                        sl.release();
                    }
                    return Err(SpawnError::Clone(io::Error::from_raw_os_error(-ret as i32)));
                }
                if let Some(sl) = slots {
                    // SAFETY: CLONE_PIDFD filled in a new descriptor, ours alone.
                    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
                    let ran = wait_unshared(&report_r, &pidfd);
                    if let Err(e) = ran {
                        // Stopped before its first step: it must not go on with the table shared.
                        // SAFETY: pidfd_send_signal on the child's pidfd, which we hold.
                        unsafe {
                            libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, 0, 0);
                        }
                        let mut gone = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                        // SAFETY: poll on the pidfd we hold, until the killed child has ended.
                        while unsafe { libc::poll(&mut gone, 1, -1) } < 0 {}
                        sl.release();
                        // Ended, it reads nothing more: the flight may go (the reaper collects it).
                        return Err(SpawnError::Child(e));
                    }
                    sl.release();
                }
                (ret, flight)
            }
            Birth::Move(procs) => {
                let flight = Flight::new(this, Some(procs.as_raw_fd()), ChildFds::copied(this, &report_w), None);
                // SAFETY: clone with only the exit signal and no stack is fork(2) (the argument
                // order differs between architectures, but every other argument is 0): the child
                // continues here on a copy of this memory, and only runs `child`, which never
                // returns.
                let pid = with_signals_blocked(|| {
                    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
                    if pid == 0 {
                        // SAFETY: we are the child of the fork above.
                        unsafe { child_entry(std::ptr::from_ref::<Flight>(&flight).cast()) }
                    }
                    pid
                });
                if pid < 0 {
                    return Err(SpawnError::Clone(io::Error::last_os_error()));
                }
                (pid as isize, flight)
            }
        };
        // The child has its own copy of the descriptor table: only its copy of the write end keeps
        // the pipe open now.
        drop(report_w);
        Ok(Launch { pid: pid as i32, report: report_r, flight: Some(flight), landed: false })
    }

    /// The child between clone and exec, on memory prepared before the clone, which it only
    /// reads: raw system calls only, no libc (see the module documentation).
    ///
    /// # Safety
    /// Must only be called in the child of a clone, with `report` the write end of the report
    /// pipe.
    unsafe fn child(&self, procs: Option<RawFd>, fds: ChildFds) -> ! {
        use sys::{call, Arg};
        let report = fds.report;
        if let Some(below) = fds.unshare_below {
            // Born sharing air-nanny's table: a table of its own first, holding only the slots and
            // what lies below them (see `Slots`); before 5.9, a copy of the whole table.
            let own = call(SYS_CLOSE_RANGE, [below.arg(), u32::MAX as usize, CLOSE_RANGE_UNSHARE, 0, 0, 0]);
            if own < 0 {
                let copied = call(libc::SYS_unshare, [libc::CLONE_FILES as usize, 0, 0, 0, 0, 0]);
                if copied < 0 {
                    call(libc::SYS_write, [report.arg(), std::ptr::from_ref(&RUNNING).arg(), 1, 0, 0, 0]);
                    report_and_exit(report, Stage::Files, -copied)
                }
            }
        }
        call(libc::SYS_write, [report.arg(), std::ptr::from_ref(&RUNNING).arg(), 1, 0, 0, 0]);
        let check = |stage: Stage, ret: isize| {
            if ret < 0 {
                report_and_exit(report, stage, -ret)
            }
        };
        // Before anything could deliver a signal (they are blocked from birth): every caught signal
        // back to its default; ignored ones stay ignored but SIGPIPE, which Rust ignores and
        // programs expect at its default.
        let dfl = KernelSigaction::default();
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction::default();
            let size = std::mem::size_of::<u64>();
            let got = call(libc::SYS_rt_sigaction, [sig.arg(), 0, std::ptr::from_mut(&mut old).arg(), size, 0, 0]);
            if got == 0 && (old.handler != libc::SIG_IGN || sig == libc::SIGPIPE) && old.handler != libc::SIG_DFL {
                let set = call(libc::SYS_rt_sigaction, [sig.arg(), std::ptr::from_ref(&dfl).arg(), 0, size, 0, 0]);
                check(Stage::Signals, set);
            }
        }
        if let Some(fd) = procs {
            let wrote = call(libc::SYS_write, [fd.arg(), b"0".as_ptr().arg(), 1, 0, 0, 0]);
            check(Stage::Cgroup, if wrote == 1 { 0 } else { wrote.min(-(libc::EIO as isize)) });
        }
        check(Stage::ProcessGroup, call(libc::SYS_setpgid, [0; 6]));
        // Both descriptors are above 2 (`above_stdio`), so dup3 never sees equal numbers.
        let out = fds.output;
        for (from, to) in [(fds.stdin, 0), (out, 1), (out, 2)] {
            check(Stage::Stdio, call(libc::SYS_dup3, [from.arg(), to, 0, 0, 0, 0]));
        }
        if let Some(cwd) = self.cwd {
            check(Stage::WorkDir, call(libc::SYS_chdir, [self.bytes.as_ptr().wrapping_add(cwd).arg(), 0, 0, 0, 0, 0]));
        }
        if let Some((cur, max)) = self.extras.nofile {
            let lim: [u64; 2] = [cur, max];
            let res = libc::RLIMIT_NOFILE as usize;
            check(Stage::Limit, call(libc::SYS_prlimit64, [0, res, lim.as_ptr().arg(), 0, 0, 0]));
        }
        if let Some((uid, gid)) = self.extras.user {
            if self.root {
                check(Stage::Groups, call(SYS_SETGROUPS, [0; 6]));
            }
            let (gid, uid) = (gid as usize, uid as usize);
            check(Stage::Gid, call(SYS_SETRESGID, [gid, gid, gid, 0, 0, 0]));
            check(Stage::Uid, call(SYS_SETRESUID, [uid, uid, uid, 0, 0, 0]));
        }
        let empty = 0u64;
        let size = std::mem::size_of::<u64>();
        let unmasked =
            call(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK.arg(), std::ptr::from_ref(&empty).arg(), 0, size, 0, 0]);
        check(Stage::Signals, unmasked);
        let (program, argv) = (self.bytes.as_ptr().wrapping_add(self.program), self.ptrs.as_ptr());
        let envp = argv.wrapping_add(self.envp);
        let ret = call(libc::SYS_execve, [program.arg(), argv.arg(), envp.arg(), 0, 0, 0]);
        report_and_exit(report, Stage::Exec, -ret)
    }
}

/// Runs `f` (a clone) with every signal blocked on this thread, so that the child starts with them
/// blocked: it resets the caught ones to their default before it unblocks them, and no handler of
/// air-nanny's runs in it (with `CLONE_VM`, on air-nanny's memory). (libc keeps its few internal
/// signals, for thread cancellation and set*id broadcasts, which air-nanny never uses.)
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t is plain data; pthread_sigmask on this thread, restored after. A failing
    // call leaves the mask as it was.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction` on the architectures air-nanny is built for
/// (handler, flags, restorer, then the 64-bit mask as unsigned longs). Only the handler is read,
/// and only the default (all zero) is written.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: [libc::c_ulong; 64 / libc::c_ulong::BITS as usize],
}

/// The child's end: the failed stage and errno to the parent, then exit 127.
///
/// # Safety
/// Only in the child, with `report` the write end of the report pipe.
unsafe fn report_and_exit(report: RawFd, stage: Stage, errno: isize) -> ! {
    use sys::{call, Arg};
    let errno = i32::try_from(errno).unwrap_or(libc::EIO);
    let mut msg = [0u8; 8];
    let (s, e) = msg.split_at_mut(4);
    s.copy_from_slice(&(stage as u32).to_ne_bytes());
    e.copy_from_slice(&errno.to_ne_bytes());
    call(libc::SYS_write, [report.arg(), msg.as_ptr().arg(), msg.len(), 0, 0, 0]);
    call(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
    // exit_group does not return.
    loop {
        call(libc::SYS_exit, [127, 0, 0, 0, 0, 0]);
    }
}

#[cfg(not(target_arch = "arm"))]
use libc::{SYS_setgroups as SYS_SETGROUPS, SYS_setresgid as SYS_SETRESGID, SYS_setresuid as SYS_SETRESUID};
#[cfg(target_arch = "arm")]
use libc::{SYS_setgroups32 as SYS_SETGROUPS, SYS_setresgid32 as SYS_SETRESGID, SYS_setresuid32 as SYS_SETRESUID};

/// The length of a failure report: RUNNING, the stage and the errno.
const REPORT: usize = 9;
/// Room to read a report into and see that it is not longer.
const REPORT_MAX: usize = 16;

/// What a child's report pipe said when it closed: RUNNING alone is an exec.
fn decode(report: &[u8]) -> Result<(), SpawnError> {
    if report == [RUNNING] {
        return Ok(());
    }
    if report.is_empty() {
        return Err(SpawnError::KilledAtBirth);
    }
    if report.len() != REPORT || report[0] != RUNNING {
        return Err(SpawnError::Child(io::Error::other("the child's error report was cut short")));
    }
    let stage = u32::from_ne_bytes(report[1..5].try_into().unwrap_or_default());
    let errno = i32::from_ne_bytes(report[5..9].try_into().unwrap_or_default());
    let os = io::Error::from_raw_os_error(errno);
    if stage == Stage::Exec as u32 {
        return Err(SpawnError::Child(os));
    }
    let what = Stage::describe(stage);
    if stage == Stage::Cgroup as u32 {
        return Err(SpawnError::Clone(io::Error::new(os.kind(), format!("{what}: {os}"))));
    }
    Err(SpawnError::Child(io::Error::new(os.kind(), format!("{what}: {os}"))))
}

/// A child cloned into its cgroup and on its way to exec: [`Launch::exec`] says how that went.
/// The caller must have the child reaped either way (a failed child exits at once).
///
/// Holds the child's [`Flight`] until the report pipe is closed. Dropped before that (an exec that
/// timed out), the flight is leaked rather than freed under a child that may still read it.
pub struct Launch {
    pub pid: i32,
    report: OwnedFd,
    flight: Option<Box<Flight>>,
    /// The report pipe was read to its end: the child no longer uses the flight.
    landed: bool,
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Some(mut flight) = self.flight.take() {
            if self.landed || closed(self.report.as_fd()) {
                if let Some(stack) = flight.stack.take() {
                    stack.give_back();
                }
            } else {
                LEAKED.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    pid = self.pid,
                    "a child still on its way to exec: its stack and arguments are left allocated"
                );
                std::mem::forget(flight);
            }
        }
    }
}

/// Flights left allocated because their `Launch` was dropped while the child could still read them.
static LEAKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether every write end of a report pipe is closed now: the child has exec'd or exited (what it
/// wrote may still be unread).
fn closed(report: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd { fd: report.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one pollfd of ours, without waiting.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    ready == 1 && p.revents & libc::POLLHUP != 0
}

/// Why a launched child did not exec.
#[derive(Debug)]
pub enum ExecError {
    /// Killed before it ran a single instruction (its cgroup had been killed: see the module
    /// documentation); nothing of it ran, so it may be launched again by the move path.
    KilledAtBirth,
    Failed(io::Error),
}

impl From<ExecError> for io::Error {
    fn from(e: ExecError) -> io::Error {
        match e {
            ExecError::KilledAtBirth => SpawnError::KilledAtBirth.into(),
            ExecError::Failed(e) => e,
        }
    }
}

impl Launch {
    /// Waits, without blocking the thread, until the child has exec'd (`Ok`) or failed.
    pub async fn exec(mut self) -> Result<(), ExecError> {
        let raw = self.report.as_raw_fd();
        // SAFETY: fcntl on the pipe's read end, which we own.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(ExecError::Failed(io::Error::last_os_error()));
        }
        // SAFETY: registered by number; `self` keeps the descriptor open (and the same file) for
        // as long as it is registered: `fd` is dropped before `self`.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(raw, tokio::io::Interest::READABLE) }
            .map_err(|e| ExecError::Failed(e.into()))?;
        let mut report = [0u8; REPORT_MAX];
        let mut got = 0;
        loop {
            let mut guard = fd.readable().await.map_err(ExecError::Failed)?;
            let read = guard.try_io(|f| {
                // SAFETY: a read into the unfilled part of our buffer.
                let n = unsafe { libc::read(*f.get_ref(), report[got..].as_mut_ptr().cast(), report.len() - got) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(ExecError::Failed(e)),
                Err(_would_block) => {}
            }
            if got == report.len() {
                return Err(ExecError::Failed(io::Error::other("the child's report is too long")));
            }
        }
        drop(fd);
        self.landed = true;
        match decode(&report[..got]) {
            Ok(()) => Ok(()),
            Err(SpawnError::KilledAtBirth) => Err(ExecError::KilledAtBirth),
            Err(e) => Err(ExecError::Failed(e.into())),
        }
    }
}

/// Like [`spawn_into`], but returns as soon as the child is cloned: the runtime thread does not
/// wait for the exec (half a millisecond each, which a shutdown running a hundred stop commands
/// paid one after another). A child killed at birth is the caller's to launch again
/// ([`ExecError::KilledAtBirth`]) after [`ServiceCgroup::mark_killed`].
pub fn launch_into(
    cmd: &Command,
    output: BorrowedFd<'_>,
    cgroup: &ServiceCgroup,
    extras: Extras,
) -> io::Result<Launch> {
    Prepared::born_in(Arc::new(Prepared::new(cmd, output, extras)?), cgroup, Prepared::launch)
}

/// A child's stack: a private anonymous mapping with a guard page at its low end. The child of a
/// spawn touches a page or two of it; a few stacks are kept for the next spawns, the rest
/// unmapped, so a boot that had a thousand children in flight does not keep their stacks.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: a mapping owned by this value alone.
unsafe impl Send for Stack {}

/// The stacks kept for reuse.
static STACKS: std::sync::Mutex<Vec<Stack>> = std::sync::Mutex::new(Vec::new());
/// How many stacks are kept.
const STACKS_KEPT: usize = 4;
/// The size of a child's stack, guard page included; the child's frames take well under 4 KiB.
const STACK_SIZE: usize = 64 * 1024;

impl Stack {
    fn take() -> io::Result<Stack> {
        if let Some(s) = STACKS.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let len = STACK_SIZE.max(4 * page);
        // SAFETY: a new anonymous mapping, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of our own mapping.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn give_back(self) {
        let mut kept = STACKS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < STACKS_KEPT {
            kept.push(self);
        }
    }
}

/// Unmaps the stacks kept for reuse (once a boot is over: what its children touched of them need
/// not stay resident while nothing is spawned).
pub fn drop_spare_stacks() {
    let spare = std::mem::take(&mut *STACKS.lock().unwrap_or_else(|p| p.into_inner()));
    drop(spare);
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used by any child.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Raw system calls for the child, which shares air-nanny's memory: the kernel's result as it is
/// (a negative errno on failure), no `errno`, no thread-local storage, no libc.
mod sys {
    use super::CloneArgs;

    /// A system call argument: an integer or a pointer, passed as a machine word.
    pub trait Arg {
        fn arg(self) -> usize;
    }
    impl Arg for i32 {
        fn arg(self) -> usize {
            self as isize as usize
        }
    }
    impl<T> Arg for *const T {
        fn arg(self) -> usize {
            self as usize
        }
    }
    impl<T> Arg for *mut T {
        fn arg(self) -> usize {
            self as usize
        }
    }

    /// The system call `n` with six arguments.
    ///
    /// # Safety
    /// As the system call itself.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
        ret
    }

    #[cfg(target_arch = "aarch64")]
    pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        core::arch::asm!(
            "svc #0",
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5], in("x8") n,
            options(nostack),
        );
        ret
    }

    #[cfg(target_arch = "arm")]
    pub unsafe fn call(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        core::arch::asm!(
            "svc #0",
            inlateout("r0") a[0] as isize => ret,
            in("r1") a[1], in("r2") a[2], in("r3") a[3], in("r4") a[4], in("r5") a[5], in("r7") n,
            options(nostack),
        );
        ret
    }

    /// `clone3(args)`; the child starts on the stack `args` gives and calls `entry(arg)`, which
    /// never returns. The parent gets the child's pid, or a negative errno.
    ///
    /// # Safety
    /// `args` must give a stack (16-byte aligned top) that stays mapped while the child runs, and
    /// `entry` must be safe to call with `arg` in the child.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn clone3_then(
        args: *const CloneArgs,
        size: usize,
        entry: unsafe extern "C" fn(*const libc::c_void) -> !,
        arg: *const libc::c_void,
    ) -> isize {
        let ret: isize;
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            // The child, on its new stack.
            "and rsp, -16",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args, in("rsi") size, in("r12") entry, in("r13") arg,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
        ret
    }

    #[cfg(target_arch = "aarch64")]
    pub unsafe fn clone3_then(
        args: *const CloneArgs,
        size: usize,
        entry: unsafe extern "C" fn(*const libc::c_void) -> !,
        arg: *const libc::c_void,
    ) -> isize {
        let ret: isize;
        core::arch::asm!(
            "svc #0",
            "cbnz x0, 2f",
            // The child, on its new stack.
            "mov x0, x21",
            "blr x20",
            "brk #1",
            "2:",
            inlateout("x0") args as isize => ret,
            in("x1") size, in("x8") libc::SYS_clone3, in("x20") entry, in("x21") arg,
            options(nostack),
        );
        ret
    }

    #[cfg(target_arch = "arm")]
    pub unsafe fn clone3_then(
        args: *const CloneArgs,
        size: usize,
        entry: unsafe extern "C" fn(*const libc::c_void) -> !,
        arg: *const libc::c_void,
    ) -> isize {
        let ret: isize;
        core::arch::asm!(
            "svc #0",
            "cmp r0, #0",
            "bne 2f",
            // The child, on its new stack.
            "mov r0, r5",
            "blx r4",
            "udf #0",
            "2:",
            inlateout("r0") args as isize => ret,
            in("r1") size, in("r7") libc::SYS_clone3, in("r4") entry, in("r5") arg,
            options(nostack),
        );
        ret
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
    compile_error!("air-nanny's spawn has raw system calls for x86_64, aarch64 and arm only");
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| invalid("an argument contains a NUL byte"))
}

/// The program as exec'd: a name without a slash is looked up in PATH, like `Command` does.
fn resolve(program: &OsStr) -> io::Result<CString> {
    if program.as_bytes().contains(&b'/') {
        return cstring(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate: PathBuf = dir.join(program);
        if is_executable(&candidate) {
            return cstring(candidate.as_os_str());
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found in PATH", program.to_string_lossy())))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One /dev/null for every child's stdin, opened once.
fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let fd = above_stdio(File::open("/dev/null")?.as_fd())?;
    Ok(NULL.get_or_init(|| fd))
}

/// A close-on-exec duplicate of `fd` numbered 3 or above (air-nanny may have been started with
/// stdin, stdout or stderr closed, so a log file may be fd 1; dup2 onto 1 would then be a no-op
/// that leaves close-on-exec set).
fn above_stdio(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a borrowed, open fd; the result is a new fd we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two new descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits for a child that failed before exec (it exits at once).
#[cfg(test)]
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A cgroup of the test's own, or `None` (said loudly) where there is no writable cgroup2.
    fn cgroup(tag: &str) -> Option<(crate::cgroup::Hierarchy, crate::cgroup::ServiceCgroup)> {
        let base = format!("/air-nanny-unit-spawn-{}-{tag}", std::process::id());
        match crate::cgroup::Hierarchy::open(Some(&base)) {
            Ok(h) => {
                let cg = h.service("spawn.test");
                cg.create().unwrap();
                Some((h, cg))
            }
            Err(e) => {
                eprintln!("!!! NO WRITABLE CGROUP V2 HERE ({e}): spawn test skipped");
                None
            }
        }
    }

    /// The child's status, or `None` when a reaper test running beside this one (they call
    /// `waitpid(-1)`) collected it first.
    fn wait(pid: i32) -> Option<nix::sys::wait::WaitStatus> {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(s) => Some(s),
            Err(nix::errno::Errno::ECHILD) => None,
            Err(e) => panic!("waitpid: {e}"),
        }
    }

    fn in_cgroup(move_path: bool) {
        let Some((h, cg)) = cgroup(if move_path { "move" } else { "clone3" }) else { return };
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("out")).unwrap();
        let mut cmd = Command::new("sh");
        // The shell forks a worker before anything could move it: both are members.
        cmd.args(["-c", "sleep 30 & echo \"$X $(pwd) $(cat /proc/self/cgroup | grep ^0::)\"; exec sleep 30"])
            .env("X", "x-value")
            .current_dir(dir.path());
        if move_path {
            force_move_path();
        }
        let pid = spawn_into(&cmd, out.as_fd(), &cg, Extras::default()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cg.procs().unwrap().len() < 2 || std::fs::read_to_string(dir.path().join("out")).unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "{:?}", cg.procs());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(cg.procs().unwrap().contains(&pid));
        let said = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let rel = cg
            .dir()
            .strip_prefix(
                crate::cgroup::cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()).unwrap(),
            )
            .unwrap();
        assert_eq!(
            said.trim(),
            format!("x-value {} 0::/{}", dir.path().canonicalize().unwrap().display(), rel.display())
        );
        // Its own process group.
        assert_eq!(nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap().as_raw(), pid);
        cg.kill().unwrap();
        if let Some(status) = wait(pid) {
            assert!(matches!(status, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)));
        }
        // The worker is reparented to init (or a subreaper) and reaped there.
        wait_emptied(&cg, deadline);
        cleanup(h, cg);
    }

    fn wait_emptied(cg: &ServiceCgroup, deadline: std::time::Instant) {
        while cg.populated().unwrap() {
            assert!(std::time::Instant::now() < deadline, "{:?} still populated", cg.dir());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn cleanup(h: crate::cgroup::Hierarchy, cg: ServiceCgroup) {
        cg.remove().unwrap();
        std::fs::remove_dir(h.base()).unwrap();
    }

    #[test]
    fn a_childs_environment_is_air_nannys_with_the_commands_changes() {
        let os = |s: &str| OsString::from(s);
        let base = vec![(os("HOME"), os("/root")), (os("LISTEN_FDS"), os("3")), (os("PATH"), os("/bin"))];
        let mut cmd = Command::new("/bin/true");
        cmd.env("PATH", "/usr/bin").env_remove("LISTEN_FDS").env("AIR_NANNY_SERVICE", "svc").env_remove("ABSENT");
        let changes: Vec<(&OsStr, Option<&OsStr>)> = cmd.get_envs().collect();
        let env: Vec<(String, String)> = child_environment(&base, &changes)
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("HOME", "/root"), ("AIR_NANNY_SERVICE", "svc"), ("PATH", "/usr/bin")]);

        // What reaches the exec: the same, each as NAME=value, and a NUL in a value refused.
        let null = File::open("/dev/null").unwrap();
        let p = Prepared::new(&cmd, null.as_fd(), Extras::default()).unwrap();
        let strings: Vec<String> = p.ptrs[p.envp..]
            .iter()
            .take_while(|p| !p.is_null())
            // SAFETY: NUL-terminated strings inside `p.bytes`, which lives as long as `p`.
            .map(|&s| unsafe { std::ffi::CStr::from_ptr(s) }.to_string_lossy().into_owned())
            .collect();
        assert!(
            strings.contains(&"PATH=/usr/bin".to_string()) && strings.contains(&"AIR_NANNY_SERVICE=svc".to_string())
        );
        assert!(!strings.iter().any(|s| s.starts_with("LISTEN_FDS=")));
        assert_eq!(strings.iter().filter(|s| s.starts_with("PATH=")).count(), 1);
        cmd.env("BAD", "a\0b");
        let e = Prepared::new(&cmd, null.as_fd(), Extras::default()).err().unwrap();
        assert!(e.to_string().contains("an environment variable contains a NUL byte"), "{e}");
    }

    // One test for both paths: the fallback switch is process-wide.
    #[test]
    fn children_are_born_in_the_cgroup_with_their_command_environment_and_directory() {
        in_cgroup(false);
        if !NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed) {
            eprintln!("clone3(CLONE_INTO_CGROUP) used; now the fork-and-move path");
        }
        in_cgroup(true);
        NO_CLONE_INTO_CGROUP.store(false, Ordering::Relaxed);
    }

    /// A cgroup once killed (by this air-nanny, or before it started) still takes children: the
    /// kernel kills children cloned into it, so they are moved in, and the spawn says nothing of
    /// it.
    #[test]
    fn a_cgroup_that_was_killed_still_takes_children() {
        let Some((h, cg)) = cgroup("killed") else { return };
        let out = File::create("/dev/null").unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exec sleep 30"]);
        for killed_by in ["an earlier air-nanny", "this one"] {
            if killed_by == "this one" {
                cg.kill().unwrap();
                assert!(cg.was_killed());
            } else {
                std::fs::write(cg.dir().join("cgroup.kill"), "1").unwrap();
            }
            for _ in 0..3 {
                let pid = spawn_into(&cmd, out.as_fd(), &cg, Extras::default()).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                // It runs (it reaches the exec of sleep) in the cgroup, and stays.
                while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "sleep" {
                    assert!(std::time::Instant::now() < deadline, "{killed_by}: never exec'd");
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                assert_eq!(cg.procs().unwrap(), vec![pid], "{killed_by}");
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
                wait(pid);
                wait_emptied(&cg, deadline);
            }
        }
        cleanup(h, cg);
    }

    #[test]
    fn a_failed_exec_is_an_error_and_leaves_no_child() {
        let Some((h, cg)) = cgroup("fail") else { return };
        let out = tempfile::tempfile().unwrap();
        let e = spawn_into(&Command::new("/nonexistent/program"), out.as_fd(), &cg, Extras::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let mut cmd = Command::new("/bin/true");
        cmd.current_dir("/nonexistent/dir");
        let e = spawn_into(&cmd, out.as_fd(), &cg, Extras::default()).unwrap_err();
        assert!(e.to_string().contains("working directory"), "{e}");
        assert!(cg.procs().unwrap().is_empty());
        cleanup(h, cg);
    }

    /// A child born sharing air-nanny's descriptor table ([`Slots`]) takes a table of its own
    /// with only the low numbers: a descriptor air-nanny holds far above them, even one without
    /// close-on-exec, never reaches it (a plain clone would pass it on), while its stdout does.
    #[test]
    fn a_child_takes_only_the_low_descriptors_of_the_table() {
        let Some((h, cg)) = cgroup("slots") else { return };
        assert!(slots().is_some(), "no low descriptor slots in the test process");
        let null = File::open("/dev/null").unwrap();
        let high = 900;
        // SAFETY: dup2 of a descriptor we hold onto a number nothing else in this test uses.
        assert_eq!(unsafe { libc::dup2(null.as_raw_fd(), high) }, high);
        let (r, w) = pipe().unwrap();
        let (mut r, w) = (File::from(r), File::from(w));
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &format!("if [ -e /proc/self/fd/{high} ]; then echo inherited; else echo own table; fi")]);
        let prepared = Arc::new(Prepared::new(&cmd, w.as_fd(), Extras::default()).unwrap());
        let dir = cg.open_dir().unwrap();
        let pid = Prepared::run(&prepared, Birth::Into(dir.as_fd())).map_err(io::Error::from).unwrap();
        drop((prepared, w));
        let mut said = String::new();
        r.read_to_string(&mut said).unwrap();
        // SAFETY: closing the number dup2'd above.
        unsafe { libc::close(high) };
        if let Some(status) = wait(pid) {
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0));
        }
        assert_eq!(said.trim(), "own table");
        cleanup(h, cg);
    }

    #[test]
    fn user_limit_and_sigpipe_are_set_for_the_child() {
        let Some((h, cg)) = cgroup("user") else { return };
        let (r, w) = pipe().unwrap();
        let (mut r, w) = (File::from(r), File::from(w));
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "id -u; id -g; id -G; ulimit -n; grep -E '^Sig(Ign|Blk)' /proc/self/status"]);
        let root = unsafe { libc::geteuid() } == 0;
        let extras = Extras { user: root.then_some((65534, 65534)), nofile: Some((300, 400)), hurry: false };
        let pid = spawn_into(&cmd, w.as_fd(), &cg, extras).unwrap();
        drop(w);
        let mut said = String::new();
        r.read_to_string(&mut said).unwrap();
        if let Some(status) = wait(pid) {
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0));
        }
        let lines: Vec<&str> = said.lines().collect();
        if root {
            assert_eq!(&lines[..3], ["65534", "65534", "65534"], "{said}");
        }
        assert_eq!(lines[3], "300", "{said}");
        // SIGPIPE (bit 13) is not ignored, and nothing is blocked (every signal was blocked around
        // the clone).
        for l in &lines[4..] {
            let mask = u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(mask & (1 << 12), 0, "{l}");
            if l.starts_with("SigBlk") {
                assert_eq!(mask, 0, "{l}");
            }
        }
        cleanup(h, cg);
    }

    /// Children share air-nanny's memory until they exec: a signal that reaches one before its
    /// exec must meet the default action, never one of air-nanny's handlers (which would run on
    /// air-nanny's memory: here, set its flag).
    #[tokio::test]
    async fn a_signal_before_the_exec_never_runs_a_handler_of_the_parent() {
        let Some((h, cg)) = cgroup("signal") else { return };
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGUSR2, Arc::clone(&flag)).unwrap();
        let out = File::create("/dev/null").unwrap();
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("30");
        let mut killed = 0;
        for _ in 0..200 {
            let launch = launch_into(&cmd, out.as_fd(), &cg, Extras::default()).unwrap();
            let pid = nix::unistd::Pid::from_raw(launch.pid);
            // At once: most of these arrive while the child is still between clone and exec.
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).unwrap();
            let _ = launch.exec().await;
            if let Some(status) = wait(pid.as_raw()) {
                assert!(
                    matches!(status, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGUSR2, _)),
                    "{status:?}"
                );
                killed += 1;
            }
        }
        assert!(!flag.load(Ordering::SeqCst), "air-nanny's handler ran in a child");
        assert!(killed > 0);
        cleanup(h, cg);
    }

    /// A launch given up after its child exec'd (a start cancelled while awaiting the exec) frees
    /// what the child read: nothing is leaked once the child is past its exec.
    #[test]
    fn a_launch_dropped_after_the_exec_frees_its_flight() {
        let Some((h, cg)) = cgroup("drop") else { return };
        let out = File::create("/dev/null").unwrap();
        for _ in 0..20 {
            let launch = launch_into(&Command::new("/bin/true"), out.as_fd(), &cg, Extras::default()).unwrap();
            // Exited (so past its exec), its report ("R") unread.
            wait(launch.pid);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !closed(launch.report.as_fd()) {
                assert!(std::time::Instant::now() < deadline, "the report pipe never closed");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let before = LEAKED.load(Ordering::SeqCst);
            drop(launch);
            assert_eq!(LEAKED.load(Ordering::SeqCst), before, "a flight was leaked after its child's exec");
        }
        cleanup(h, cg);
    }

    /// Children launched back to back, each still on its way to its exec when the next is
    /// cloned, each get their own arguments, environment and stack.
    #[tokio::test]
    async fn children_in_flight_at_once_each_get_their_own_arguments() {
        let Some((h, cg)) = cgroup("flight") else { return };
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("out")).unwrap();
        let mut launches = Vec::new();
        for i in 0..100 {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "echo \"$1 $X\"", "sh", &format!("arg{i}")]).env("X", format!("env{i}"));
            launches.push(launch_into(&cmd, out.as_fd(), &cg, Extras::default()).unwrap());
        }
        let pids: Vec<i32> = launches.iter().map(|l| l.pid).collect();
        for l in launches {
            l.exec().await.unwrap();
        }
        for pid in pids {
            wait(pid);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        wait_emptied(&cg, deadline);
        let said = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let mut lines: Vec<&str> = said.lines().collect();
        lines.sort_unstable();
        let mut want: Vec<String> = (0..100).map(|i| format!("arg{i} env{i}")).collect();
        want.sort_unstable();
        assert_eq!(lines, want);
        cleanup(h, cg);
    }
}
