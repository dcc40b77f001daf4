//! The services.json wire format: the seed's field names, exactly, and their validation.
//!
//! This module is the compatibility contract; every name here is spelled as the seed spells it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::Problems;

/// One service object of services.json, as the seed defines it plus our optional extensions.
///
/// Unknown keys are kept in `extra` (reported as warnings, written back unchanged) so that nothing an
/// operator wrote is silently dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub priority: i64,
    #[serde(rename = "isInit")]
    pub is_init: bool,
    #[serde(rename = "isDaemon")]
    pub is_daemon: bool,
    pub script: Script,
    #[serde(rename = "healthCheck")]
    pub health_check: HealthCheck,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `script` object: the control script (script mode) or the program itself (direct mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Script {
    /// The control script. Empty means direct mode: air-nanny runs `programFilePath` itself.
    #[serde(rename = "execPath")]
    pub exec_path: String,
    /// The program, joined onto the public `rootpath`.
    #[serde(rename = "programFilePath")]
    pub program_file_path: String,
    #[serde(rename = "startCommand")]
    pub start_command: String,
    #[serde(rename = "stopCommand")]
    pub stop_command: String,
    /// Extension (direct mode): arguments for the program.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extension (direct mode): extra environment variables.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Extension (direct mode): user name or numeric uid to run the program as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extension: working directory of the program (direct mode) or the script (script mode).
    #[serde(rename = "workDir", skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<String>,
    /// Extension: seconds the start command (script mode) may take, and the program to appear.
    #[serde(rename = "startTimeout", skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<u64>,
    /// Extension: seconds the stop command / the stop signal has before the program is killed.
    #[serde(rename = "stopTimeout", skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u64>,
    /// Extension (direct mode): the signal that asks the program to stop, default SIGTERM.
    #[serde(rename = "stopSignal", skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `healthCheck` object, with Docker HEALTHCHECK names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    #[serde(rename = "isHealthCheck")]
    pub is_health_check: bool,
    /// Seconds between checks (first check `interval` after start).
    pub interval: u64,
    /// Seconds a check may take.
    pub timeout: u64,
    /// Seconds after start during which failures do not count.
    pub start_period: u64,
    /// Consecutive failures that make the service unhealthy.
    pub retries: u32,
    /// Extension: seconds between checks during `start_period`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    /// Extension: the check itself; absent means "the program has a live process".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub const DEFAULT_INTERVAL: u64 = 30;
pub const DEFAULT_TIMEOUT: u64 = 30;
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_START_INTERVAL: u64 = 5;

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            is_health_check: false,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            start_period: 0,
            retries: DEFAULT_RETRIES,
            start_interval: None,
            test: None,
            extra: Map::new(),
        }
    }
}

/// What a health check does, parsed from `healthCheck.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The program has at least one live process (the default).
    ProcessAlive,
    /// `["CMD", prog, args…]`: run a program, exit 0 is healthy.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "cmd"]`: run `/bin/sh -c cmd`, exit 0 is healthy.
    Shell(String),
    /// `["HTTP", "http://host:port/path"]`: a GET that answers 2xx.
    Http(String),
    /// `["TCP", "host:port"]`: a TCP connect that succeeds.
    Tcp(String),
}

const PROBE_KINDS: &str = "CMD, CMD-SHELL, HTTP, TCP or NONE";

impl HealthCheck {
    /// The probe `test` describes; validation guarantees the shape.
    pub fn probe(&self) -> Probe {
        match self.test.as_deref() {
            Some([kind, rest @ ..]) => match (kind.as_str(), rest) {
                ("CMD", args) if !args.is_empty() => Probe::Cmd(args.to_vec()),
                ("CMD-SHELL", [cmd]) => Probe::Shell(cmd.clone()),
                ("HTTP", [url]) => Probe::Http(url.clone()),
                ("TCP", [addr]) => Probe::Tcp(addr.clone()),
                _ => Probe::ProcessAlive,
            },
            _ => Probe::ProcessAlive,
        }
    }

    pub fn start_interval(&self) -> u64 {
        self.start_interval.unwrap_or(DEFAULT_START_INTERVAL)
    }
}

