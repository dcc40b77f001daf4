//! Configuration: config.yaml (the seed's upper-case keys plus extensions), the public file's
//! `rootpath`, and services.json, each parsed in two stages (raw, then validated and resolved).

pub mod resolve;
pub mod service;

use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use serde_yaml::Value as Yaml;

pub use resolve::{real_path, PathProblem, Resolved};
pub use service::{HealthCheck, Probe, Script, ServiceInfo};

/// Every problem found in a set of files, as `file: service: field: reason`; errors and warnings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems {
    pub items: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// "file" or "file: service".
    pub context: String,
    /// The field's path, e.g. `script.execPath`; empty when the whole object or file is at fault.
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Problems {
    pub fn error(&mut self, context: &str, field: &str, reason: impl Into<String>) {
        self.push(Severity::Error, context, field, reason.into());
    }

    pub fn warn(&mut self, context: &str, field: &str, reason: impl Into<String>) {
        self.push(Severity::Warning, context, field, reason.into());
    }

    fn push(&mut self, severity: Severity, context: &str, field: &str, reason: String) {
        self.items.push(Problem { severity, context: context.into(), field: field.into(), reason });
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|p| p.severity == Severity::Error).count()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.items.iter().filter(|p| p.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.items.iter().filter(|p| p.severity == Severity::Warning)
    }

    pub fn extend(&mut self, other: Problems) {
        self.items.extend(other.items);
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.field.is_empty() {
            write!(f, "{sev}{}: {}", self.context, self.reason)
        } else {
            write!(f, "{sev}{}: {}: {}", self.context, self.field, self.reason)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// config.yaml, validated, with every path resolved and every extension defaulted.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SERVER`: the name of this supervisor instance.
    pub server: String,
    pub config_path: PathBuf,
    pub config_dir: PathBuf,
    /// `PUBLIC_CONF`, resolved.
    pub public_conf: PathBuf,
    /// The public file's `rootpath`, resolved; programFilePaths are joined onto it.
    pub rootpath: PathBuf,
    pub port: u16,
    pub addr: IpAddr,
    pub services_file: PathBuf,
    pub api_token_file: Option<PathBuf>,
    pub api_read_token_file: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    pub work_dir: PathBuf,
    pub allowed_dirs: Vec<PathBuf>,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub kill_grace: Duration,
    pub group_start_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub backoff_reset: Duration,
    /// Consecutive failed runs after which a daemon service is given up; 0 = never.
    pub start_limit: u32,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// `LOG_OUTPUT`: how the services' output reaches their logs.
    pub log_output: LogOutput,
    pub api_body_limit: usize,
    pub api_timeout: Duration,
    /// `API_TLS_CERT`/`API_TLS_KEY`/`API_TLS_CLIENT_CA`: TLS on the API when set.
    pub tls: Option<crate::tls::TlsFiles>,
    /// `API_HOST_NAMES`: names the API answers to in a `Host` header, besides its own address and
    /// the loopback names (a defence against DNS rebinding).
    pub api_host_names: Vec<String>,
    /// `ALLOWED_CHECK_HOSTS`: addresses HTTP and TCP checks set over the API may reach, besides
    /// loopback.
    pub allowed_check_hosts: Vec<IpAddr>,
    /// `CGROUPS`: whether each service gets its own cgroup v2.
    pub cgroups: CgroupMode,
    /// `CGROUP_BASE`: where the services' cgroups go, relative to the cgroup2 hierarchy's root;
    /// `None`: beside air-nanny's own cgroup (see `cgroup::default_base`).
    pub cgroup_base: Option<String>,
}

/// `LOG_OUTPUT`: how a service's output reaches its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// The scripts and programs write into the log file themselves (`O_APPEND`).
    File,
    /// Through a pipe air-nanny copies into the file, its read end kept in systemd's
    /// file-descriptor store (see `fdstore`); files where there is no store.
    Pipe,
}

/// `CGROUPS`: how a service's processes are owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// One cgroup per service where cgroup v2 is writable; else the fallback, with a warning.
    Auto,
    /// Never: the fallback mode (processes recorded by pid and start time, pidfds).
    Off,
    /// Always: air-nanny refuses to start without a writable cgroup v2.
    Required,
}

