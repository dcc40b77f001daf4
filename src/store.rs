//! The configuration store: the one owner of services.json. Loads it (falling back to the
//! backup when it is corrupt), and applies upserts and deletes with serialised atomic writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::allow::Policy;
use crate::atomic;
use crate::config::{self, Problems, ServiceInfo, Settings};

/// In STATE_DIR: which entries of services.json requests wrote, kept across restarts of
/// air-nanny. A JSON array of `{"written": SERVICE, "before": SERVICE or null}`: the entry as the
/// request wrote it, and the one services.json had before it (whose paths the request could keep).
pub const REQUESTED_FILE: &str = "requested.json";

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
    /// entry later (a reload, `/task/start`, the boot after a restart) checks it again on the paths
    /// it resolves then. Kept while the entry stays as the request wrote it, and on disk in
    /// [`REQUESTED_FILE`] once [`keep_requests`](Self::keep_requests) named the file.
    requested: Arc<std::sync::Mutex<HashMap<String, Arc<Policy>>>>,
    requested_file: Option<Arc<PathBuf>>,
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
            requested_file: None,
        };
        Ok((store, report))
    }

    /// Takes back from `STATE_DIR/requested.json` which entries requests wrote, each with the
    /// allow-list it passed (today's `ALLOWED_DIRS` and check hosts, with what services.json had
    /// before the request), and keeps that file from now on. A record whose entry is no longer as
    /// the request wrote it — the operator edited or removed it while air-nanny was stopped — is
    /// dropped: the entry is the operator's. Returns what went wrong on the way (an unusable file
    /// falls back to its backup; with both unusable, every entry is the operator's).
    pub fn keep_requests(&mut self, settings: &Settings) -> Vec<String> {
        let file = settings.state_dir.join(REQUESTED_FILE);
        let mut warnings = Vec::new();
        let (records, rewrite) = match read_requested(&file) {
            Ok(records) => (records, false),
            Err(reason) => match read_requested(&atomic::backup_path(&file)) {
                Ok(records) => {
                    warnings.push(format!("{} is unusable ({reason}); using its backup", file.display()));
                    (records, true)
                }
                Err(backup_reason) => {
                    warnings.push(format!(
                        "{} is unusable ({reason}) and so is its backup ({backup_reason}): the entries requests \
                         wrote before this start are taken as the operator's",
                        file.display()
                    ));
                    (Vec::new(), true)
                }
            },
        };
        let services = match self.inner.try_lock() {
            Ok(list) => list.clone(),
            Err(_) => return warnings,
        };
        let total = records.len();
        let mut map = HashMap::new();
        for (written, before) in records {
            if services.contains(&written) {
                map.insert(written.name.clone(), Arc::new(Policy::new(settings, before)));
            }
        }
        let dropped = total - map.len();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "entries written by requests were edited or removed by the operator since: theirs now"
            );
        }
        if rewrite || dropped > 0 {
            if let Err(e) = atomic::write(&file, &requested_bytes(&map, &services), true) {
                warnings.push(format!("cannot write {}: {e}", file.display()));
            }
        }
        *self.requested.lock().expect("requested lock") = map;
        self.requested_file = Some(Arc::new(file));
        warnings
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
        let current = self.requested.lock().expect("requested lock").clone();
        let mut requested = current.clone();
        let was_requested = match &policy {
            Some(p) => requested.insert(name, p.clone()).is_some(),
            None => requested.remove(&name).is_some(),
        };
        // The record of a request before the entry: a crash in between leaves a record that does
        // not match the file (dropped at the next start), never an entry without its record.
        if policy.is_some() {
            self.save_requested(&requested, &next).await?;
        }
        if let Err(e) = self.persist(&next).await {
            if policy.is_some() {
                // The entry it replaced keeps its own record.
                self.forget_request(&current, &guard).await;
            }
            return Err(e);
        }
        *guard = next;
        if policy.is_none() && was_requested {
            self.forget_request(&requested, &guard).await;
        }
        // Under the same lock as the list: a reload in between cannot judge the entry by the
        // other's state.
        *self.requested.lock().expect("requested lock") = requested;
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
        let requested = {
            let mut map = self.requested.lock().expect("requested lock");
            map.remove(name).map(|_| map.clone())
        };
        if let Some(requested) = requested {
            self.forget_request(&requested, &guard).await;
        }
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
        let requested = {
            let mut map = self.requested.lock().expect("requested lock");
            let before = map.len();
            map.retain(|name, _| guard.iter().find(|s| &s.name == name) == svcs.iter().find(|s| &s.name == name));
            (map.len() != before).then(|| map.clone())
        };
        *guard = svcs.clone();
        if let Some(requested) = requested {
            self.forget_request(&requested, &guard).await;
        }
        Ok((svcs, problems))
    }

    /// Writes which of `services` requests wrote (nothing to do before
    /// [`keep_requests`](Self::keep_requests)).
    async fn save_requested(
        &self,
        requested: &HashMap<String, Arc<Policy>>,
        services: &[ServiceInfo],
    ) -> Result<(), StoreError> {
        let Some(file) = self.requested_file.clone() else { return Ok(()) };
        let bytes = requested_bytes(requested, services);
        let path = file.clone();
        tokio::task::spawn_blocking(move || atomic::write(&path, &bytes, true))
            .await
            .expect("write task never panics")
            .map_err(|source| StoreError::Write { file: file.to_path_buf(), source })
    }

    /// Writes the records after one was dropped. A failure leaves a record that no longer matches
    /// its entry (dropped at the next start) or, when the operator wrote the very same entry, one
    /// that keeps checking it: never an entry that escapes its check.
    async fn forget_request(&self, requested: &HashMap<String, Arc<Policy>>, services: &[ServiceInfo]) {
        if let Err(e) = self.save_requested(requested, services).await {
            tracing::warn!("{e}");
        }
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

/// The records of [`REQUESTED_FILE`] for the entries of `services` that requests wrote.
fn requested_bytes(requested: &HashMap<String, Arc<Policy>>, services: &[ServiceInfo]) -> Vec<u8> {
    let records: Vec<serde_json::Value> = services
        .iter()
        .filter_map(|s| {
            let policy = requested.get(&s.name)?;
            Some(serde_json::json!({ "written": s, "before": policy.before() }))
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&records).expect("service objects always serialise");
    out.push(b'\n');
    out
}

/// The records of a [`REQUESTED_FILE`] (none when it does not exist); `Err(reason)` when it
/// cannot be used.
fn read_requested(path: &Path) -> Result<Vec<(ServiceInfo, Option<ServiceInfo>)>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("malformed JSON: {e}"))?;
    let items = value.as_array().ok_or("expected a JSON array of records")?;
    let mut problems = Problems::default();
    let file = path.display().to_string();
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ctx = format!("{file}: record #{}", i + 1);
        let service = |key: &str, problems: &mut Problems| match item.get(key) {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => ServiceInfo::from_value(v, problems, &format!("{ctx}: {key}")),
        };
        let Some(written) = service("written", &mut problems) else {
            if !problems.has_errors() {
                problems.error(&ctx, "written", "missing".to_string());
            }
            continue;
        };
        let before = service("before", &mut problems);
        records.push((written, before));
    }
    if problems.has_errors() {
        return Err(problems.errors().map(ToString::to_string).collect::<Vec<_>>().join("; "));
    }
    Ok(records)
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
        let (mut store, _) = ConfigStore::load(&p).unwrap();
        assert!(store.keep_requests(&settings).is_empty());
        for name in ["kept", "edited", "replaced", "deleted"] {
            store.upsert_requested(svc(name), policy()).await.unwrap();
        }
        // A request that replaced the operator's own entry: what the file had is kept with it.
        store.upsert(svc("grandfathered")).await.unwrap();
        let mut changed = svc("grandfathered");
        changed.priority = 3;
        store
            .upsert_requested(changed, Some(Arc::new(Policy::new(&settings, Some(svc("grandfathered"))))))
            .await
            .unwrap();
        store.upsert(svc("replaced")).await.unwrap();
        store.delete("deleted").await.unwrap();
        // The operator edits one entry in the file and reloads.
        let mut on_disk: Vec<serde_json::Value> = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        on_disk.iter_mut().find(|v| v["name"] == "edited").unwrap()["priority"] = 5.into();
        fs::write(&p, serde_json::to_vec(&on_disk).unwrap()).unwrap();
        store.reload().await.unwrap();
        let requested = |store: &ConfigStore| {
            ["kept", "grandfathered", "edited", "replaced", "deleted", "never"]
                .into_iter()
                .filter(|n| store.policy_of(n).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(requested(&store), ["kept", "grandfathered"]);

        // air-nanny restarts: the same entries are the requests', with what the file had before.
        let restart = || {
            let (mut store, _) = ConfigStore::load(&p).unwrap();
            let warnings = store.keep_requests(&settings);
            (store, warnings)
        };
        let (store, warnings) = restart();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(requested(&store), ["kept", "grandfathered"]);
        assert_eq!(store.policy_of("grandfathered").unwrap().before(), Some(&svc("grandfathered")));
        assert_eq!(store.policy_of("kept").unwrap().before(), None);

        // The operator edits "kept" while air-nanny is stopped: it is theirs at the next start,
        // and its record is gone from the file.
        let file = dir.path().join(REQUESTED_FILE);
        let mut on_disk: Vec<serde_json::Value> = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        on_disk.iter_mut().find(|v| v["name"] == "kept").unwrap()["priority"] = 9.into();
        fs::write(&p, serde_json::to_vec(&on_disk).unwrap()).unwrap();
        let (store, _) = restart();
        assert_eq!(requested(&store), ["grandfathered"]);
        let records: Vec<serde_json::Value> = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["written"]["name"], "grandfathered");

        // A corrupt file falls back to its backup; with both unusable, every entry is the
        // operator's, and the start says so.
        fs::copy(&file, atomic::backup_path(&file)).unwrap();
        fs::write(&file, b"[{\"written\": {\"name\": 1}}]").unwrap();
        let (store, warnings) = restart();
        assert_eq!(requested(&store), ["grandfathered"]);
        assert!(warnings[0].contains("using its backup") && warnings[0].contains("name"), "{warnings:?}");
        fs::write(&file, b"{").unwrap();
        fs::write(atomic::backup_path(&file), b"[1]").unwrap();
        let (store, warnings) = restart();
        assert!(requested(&store).is_empty());
        assert!(warnings[0].contains("taken as the operator's"), "{warnings:?}");
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
            let blocked = ConfigStore { path: Arc::new(p.join("x")), ..store.clone() };
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