impl ServiceInfo {
    /// Direct mode: no control script, air-nanny runs the program as its own child.
    pub fn is_direct(&self) -> bool {
        self.script.exec_path.trim().is_empty()
    }

    /// Parses one service object, reporting every problem into `problems` under `ctx` (e.g.
    /// "services.json: godbproxy"). Returns `None` when the object cannot be used.
    pub fn from_value(value: &Value, problems: &mut Problems, ctx: &str) -> Option<ServiceInfo> {
        let Some(obj) = value.as_object() else {
            problems.error(ctx, "", format!("expected a JSON object, found {}", kind(value)));
            return None;
        };
        let errors_before = problems.error_count();
        let mut fields = Fields { obj, problems, ctx, prefix: "" };
        let name = fields.string("name", None);
        if let Some(name) = &name {
            if let Err(reason) = check_name(name) {
                fields.problems.error(ctx, "name", reason);
            }
        }
        let priority = fields.int("priority", 0);
        let is_init = fields.bool("isInit", false);
        let is_daemon = fields.bool("isDaemon", true);
        let script_value = fields.take("script");
        let health_value = fields.take("healthCheck");
        let extra = fields.rest(&["name", "priority", "isInit", "isDaemon", "script", "healthCheck"]);

        let script = match script_value {
            Some(Value::Object(o)) => parse_script(o, problems, ctx),
            Some(other) => {
                problems.error(ctx, "script", format!("expected an object, found {}", kind(other)));
                None
            }
            None => {
                problems.error(
                    ctx,
                    "script",
                    "missing: a service needs script.programFilePath (and script.execPath in script mode)",
                );
                None
            }
        };
        let health_check = match health_value {
            Some(Value::Object(o)) => parse_health(o, problems, ctx),
            Some(Value::Null) | None => Some(HealthCheck::default()),
            Some(other) => {
                problems.error(ctx, "healthCheck", format!("expected an object, found {}", kind(other)));
                None
            }
        };
        if problems.error_count() > errors_before {
            return None;
        }
        Some(ServiceInfo {
            name: name?,
            priority,
            is_init,
            is_daemon,
            script: script?,
            health_check: health_check?,
            extra,
        })
    }

    /// Parses a single service object from JSON text (the API's request body), all problems at once.
    pub fn from_json(text: &[u8]) -> Result<ServiceInfo, Problems> {
        let mut problems = Problems::default();
        let value: Value = match parse_json(text) {
            Ok(v) => v,
            Err(e) => {
                problems.error("body", "", format!("malformed JSON: {e}"));
                return Err(problems);
            }
        };
        let ctx = value.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("service").to_string();
        match ServiceInfo::from_value(&value, &mut problems, &ctx) {
            Some(s) if !problems.has_errors() => Ok(s),
            _ => Err(problems),
        }
    }
}

/// The longest name, in characters; in bytes it must also leave room for `.log.N` in a file name.
pub const NAME_MAX_CHARS: usize = 64;
const NAME_MAX_BYTES: usize = 200;

/// Checks a service name: letters and digits of any script (the seed's authors write Chinese
/// names) plus `_`, `.` and `-`; 1–64 characters; never `.` or `..`. Such a name is also a safe
/// file name: it has no `/`, no NUL and no control character, so `LOG_DIR/NAME.log` stays in LOG_DIR.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    let chars = name.chars().count();
    if chars > NAME_MAX_CHARS {
        return Err(format!("is {chars} characters long; at most {NAME_MAX_CHARS} are allowed"));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(format!("is {} bytes long in UTF-8; at most {NAME_MAX_BYTES} are allowed", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_alphanumeric() || "_.-".contains(*c))) {
        return Err(format!("contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"));
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'".into());
    }
    Ok(())
}

/// The largest number of seconds any duration field may hold: one day. Bounded so that no
/// deadline arithmetic can overflow, whatever a file or a request says.
pub const MAX_SECONDS: u64 = 86_400;
/// The largest `healthCheck.retries`.
pub const MAX_RETRIES: u64 = 10_000;

