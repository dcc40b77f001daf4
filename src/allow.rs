//! What a request may make air-nanny run: the allow-list. A service object that arrives over the API
//! may only execute or run in resolved paths under `ALLOWED_DIRS`, set no loader or interpreter
//! variable, run no shell text, and probe only loopback or `ALLOWED_CHECK_HOSTS` — unless the
//! operator's own services.json already says exactly that for the same service (seed clients re-post
//! what they read).
//!
//! The same [`Policy::check`] runs twice: in the API before anything is stored, and in the service
//! task on the paths it resolves for every start of a configuration that came from a request (a
//! symlink changed in between cannot make it run something else). The store keeps the policy of
//! each entry a request wrote (`ConfigStore::upsert_requested`, on disk in `requested.json`), so
//! an entry stored by `/serviceInfo/set` and started by a later reload, or by the boot after a
//! restart, is checked too.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::service::env_denied;
use crate::config::{real_path, Probe, Resolved, ServiceInfo, Settings};

/// A refusal: the field and the reason (the API answers 403 with both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The allow-list for one service, with what the operator's file already allows it.
#[derive(Debug, Clone)]
pub struct Policy {
    dirs: Vec<PathBuf>,
    check_hosts: Vec<IpAddr>,
    /// The same service as services.json had it before this request, and its paths then.
    on_disk: Option<(ServiceInfo, Option<Resolved>)>,
}

impl Policy {
    /// `on_disk`: the service of the same name in services.json, if any.
    pub fn new(settings: &Settings, on_disk: Option<ServiceInfo>) -> Policy {
        let dirs = settings.allowed_dirs.iter().map(|d| real_path(d).unwrap_or_else(|_| d.clone())).collect();
        let on_disk = on_disk.map(|s| {
            let r = settings.resolve(&s, false).ok();
            (s, r)
        });
        Policy { dirs, check_hosts: settings.allowed_check_hosts.clone(), on_disk }
    }

    /// The service as services.json had it before the request, whose paths the request may keep.
    pub fn before(&self) -> Option<&ServiceInfo> {
        self.on_disk.as_ref().map(|(s, _)| s)
    }

    /// Refuses what `info` (with its `resolved` paths) may not run.
    pub fn check(&self, info: &ServiceInfo, resolved: &Resolved) -> Result<(), Refused> {
        let old = self.on_disk.as_ref().map(|(s, _)| s);
        let old_paths = self.on_disk.as_ref().and_then(|(_, r)| r.as_ref());
        let refused = |field, reason: String| Err(Refused { field, reason });

        let check_arg0 = info.health_check.test.as_ref().and_then(|t| t.get(1)).map(String::as_str);
        let paths = [
            (
                "script.execPath",
                Some(info.script.exec_path.as_str()),
                resolved.script.as_ref(),
                old_paths.and_then(|r| r.script.as_ref()),
            ),
            (
                "script.programFilePath",
                Some(info.script.program_file_path.as_str()),
                Some(&resolved.program),
                old_paths.map(|r| &r.program),
            ),
            (
                "script.workDir",
                info.script.work_dir.as_deref(),
                Some(&resolved.work_dir),
                old_paths.map(|r| &r.work_dir),
            ),
            (
                "healthCheck.test",
                check_arg0,
                resolved.check_program.as_ref(),
                old_paths.and_then(|r| r.check_program.as_ref()),
            ),
        ];
        for (field, raw, path, before) in paths {
            let Some(path) = path else { continue };
            if self.dirs.iter().any(|d| path.starts_with(d)) || before == Some(path) {
                continue;
            }
            let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
            let what = match raw {
                Some(raw) => format!("{raw:?}"),
                None => "the default working directory".into(),
            };
            return refused(
                field,
                format!("{what} resolves to {}, outside the allowed directories ({})", path.display(), dirs.join(", ")),
            );
        }

        let same_test = old.is_some_and(|o| o.health_check.test == info.health_check.test);
        if !same_test {
            // Whether or not checks are on: what is stored can be switched on later.
            match info.health_check.probe() {
                Probe::Cmd(argv) if !argv[0].contains('/') => {
                    return refused(
                        "healthCheck.test",
                        format!("{:?} must be a path under the allowed directories, not a name looked up in PATH", argv[0]),
                    )
                }
                Probe::Shell(_) => {
                    return refused(
                        "healthCheck.test",
                        "CMD-SHELL runs arbitrary shell text and cannot be set over the API; use [\"CMD\", program under the allowed directories, …], HTTP or TCP".into(),
                    )
                }
                Probe::Http(url) => {
                    let target = crate::http::Url::parse(&url).map_err(|e| e.to_string()).and_then(|u| u.probe_target());
                    match target {
                        Ok(a) => self.check_host(a.ip())?,
                        Err(reason) => return refused("healthCheck.test", reason),
                    }
                }
                Probe::Tcp(addr) => match crate::http::parse_socket_addr(&addr) {
                    Ok(a) => self.check_host(a.ip())?,
                    Err(reason) => return refused("healthCheck.test", reason),
                },
                _ => {}
            }
        }

        for (key, value) in &info.script.env {
            let same = old.is_some_and(|o| o.script.env.get(key) == Some(value));
            if let (Some(reason), false) = (env_denied(key), same) {
                return refused("script.env", reason);
            }
        }
        Ok(())
    }

    fn check_host(&self, ip: IpAddr) -> Result<(), Refused> {
        if ip.is_loopback() || self.check_hosts.contains(&ip) {
            return Ok(());
        }
        Err(Refused {
            field: "healthCheck.test",
            reason: format!("{ip} is not loopback and not in ALLOWED_CHECK_HOSTS: checks set over the API may not reach other hosts"),
        })
    }
}
