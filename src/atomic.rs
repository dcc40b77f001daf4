//! Power-loss-safe file replacement: write a temp file beside the target, fsync it, keep the old
//! version as a backup by hard link, rename the new one in, fsync the directory.
//!
//! Theory of operation: every step before the rename leaves the target untouched; the rename is
//! atomic; the directory fsync makes the rename durable. So a crash or a failure at any step leaves
//! either the whole old file or the whole new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The steps of [`write`], named so that tests can inject a failure at each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateTemp,
    WriteTemp,
    SyncTemp,
    LinkBackup,
    RenameBackup,
    Rename,
    SyncDir,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::CreateTemp,
        Step::WriteTemp,
        Step::SyncTemp,
        Step::LinkBackup,
        Step::RenameBackup,
        Step::Rename,
        Step::SyncDir,
    ];
}

/// The backup kept beside `path`: `services.json` → `services.json.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// Atomically replaces `path` with `bytes`; with `keep_backup`, the previous version becomes `.bak`.
pub fn write(path: &Path, bytes: &[u8], keep_backup: bool) -> io::Result<()> {
    write_with(path, bytes, keep_backup, &mut |_| Ok(()))
}

/// [`write`] with a hook called before each step; an error from the hook aborts at that step,
/// exactly as an I/O error there would.
pub fn write_with(
    path: &Path,
    bytes: &[u8],
    keep_backup: bool,
    hook: &mut dyn FnMut(Step) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::other("no file name"))?.to_os_string();
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        hook(Step::CreateTemp)?;
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        hook(Step::WriteTemp)?;
        f.write_all(bytes)?;
        hook(Step::SyncTemp)?;
        f.sync_all()?;
        drop(f);
        if keep_backup && path.exists() {
            let bak = backup_path(path);
            let bak_tmp = dir.join(format!(".{}.bak.tmp.{}", name.to_string_lossy(), std::process::id()));
            let _ = fs::remove_file(&bak_tmp);
            hook(Step::LinkBackup)?;
            fs::hard_link(path, &bak_tmp)?;
            hook(Step::RenameBackup).inspect_err(|_| {
                let _ = fs::remove_file(&bak_tmp);
            })?;
            fs::rename(&bak_tmp, &bak)?;
        }
        hook(Step::Rename)?;
        fs::rename(&tmp, path)?;
        hook(Step::SyncDir)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the temp files that writes of `path` interrupted by a crash or a power cut left behind
/// (`.NAME.tmp.PID`, `.NAME.bak.tmp.PID`; a finished write leaves none). Call before the first
/// write. Returns how many were removed.
pub fn remove_leftovers(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return 0 };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let name = name.to_string_lossy();
    let prefixes = [format!(".{name}.tmp."), format!(".{name}.bak.tmp.")];
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let leftover = prefixes.iter().any(|p| {
            file.strip_prefix(p.as_str()).is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        if leftover && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_keeps_backup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        write(&p, b"one", true).unwrap();
        assert!(!backup_path(&p).exists());
        write(&p, b"two", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(backup_path(&p)).unwrap(), b"one");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temp file left");
    }

    /// A failure injected at every step leaves either the whole old or the whole new file, and
    /// never a stray temp file.
    #[test]
    fn interrupted_at_any_step_leaves_old_or_new() {
        let old = b"[\"the whole old version\"]".repeat(100);
        let new = b"[\"the complete new one\"]".repeat(120);
        for step in Step::ALL {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("services.json");
            write(&p, &old, true).unwrap();
            let r = write_with(&p, &new, true, &mut |s| {
                if s == step {
                    Err(io::Error::other(format!("injected at {s:?}")))
                } else {
                    Ok(())
                }
            });
            assert!(r.is_err(), "{step:?}");
            let now = fs::read(&p).unwrap();
            if step == Step::SyncDir {
                // The rename happened; only its durability was not confirmed.
                assert_eq!(now, new, "{step:?}");
            } else {
                assert_eq!(now, old, "{step:?}: target must be untouched");
            }
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp")), "{step:?}: {names:?}");
        }
    }

    #[test]
    fn leftovers_of_interrupted_writes_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        write(&p, b"[]", true).unwrap();
        write(&p, b"[1]", true).unwrap();
        for f in [".services.json.tmp.123", ".services.json.bak.tmp.9", ".state.json.tmp.5"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        // Not ours: other files, and names that merely look alike.
        for f in ["notes.txt", ".services.json.tmp.", ".services.json.tmp.12x", "services.json.tmp.1"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        assert_eq!(remove_leftovers(&p), 2);
        assert_eq!(remove_leftovers(&dir.path().join("state.json")), 1);
        let mut names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".services.json.tmp.",
                ".services.json.tmp.12x",
                "notes.txt",
                "services.json",
                "services.json.bak",
                "services.json.tmp.1"
            ]
        );
    }
}