/// Environment variables a service object may not set over the API or in a file: they make the
/// dynamic loader, a shell or an interpreter run code that was never checked against
/// `ALLOWED_DIRS`. Exact names, then prefixes.
pub const ENV_DENIED: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "CDPATH",
    "PS4",
    "PROMPT_COMMAND",
    "GLOBIGNORE",
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "RES_OPTIONS",
    "NLSPATH",
    "GLIBC_TUNABLES",
    "TMPDIR",
    "NODE_OPTIONS",
    "NODE_PATH",
    "RUBYOPT",
    "RUBYLIB",
    "CLASSPATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "LUA_PATH",
    "LUA_CPATH",
    "LUA_INIT",
    "TCLLIBPATH",
    "PHPRC",
    "GIT_EXEC_PATH",
    "EDITOR",
    "VISUAL",
    "PAGER",
];
pub const ENV_DENIED_PREFIXES: &[&str] =
    &["LD_", "BASH_FUNC_", "PYTHON", "PERL5", "PERLLIB", "PERL_", "RUBY", "GEM_", "MALLOC_", "DYLD_", "AIR_NANNY_"];

/// Checks the syntax of an environment variable name (files and the API alike).
pub fn check_env_name(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an empty variable name".into());
    }
    if key.contains('=') {
        return Err(format!("{key:?} contains '=', which ends a variable name"));
    }
    Ok(())
}

/// Why the API refuses to set an environment variable, if it does: the deny-list above. A file
/// the operator wrote may set these (a program may need its PATH); a request may not.
pub fn env_denied(key: &str) -> Option<String> {
    let upper = key.to_ascii_uppercase();
    (ENV_DENIED.contains(&upper.as_str()) || ENV_DENIED_PREFIXES.iter().any(|p| upper.starts_with(p))).then(|| {
        format!("{key} cannot be set over the API: it makes the loader, a shell or an interpreter run code that was not checked against ALLOWED_DIRS")
    })
}

/// Checks a `user` field: a name in /etc/passwd, or a numeric uid below 4294967295 (which is -1,
/// "no change", to the kernel).
pub fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("is empty".into());
    }
    if let Some(first) = user.chars().next().filter(|c| *c == '-' || *c == '+') {
        return Err(format!("{user:?} starts with {first:?}: not a user name or uid"));
    }
    if user.bytes().all(|b| b.is_ascii_digit()) {
        return match user.parse::<u32>() {
            Ok(n) if n < u32::MAX => Ok(()),
            _ => Err(format!("{user} is not a uid (0 to 4294967294)")),
        };
    }
    crate::process::lookup_user(user).map(|_| ())
}

fn parse_script(obj: &Map<String, Value>, problems: &mut Problems, ctx: &str) -> Option<Script> {
    let errors_before = problems.error_count();
    let mut f = Fields { obj, problems, ctx, prefix: "script." };
    let exec_path = f.opt_string("execPath").unwrap_or_default();
    let program = f.opt_string("programFilePath").unwrap_or_default();
    let start_command = f.opt_string("startCommand").unwrap_or_else(|| "start".into());
    let stop_command = f.opt_string("stopCommand").unwrap_or_else(|| "stop".into());
    let args = f.string_list("args").unwrap_or_default();
    let env = f.string_map("env").unwrap_or_default();
    let user = f.opt_string("user");
    let work_dir = f.opt_string("workDir");
    let start_timeout = f.opt_seconds("startTimeout", 1, MAX_SECONDS);
    let stop_timeout = f.opt_seconds("stopTimeout", 1, MAX_SECONDS);
    let stop_signal = f.opt_string("stopSignal");
    let extra = f.rest(&[
        "execPath",
        "programFilePath",
        "startCommand",
        "stopCommand",
        "args",
        "env",
        "user",
        "workDir",
        "startTimeout",
        "stopTimeout",
        "stopSignal",
    ]);
    if program.trim().is_empty() {
        let reason = if exec_path.trim().is_empty() {
            "missing: a service needs a program path (direct mode) or a script and a program path (script mode)"
        } else {
            "missing: air-nanny finds the running program by this path"
        };
        problems.error(ctx, "script.programFilePath", reason);
    }
    for key in env.keys() {
        if let Err(reason) = check_env_name(key) {
            problems.error(ctx, "script.env", reason);
        }
    }
    if let Some(user) = &user {
        if let Err(reason) = check_user(user) {
            problems.error(ctx, "script.user", reason);
        }
    }
    if let Some(dir) = &work_dir {
        if dir.trim().is_empty() {
            problems.error(ctx, "script.workDir", "is empty; leave it out to use the default");
        }
    }
    if let Some(sig) = &stop_signal {
        if crate::process::parse_signal(sig).is_none() {
            problems.error(ctx, "script.stopSignal", format!("{sig:?} is not a signal name like SIGTERM or SIGINT"));
        }
    }
    if !exec_path.trim().is_empty() {
        for (field, value) in [("args", !args.is_empty()), ("env", !env.is_empty()), ("user", user.is_some())] {
            if value {
                problems.warn(ctx, &format!("script.{field}"), "only used in direct mode (no execPath); ignored");
            }
        }
    }
    if problems.error_count() > errors_before {
        return None;
    }
    Some(Script {
        exec_path,
        program_file_path: program,
        start_command,
        stop_command,
        args,
        env,
        user,
        work_dir,
        start_timeout,
        stop_timeout,
        stop_signal,
        extra,
    })
}

