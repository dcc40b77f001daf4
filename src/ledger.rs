//! The fallback mode's record of which processes belong to which service (no cgroups: old
//! kernels, containers). Each service's processes are written down as (pid, start time) in
//! `STATE_DIR/pids/NAME`, so that a restarted air-nanny adopts exactly them — a pid reused by
//! another process has another start time — and a path scan is only the first boot's fallback,
//! which never claims a process another service has recorded.
//!
//! The files are small and rewritten whenever a service's processes change, without fsync: after
//! a power loss no process survives anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The processes of every service, as recorded.
pub struct Ledger {
    dir: PathBuf,
    /// pid → (service, start time).
    owners: Mutex<HashMap<i32, (String, u64)>>,
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/PID/stat`): with the pid, the
/// process's identity. `None` when it is gone (or a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = after.split(' ');
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    // `after` starts at field 3 (state); the start time is field 22.
    fields.nth(18)?.parse().ok()
}

impl Ledger {
    /// Reads what a previous run recorded (entries whose process is gone or whose pid was reused
    /// are dropped).
    pub fn open(state_dir: &Path) -> Ledger {
        let dir = state_dir.join("pids");
        let mut owners = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
                for (pid, start) in parse(&std::fs::read_to_string(e.path()).unwrap_or_default()) {
                    if start_time(pid) == Some(start) {
                        owners.insert(pid, (name.clone(), start));
                    }
                }
            }
        }
        Ledger { dir, owners: Mutex::new(owners) }
    }

    /// Records `pids` as service `name`'s processes now (replacing what it had).
    pub fn record(&self, name: &str, pids: &[i32]) {
        let mut owners = self.owners.lock().expect("ledger lock");
        owners.retain(|_, (owner, _)| owner != name);
        let mut text = String::new();
        for &pid in pids {
            if let Some(start) = start_time(pid) {
                owners.insert(pid, (name.to_string(), start));
                text.push_str(&format!("{pid} {start}\n"));
            }
        }
        drop(owners);
        // An empty record stays: "ran under this ledger, nothing runs now" (no scan next time).
        let file = self.dir.join(name);
        let written = std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::write(&file, text));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), "cannot record the service's processes: {e}");
        }
    }

    /// What service `name` has recorded and still runs (same pid, same start time). `None`: no
    /// record at all (a first boot, or the service ran under cgroups before).
    pub fn recorded(&self, name: &str) -> Option<Vec<i32>> {
        if !self.dir.join(name).exists() {
            return None;
        }
        let owners = self.owners.lock().expect("ledger lock");
        let mut pids: Vec<i32> = owners
            .iter()
            .filter(|(pid, (owner, start))| owner == name && start_time(**pid) == Some(*start))
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        Some(pids)
    }

    /// `pids` without those another service owns.
    pub fn not_others(&self, name: &str, mut pids: Vec<i32>) -> Vec<i32> {
        let owners = self.owners.lock().expect("ledger lock");
        pids.retain(|p| owners.get(p).is_none_or(|(owner, _)| owner == name));
        pids
    }
}

fn parse(text: &str) -> Vec<(i32, u64)> {
    text.lines()
        .filter_map(|l| {
            let (pid, start) = l.split_once(' ')?;
            Some((pid.trim().parse().ok()?, start.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_restart_and_other_services_processes_are_never_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(start_time(pid).is_some());
        let ledger = Ledger::open(dir.path());
        assert_eq!(ledger.recorded("a"), None, "no record yet: a first boot");
        ledger.record("a", &[pid]);
        assert_eq!(ledger.not_others("b", vec![pid, 1]), vec![1], "b never claims a's process");
        assert_eq!(ledger.not_others("a", vec![pid]), vec![pid]);
        // A restarted air-nanny reads the same.
        let again = Ledger::open(dir.path());
        assert_eq!(again.recorded("a"), Some(vec![pid]));
        assert_eq!(again.not_others("b", vec![pid]), Vec::<i32>::new());
        child.kill().unwrap();
        let _ = child.wait();
        assert_eq!(again.recorded("a"), Some(vec![]), "recorded, and gone: nothing to adopt, no scan");
        again.record("a", &[]);
        assert_eq!(again.recorded("a"), Some(vec![]), "stopped: still recorded as running nothing");
        // A pid whose start time differs is another process.
        std::fs::create_dir_all(dir.path().join("pids")).unwrap();
        std::fs::write(dir.path().join("pids/c"), format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(Ledger::open(dir.path()).recorded("c"), Some(vec![]));
        assert_eq!(parse("1 2\ngarbage\n3 x\n"), vec![(1, 2)]);
    }
}