/// The keys config.yaml may hold; anything else is warned about.
const KNOWN_KEYS: &[&str] = &[
    "SERVER",
    "PUBLIC_CONF",
    "SERVER_PORT",
    "SERVER_ADDR",
    "SERVICES_FILE",
    "API_TOKEN_FILE",
    "API_READ_TOKEN_FILE",
    "LOG_DIR",
    "STATE_DIR",
    "WORK_DIR",
    "ALLOWED_DIRS",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "KILL_GRACE",
    "GROUP_START_TIMEOUT",
    "RESTART_BACKOFF_BASE_MS",
    "RESTART_BACKOFF_MAX",
    "RESTART_BACKOFF_RESET",
    "START_LIMIT",
    "LOG_MAX_SIZE",
    "LOG_MAX_FILES",
    "API_BODY_LIMIT",
    "API_TIMEOUT",
    "API_TLS_CERT",
    "API_TLS_KEY",
    "API_TLS_CLIENT_CA",
    "API_HOST_NAMES",
    "ALLOWED_CHECK_HOSTS",
    "CGROUPS",
    "LOG_OUTPUT",
    "CGROUP_BASE",
];

/// The largest LOG_MAX_FILES.
pub const MAX_LOG_FILES: u64 = 100;
/// The shortest token an API token file may hold.
pub const MIN_TOKEN_LEN: usize = 16;

/// Reads a token file: trimmed, at least [`MIN_TOKEN_LEN`] characters, one line of printable ASCII.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!("the token in {} must be at least {MIN_TOKEN_LEN} characters", path.display()));
    }
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "the token in {} must be one word of printable ASCII (it travels in an HTTP header)",
            path.display()
        ));
    }
    Ok(token.to_string())
}

