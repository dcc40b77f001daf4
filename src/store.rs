//! The configuration store: the one owner of services.json. Loads it (falling back to the
//! backup when it is corrupt), and applies upserts and deletes with serialised atomic writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::allow::Policy;
use crate::atomic;
use crate::config::{self, Problems, ServiceInfo};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// services.json and its backup are both unusable: air-nanny must not start.
    #[error("{file} is unusable ({reason}) and so is its backup {backup} ({backup_reason}); fix one of them")]
    BothBad { file: PathBuf, reason: String, backup: PathBuf, backup_reason: String },
    #[error("cannot write {file}: {source}; nothing was changed")]
    Write { file: PathBuf, source: std::io::Error },
    #[error("{file} has problems; nothing was changed:\n{problems}")]
    Invalid { file: PathBuf, problems: Problems },
    #[error("no service named {0:?}")]
    NotFound(String),
}

/// How the load went: which file was used, and what was wrong on the way.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Set when services.json was unusable and the backup was used instead.
    pub fell_back: Option<String>,
    pub warnings: Problems,
}

/// The store. Cheap to clone; every write is serialised by one lock and hits the disk before the
/// in-memory list changes, so a failed write changes nothing.
#[derive(Clone)]
pub struct ConfigStore {
    inner: Arc<Mutex<Vec<ServiceInfo>>>,
    path: Arc<PathBuf>,
    /// The entries written by a request, with the allow-list they passed: whatever starts such an
    /// entry later (a reload, `/task/start`) checks it again on the paths it resolves then. Kept
    /// while the entry stays as the request wrote it; in memory only: after a restart of
    /// air-nanny the file is the operator's.
    requested: Arc<std::sync::Mutex<HashMap<String, Arc<Policy>>>>,
}