fn parse_health(obj: &Map<String, Value>, problems: &mut Problems, ctx: &str) -> Option<HealthCheck> {
    let errors_before = problems.error_count();
    let mut f = Fields { obj, problems, ctx, prefix: "healthCheck." };
    let is_health_check = f.bool("isHealthCheck", false);
    let interval = f.opt_seconds("interval", 1, MAX_SECONDS).unwrap_or(DEFAULT_INTERVAL);
    let timeout = f.opt_seconds("timeout", 1, MAX_SECONDS).unwrap_or(DEFAULT_TIMEOUT);
    let start_period = f.opt_seconds("start_period", 0, MAX_SECONDS).unwrap_or(0);
    let retries = f.opt_seconds("retries", 1, MAX_RETRIES).unwrap_or(DEFAULT_RETRIES as u64);
    let start_interval = f.opt_seconds("start_interval", 1, MAX_SECONDS);
    let test = f.string_list("test");
    let extra = f.rest(&["isHealthCheck", "interval", "timeout", "start_period", "retries", "start_interval", "test"]);
    if let Some(test) = &test {
        let ok = match test.first().map(String::as_str) {
            Some("CMD") => test.len() >= 2,
            Some("CMD-SHELL") | Some("HTTP") | Some("TCP") => test.len() == 2,
            Some("NONE") => test.len() == 1,
            _ => false,
        };
        if !ok {
            problems.error(
                ctx,
                "healthCheck.test",
                format!("{test:?} is not a check: the first element is one of {PROBE_KINDS}, e.g. [\"CMD-SHELL\", \"exit 0\"], [\"HTTP\", \"http://127.0.0.1:8080/\"], [\"TCP\", \"127.0.0.1:9000\"]"),
            );
        } else if let Some(target) = test.get(1) {
            let parsed = match test.first().map(String::as_str) {
                Some("HTTP") => crate::http::Url::parse(target)
                    .map_err(|e| e.to_string())
                    .and_then(|u| u.probe_target())
                    .map(|_| ()),
                Some("TCP") => crate::http::parse_socket_addr(target).map(|_| ()),
                _ => Ok(()),
            };
            if let Err(reason) = parsed {
                problems.error(ctx, "healthCheck.test", reason);
            }
        }
    }
    if problems.error_count() > errors_before {
        return None;
    }
    Some(HealthCheck {
        is_health_check,
        interval,
        timeout,
        start_period,
        retries: retries as u32,
        start_interval,
        test,
        extra,
    })
}

/// Reads typed fields out of one JSON object, recording a problem for each wrong one.
struct Fields<'a, 'p> {
    obj: &'a Map<String, Value>,
    problems: &'p mut Problems,
    ctx: &'p str,
    prefix: &'static str,
}