impl Settings {
    /// Reads and validates config.yaml and the public file. Every problem is collected.
    pub fn load(config_path: &Path, problems: &mut Problems) -> Option<Settings> {
        let file = config_path.display().to_string();
        let doc = read_yaml(config_path, "cannot read", problems)?;
        let Some(map) = doc.as_mapping() else {
            problems.error(&file, "", "expected a mapping of KEY: value");
            return None;
        };
        for key in map.keys() {
            let k = key.as_str().unwrap_or_default();
            if !KNOWN_KEYS.contains(&k) {
                problems.warn(&file, &yaml_key(key), "unknown key; ignored");
            }
        }
        let config_path = absolute(config_path);
        let config_dir = config_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let errors_before = problems.error_count();
        let mut y = YamlFields { map, problems, file: &file };

        let server = y.string("SERVER");
        let public_conf = y.string("PUBLIC_CONF").map(|p| resolve(&config_dir, &p));
        let port = y.port("SERVER_PORT");
        let addr = match y.opt_string("SERVER_ADDR") {
            None => Some(IpAddr::from([127, 0, 0, 1])),
            Some(s) => match s.parse::<IpAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    y.problems.error(
                        &file,
                        "SERVER_ADDR",
                        format!("{s:?} is not an IP address (names are not resolved)"),
                    );
                    None
                }
            },
        };
        let services_file =
            y.opt_path("SERVICES_FILE", &config_dir).unwrap_or_else(|| config_dir.join("services.json"));
        let api_token_file = y.opt_path("API_TOKEN_FILE", &config_dir);
        let api_read_token_file = y.opt_path("API_READ_TOKEN_FILE", &config_dir);
        let log_dir = y.opt_path("LOG_DIR", &config_dir).unwrap_or_else(|| config_dir.join("logs"));
        let state_dir = y.opt_path("STATE_DIR", &config_dir).unwrap_or_else(|| config_dir.clone());
        let work_dir = y.opt_path("WORK_DIR", &config_dir).unwrap_or(cwd);
        let allowed = y.opt_path_list("ALLOWED_DIRS", &config_dir);
        let start_timeout = y.seconds("START_TIMEOUT", 30, 1);
        let stop_timeout = y.seconds("STOP_TIMEOUT", 10, 1);
        let kill_grace = y.seconds("KILL_GRACE", 5, 1);
        let group_start_timeout = y.seconds("GROUP_START_TIMEOUT", 60, 1);
        let backoff_base = Duration::from_millis(y.int("RESTART_BACKOFF_BASE_MS", 500, 1, 3_600_000));
        let backoff_max = y.seconds("RESTART_BACKOFF_MAX", 60, 1);
        let backoff_reset = y.seconds("RESTART_BACKOFF_RESET", 60, 1);
        let start_limit = y.int("START_LIMIT", 0, 0, 1_000_000) as u32;
        let log_max_bytes = y.int("LOG_MAX_SIZE", 1024 * 1024, 4096, 1 << 30);
        let log_max_files = y.int("LOG_MAX_FILES", 3, 1, MAX_LOG_FILES) as u32;
        let log_output = match y.opt_string("LOG_OUTPUT").as_deref() {
            None | Some("file") => LogOutput::File,
            Some("pipe") => LogOutput::Pipe,
            Some(other) => {
                y.problems.error(&file, "LOG_OUTPUT", format!("{other:?} is not one of file, pipe"));
                LogOutput::File
            }
        };
        let api_body_limit = y.int("API_BODY_LIMIT", 64 * 1024, 1024, 16 << 20) as usize;
        let api_timeout = y.seconds("API_TIMEOUT", 60, 1);
        let tls_cert = y.opt_path("API_TLS_CERT", &config_dir);
        let tls_key = y.opt_path("API_TLS_KEY", &config_dir);
        let tls_client_ca = y.opt_path("API_TLS_CLIENT_CA", &config_dir);
        let api_host_names = y.opt_string_list("API_HOST_NAMES").unwrap_or_default();
        let allowed_check_hosts = y.opt_string_list("ALLOWED_CHECK_HOSTS").unwrap_or_default();
        let cgroups = match y.opt_string("CGROUPS").as_deref() {
            None | Some("auto") => CgroupMode::Auto,
            Some("off") => CgroupMode::Off,
            Some("required") => CgroupMode::Required,
            Some(other) => {
                y.problems.error(&file, "CGROUPS", format!("{other:?} is not one of auto, off, required"));
                CgroupMode::Auto
            }
        };
        let cgroup_base = y.opt_string("CGROUP_BASE");
        if let Some(b) = &cgroup_base {
            let bad = !b.starts_with('/')
                || b.split('/').any(|c| c == ".." || c == ".")
                || b.contains("//")
                || b.bytes().any(|c| c.is_ascii_control());
            if bad {
                y.problems.error(
                    &file,
                    "CGROUP_BASE",
                    format!("{b:?} must be an absolute path inside the cgroup2 hierarchy, without `.` or `..`"),
                );
            }
        }

        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key, client_ca: tls_client_ca }),
            (None, None) => {
                if tls_client_ca.is_some() {
                    problems.error(
                        &file,
                        "API_TLS_CLIENT_CA",
                        "needs API_TLS_CERT and API_TLS_KEY (client certificates are checked in the TLS handshake)",
                    );
                }
                None
            }
            (Some(_), None) => {
                problems.error(&file, "API_TLS_KEY", "missing: API_TLS_CERT is set, so the key is needed too");
                None
            }
            (None, Some(_)) => {
                problems.error(&file, "API_TLS_CERT", "missing: API_TLS_KEY is set, so the certificate is needed too");
                None
            }
        };
        if let Some(files) = &tls {
            if let Err(reason) = crate::tls::server_config(files) {
                let (key, reason) = reason.split_once(": ").unwrap_or(("API_TLS_CERT", &reason));
                problems.error(&file, key, reason);
            }
        }
        for name in &api_host_names {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                problems.error(&file, "API_HOST_NAMES", format!("{name:?} is not a host name"));
            }
        }
        let allowed_check_hosts: Vec<IpAddr> = allowed_check_hosts
            .iter()
            .filter_map(|h| {
                h.parse::<IpAddr>()
                    .map_err(|_| {
                        problems.error(
                            &file,
                            "ALLOWED_CHECK_HOSTS",
                            format!("{h:?} is not an IP address (names are not resolved)"),
                        )
                    })
                    .ok()
            })
            .collect();
        let mut has_token = false;
        for (key, path) in [("API_TOKEN_FILE", &api_token_file), ("API_READ_TOKEN_FILE", &api_read_token_file)] {
            if let Some(p) = path {
                match read_token(p) {
                    Ok(_) => has_token |= key == "API_TOKEN_FILE",
                    Err(reason) => problems.error(&file, key, reason),
                }
            }
        }
        if let Some(a) = addr {
            let client_certs = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            let token_file_named = api_token_file.is_some();
            if !a.is_loopback() && !token_file_named && !client_certs {
                problems.error(&file, "SERVER_ADDR", format!("{a} is not a loopback address, and neither API_TOKEN_FILE nor API_TLS_CLIENT_CA is set: the API can start programs as root, so it is never opened to the network without a token or client certificates"));
            } else if !a.is_loopback() && has_token && tls.is_none() {
                problems.warn(&file, "SERVER_ADDR", format!("{a} is not a loopback address and the API has no TLS: the token and every configuration cross the network in clear (set API_TLS_CERT and API_TLS_KEY)"));
            }
        }
        for (key, dir) in [("LOG_DIR", &log_dir), ("STATE_DIR", &state_dir)] {
            if dir.exists() && !dir.is_dir() {
                problems.error(&file, key, format!("{} exists and is not a directory", dir.display()));
            }
        }

        let rootpath = public_conf.as_ref().and_then(|p| read_rootpath(p, problems));
        if problems.error_count() > errors_before {
            return None;
        }
        let rootpath = rootpath?;
        let allowed_dirs = allowed.unwrap_or_else(|| vec![rootpath.clone(), config_dir.clone()]);
        Some(Settings {
            server: server?,
            config_path,
            config_dir,
            public_conf: public_conf?,
            rootpath,
            port: port?,
            addr: addr?,
            services_file,
            api_token_file,
            api_read_token_file,
            log_dir,
            state_dir,
            work_dir,
            allowed_dirs,
            start_timeout,
            stop_timeout,
            kill_grace,
            group_start_timeout,
            backoff_base,
            backoff_max,
            backoff_reset,
            start_limit,
            log_max_bytes,
            log_max_files,
            log_output,
            api_body_limit,
            api_timeout,
            tls,
            api_host_names,
            allowed_check_hosts,
            cgroups,
            cgroup_base,
        })
    }

    pub fn start_timeout_of(&self, svc: &ServiceInfo) -> Duration {
        svc.script.start_timeout.map(Duration::from_secs).unwrap_or(self.start_timeout)
    }

    pub fn stop_timeout_of(&self, svc: &ServiceInfo) -> Duration {
        svc.script.stop_timeout.map(Duration::from_secs).unwrap_or(self.stop_timeout)
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// A YAML file's document; an unreadable or malformed file is a problem named after the file.
fn read_yaml(path: &Path, cannot_read: &str, problems: &mut Problems) -> Option<Yaml> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| problems.error(&file, "", format!("{cannot_read}: {e}"))).ok()?;
    serde_yaml::from_str(&text).map_err(|e| problems.error(&file, "", format!("malformed YAML: {e}"))).ok()
}

