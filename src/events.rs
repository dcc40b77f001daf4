//! The event history: per service, what happened and why — state changes, exits (code or
//! signal), health results that change the failing streak (with the check's output), restarts with
//! their cause, operator actions — kept in `STATE_DIR/events/NAME.events` across restarts of
//! air-nanny, so that "why did telemetry restart at 10:42?" has an answer after a flight.
//!
//! Cheap: recording an event is a push onto a bounded in-memory queue; a blocking-pool thread
//! appends the queue to the files and syncs them, and exists only while there is something to
//! write (nothing runs when nothing happens), and lets a burst gather for 200 ms so that it is
//! one write and one sync per file. Bounded: each service keeps two files of at most
//! [`Journal::file_limit`] bytes (the current one and `.1`, replaced by an atomic rename), about
//! 1000 events each way at 10 services, and the whole history stays within [`OVERALL_BYTES`]
//! (or 32 KiB per service, when there are more than 256). Power-loss safe: an event is appended
//! whole and synced within the batch; a torn last line after a power cut is skipped when reading.
//!
//! Each event of a service has a sequence number that grows across restarts (read back from the
//! file's last event), so a reader asks for what is newer than what it has seen (`since`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What the history of all services may take on disk (two files per service).
pub const OVERALL_BYTES: u64 = 16 * 1024 * 1024;
/// A file's size limit when there are few services: about 500 events.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// A file's size limit however many services there are.
const MIN_FILE_BYTES: u64 = 16 * 1024;
/// Events waiting to be written; more are counted and dropped (a storm must not grow memory).
const QUEUE_MAX: usize = 4096;
/// How long the writer lets events gather before it writes and syncs them: the most a power
/// cut can take of the history (besides what the storage itself loses).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(200);
/// The same while air-nanny stops its services: a shutdown's two events per service (stopping,
/// stopped) become one write per file, most often the one at exit, instead of a batch in the
/// middle of the stops that opened a thousand files while the programs were ending.
const STOPPING_COALESCE: std::time::Duration = std::time::Duration::from_secs(1);
/// A message is cut to this many bytes, a check's output to [`OUTPUT_MAX`].
const MESSAGE_MAX: usize = 600;
pub const OUTPUT_MAX: usize = 512;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The service entered a state (`state` says which).
    State,
    /// The program ended: how (exit code or signal).
    Exit,
    /// A health check changed the failing streak, or the health.
    Health,
    /// A restart was decided, and why.
    Restart,
    /// A start failed.
    Start,
    /// A stop ended (cleanly, or with force).
    Stop,
    /// A new configuration.
    Config,
    /// A change requested over the API (from the audit trail: who, from where, the result).
    Operator,
}

/// One event, as stored and as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub kind: Kind,
    pub message: String,
    /// The state entered (`state` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The first [`OUTPUT_MAX`] bytes of a health check's output (`health` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// An event before it has its sequence number.
struct Pending {
    service: String,
    event: Event,
}

/// The history of every service. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    queue: Mutex<Queue>,
    /// Wakes a writer that lets a burst gather, when air-nanny exits.
    wake: std::sync::Condvar,
    /// Per service: the next sequence number and the current file's size (known once written to
    /// or read). Held while writing, so writes and reads of the files never interleave.
    files: Mutex<HashMap<String, FileState>>,
    /// Bumped after every batch written: followers (`/task/events?wait=`) wake on it.
    written: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Queue {
    events: Vec<Pending>,
    /// A writer is scheduled or running: it takes everything queued before it finishes.
    writing: bool,
    dropped: u64,
    /// air-nanny exits: write at once, do not let anything gather.
    closing: bool,
    /// air-nanny is stopping its services: let events gather for [`STOPPING_COALESCE`].
    stopping: bool,
}