impl<'a> Fields<'a, '_> {
    fn field(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    fn take(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key)
    }

    fn wrong(&mut self, key: &str, expected: &str, found: &Value) {
        let field = self.field(key);
        self.problems.error(self.ctx, &field, format!("expected {expected}, found {}", kind(found)));
    }

    /// A string field's value, refused when it holds a NUL byte (no path, argument or variable can).
    fn text(&mut self, key: &str, s: &str) -> Option<String> {
        if s.contains('\0') {
            let field = self.field(key);
            self.problems.error(self.ctx, &field, "contains a NUL byte");
            return None;
        }
        Some(s.to_string())
    }

    fn string(&mut self, key: &str, default: Option<&str>) -> Option<String> {
        match self.obj.get(key) {
            Some(Value::String(s)) => self.text(key, s),
            None | Some(Value::Null) => match default {
                Some(d) => Some(d.to_string()),
                None => {
                    let field = self.field(key);
                    self.problems.error(self.ctx, &field, "missing: this field is required");
                    None
                }
            },
            Some(other) => {
                self.wrong(key, "a string", other);
                None
            }
        }
    }

    fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => self.text(key, s),
            Some(other) => {
                self.wrong(key, "a string", other);
                None
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.obj.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.wrong(key, "true or false", other);
                default
            }
        }
    }

    fn int(&mut self, key: &str, default: i64) -> i64 {
        match self.obj.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(default),
            Some(other) => {
                self.wrong(key, "an integer", other);
                default
            }
        }
    }

    /// A whole number of seconds (or a count) from `min` to `max`.
    fn opt_seconds(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => Some(v),
                Some(v) if v < min => {
                    let field = self.field(key);
                    self.problems.error(self.ctx, &field, format!("is {v}, but it must be at least {min}"));
                    None
                }
                Some(v) => {
                    let field = self.field(key);
                    self.problems.error(self.ctx, &field, format!("is {v}, but it must be at most {max}"));
                    None
                }
                None => {
                    let field = self.field(key);
                    self.problems.error(self.ctx, &field, format!("is {n}, not a whole number from {min} to {max}"));
                    None
                }
            },
            Some(other) => {
                self.wrong(key, "a whole number", other);
                None
            }
        }
    }

    fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                let list: Vec<String> = items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                if list.iter().any(|s| s.contains('\0')) {
                    let field = self.field(key);
                    self.problems.error(self.ctx, &field, "an element contains a NUL byte");
                    return None;
                }
                Some(list)
            }
            Some(other) => {
                self.wrong(key, "an array of strings", other);
                None
            }
        }
    }

    fn string_map(&mut self, key: &str) -> Option<BTreeMap<String, String>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) if o.values().all(Value::is_string) => {
                let map: BTreeMap<String, String> =
                    o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect();
                if map.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
                    let field = self.field(key);
                    self.problems.error(self.ctx, &field, "a name or value contains a NUL byte");
                    return None;
                }
                Some(map)
            }
            Some(other) => {
                self.wrong(key, "an object of string values", other);
                None
            }
        }
    }

    /// The keys not in `known`: kept, and reported as warnings.
    fn rest(&mut self, known: &[&str]) -> Map<String, Value> {
        let mut extra = Map::new();
        for (k, v) in self.obj {
            if !known.contains(&k.as_str()) {
                let field = self.field(k);
                self.problems.warn(self.ctx, &field, "unknown field; kept as is, but air-nanny does not use it");
                extra.insert(k.clone(), v.clone());
            }
        }
        extra
    }
}