fn read_rootpath(public: &Path, problems: &mut Problems) -> Option<PathBuf> {
    let file = public.display().to_string();
    let doc = read_yaml(public, "cannot read the public configuration (PUBLIC_CONF)", problems)?;
    match doc.get("rootpath") {
        Some(Yaml::String(s)) if !s.trim().is_empty() => {
            let dir = public.parent().unwrap_or(Path::new("/"));
            Some(normalize(&resolve(dir, s)))
        }
        Some(Yaml::String(_)) => {
            problems.error(&file, "rootpath", "is empty");
            None
        }
        Some(_) => {
            problems.error(&file, "rootpath", "expected a path string");
            None
        }
        None => {
            problems.error(&file, "rootpath", "missing: the public configuration must name the programs' rootpath");
            None
        }
    }
}

/// Parses services.json text: every problem at once, each as `file: service: field: reason`.
pub fn parse_services(text: &[u8], file: &str) -> (Vec<ServiceInfo>, Problems) {
    let mut problems = Problems::default();
    let value: Value = match service::parse_json(text) {
        Ok(v) => v,
        Err(e) => {
            problems.error(file, "", format!("malformed JSON: {e}"));
            return (Vec::new(), problems);
        }
    };
    let Some(items) = value.as_array() else {
        problems.error(file, "", format!("expected a JSON array of service objects, found {}", service::kind(&value)));
        return (Vec::new(), problems);
    };
    // Sized once: the store keeps this vector for as long as air-nanny runs (grown by doubling,
    // up to half of it stood empty: 0.2 MiB at 600 services).
    let mut services: Vec<ServiceInfo> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ctx = match item.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => format!("{file}: {n}"),
            _ => format!("{file}: service #{}", i + 1),
        };
        if let Some(svc) = ServiceInfo::from_value(item, &mut problems, &ctx) {
            if services.iter().any(|s| s.name == svc.name) {
                problems.error(&ctx, "name", format!("duplicate: another service is already named {:?}", svc.name));
            } else {
                services.push(svc);
            }
        }
    }
    (services, problems)
}

