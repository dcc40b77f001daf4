//! Service logs: one size-rotated file per service in LOG_DIR, written by the service's scripts
//! and programs directly (their stdout and stderr are the file) and by air-nanny's own notes, so a
//! long flight cannot fill the disk and a crash of air-nanny cannot cut a program's output.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A log file rotated by size: `name.log`, `name.log.1` … `name.log.N`. Programs write into
/// `name.log` themselves (an `O_APPEND` descriptor of their own), so the current file is rotated
/// by copy and truncate: its inode stays the one they write to.
struct Rotating {
    path: PathBuf,
    file: Option<File>,
    /// The same file without `O_APPEND` (which `splice` refuses), for [`ServiceLog::copy_from`].
    spliced: Option<File>,
    /// The file system refused `splice` into this file: copies read and write instead.
    no_splice: bool,
    max_bytes: u64,
    max_files: u32,
    /// The file's size when air-nanny last looked (`fstat`) plus what it has written since: what
    /// programs wrote is not in it, so it is at most the real size.
    at_least: u64,
    /// A rotation was handed to a blocking-pool thread and has not run yet.
    rotation_due: bool,
    /// A blocking-pool thread is copying the file (without the lock).
    rotating: bool,
    /// `LOG_OUTPUT: pipe`: the service's pipe, whose write end children get. air-nanny is then the
    /// file's only writer, and a full file is rotated by renaming it (nothing lost, no copy).
    pipe: Option<Arc<crate::fdstore::Pipe>>,
}

impl Rotating {
    fn open(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        Ok(self.file.as_ref().expect("opened above"))
    }

    /// Appends air-nanny's own lines; true when the file is full and should be rotated (outside a
    /// runtime it is rotated first, here). The size is asked of the kernel only when what
    /// air-nanny knows of it says the limit is near (a stop of 1000 services made 2000 `fstat`s
    /// otherwise); what programs write is found by the sweep and when a child gets the file.
    fn write(&mut self, bytes: &[u8]) -> io::Result<bool> {
        let adding = bytes.len() as u64;
        let mut full =
            if self.file.is_none() || self.at_least + adding > self.max_bytes { self.full(adding)? } else { false };
        if full && (self.pipe.is_some() || tokio::runtime::Handle::try_current().is_err()) {
            self.rotate()?;
            self.at_least = 0;
            full = false;
        }
        let mut f = self.open()?;
        f.write_all(bytes)?;
        self.at_least += adding;
        Ok(full)
    }

    /// Whether the current file plus `adding` bytes would exceed the limit (one `fstat`).
    fn full(&mut self, adding: u64) -> io::Result<bool> {
        let size = self.open()?.metadata()?.len();
        self.at_least = size;
        Ok(size > 0 && size + adding > self.max_bytes)
    }