struct FileState {
    next_seq: u64,
    size: u64,
    /// The file ends in a torn line (a power cut during a write): the next write ends it first,
    /// so that the event after it is whole.
    torn: bool,
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Journal {
    /// The history in `state_dir/events` (created at the first event).
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            inner: Arc::new(Inner {
                dir: state_dir.join("events"),
                queue: Mutex::default(),
                wake: std::sync::Condvar::new(),
                files: Mutex::default(),
                written: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    fn path(&self, service: &str) -> PathBuf {
        self.inner.dir.join(format!("{service}.events"))
    }

    /// Records an event now. Never blocks on the disk: the write happens on a blocking-pool thread
    /// (or here, outside a runtime).
    pub fn record(&self, service: &str, kind: Kind, message: impl Into<String>) {
        self.record_full(service, kind, message.into(), None, None);
    }

    /// A `state` event.
    pub fn state(&self, service: &str, state: &str, message: String) {
        self.record_full(service, Kind::State, message, Some(state.to_string()), None);
    }

    /// A `health` event with the check's output.
    pub fn health(&self, service: &str, message: String, output: Option<String>) {
        self.record_full(service, Kind::Health, message, None, output.filter(|o| !o.is_empty()));
    }

    fn record_full(&self, service: &str, kind: Kind, message: String, state: Option<String>, output: Option<String>) {
        let event = Event {
            seq: 0,
            time: crate::logfmt::rfc3339_utc(SystemTime::now()),
            kind,
            message: cut(message, MESSAGE_MAX),
            state,
            output: output.map(|o| cut(o, OUTPUT_MAX)),
        };
        let start_writer = {
            let Ok(mut q) = self.inner.queue.lock() else { return };
            if q.events.len() >= QUEUE_MAX {
                q.dropped += 1;
                return;
            }
            q.events.push(Pending { service: service.to_string(), event });
            !std::mem::replace(&mut q.writing, true)
        };
        if start_writer {
            let this = self.clone();
            match tokio::runtime::Handle::try_current() {
                // Scheduled from a task of its own: when no blocking-pool thread is idle, the pool
                // makes one on the thread that asks, and the event that starts a burst is most
                // often a death, whose restart would wait for it (0.1 ms of a respawn).
                Ok(rt) => {
                    rt.spawn(async move {
                        tokio::task::spawn_blocking(move || this.write_queued());
                    });
                }
                // No runtime (tools, tests): written at once, nothing gathers.
                Err(_) => while this.drain(true, true) {},
            }
        }
    }

    /// Writes what is queued, until the queue is empty. Waits [`COALESCE`] first: a burst (a boot,
    /// a shutdown, services failing together) becomes one batch, one sync per file.
    fn write_queued(&self) {
        loop {
            let begun = std::time::Instant::now();
            if let Ok(mut q) = self.inner.queue.lock() {
                // Woken early at exit (the runtime's shutdown waits for this thread), and when the
                // services begin to stop (the wait grows).
                while !q.closing {
                    let gather = if q.stopping { STOPPING_COALESCE } else { COALESCE };
                    let Some(left) = gather.checked_sub(begun.elapsed()).filter(|l| !l.is_zero()) else { break };
                    q = match self.inner.wake.wait_timeout(q, left) {
                        Ok((q, _)) => q,
                        Err(_) => return,
                    };
                }
            }
            if !self.drain(true, true) {
                return;
            }
        }
    }

    /// air-nanny begins to stop its services: what they record gathers longer (see
    /// [`STOPPING_COALESCE`]); [`Journal::flush`] writes it at exit.
    pub fn stopping(&self) {
        if let Ok(mut q) = self.inner.queue.lock() {
            q.stopping = true;
        }
        self.inner.wake.notify_all();
    }

    /// Writes the queued events; false when there were none (and, for the `writer`, it is then
    /// no longer running). The files' lock is taken before the queue, so batches are written in
    /// the order they were queued whoever writes them.
    fn drain(&self, writer: bool, sync: bool) -> bool {
        let Ok(mut files) = self.inner.files.lock() else { return false };
        let (batch, dropped) = {
            let Ok(mut q) = self.inner.queue.lock() else { return false };
            if q.events.is_empty() {
                if writer {
                    q.writing = false;
                }
                return false;
            }
            (std::mem::take(&mut q.events), std::mem::take(&mut q.dropped))
        };
        if dropped > 0 {
            tracing::warn!(dropped, "event history: a burst of events was too large; some were not recorded");
        }
        if let Err(e) = self.write_batch(&mut files, batch, sync) {
            tracing::warn!(dir = %self.inner.dir.display(), "event history: cannot write: {e}");
        }
        drop(files);
        self.inner.written.send_modify(|n| *n += 1);
        true
    }

    /// Writes everything recorded so far, at exit: nothing queued is lost. Not synced (a hundred
    /// services' files would hold the exit up by a sync each): the kernel writes them back within
    /// seconds, and an orderly power-down syncs its filesystems. Blocking.
    pub fn flush(&self) {
        if let Ok(mut q) = self.inner.queue.lock() {
            q.closing = true;
        }
        self.inner.wake.notify_all();
        while self.drain(false, false) {}
    }

    /// How large one file of a service may grow, for `services` services with a history.
    pub fn file_limit(services: usize) -> u64 {
        (OVERALL_BYTES / (2 * services.max(1) as u64)).clamp(MIN_FILE_BYTES, MAX_FILE_BYTES)
    }

    fn write_batch(&self, files: &mut HashMap<String, FileState>, batch: Vec<Pending>, sync: bool) -> io::Result<()> {
        std::fs::create_dir_all(&self.inner.dir)?;
        // Lines per service, each service's in order, with their sequence numbers.
        // (Grouped by a map: a burst of a thousand services' events was a search per event.)
        let mut lines: HashMap<String, Vec<u8>> = HashMap::new();
        for Pending { service, mut event } in batch {
            let st = files.entry(service.clone()).or_insert_with(|| load_state(&self.path(&service)));
            event.seq = st.next_seq;
            st.next_seq += 1;
            let buf = lines.entry(service).or_default();
            serde_json::to_writer(&mut *buf, &event).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let limit = Journal::file_limit(files.len());
        let mut written = Vec::with_capacity(lines.len());
        for (service, bytes) in lines {
            let path = self.path(&service);
            let Some(st) = files.get_mut(&service) else { continue };
            if st.size > 0 && st.size + bytes.len() as u64 > limit {
                std::fs::rename(&path, rotated(&path))?;
                st.size = 0;
            }
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            if std::mem::take(&mut st.torn) {
                f.write_all(b"\n")?;
                st.size += 1;
            }
            f.write_all(&bytes)?;
            st.size += bytes.len() as u64;
            written.push(f);
        }
        if sync {
            sync_files(&self.inner.dir, &written);
        }
        Ok(())
    }

    /// The events of `service` newer than `since` (all when `None`), the newest `limit`, oldest
    /// first. Blocking: call from a blocking-pool thread.
    pub fn read(&self, service: &str, since: Option<u64>, limit: usize) -> io::Result<Vec<Event>> {
        // What was recorded before the question is part of the answer.
        self.drain(false, true);
        let _files = self.inner.files.lock().map_err(|_| io::Error::other("lock poisoned"))?;
        let path = self.path(service);
        let mut events = Vec::new();
        for p in [rotated(&path), path] {
            let text = match std::fs::read(&p) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A torn line (a power cut in the middle of a write) does not parse and is skipped.
            events.extend(
                text.split(|b| *b == b'\n')
                    .filter_map(|l| serde_json::from_slice::<Event>(l).ok())
                    .filter(|e| since.is_none_or(|s| e.seq > s)),
            );
        }
        let skip = events.len().saturating_sub(limit);
        Ok(events.split_off(skip))
    }

    /// Changes whenever events were written: a follower waits on it, then reads what is newer.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.written.subscribe()
    }

    /// Removes the histories of services `configured` does not know (deleted while air-nanny was
    /// not running, or before its last restart). A service that recorded events in this run keeps
    /// them.
    pub fn prune(&self, configured: impl Fn(&str) -> bool) {
        let Ok(files) = self.inner.files.lock() else { return };
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let Some(name) = file.strip_suffix(".events").or_else(|| file.strip_suffix(".events.1")) else { continue };
            if !configured(name) && !files.contains_key(name) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(file, "removed the event history of a service no longer configured"),
                    Err(e) => tracing::warn!(file, "cannot remove an old event history: {e}"),
                }
            }
        }
    }

