//! The audit trail: every request that changes something, one JSON line each in
//! `STATE_DIR/audit.log`, written and fsync'd before the request is answered.
//!
//! Bounded: past [`MAX_BYTES`] the file becomes `audit.log.1` (replacing the previous one) by an
//! atomic rename, so at most twice that is kept. Power-loss safe: a record is appended whole and
//! synced; a torn last line after a power cut is skipped when reading.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

/// The size at which the trail is rotated.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// One change, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub peer: String,
    /// `write` or `read` (the token used), the client certificate's subject, or `anonymous` (no
    /// token configured).
    pub identity: String,
    pub method: String,
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub status: u16,
    /// `SUCCESS`, or the reason it failed.
    pub result: String,
}

/// The trail's file; appends are serialised and done off the runtime thread.
#[derive(Clone)]
pub struct Audit {
    path: Arc<PathBuf>,
    max_bytes: u64,
    lock: Arc<Mutex<()>>,
}

impl Audit {
    pub fn new(state_dir: &Path) -> Audit {
        Audit::with_limit(state_dir, MAX_BYTES)
    }

    /// A trail rotated at `max_bytes` (tests use a small one).
    pub fn with_limit(state_dir: &Path, max_bytes: u64) -> Audit {
        Audit { path: Arc::new(state_dir.join("audit.log")), max_bytes, lock: Arc::default() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` and syncs it to disk.
    pub async fn append(&self, record: Record) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_now(&record))
            .await
            .map_err(|_| std::io::Error::other("audit writer failed"))?
    }

    fn append_now(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().map_err(|_| std::io::Error::other("audit lock poisoned"))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::metadata(&*self.path).map(|m| m.len()).unwrap_or(0) + line.len() as u64 > self.max_bytes {
            std::fs::rename(&*self.path, rotated(&self.path))?;
            sync_dir(&self.path);
        }
        let mut f = OpenOptions::new().create(true).append(true).read(true).mode(0o600).open(&*self.path)?;
        // A line torn by a power cut is ended first, so this record stands on a line of its own.
        let len = f.metadata()?.len();
        let mut last = [b'\n'];
        if len > 0 {
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1)?;
        }
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(())
    }

    /// The newest `limit` records, oldest first.
    pub async fn tail(&self, limit: usize) -> std::io::Result<Vec<Value>> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for p in [rotated(&path), path.to_path_buf()] {
                match std::fs::read(&p) {
                    Ok(bytes) => {
                        out.extend(bytes.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<Value>(l).ok()))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let skip = out.len().saturating_sub(limit);
            Ok(out.split_off(skip))
        })
        .await
        .map_err(|_| std::io::Error::other("audit reader failed"))?
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-24T10:42:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    crate::logfmt::rfc3339_utc(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_997_927_123);
        assert_eq!(rfc3339(t), "2026-11-30T00:18:47.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    fn record(i: usize) -> Record {
        Record {
            time: rfc3339(SystemTime::now()),
            peer: "127.0.0.1:1".into(),
            identity: "write".into(),
            method: "POST".into(),
            endpoint: "/task/stop".into(),
            service: Some(format!("s{i}")),
            status: 200,
            result: "SUCCESS".into(),
        }
    }

    #[tokio::test]
    async fn the_trail_is_bounded_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::with_limit(dir.path(), 16 * 1024);
        audit.append(record(0)).await.unwrap();
        // A power cut in the middle of a write leaves a torn line; the next record still reads.
        std::fs::OpenOptions::new().append(true).open(audit.path()).unwrap().write_all(b"{\"time\":\"20").unwrap();
        audit.append(record(1)).await.unwrap();
        let t = audit.tail(10).await.unwrap();
        assert_eq!(t.len(), 2, "{t:?}");
        for i in 2..400 {
            audit.append_now(&record(i)).unwrap();
        }
        let total: u64 = [audit.path().to_path_buf(), rotated(audit.path())]
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= 2 * 16 * 1024, "{total}");
        let t = audit.tail(3).await.unwrap();
        assert_eq!(t.iter().map(|r| r["service"].as_str().unwrap()).collect::<Vec<_>>(), ["s397", "s398", "s399"]);
    }
}