/// Serialises services the way the store writes them: pretty JSON, trailing newline.
pub fn render_services(services: &[ServiceInfo]) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(services).expect("service objects always serialise");
    out.push(b'\n');
    out
}

/// Everything `air-nanny check` and `run` validate: config.yaml, the public file and services.json.
pub fn check_all(config_path: &Path) -> (Option<Settings>, Vec<ServiceInfo>, Problems) {
    let mut problems = Problems::default();
    let settings = Settings::load(config_path, &mut problems);
    let mut services = Vec::new();
    if let Some(s) = &settings {
        let file = s.services_file.display().to_string();
        match std::fs::read(&s.services_file) {
            Ok(text) => {
                let (svcs, p) = parse_services(&text, &file);
                problems.extend(p);
                services = svcs;
            }
            Err(e) => problems.error(&file, "", format!("cannot read: {e}")),
        }
        for svc in &services {
            let ctx = format!("{file}: {}", svc.name);
            match s.resolve(svc, false) {
                Err(p) => problems.error(&ctx, p.field, p.reason),
                Ok(r) => {
                    for (field, path) in
                        [("script.execPath", r.script.as_ref()), ("script.programFilePath", Some(&r.program))]
                    {
                        if let Some(path) = path.filter(|p| !p.exists()) {
                            problems.warn(&ctx, field, format!("{} does not exist (yet)", path.display()));
                        }
                    }
                    if svc.script.work_dir.is_some() && !r.work_dir.is_dir() {
                        problems.warn(
                            &ctx,
                            "script.workDir",
                            format!(
                                "{} is not a directory (yet); the service cannot start until it is",
                                r.work_dir.display()
                            ),
                        );
                    }
                }
            }
        }
        // Without cgroups, processes are found by path where no record says whose they are.
        let fallback = s.cgroups == CgroupMode::Off || !cgroup2_here();
        if fallback {
            let mut by_program: std::collections::BTreeMap<PathBuf, Vec<&str>> = Default::default();
            for svc in &services {
                if let Ok(r) = s.resolve(svc, false) {
                    by_program.entry(r.program).or_default().push(&svc.name);
                }
            }
            for (program, names) in by_program.into_iter().filter(|(_, n)| n.len() > 1) {
                problems.warn(
                    &file,
                    "script.programFilePath",
                    format!(
                        "services {} share {}: without cgroups (CGROUPS: off, or no cgroup v2 here) each keeps its own processes by record, but a first start may adopt a copy another started by hand",
                        names.join(", "),
                        program.display()
                    ),
                );
            }
        }
    }
    (settings, services, problems)
}