    /// Forgets a deleted service's history.
    pub fn forget(&self, service: &str) {
        self.drain(false, true);
        if let Ok(mut files) = self.inner.files.lock() {
            files.remove(service);
            let path = self.path(service);
            let _ = std::fs::remove_file(rotated(&path));
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Syncs what a batch wrote: each file when there are a few, else the whole filesystem at once
/// (one `syncfs` costs about what one file's sync does, where a sync per file of a burst across
/// a hundred services took a fifth of a second).
fn sync_files(dir: &Path, files: &[File]) {
    use std::os::fd::AsRawFd;
    const PER_FILE: usize = 4;
    if files.len() <= PER_FILE {
        for f in files {
            if let Err(e) = f.sync_data() {
                tracing::warn!(dir = %dir.display(), "event history: cannot sync: {e}");
            }
        }
        return;
    }
    let Some(any) = files.first() else { return };
    // SAFETY: syncfs on a descriptor we own; it only flushes the filesystem it is on.
    if unsafe { libc::syncfs(any.as_raw_fd()) } != 0 {
        tracing::warn!(dir = %dir.display(), "event history: cannot sync: {}", io::Error::last_os_error());
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".1");
    PathBuf::from(s)
}

/// The next sequence number and the size of a service's current file, from its last event (the
/// older file's when the current one is empty or torn).
fn load_state(path: &Path) -> FileState {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let last = last_seq(path).or_else(|| last_seq(&rotated(path)));
    FileState { next_seq: last.map_or(1, |s| s + 1), size, torn: size > 0 && !ends_in_newline(path) }
}

fn ends_in_newline(path: &Path) -> bool {
    let mut last = [0u8];
    File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::End(-1))?;
            f.read_exact(&mut last)
        })
        .is_ok_and(|()| last[0] == b'\n')
}