impl ConfigStore {
    /// Loads services.json; a corrupt or unreadable one falls back to `services.json.bak` (and the
    /// bad file is kept as `services.json.corrupt` for inspection). A missing file is an empty list.
    pub fn load(path: &Path) -> Result<(ConfigStore, LoadReport), StoreError> {
        let mut report = LoadReport::default();
        let services = match read_valid(path) {
            Ok(Some((svcs, warnings))) => {
                report.warnings = warnings;
                svcs
            }
            Ok(None) => Vec::new(),
            Err(reason) => {
                let backup = atomic::backup_path(path);
                match read_valid(&backup) {
                    Ok(Some((svcs, warnings))) => {
                        report.warnings = warnings;
                        report.fell_back = Some(reason);
                        let mut corrupt = path.as_os_str().to_os_string();
                        corrupt.push(".corrupt");
                        // Keep the bad file for a person to look at, then restore the backup's content
                        // so that the next write does not turn the corrupt file into the backup.
                        let _ = std::fs::copy(path, &corrupt);
                        atomic::write(path, &config::render_services(&svcs), false)
                            .map_err(|source| StoreError::Write { file: path.to_path_buf(), source })?;
                        svcs
                    }
                    Ok(None) => {
                        return Err(StoreError::BothBad {
                            file: path.to_path_buf(),
                            reason,
                            backup: backup.clone(),
                            backup_reason: "it does not exist".into(),
                        })
                    }
                    Err(backup_reason) => {
                        return Err(StoreError::BothBad { file: path.to_path_buf(), reason, backup, backup_reason })
                    }
                }
            }
        };
        let store = ConfigStore {
            inner: Arc::new(Mutex::new(services)),
            path: Arc::new(path.to_path_buf()),
            requested: Arc::default(),
        };
        Ok((store, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many services it holds.
    pub async fn count(&self) -> usize {
        self.inner.lock().await.len()
    }

    pub async fn list(&self) -> Vec<ServiceInfo> {
        self.inner.lock().await.clone()
    }

    pub async fn get(&self, name: &str) -> Option<ServiceInfo> {
        self.inner.lock().await.iter().find(|s| s.name == name).cloned()
    }

    /// Adds or replaces a service (matched by name; a new one goes last). Returns the previous one.
    pub async fn upsert(&self, svc: ServiceInfo) -> Result<Option<ServiceInfo>, StoreError> {
        self.upsert_requested(svc, None).await
    }

    /// [`upsert`](Self::upsert) of an entry a request wrote under `policy` (kept for the starts
    /// of it that come later; `None`: an entry nobody's allow-list applies to).
    pub async fn upsert_requested(
        &self,
        svc: ServiceInfo,
        policy: Option<Arc<Policy>>,
    ) -> Result<Option<ServiceInfo>, StoreError> {
        let mut guard = self.inner.lock().await;
        let mut next = guard.clone();
        let name = svc.name.clone();
        let old = match next.iter_mut().find(|s| s.name == svc.name) {
            Some(slot) => Some(std::mem::replace(slot, svc)),
            None => {
                next.push(svc);
                None
            }
        };
        self.persist(&next).await?;
        *guard = next;
        // Under the same lock as the list: a reload in between cannot judge the entry by the
        // other's state.
        let mut requested = self.requested.lock().expect("requested lock");
        match policy {
            Some(p) => requested.insert(name, p),
            None => requested.remove(&name),
        };
        Ok(old)
    }

    /// The allow-list the entry `name` was written under by a request, while it stands as written.
    pub fn policy_of(&self, name: &str) -> Option<Arc<Policy>> {
        self.requested.lock().expect("requested lock").get(name).cloned()
    }

    /// Removes a service's configuration. Returns it.
    pub async fn delete(&self, name: &str) -> Result<ServiceInfo, StoreError> {
        let mut guard = self.inner.lock().await;
        let mut next = guard.clone();
        let idx = next.iter().position(|s| s.name == name).ok_or_else(|| StoreError::NotFound(name.into()))?;
        let old = next.remove(idx);
        self.persist(&next).await?;
        *guard = next;
        self.requested.lock().expect("requested lock").remove(name);
        Ok(old)
    }

    /// Re-reads services.json from disk (SIGHUP). An invalid file changes nothing.
    pub async fn reload(&self) -> Result<(Vec<ServiceInfo>, Problems), StoreError> {
        let mut guard = self.inner.lock().await;
        let path = self.path.to_path_buf();
        let text = tokio::task::spawn_blocking(move || std::fs::read(&path))
            .await
            .expect("read task never panics")
            .map_err(|source| StoreError::Write { file: self.path.to_path_buf(), source })?;
        let (svcs, problems) = config::parse_services(&text, &self.path.display().to_string());
        if problems.has_errors() {
            return Err(StoreError::Invalid { file: self.path.to_path_buf(), problems });
        }
        // A requested entry the operator has since edited (or removed) is the operator's now.
        self.requested
            .lock()
            .expect("requested lock")
            .retain(|name, _| guard.iter().find(|s| &s.name == name) == svcs.iter().find(|s| &s.name == name));
        *guard = svcs.clone();
        Ok((svcs, problems))
    }

    async fn persist(&self, services: &[ServiceInfo]) -> Result<(), StoreError> {
        let bytes = config::render_services(services);
        let path = self.path.to_path_buf();
        tokio::task::spawn_blocking(move || atomic::write(&path, &bytes, true))
            .await
            .expect("write task never panics")
            .map_err(|source| StoreError::Write { file: self.path.to_path_buf(), source })
    }
}

/// `Ok(None)` when the file does not exist; `Err(reason)` when it cannot be used.
fn read_valid(path: &Path) -> Result<Option<(Vec<ServiceInfo>, Problems)>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let (svcs, problems) = config::parse_services(&text, &path.display().to_string());
    if problems.has_errors() {
        return Err(problems.errors().map(ToString::to_string).collect::<Vec<_>>().join("; "));
    }
    Ok(Some((svcs, problems)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn svc(name: &str) -> ServiceInfo {
        ServiceInfo::from_json(
            format!(r#"{{"name":"{name}","script":{{"programFilePath":"/bin/{name}"}}}}"#).as_bytes(),
        )
        .unwrap()
    }

    /// A requested entry keeps its allow-list while it stands as the request wrote it: not after
    /// the operator edits it in the file, a plain upsert replaces it, or it is deleted.
    #[tokio::test]
    async fn a_requested_entry_keeps_its_allow_list_while_it_stands_as_written() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("public.yaml"), "rootpath: root\n").unwrap();
        fs::write(dir.path().join("config.yaml"), "SERVER: s\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 8090\n").unwrap();
        let settings =
            crate::config::Settings::load(&dir.path().join("config.yaml"), &mut Problems::default()).unwrap();
        let policy = || Some(Arc::new(Policy::new(&settings, None)));
        let p = dir.path().join("services.json");
        let (store, _) = ConfigStore::load(&p).unwrap();
        for name in ["kept", "edited", "replaced", "deleted"] {
            store.upsert_requested(svc(name), policy()).await.unwrap();
        }
        store.upsert(svc("replaced")).await.unwrap();
        store.delete("deleted").await.unwrap();
        // The operator edits one entry in the file and reloads.
        let mut on_disk: Vec<serde_json::Value> = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        on_disk.iter_mut().find(|v| v["name"] == "edited").unwrap()["priority"] = 5.into();
        fs::write(&p, serde_json::to_vec(&on_disk).unwrap()).unwrap();
        store.reload().await.unwrap();
        assert!(store.policy_of("kept").is_some());
        for name in ["edited", "replaced", "deleted", "never"] {
            assert!(store.policy_of(name).is_none(), "{name}");
        }
    }

    #[tokio::test]
    async fn upsert_delete_persist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        let (store, _) = ConfigStore::load(&p).unwrap();
        assert!(store.list().await.is_empty());
        store.upsert(svc("a")).await.unwrap();
        store.upsert(svc("b")).await.unwrap();
        let mut a2 = svc("a");
        a2.priority = 7;
        assert!(store.upsert(a2).await.unwrap().is_some());
        store.delete("b").await.unwrap();
        assert!(matches!(store.delete("b").await, Err(StoreError::NotFound(_))));
        let (again, _) = ConfigStore::load(&p).unwrap();
        let list = again.list().await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].priority, 7);
    }