/// Parses JSON like `serde_json::from_slice`, but refuses an object with the same key twice (which
/// would otherwise keep the last silently: what a reviewer reads is not what runs).
pub fn parse_json(text: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(text).map(|s| s.0)
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A short name for a JSON value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed README's `godbproxy` object, verbatim, with the elided `....` replaced by the four
    /// documented healthCheck fields (shared with the end-to-end tests).
    pub const SEED_GODBPROXY: &str = include_str!("../../tests/data/godbproxy.json");

    #[test]
    fn seed_object_parses_unchanged() {
        let s = ServiceInfo::from_json(SEED_GODBPROXY.as_bytes()).expect("seed object must parse");
        assert_eq!(s.name, "godbproxy");
        assert_eq!(s.priority, 3);
        assert!(!s.is_init);
        assert!(s.is_daemon);
        assert_eq!(s.script.exec_path, "../../机载端数据处理/godbproxy/run.sh");
        assert_eq!(s.script.program_file_path, "/mnt/e/project/机载端数据处理/godbproxy/godbproxy");
        assert_eq!(s.script.start_command, "start");
        assert!(s.health_check.is_health_check);
        assert_eq!(s.health_check.interval, 30);
        assert_eq!(s.health_check.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.health_check.start_period, 10);
        assert_eq!(s.health_check.retries, 3);
        assert!(!s.is_direct());
        // Round trip: the seed's names come back out, no extension keys appear.
        let out = serde_json::to_value(&s).unwrap();
        let script = out["script"].as_object().unwrap();
        assert_eq!(script.len(), 4, "{script:?}");
        assert_eq!(out["isDaemon"], Value::Bool(true));
        assert_eq!(out["healthCheck"]["start_period"], 10);
    }

    #[test]
    fn defaults_apply() {
        let s = ServiceInfo::from_json(br#"{"name":"a","script":{"programFilePath":"/bin/a"}}"#).unwrap();
        assert_eq!(s.priority, 0);
        assert!(!s.is_init);
        assert!(s.is_daemon);
        assert!(s.is_direct());
        assert_eq!(s.health_check, HealthCheck::default());
        assert_eq!(s.health_check.probe(), Probe::ProcessAlive);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let err = ServiceInfo::from_json(
            br#"{"name":"bad name","priority":"high","isDaemon":1,"script":{"execPath":3},
                "healthCheck":{"interval":0,"timeout":-1,"test":["PING"]}}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "name: contains ' '",
            "priority: expected an integer, found a string",
            "isDaemon: expected true or false, found a number",
            "script.execPath: expected a string",
            "healthCheck.interval: is 0, but it must be at least 1",
            "healthCheck.timeout: is -1",
            "healthCheck.test:",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn neither_script_nor_program_is_an_error() {
        let err = ServiceInfo::from_json(br#"{"name":"a","script":{}}"#).unwrap_err();
        assert!(err.to_string().contains("a: script.programFilePath: missing"), "{err}");
    }

    #[test]
    fn unknown_fields_are_warnings_and_kept() {
        let mut problems = Problems::default();
        let v: Value =
            serde_json::from_str(r#"{"name":"a","colour":"red","script":{"programFilePath":"/x","shell":1}}"#).unwrap();
        let s = ServiceInfo::from_value(&v, &mut problems, "a").unwrap();
        assert!(!problems.has_errors());
        let text = problems.to_string();
        assert!(text.contains("a: colour: unknown field"), "{text}");
        assert!(text.contains("a: script.shell: unknown field"), "{text}");
        let out = serde_json::to_value(&s).unwrap();
        assert_eq!(out["colour"], "red");
        assert_eq!(out["script"]["shell"], 1);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("godbproxy").is_ok());
        assert!(check_name("a.b-c_1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn probes_parse() {
        let hc = |t: &str| {
            let v = format!(r#"{{"name":"a","script":{{"programFilePath":"/x"}},"healthCheck":{{"test":{t}}}}}"#);
            ServiceInfo::from_json(v.as_bytes()).map(|s| s.health_check.probe())
        };
        assert_eq!(hc(r#"["CMD","true","x"]"#).unwrap(), Probe::Cmd(vec!["true".into(), "x".into()]));
        assert_eq!(hc(r#"["CMD-SHELL","exit 0"]"#).unwrap(), Probe::Shell("exit 0".into()));
        assert_eq!(hc(r#"["TCP","127.0.0.1:1"]"#).unwrap(), Probe::Tcp("127.0.0.1:1".into()));
        assert_eq!(hc(r#"["NONE"]"#).unwrap(), Probe::ProcessAlive);
        assert!(hc(r#"["HTTP","ftp://x"]"#).is_err());
        assert!(hc(r#"["CMD"]"#).is_err());
    }
}
