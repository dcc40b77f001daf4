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
//! Between the fork and `execve` the child is a copy of a multi-threaded process with one thread:
//! it runs only system calls on values prepared by the parent (no allocation, no locks, no libc
//! call that would talk to other threads: uid and gid changes are raw system calls). A failure
//! there is sent back as an errno over a close-on-exec pipe; end of file on that pipe means the
//! exec happened.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::cgroup::ServiceCgroup;

/// `CLONE_INTO_CGROUP` (linux/sched.h, kernel 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

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
    Prepared::new(cmd, output, extras)?.born_in(cgroup, Prepared::run)
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

enum Birth<'a> {
    /// `clone3(CLONE_INTO_CGROUP)` with this cgroup directory.
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

/// Everything the child needs, built before the fork (the child may not allocate).
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    stdin: &'static OwnedFd,
    /// The output descriptor, at a number above 2 so that the child's dup2s cannot clobber it.
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
            _ => "exec",
        }
    }
}

impl Prepared {
    /// Runs `start` (a fork that waits for the exec, or one that returns at once) with the child
    /// cloned into `cgroup`, or moving itself in where that cannot be: the kernel lacks it, the
    /// cgroup was killed before, or a child cloned into it was killed at birth.
    fn born_in<T>(
        &self,
        cgroup: &ServiceCgroup,
        start: impl Fn(&Self, Birth<'_>) -> Result<T, SpawnError>,
    ) -> io::Result<T> {
        if !NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed) && !cgroup.was_killed() {
            let dir = File::open(cgroup.dir())?;
            match start(self, Birth::Into(dir.as_fd())) {
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
        start(self, Birth::Move(procs.as_fd())).map_err(io::Error::from)
    }

    fn new(cmd: &Command, output: BorrowedFd<'_>, extras: Extras) -> io::Result<Prepared> {
        let program = resolve(cmd.get_program())?;
        let mut argv = vec![cstring(cmd.get_program())?];
        for a in cmd.get_args() {
            argv.push(cstring(a)?);
        }
        let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => env.insert(k.to_owned(), v.to_owned()),
                None => env.remove(k),
            };
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(CString::new(kv).map_err(|_| invalid("an environment variable contains a NUL byte"))?);
        }
        let cwd = cmd.get_current_dir().map(|d| cstring(d.as_os_str())).transpose()?;
        Ok(Prepared {
            program,
            argv,
            envp,
            cwd,
            stdin: dev_null()?,
            output: above_stdio(output)?,
            extras,
            // SAFETY: geteuid has no preconditions.
            root: unsafe { libc::geteuid() } == 0,
        })
    }

    /// Forks (as `birth` says), runs the child's steps and waits until it has exec'd or failed.
    #[cfg(test)]
    fn run(&self, birth: Birth<'_>) -> Result<i32, SpawnError> {
        let launch = self.launch(birth)?;
        let (pid, mut r) = (launch.pid, File::from(launch.report));
        let mut report = [0u8; REPORT];
        let mut got = 0;
        while got < report.len() {
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
        }
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

    /// Forks (as `birth` says) a child that runs its steps and execs; returns at once.
    fn launch(&self, birth: Birth<'_>) -> Result<Launch, SpawnError> {
        let mut ptrs_argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        ptrs_argv.push(std::ptr::null());
        let mut ptrs_envp: Vec<*const libc::c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
        ptrs_envp.push(std::ptr::null());
        let (report_r, report_w) = pipe().map_err(SpawnError::Clone)?;
        let pid = match birth {
            Birth::Into(dir) => {
                let args = CloneArgs {
                    flags: CLONE_INTO_CGROUP,
                    exit_signal: libc::SIGCHLD as u64,
                    cgroup: dir.as_raw_fd() as u64,
                    ..CloneArgs::default()
                };
                // SAFETY: clone3 without CLONE_VM or a stack is a fork: the child continues here on
                // a copy of this stack, and only runs `child`, which never returns.
                unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) }
            }
            Birth::Move(_) => {
                // SAFETY: as above; clone with only the exit signal and no stack is fork(2) (the
                // argument order differs between architectures, but every other argument is 0).
                unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) }
            }
        };
        if pid == 0 {
            let procs = match birth {
                Birth::Move(fd) => Some(fd.as_raw_fd()),
                Birth::Into(_) => None,
            };
            // SAFETY: we are the child of the fork above; see `child`.
            unsafe { self.child(procs, report_w.as_raw_fd(), &ptrs_argv, &ptrs_envp) }
        }
        if pid < 0 {
            return Err(SpawnError::Clone(io::Error::last_os_error()));
        }
        Ok(Launch { pid: pid as i32, report: report_r })
    }

    /// The child between fork and exec. Only system calls, on memory prepared before the fork.
    ///
    /// # Safety
    /// Must only be called in the child of a fork, with `report` the write end of the report pipe
    /// and `argv`/`envp` null-terminated arrays into `self`.
    unsafe fn child(
        &self,
        procs: Option<RawFd>,
        report: RawFd,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> ! {
        libc::write(report, [RUNNING].as_ptr().cast(), 1);
        let fail = |stage: Stage| report_and_exit(report, stage);
        if let Some(fd) = procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(Stage::Cgroup);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(Stage::ProcessGroup);
        }
        let out = self.output.as_raw_fd();
        if libc::dup2(self.stdin.as_raw_fd(), 0) < 0 || libc::dup2(out, 1) < 0 || libc::dup2(out, 2) < 0 {
            fail(Stage::Stdio);
        }
        if let Some(cwd) = &self.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                fail(Stage::WorkDir);
            }
        }
        if let Some((cur, max)) = self.extras.nofile {
            let lim: [u64; 2] = [cur, max];
            if libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_NOFILE, lim.as_ptr(), std::ptr::null_mut::<u64>())
                != 0
            {
                fail(Stage::Limit);
            }
        }
        if let Some((uid, gid)) = self.extras.user {
            // Raw system calls: libc's setuid/setgid would try to change every thread of the
            // parent, whose threads do not exist here.
            if self.root && libc::syscall(SYS_SETGROUPS, 0, std::ptr::null::<libc::gid_t>()) != 0 {
                fail(Stage::Groups);
            }
            if libc::syscall(SYS_SETRESGID, gid, gid, gid) != 0 {
                fail(Stage::Gid);
            }
            if libc::syscall(SYS_SETRESUID, uid, uid, uid) != 0 {
                fail(Stage::Uid);
            }
        }
        // Rust ignores SIGPIPE; programs expect the default. The mask is reset to empty.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
            || libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0
        {
            fail(Stage::Signals);
        }
        libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Stage::Exec)
    }
}