/// The sequence number of the last whole event in `path` (reads only its last 4 KiB).
fn last_seq(path: &Path) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(4096);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<Event>(l).ok()).map(|e| e.seq).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_new_journal_and_number_on() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        j.state("a", "running", "running (pid 7)".into());
        j.record("a", Kind::Exit, "program ended (killed by SIGKILL)");
        j.record("b", Kind::Operator, "POST /task/stop");
        let a = j.read("a", None, 100).unwrap();
        assert_eq!(a.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(a[0].state.as_deref(), Some("running"));
        assert_eq!(a[1].kind, Kind::Exit);
        // air-nanny restarts: the numbers go on from the file.
        let j = Journal::new(dir.path());
        j.health("a", "health check failed (1/3)".into(), Some("x".repeat(2000)));
        let a = j.read("a", Some(2), 100).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].seq, 3);
        assert_eq!(a[0].output.as_ref().map(String::len), Some(OUTPUT_MAX));
        assert_eq!(j.read("b", None, 100).unwrap().len(), 1);
        assert_eq!(j.read("a", None, 1).unwrap()[0].seq, 3, "the newest `limit` events");
    }

    #[test]
    fn the_history_is_bounded_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        for i in 0..5000 {
            j.record("a", Kind::Restart, format!("restart number {i}"));
        }
        let path = dir.path().join("events/a.events");
        let limit = Journal::file_limit(1);
        assert!(std::fs::metadata(&path).unwrap().len() <= limit);
        assert!(std::fs::metadata(rotated(&path)).unwrap().len() <= limit);
        let all = j.read("a", None, usize::MAX).unwrap();
        assert_eq!(all.last().unwrap().seq, 5000);
        assert!(all.len() >= 500, "about 1000 events are kept: {}", all.len());
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1), "in order, none lost between the files");
        // A power cut in the middle of a line.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"seq\":5001,\"ti").unwrap();
        let j = Journal::new(dir.path());
        j.record("a", Kind::Restart, "after the power cut");
        let tail = j.read("a", Some(4999), 10).unwrap();
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5000, 5001]);
        j.forget("a");
        assert!(j.read("a", None, 10).unwrap().is_empty());
        assert!(!path.exists() && !rotated(&path).exists());
    }

    #[test]
    fn histories_of_services_no_longer_configured_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        for name in ["kept", "gone"] {
            for i in 0..3000 {
                j.record(name, Kind::Exit, format!("exit {i}"));
            }
        }
        let j = Journal::new(dir.path());
        j.record("new", Kind::Config, "added in this run");
        j.prune(|n| n == "kept");
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("events"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["kept.events", "kept.events.1", "new.events"]);
    }

    #[test]
    fn limits_shrink_with_many_services() {
        assert_eq!(Journal::file_limit(1), MAX_FILE_BYTES);
        assert_eq!(Journal::file_limit(10_000), MIN_FILE_BYTES);
        assert!(Journal::file_limit(200) * 2 * 200 <= OVERALL_BYTES);
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        assert_eq!(cut("héllo".into(), 2), "h");
        assert_eq!(cut("abc".into(), 10), "abc");
    }
}
