//! Service logs: one size-rotated file per service in LOG_DIR, fed by pipes from the service's
//! scripts and programs and by air-nanny's own notes, so a long flight cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A log file rotated by size: `name.log`, `name.log.1` … `name.log.N`.
struct Rotating {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl Rotating {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size + bytes.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate()?;
            return self.write(bytes);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        for i in (1..self.max_files).rev() {
            let from = numbered(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, i + 1))?;
            }
        }
        if self.max_files >= 1 {
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
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
    /// `max_files` rotated files are kept besides the current one.
    pub fn open(dir: &Path, service: &str, max_bytes: u64, max_files: u32) -> ServiceLog {
        let path = dir.join(format!("{service}.log"));
        ServiceLog { inner: Arc::new(Mutex::new(Rotating { path, file: None, size: 0, max_bytes, max_files })) }
    }

    pub fn path(&self) -> PathBuf {
        self.inner.lock().expect("log lock").path.clone()
    }

    /// Appends raw output. Errors (a full disk) are reported once per call in air-nanny's own log.
    pub fn append(&self, bytes: &[u8]) {
        let mut log = self.inner.lock().expect("log lock");
        if let Err(e) = log.write(bytes) {
            tracing::warn!(file = %log.path.display(), "cannot write service log: {e}");
        }
    }

    /// Appends one line written by air-nanny itself.
    pub fn note(&self, msg: &str) {
        self.append(format!("[air-nanny] {msg}\n").as_bytes());
    }

    /// A pipe whose read end is pumped into this log until every writer has closed it. The write
    /// end goes to a child's stdout/stderr.
    pub fn pipe(&self) -> io::Result<OwnedFd> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        let log = self.clone();
        tokio::spawn(async move {
            // Wait for data without holding a buffer: a quiet pipe costs only its task. The read
            // itself goes through one buffer per thread.
            thread_local! { static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]); }
            loop {
                if rx.readable().await.is_err() {
                    break;
                }
                let done = BUF.with_borrow_mut(|buf| match rx.try_read(buf) {
                    Ok(0) => true,
                    Ok(n) => {
                        log.append(&buf[..n]);
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(_) => true,
                });
                if done {
                    break;
                }
            }
        });
        Ok(write)
    }

    /// The last `lines` lines of the current file (and the previous one when the current is short).
    pub fn tail(&self, lines: usize) -> io::Result<String> {
        let path = self.path();
        let mut text =
            std::fs::read(&path)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(Vec::new()) } else { Err(e) })?;
        if text.iter().filter(|b| **b == b'\n').count() < lines {
            if let Ok(mut older) = std::fs::read(numbered(&path, 1)) {
                older.extend_from_slice(&text);
                text = older;
            }
        }
        let s = String::from_utf8_lossy(&text);
        let all: Vec<&str> = s.lines().collect();
        let from = all.len().saturating_sub(lines);
        Ok(all[from..].join("\n"))
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
}