/// The child's end: the failed stage and errno to the parent, then exit 127.
///
/// # Safety
/// Only in the child, with `report` the write end of the report pipe.
unsafe fn report_and_exit(report: RawFd, stage: Stage) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

#[cfg(not(target_arch = "arm"))]
use libc::{SYS_setgroups as SYS_SETGROUPS, SYS_setresgid as SYS_SETRESGID, SYS_setresuid as SYS_SETRESUID};
#[cfg(target_arch = "arm")]
use libc::{SYS_setgroups32 as SYS_SETGROUPS, SYS_setresgid32 as SYS_SETRESGID, SYS_setresuid32 as SYS_SETRESUID};

/// The length of a failure report: RUNNING, the stage and the errno.
const REPORT: usize = 9;

/// What a child's report pipe said when it closed: RUNNING alone is an exec.
fn decode(report: &[u8]) -> Result<(), SpawnError> {
    if report == [RUNNING] {
        return Ok(());
    }
    if report.is_empty() {
        return Err(SpawnError::KilledAtBirth);
    }
    if report.len() < REPORT || report[0] != RUNNING {
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

/// A child forked into its cgroup and on its way to exec: [`Launch::exec`] says how that went.
/// The caller must have the child reaped either way (a failed child exits at once).
pub struct Launch {
    pub pid: i32,
    report: OwnedFd,
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
    pub async fn exec(self) -> Result<(), ExecError> {
        // SAFETY: fcntl on the pipe's read end, which we own.
        if unsafe { libc::fcntl(self.report.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(ExecError::Failed(io::Error::last_os_error()));
        }
        // SAFETY: the AsyncFd takes ownership of the file, so the descriptor stays open (and is
        // the same file) for as long as it is registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(File::from(self.report), tokio::io::Interest::READABLE)
        }
        .map_err(|e| ExecError::Failed(e.into()))?;
        let mut report = [0u8; REPORT];
        let mut got = 0;
        while got < report.len() {
            let mut guard = fd.readable().await.map_err(ExecError::Failed)?;
            match guard.try_io(|f| io::Read::read(&mut f.get_ref(), &mut report[got..])) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => got += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(ExecError::Failed(e)),
                Err(_would_block) => {}
            }
        }
        match decode(&report[..got]) {
            Ok(()) => Ok(()),
            Err(SpawnError::KilledAtBirth) => Err(ExecError::KilledAtBirth),
            Err(e) => Err(ExecError::Failed(e.into())),
        }
    }
}

/// Like [`spawn_into`], but returns as soon as the child is forked: the runtime thread does not
/// wait for the exec (half a millisecond each, which a shutdown running a hundred stop commands
/// paid one after another). A child killed at birth is the caller's to launch again
/// ([`ExecError::KilledAtBirth`]) after [`ServiceCgroup::mark_killed`].
pub fn launch_into(
    cmd: &Command,
    output: BorrowedFd<'_>,
    cgroup: &ServiceCgroup,
    extras: Extras,
) -> io::Result<Launch> {
    Prepared::new(cmd, output, extras)?.born_in(cgroup, Prepared::launch)
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

    #[test]
    fn user_limit_and_sigpipe_are_set_for_the_child() {
        let Some((h, cg)) = cgroup("user") else { return };
        let (r, w) = pipe().unwrap();
        let (mut r, w) = (File::from(r), File::from(w));
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "id -u; id -g; id -G; ulimit -n; grep -E '^Sig(Ign|Blk)' /proc/self/status"]);
        let root = unsafe { libc::geteuid() } == 0;
        let extras = Extras { user: root.then_some((65534, 65534)), nofile: Some((300, 400)) };
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
        // SIGPIPE (bit 13) is neither ignored nor blocked.
        for l in &lines[4..] {
            let mask = u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(mask & (1 << 12), 0, "{l}");
        }
        cleanup(h, cg);
    }
}
