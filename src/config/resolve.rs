//! One resolution of every path a service executes or runs in: the control script, the program, the
//! working directory and a CMD check's program, each made absolute and resolved by the kernel
//! (symlinks and `..` in the order the kernel follows them) exactly once per start. What the API's
//! allow-list checks and what the service task executes are the same [`Resolved`] paths.

use std::path::{Component, Path, PathBuf};

use super::{Probe, ServiceInfo, Settings};

/// The absolute, symlink-free paths one start of a service uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The control script (script mode).
    pub script: Option<PathBuf>,
    /// The program: executed in direct mode, looked for in /proc in script mode.
    pub program: PathBuf,
    /// The directory the script or program (and its CMD check) runs in.
    pub work_dir: PathBuf,
    /// A CMD check's program when it names a path (relative ones resolve against `work_dir`, where
    /// the check runs); `None` for a bare name looked up in PATH, or no CMD check.
    pub check_program: Option<PathBuf>,
}

/// A path that cannot be resolved: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathProblem {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Settings {
    /// Resolves every path of `svc`. `need_work_dir`: the working directory must exist (a start,
    /// or a request); a file being checked may name one that is created later.
    pub fn resolve(&self, svc: &ServiceInfo, need_work_dir: bool) -> Result<Resolved, PathProblem> {
        let problem = |field, reason| PathProblem { field, reason };
        let script = if svc.is_direct() {
            None
        } else {
            let raw = join(&self.work_dir, &svc.script.exec_path);
            Some(real_path(&raw).map_err(|r| problem("script.execPath", r))?)
        };
        let program = self.rootpath.join(svc.script.program_file_path.trim_start_matches('/'));
        let program = real_path(&program).map_err(|r| problem("script.programFilePath", r))?;
        let work_dir = match &svc.script.work_dir {
            Some(d) => {
                let dir = real_path(&join(&self.work_dir, d)).map_err(|r| problem("script.workDir", r))?;
                if need_work_dir && !dir.is_dir() {
                    return Err(problem("script.workDir", format!("{} is not an existing directory", dir.display())));
                }
                dir
            }
            None => script.as_deref().unwrap_or(&program).parent().map(Path::to_path_buf).unwrap_or_else(|| "/".into()),
        };
        let check_program = match svc.health_check.probe() {
            Probe::Cmd(argv) if argv[0].contains('/') => {
                Some(real_path(&join(&work_dir, &argv[0])).map_err(|r| problem("healthCheck.test", r))?)
            }
            _ => None,
        };
        Ok(Resolved { script, program, work_dir, check_program })
    }

    /// Where a service's program lives, for finding it in /proc: rootpath + programFilePath (a join,
    /// as the seed does, so an absolute programFilePath still lands under rootpath), resolved.
    pub fn program_path(&self, svc: &ServiceInfo) -> PathBuf {
        let p = self.rootpath.join(svc.script.program_file_path.trim_start_matches('/'));
        real_path(&p).unwrap_or(p)
    }
}

/// `p` if absolute, else `base/p`, without cleaning anything up (the kernel resolves it later).
fn join(base: &Path, p: &str) -> PathBuf {
    if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    }
}

/// Where `p` really leads, as the kernel would follow it: the longest existing prefix resolved by
/// the kernel (symlinks, then `..`), plus the rest, which may contain neither `.` nor `..` (a path
/// not there yet cannot be resolved honestly through them).
pub fn real_path(p: &Path) -> Result<PathBuf, String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(real) => {
                let mut out = real;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{} cannot be resolved: {e}", existing.display()));
            }
            Err(_) => match existing.components().next_back() {
                Some(Component::Normal(n)) => {
                    rest.push(n.to_os_string());
                    existing.pop();
                }
                Some(Component::ParentDir | Component::CurDir) => {
                    return Err(format!("{} uses '..' or '.' in a part that does not exist", p.display()))
                }
                _ => return Err(format!("{} cannot be resolved", p.display())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_order_of_symlinks_and_dotdot_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(d.join("allowed/deep/er")).unwrap();
        std::os::unix::fs::symlink(d.join("allowed/deep/er"), d.join("allowed/link")).unwrap();
        // Textually `allowed/link/../x` is `allowed/x`; the kernel goes through the link first.
        assert_eq!(real_path(&d.join("allowed/link/../x")).unwrap(), d.join("allowed/deep/x"));
        assert_eq!(real_path(&d.join("allowed/new/file")).unwrap(), d.join("allowed/new/file"));
        assert!(real_path(&d.join("allowed/new/../file")).is_err());
        assert!(real_path(Path::new("relative")).is_err());
    }
}