    /// `splice` from `pipe` to the file's end, at most `max` bytes: `None` when the file system
    /// cannot (remembered: this file's copies read and write from then on). The end is
    /// `at_least`, just asked of the kernel by [`full`](Self::full) (or 0 after a rotation).
    fn splice_from(&mut self, pipe: BorrowedFd<'_>, max: usize) -> io::Result<Option<usize>> {
        self.open()?;
        let mut at = self.at_least as libc::loff_t;
        if self.spliced.is_none() {
            self.spliced = Some(OpenOptions::new().write(true).open(&self.path)?);
        }
        let to = self.spliced.as_ref().expect("opened above").as_raw_fd();
        loop {
            // SAFETY: splice between two descriptors we hold, with an offset we own.
            let n = unsafe {
                libc::splice(pipe.as_raw_fd(), std::ptr::null_mut(), to, &mut at, max, libc::SPLICE_F_NONBLOCK)
            };
            if n >= 0 {
                self.at_least = at as u64;
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) => {
                    tracing::warn!(
                        file = %self.path.display(),
                        "the file system refuses splice into this log: the pipe's output is copied through air-nanny's memory, so a kill of air-nanny may lose what it has read and not yet written"
                    );
                    self.no_splice = true;
                    self.spliced = None;
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
    }

    /// Rotates when the current file plus `adding` bytes would exceed the limit.
    fn rotate_if_full(&mut self, adding: u64) -> io::Result<()> {
        if self.full(adding)? {
            self.rotate()?;
            self.at_least = 0;
        }
        Ok(())
    }

    /// Shifts `.1`… up by one, copies the current file to `.1` and truncates it. What a program
    /// writes between the copy and the truncation is lost (the copy of 1 MiB takes about a
    /// millisecond); a line being written at that moment may be split between the two files.
    /// With a pipe (air-nanny the only writer) the file is renamed to `.1` instead: a few
    /// renames, nothing copied, nothing lost.
    fn rotate(&mut self) -> io::Result<()> {
        if self.pipe.is_some() {
            shift(&self.path, self.max_files)?;
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
            self.file = None;
            self.spliced = None;
            return Ok(());
        }
        shift_and_copy(&self.path, self.max_files)?;
        self.open()?.set_len(0)
    }
}

/// Shifts `.1`… up by one and copies the current file to `.1` (through `.0`, renamed: a reader
/// never sees half a copy).
fn shift_and_copy(path: &Path, max_files: u32) -> io::Result<()> {
    shift(path, max_files)?;
    if max_files >= 1 {
        let to = numbered(path, 1);
        let tmp = numbered(path, 0);
        std::fs::copy(path, &tmp)?;
        std::fs::rename(&tmp, &to)?;
    }
    Ok(())
}

/// Renames `.N-1` to `.N`, … `.1` to `.2` (the oldest, `.N`, is replaced).
fn shift(path: &Path, max_files: u32) -> io::Result<()> {
    for i in (1..max_files).rev() {
        let from = numbered(path, i);
        if from.exists() {
            std::fs::rename(&from, numbered(path, i + 1))?;
        }
    }
    Ok(())
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// A service's log. Cheap to clone; writes are short appends under a lock.
#[derive(Clone)]
pub struct ServiceLog {
    inner: Arc<Mutex<Rotating>>,
}

impl ServiceLog {
    /// `max_files` rotated files are kept besides the current one. A log open already (the
    /// service's task has it while the API reads it) is that one: one lock and one size count per
    /// file, whoever writes.
    pub fn open(dir: &Path, service: &str, max_bytes: u64, max_files: u32) -> ServiceLog {
        let path = dir.join(format!("{service}.log"));
        let mut open = OPEN_LOGS.lock().expect("log registry");
        let logs = open.get_or_insert_with(Default::default);
        if let Some(inner) = logs.get(&path).and_then(std::sync::Weak::upgrade) {
            let mut log = inner.lock().expect("log lock");
            (log.max_bytes, log.max_files) = (max_bytes, max_files);
            drop(log);
            return ServiceLog { inner };
        }
        let log = ServiceLog {
            inner: Arc::new(Mutex::new(Rotating {
                path: path.clone(),
                file: None,
                spliced: None,
                no_splice: false,
                max_bytes,
                max_files,
                at_least: 0,
                rotation_due: false,
                rotating: false,
                pipe: None,
            })),
        };
        logs.insert(path, Arc::downgrade(&log.inner));
        log
    }

    /// Children's output goes into `pipe` from now on (`None`: into the file again).
    pub fn set_pipe(&self, pipe: Option<Arc<crate::fdstore::Pipe>>) {
        self.inner.lock().expect("log lock").pipe = pipe;
    }

    pub fn path(&self) -> PathBuf {
        self.inner.lock().expect("log lock").path.clone()
    }

    /// Appends raw output. Errors (a full disk) are reported once per call in air-nanny's own log.
    pub fn append(&self, bytes: &[u8]) {
        let mut log = self.inner.lock().expect("log lock");
        match log.write(bytes) {
            Ok(true) => self.rotate_soon(log),
            Ok(false) => {}
            Err(e) => tracing::warn!(file = %log.path.display(), "cannot write service log: {e}"),
        }
    }

    /// Moves what `pipe` holds, at most `max` bytes, to the end of the file: `Ok(0)` when every
    /// writer is gone, a `WouldBlock` error when the pipe is empty (`pipe` is non-blocking).
    ///
    /// The bytes go from the pipe to the file inside the kernel (`splice`, at the file's size as
    /// `fstat` gives it, through a descriptor without `O_APPEND`): a byte leaves the pipe only as
    /// it enters the file, so a `kill -9` of air-nanny at any moment loses nothing — a read into
    /// air-nanny's memory and a write out of it lost what lay between them. A file system that
    /// cannot splice (`EINVAL`) gets the read and the write, and that window. A full file is rotated
    /// first, as by [`append`](Self::append): a pipe's file is renamed, at once.
    pub fn copy_from(&self, pipe: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let mut log = self.inner.lock().expect("log lock");
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; a failure leaves 0 (the splice then says why).
        unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut pending) };
        let adding = (pending.max(0) as usize).min(max) as u64;
        let full = log.full(adding)?;
        let rotate_now = full && (log.pipe.is_some() || tokio::runtime::Handle::try_current().is_err());
        if rotate_now {
            log.rotate()?;
            log.at_least = 0;
        }
        let moved = if log.no_splice { None } else { log.splice_from(pipe, max)? };
        let n = match moved {
            Some(n) => n,
            None => {
                drop(log);
                let mut buf = [0u8; 16 * 1024];
                let len = max.min(buf.len());
                // SAFETY: read into a buffer we own, at most its length.
                let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), len) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = n as usize;
                if n > 0 {
                    self.append(&buf[..n]);
                }
                return Ok(n);
            }
        };
        if full && !rotate_now {
            self.rotate_soon(log);
        }
        Ok(n)
    }

    /// Copies read and write from now on, as where the file system cannot splice.
    #[cfg(test)]
    pub(crate) fn refuse_splice(&self) {
        self.inner.lock().expect("log lock").no_splice = true;
    }

    /// Whether copies splice (the file system has not refused it).
    #[cfg(test)]
    pub(crate) fn splices(&self) -> bool {
        !self.inner.lock().expect("log lock").no_splice
    }

    /// Rotates the full file: on a blocking-pool thread when there is a runtime (a copy of up to
    /// LOG_MAX_SIZE must not hold up the runtime thread, which writes notes and hands files to
    /// children), else here.
    /// With a pipe the rotation is a few renames: done here.
    fn rotate_soon(&self, mut log: std::sync::MutexGuard<'_, Rotating>) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if log.pipe.is_none() => {
                if !std::mem::replace(&mut log.rotation_due, true) {
                    let this = self.clone();
                    drop(rt.spawn_blocking(move || this.rotate_blocking()));
                }
            }
            _ => {
                if let Err(e) = log.rotate_if_full(0) {
                    tracing::warn!(file = %log.path.display(), "cannot rotate service log: {e}");
                }
            }
        }
    }

    /// Appends one line written by air-nanny itself.
    pub fn note(&self, msg: &str) {
        let now = crate::logfmt::rfc3339_utc(std::time::SystemTime::now());
        self.append(format!("{now} [air-nanny] {msg}\n").as_bytes());
    }

    /// A descriptor of the current file for a child's stdout and stderr (`O_APPEND`, so a
    /// program's lines and air-nanny's notes interleave whole). The program writes to the file
    /// itself: nothing of air-nanny stands between them, so its output keeps reaching the log
    /// when air-nanny is killed or restarted (no pipe whose reader dies, no SIGPIPE).
    /// A full file is rotated beside the spawn ([`rotate_soon`](Self::rotate_soon)): copy and
    /// truncate leave the child's descriptor pointing at the current file.
    /// With `LOG_OUTPUT: pipe`, the pipe's write end instead ([`crate::fdstore::Pipe::writer`]).
    pub fn output(&self) -> io::Result<OwnedFd> {
        let mut log = self.inner.lock().expect("log lock");
        if let Some(pipe) = &log.pipe {
            return pipe.writer();
        }
        let fd = OwnedFd::from(log.open()?.try_clone()?);
        if log.full(0)? {
            self.rotate_soon(log);
        }
        Ok(fd)
    }

    /// Has this log rotated if it is full (one `fstat` here).
    fn check(&self) {
        let mut log = self.inner.lock().expect("log lock");
        match log.full(0) {
            Ok(true) => self.rotate_soon(log),
            Ok(false) => {}
            Err(e) => tracing::warn!(file = %log.path.display(), "cannot check the size of a service log: {e}"),
        }
    }

    /// Rotates this log if it is full. Blocking: a blocking-pool thread's work. The copy is made
    /// without the log's lock, so the runtime thread's notes and spawns never wait for it (what
    /// is written between the copy and the truncation is lost, as with any copy and truncate).
    fn rotate_blocking(&self) {
        let (path, max_files) = {
            let mut log = self.inner.lock().expect("log lock");
            log.rotation_due = false;
            if log.rotating {
                return;
            }
            match log.full(0) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(file = %log.path.display(), "cannot rotate service log: {e}");
                    return;
                }
            }
            log.rotating = true;
            (log.path.clone(), log.max_files)
        };
        let copied = shift_and_copy(&path, max_files);
        let mut log = self.inner.lock().expect("log lock");
        log.rotating = false;
        let truncated = copied.and_then(|()| log.open()?.set_len(0));
        match truncated {
            Ok(()) => log.at_least = 0,
            Err(e) => tracing::warn!(file = %log.path.display(), "cannot rotate service log: {e}"),
        }
    }

    /// The last `lines` lines of the current file (and the previous one when the current is short).
    pub fn tail(&self, lines: usize) -> io::Result<String> {
        Ok(self.tail_at(lines)?.0)
    }

    /// [`tail`](Self::tail), and the length of the current file it read: where a follower
    /// ([`read_after`](Self::read_after)) goes on from.
    pub fn tail_at(&self, lines: usize) -> io::Result<(String, u64)> {
        let path = self.path();
        let mut text =
            std::fs::read(&path)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(Vec::new()) } else { Err(e) })?;
        let offset = text.len() as u64;
        if text.iter().filter(|b| **b == b'\n').count() < lines {
            if let Ok(mut older) = std::fs::read(numbered(&path, 1)) {
                older.extend_from_slice(&text);
                text = older;
            }
        }
        let s = String::from_utf8_lossy(&text);
        let all: Vec<&str> = s.lines().collect();
        let from = all.len().saturating_sub(lines);
        Ok((all.get(from..).unwrap_or_default().join("\n"), offset))
    }

    /// The whole lines written to the current file after byte `after`, at most about `max`
    /// bytes of them (a line longer than `max` comes in pieces). A file now shorter than `after`
    /// was rotated (copied to `.1` and truncated): reading starts again at its beginning.
    pub fn read_after(&self, after: u64, max: usize) -> io::Result<Follow> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path();
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Follow { lines: Vec::new(), offset: 0, rotated: after > 0 })
            }
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let rotated = size < after;
        let start = if rotated { 0 } else { after };
        let want = (size - start).min(max as u64);
        let mut buf = Vec::with_capacity(want as usize);
        file.seek(SeekFrom::Start(start))?;
        file.take(want).read_to_end(&mut buf)?;
        // Only whole lines, unless one line alone fills the whole answer.
        let used = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if buf.len() >= max => buf.len(),
            None => 0,
        };
        buf.truncate(used);
        let text = String::from_utf8_lossy(&buf);
        let lines = text.lines().map(str::to_string).collect();
        Ok(Follow { lines, offset: start + used as u64, rotated })
    }
}