    #[tokio::test]
    async fn corrupt_file_falls_back_to_backup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        let (store, _) = ConfigStore::load(&p).unwrap();
        store.upsert(svc("a")).await.unwrap();
        store.upsert(svc("b")).await.unwrap(); // .bak now holds [a]
        fs::write(&p, b"[{\"name\": \"a\", trunc").unwrap();
        let (store, report) = ConfigStore::load(&p).unwrap();
        assert!(report.fell_back.unwrap().contains("malformed JSON"));
        assert_eq!(store.list().await.len(), 1);
        assert!(dir.path().join("services.json.corrupt").exists());
        // services.json is usable again, and the good backup survived.
        assert!(ConfigStore::load(&p).unwrap().1.fell_back.is_none());
    }

    #[tokio::test]
    async fn both_bad_refuses_and_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        fs::write(&p, b"not json").unwrap();
        fs::write(atomic::backup_path(&p), b"[{\"name\":1}]").unwrap();
        let err = ConfigStore::load(&p).err().expect("must refuse").to_string();
        assert!(err.contains("services.json is unusable"), "{err}");
        assert!(err.contains("services.json.bak"), "{err}");
        assert!(err.contains("name: expected a string"), "{err}");
    }

    /// A write that fails on disk changes neither the file nor the in-memory list.
    #[tokio::test]
    async fn failed_write_changes_nothing_in_memory() {
        if nix::unistd::geteuid().is_root() {
            // Root ignores directory permissions; use a path whose parent is a file instead.
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("services.json");
            let (store, _) = ConfigStore::load(&p).unwrap();
            store.upsert(svc("a")).await.unwrap();
            let blocked =
                ConfigStore { inner: store.inner.clone(), path: Arc::new(p.join("x")), requested: Arc::default() };
            assert!(matches!(blocked.upsert(svc("b")).await, Err(StoreError::Write { .. })));
            assert!(blocked.delete("a").await.is_err());
            assert_eq!(store.list().await, vec![svc("a")]);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        let (store, _) = ConfigStore::load(&p).unwrap();
        store.upsert(svc("a")).await.unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o500)).unwrap();
        let r = store.upsert(svc("b")).await;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(r.is_err());
        assert_eq!(store.list().await, vec![svc("a")]);
    }

    #[tokio::test]
    async fn invalid_reload_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("services.json");
        let (store, _) = ConfigStore::load(&p).unwrap();
        store.upsert(svc("a")).await.unwrap();
        fs::write(&p, br#"[{"name":"a","script":{}}]"#).unwrap();
        let err = store.reload().await.unwrap_err().to_string();
        assert!(err.contains("script.programFilePath"), "{err}");
        assert_eq!(store.list().await, vec![svc("a")]);
    }
}