/// Whether a cgroup2 hierarchy is mounted here (what `check` can tell without creating anything).
fn cgroup2_here() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| crate::cgroup::cgroup2_mount(&m)).is_some()
}

/// Reads fields of config.yaml, reporting each wrong one.
struct YamlFields<'a> {
    map: &'a serde_yaml::Mapping,
    problems: &'a mut Problems,
    file: &'a str,
}

impl YamlFields<'_> {
    fn get(&self, key: &str) -> Option<&Yaml> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key) {
            None => {
                self.problems.error(self.file, key, "missing: this key is required");
                None
            }
            Some(_) => self.opt_string(key),
        }
    }

    fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            Yaml::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Yaml::String(_) => {
                self.problems.error(self.file, key, "is empty");
                None
            }
            Yaml::Number(n) => Some(n.to_string()),
            _ => {
                self.problems.error(self.file, key, "expected a string");
                None
            }
        }
    }

    fn opt_path(&mut self, key: &str, base: &Path) -> Option<PathBuf> {
        self.opt_string(key).map(|p| normalize(&resolve(base, &p)))
    }

    fn opt_path_list(&mut self, key: &str, base: &Path) -> Option<Vec<PathBuf>> {
        match self.get(key)? {
            Yaml::Sequence(items) if !items.is_empty() && items.iter().all(|i| i.as_str().is_some()) => {
                Some(items.iter().filter_map(Yaml::as_str).map(|p| normalize(&resolve(base, p))).collect())
            }
            _ => {
                self.problems.error(self.file, key, "expected a non-empty list of directory paths");
                None
            }
        }
    }

    fn port(&mut self, key: &str) -> Option<u16> {
        match self.get(key) {
            None => {
                self.problems.error(self.file, key, "missing: this key is required");
                None
            }
            Some(v) => match yaml_int(v) {
                Some(n) if (1..=65535).contains(&n) => Some(n as u16),
                Some(n) => {
                    self.problems.error(self.file, key, format!("is {n}, but a TCP port is 1 to 65535"));
                    None
                }
                None => {
                    self.problems.error(self.file, key, "expected a port number (1 to 65535)");
                    None
                }
            },
        }
    }

    fn opt_string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Yaml::Sequence(items) if items.iter().all(|i| i.as_str().is_some()) => {
                Some(items.iter().filter_map(Yaml::as_str).map(str::to_string).collect())
            }
            _ => {
                self.problems.error(self.file, key, "expected a list of strings");
                None
            }
        }
    }

    fn int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(v) => match yaml_int(v) {
                Some(n) if n >= min as i64 && n <= max as i64 => n as u64,
                Some(n) if n < min as i64 => {
                    self.problems.error(self.file, key, format!("is {n}, but it must be at least {min}"));
                    default
                }
                Some(n) => {
                    self.problems.error(self.file, key, format!("is {n}, but it must be at most {max}"));
                    default
                }
                None => {
                    self.problems.error(self.file, key, "expected a whole number");
                    default
                }
            },
        }
    }

    /// Whole seconds from `min` to one day ([`service::MAX_SECONDS`]).
    fn seconds(&mut self, key: &str, default: u64, min: u64) -> Duration {
        Duration::from_secs(self.int(key, default, min, service::MAX_SECONDS))
    }
}

fn yaml_int(v: &Yaml) -> Option<i64> {
    match v {
        Yaml::Number(n) => n.as_i64(),
        Yaml::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn yaml_key(k: &Yaml) -> String {
    k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"))
}

/// `p` if absolute, else `base/p`.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Makes a path absolute against the working directory, without touching the filesystem.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        normalize(p)
    } else {
        normalize(&std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(p))
    }
}

