//! The operator's decisions that must survive a restart of air-nanny (`STATE_DIR/state.json`):
//! services stopped, and services removed from supervision. Written (atomically, with a backup)
//! before a decision is acted on or answered; read at start with the same fallback as services.json.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::store::StoreError;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// Stopped through the API: not started at boot until started again.
    #[serde(default)]
    pub stopped: BTreeSet<String>,
    /// Removed from supervision (`/task/del`): no task at boot until set or started again.
    #[serde(default)]
    pub unsupervised: BTreeSet<String>,
}

fn read(path: &Path) -> Result<Option<Decisions>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

impl Decisions {
    /// Loads `path`; none yet is no decision. A corrupt file falls back to its backup (the bad one
    /// is kept as `state.json.corrupt` and the backup's content restored) and says so in the
    /// second value; both unusable is an error, because guessing would either start what the
    /// operator stopped or leave stopped what should run.
    pub fn load(path: &Path) -> Result<(Decisions, Option<String>), StoreError> {
        let reason = match read(path) {
            Ok(d) => return Ok((d.unwrap_or_default(), None)),
            Err(reason) => reason,
        };
        let backup = atomic::backup_path(path);
        match read(&backup) {
            Ok(Some(d)) => {
                let mut corrupt = path.as_os_str().to_os_string();
                corrupt.push(".corrupt");
                let _ = std::fs::copy(path, PathBuf::from(corrupt));
                d.save(path).map_err(|source| StoreError::Write { file: path.to_path_buf(), source })?;
                Ok((d, Some(reason)))
            }
            Ok(None) => Err(StoreError::BothBad {
                file: path.to_path_buf(),
                reason,
                backup,
                backup_reason: "it does not exist".into(),
            }),
            Err(backup_reason) => Err(StoreError::BothBad { file: path.to_path_buf(), reason, backup, backup_reason }),
        }
    }

    /// Writes the decisions (the previous file becomes the backup).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        atomic::write(path, &bytes, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_empty_corrupt_falls_back_and_both_bad_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(Decisions::load(&path).unwrap(), (Decisions::default(), None));

        let mut d = Decisions::default();
        d.stopped.insert("parked".into());
        d.save(&path).unwrap();
        d.stopped.insert("second".into());
        d.save(&path).unwrap();
        std::fs::write(&path, b"{\"stopped\": [\"par").unwrap();
        let (loaded, fell_back) = Decisions::load(&path).unwrap();
        assert!(fell_back.is_some());
        assert!(loaded.stopped.contains("parked"), "the backup's decisions are used: {loaded:?}");
        assert!(dir.path().join("state.json.corrupt").exists());
        assert_eq!(Decisions::load(&path).unwrap().0, loaded, "the backup's content was restored");

        std::fs::write(&path, b"garbage").unwrap();
        std::fs::write(atomic::backup_path(&path), b"garbage").unwrap();
        let e = Decisions::load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("backup"), "{e}");
    }
}