/// What a follower of a log reads: the new lines, and where to go on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    pub lines: Vec<String>,
    /// The byte of the current file after the last line returned.
    pub offset: u64,
    /// The file was rotated since `after`: `lines` start at its beginning (what was written just
    /// before the rotation is in `NAME.log.1`).
    pub rotated: bool,
}

/// Every open service log by path: for [`sweep_all`], and so that [`ServiceLog::open`] of a log
/// open already shares it.
type OpenLogs = std::collections::HashMap<PathBuf, std::sync::Weak<Mutex<Rotating>>>;
static OPEN_LOGS: Mutex<Option<OpenLogs>> = Mutex::new(None);

/// How often programs' output is checked against LOG_MAX_SIZE (they write without air-nanny
/// seeing it). A file can exceed the limit by what a program writes in this time.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Finds every service log that programs have filled and has it rotated
/// ([`ServiceLog::rotate_soon`]); forgets the logs of removed services. One `fstat` per log: at
/// N = 1000, about a millisecond every [`SWEEP_EVERY`].
pub fn sweep_all() {
    let logs: Vec<ServiceLog> = {
        let mut open = OPEN_LOGS.lock().expect("log registry");
        let open = open.get_or_insert_with(Default::default);
        open.retain(|_, w| w.strong_count() > 0);
        open.values().filter_map(|w| w.upgrade()).map(|inner| ServiceLog { inner }).collect()
    };
    for log in logs {
        log.check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "svc", 100, 2);
        for i in 0..50 {
            log.note(&format!("line {i:03}"));
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, vec!["svc.log", "svc.log.1", "svc.log.2"]);
        for n in &names {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= 100);
        }
        let tail = log.tail(2).unwrap();
        assert!(tail.ends_with("line 049"), "{tail}");
        assert_eq!(tail.lines().count(), 2);
    }

    /// Inside the runtime a full log is rotated on a blocking-pool thread (a copy of up to
    /// LOG_MAX_SIZE is no work for the runtime thread): found full when a child gets the file, or
    /// when a note fills it. The child's descriptor stays the current file's.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_log_is_rotated_beside_the_runtime_thread() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let log = ServiceLog::open(dir.path(), "svc", 4096, 2);
        let rotated_to = |n: u32| std::fs::metadata(numbered(&path, n)).map(|m| m.len()).unwrap_or(0);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        // A program filled it while nobody looked.
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        let mut child = File::from(log.output().unwrap());
        wait_for("the rotation after output()", &|| rotated_to(1) == 5000);
        child.write_all(b"from the child\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "from the child\n");
        // air-nanny's own notes fill it (87 bytes each: the 47th crosses 4096, once).
        for i in 0..50 {
            log.note(&format!("note {i:03} {}", "n".repeat(40)));
        }
        let current = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
        wait_for("the rotation after the notes", &|| rotated_to(2) == 5000 && rotated_to(1) > 4000 && current() < 1000);
        let first = std::fs::read_to_string(numbered(&path, 1)).unwrap();
        assert!(first.starts_with("from the child\n") && first.contains("[air-nanny] note 000"), "{first}");
    }

    #[test]
    fn a_follower_reads_whole_new_lines_and_starts_over_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::open(dir.path(), "svc", 1 << 20, 2);
        log.append(b"one\ntwo\n");
        let (tail, offset) = log.tail_at(10).unwrap();
        assert_eq!((tail.as_str(), offset), ("one\ntwo", 8));
        let f = log.read_after(offset, 4096).unwrap();
        assert_eq!((f.lines.len(), f.offset, f.rotated), (0, 8, false), "nothing new");
        log.append(b"three\nfour-without-end");
        let f = log.read_after(offset, 4096).unwrap();
        assert_eq!(f.lines, vec!["three"], "a line not yet ended waits");
        assert_eq!(f.offset, 14);
        log.append(b"\n");
        let f = log.read_after(f.offset, 4096).unwrap();
        assert_eq!(f.lines, vec!["four-without-end"]);
        // A line longer than an answer comes in pieces.
        log.append(&[b'x'; 100]);
        let f2 = log.read_after(f.offset, 40).unwrap();
        assert_eq!((f2.lines, f2.offset), (vec!["x".repeat(40)], f.offset + 40));
        // Copy-and-truncate rotation: the file is shorter than the follower's offset.
        log.inner.lock().unwrap().rotate().unwrap();
        log.append(b"after\n");
        let f = log.read_after(f.offset + 40, 4096).unwrap();
        assert_eq!((f.lines, f.offset, f.rotated), (vec!["after".to_string()], 6, true));
        let gone = ServiceLog::open(dir.path(), "never-written", 100, 1).read_after(5, 10).unwrap();
        assert!(gone.rotated && gone.lines.is_empty());
    }
}