/// Removes `.` and resolves `..` lexically (no symlinks followed); `..` never climbs above `/`.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("/");
                }
                if out.as_os_str().is_empty() {
                    out.push("/");
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_seed_style_config_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "public.yaml", "rootpath: root\nother: 1\n");
        let cfg = write(dir.path(), "config.yaml", "SERVER: air_nanny\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 8090\n");
        let mut p = Problems::default();
        let s = Settings::load(&cfg, &mut p).expect("valid");
        assert!(p.items.is_empty(), "{p}");
        assert_eq!(s.server, "air_nanny");
        assert_eq!(s.port, 8090);
        assert_eq!(s.addr.to_string(), "127.0.0.1");
        assert_eq!(s.rootpath, dir.path().join("root"));
        assert_eq!(s.services_file, dir.path().join("services.json"));
        assert_eq!(s.allowed_dirs, vec![dir.path().join("root"), dir.path().to_path_buf()]);
        assert_eq!(s.start_limit, 0);
        assert_eq!(s.log_output, LogOutput::File);
    }

    #[test]
    fn config_problems_are_all_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(
            dir.path(),
            "config.yaml",
            "SERVER_PORT: 0\nPUBLIC_CONF: nope.yaml\nSERVER_ADDR: host\nCOLOUR: red\nLOG_OUTPUT: journal\n",
        );
        let mut p = Problems::default();
        assert!(Settings::load(&cfg, &mut p).is_none());
        let text = p.to_string();
        for needle in [
            "SERVER: missing",
            "SERVER_PORT: is 0, but a TCP port is 1 to 65535",
            "nope.yaml: cannot read the public configuration",
            "SERVER_ADDR: \"host\" is not an IP address",
            "warning: ",
            "COLOUR: unknown key",
            "LOG_OUTPUT: \"journal\" is not one of file, pipe",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn missing_rootpath_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "public.yaml", "other: 1\n");
        let cfg = write(dir.path(), "config.yaml", "SERVER: a\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 1\n");
        let mut p = Problems::default();
        assert!(Settings::load(&cfg, &mut p).is_none());
        assert!(p.to_string().contains("public.yaml: rootpath: missing"), "{p}");
    }

    #[test]
    fn duplicate_names_and_malformed_json() {
        let (_, p) = parse_services(
            br#"[{"name":"a","script":{"programFilePath":"/a"}},{"name":"a","script":{"programFilePath":"/b"}}]"#,
            "s.json",
        );
        assert!(p.to_string().contains("s.json: a: name: duplicate"), "{p}");
        let (_, p) = parse_services(b"[{", "s.json");
        assert!(p.to_string().starts_with("s.json: malformed JSON"), "{p}");
        let (_, p) = parse_services(b"{}", "s.json");
        assert!(p.to_string().contains("expected a JSON array"), "{p}");
    }

    #[test]
    fn paths_resolve_onto_rootpath_and_work_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        write(&d, "public.yaml", &format!("rootpath: {}/root\n", d.display()));
        let cfg = write(
            &d,
            "config.yaml",
            &format!("SERVER: a\nPUBLIC_CONF: public.yaml\nSERVER_PORT: 1\nWORK_DIR: {}/srv/w\n", d.display()),
        );
        let s = Settings::load(&cfg, &mut Problems::default()).unwrap();
        let svc =
            ServiceInfo::from_json(br#"{"name":"a","script":{"execPath":"../x/run.sh","programFilePath":"/bin/a"}}"#)
                .unwrap();
        assert_eq!(s.program_path(&svc), d.join("root/bin/a"));
        // `..` in a part that does not exist cannot be resolved honestly.
        assert_eq!(s.resolve(&svc, false).unwrap_err().field, "script.execPath");
        std::fs::create_dir_all(d.join("srv/w")).unwrap();
        let r = s.resolve(&svc, false).unwrap();
        assert_eq!(r.script, Some(d.join("srv/x/run.sh")));
        assert_eq!(r.work_dir, d.join("srv/x"));
    }

    #[test]
    fn normalize_never_climbs_above_root() {
        assert_eq!(normalize(Path::new("/a/b/../../../c")), PathBuf::from("/c"));
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
