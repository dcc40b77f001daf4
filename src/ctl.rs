//! `air-nanny ctl`: the command-line client of the REST API, for maintainers at a terminal
//! (a readable table) and for scripts (`--json`). Any failure exits non-zero with the server's `msg`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use crate::cli::{CtlCommand, TlsArgs};
use crate::config::{Problems, Settings};
use crate::http;

/// Where to send requests, with which token, over which client (plain, or TLS).
pub struct Target {
    pub base: String,
    pub token: Option<String>,
    pub client: http::Client,
}

impl Target {
    /// `--url` and `--token-file` when given; else the local instance named by config.yaml (over
    /// https when it has TLS: then `--cacert` is needed, and the name in its certificate).
    pub fn resolve(
        config: &Path,
        url: Option<String>,
        token_file: Option<PathBuf>,
        tls: &TlsArgs,
    ) -> Result<Target, String> {
        let read_token = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let client = match (&tls.cacert, &tls.cert, &tls.key) {
            (None, None, None) => http::Client::plain(),
            (cacert, cert, key) => http::Client::with_tls(crate::tls::client_config(
                cacert.as_deref(),
                cert.as_deref().zip(key.as_deref()),
            )?),
        };
        if let Some(url) = url {
            let token = token_file.as_deref().map(read_token).transpose()?;
            return Ok(Target { base: url.trim_end_matches('/').to_string(), token, client });
        }
        let mut problems = Problems::default();
        let settings = Settings::load(config, &mut problems)
            .filter(|_| !problems.has_errors())
            .ok_or_else(|| format!("cannot find the local instance (use --url):\n{problems}"))?;
        let host = if settings.addr.is_unspecified() { "127.0.0.1".to_string() } else { settings.addr.to_string() };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let token = match token_file.or(settings.api_token_file) {
            Some(p) => Some(read_token(&p)?),
            None => None,
        };
        let scheme = if settings.tls.is_some() { "https" } else { "http" };
        Ok(Target { base: format!("{scheme}://{host}:{}", settings.port), token, client })
    }

    /// One call; `Ok(data)` on `msg: SUCCESS`, else `Err(msg)`.
    pub async fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value, String> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .request(method, &url, &headers, body, Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?;
        let v = resp.json();
        match v.get("msg").and_then(Value::as_str) {
            Some("SUCCESS") => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
            Some(msg) => Err(format!("{msg} (HTTP {})", resp.status)),
            None => Err(format!("unexpected answer (HTTP {}): {}", resp.status, resp.text())),
        }
    }
}

/// A query value percent-encoded: service names may be of any script (`数据处理`), and a URL
/// carries only printable ASCII.
fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One event as a line: `TIME  KIND  MESSAGE`, with a check's output indented below it.
fn event_line(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    let mut line = format!("{}  {:<8}  {}", s("time"), s("kind"), s("message"));
    if let Some(out) = e["output"].as_str() {
        for l in out.lines() {
            line.push_str(&format!("\n    | {l}"));
        }
    }
    line
}

/// `ctl events NAME [-n N] [-f]`: the newest events, then (following) each new one as it is
/// written, by long-polling `/task/events?since=…&wait=…`.
async fn events(target: &Target, name: &str, lines: usize, follow: bool, json: bool) -> i32 {
    let limit = lines.clamp(1, 1000);
    let mut since: Option<u64> = None;
    let mut first = true;
    loop {
        let path = match since {
            None => format!("/task/events?name={}&limit={limit}", enc(name)),
            Some(s) => format!("/task/events?name={}&since={s}&limit=1000&wait=25", enc(name)),
        };
        let data = match target.call("GET", &path, None).await {
            Ok(d) => d,
            Err(msg) => {
                eprintln!("error: {msg}");
                return 1;
            }
        };
        let list = data["events"].as_array().cloned().unwrap_or_default();
        if json && !follow {
            println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        } else {
            for e in &list {
                if json {
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    println!("{}", event_line(e));
                }
            }
        }
        if let Some(last) = list.last().and_then(|e| e["seq"].as_u64()) {
            since = Some(last);
        } else if first {
            since = Some(0);
        }
        first = false;
        if !follow {
            return 0;
        }
    }
}

/// `ctl logs NAME -f`: the last lines, then each line as it is written, by long-polling
/// `/task/logs?after=OFFSET&wait=…` (a rotation is followed into the new file). With `--json`,
/// one JSON string per line.
async fn follow_log(target: &Target, name: &str, lines: usize, json: bool) -> i32 {
    let mut path = format!("/task/logs?name={}&lines={}", enc(name), lines.clamp(1, 10_000));
    loop {
        let data = match target.call("GET", &path, None).await {
            Ok(d) => d,
            Err(msg) => {
                eprintln!("error: {msg}");
                return 1;
            }
        };
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for l in data["lines"].as_array().into_iter().flatten() {
                let l = l.as_str().unwrap_or_default();
                let written = if json { writeln!(out, "{}", Value::from(l)) } else { writeln!(out, "{l}") }
                    .and_then(|_| out.flush());
                if written.is_err() {
                    return 0; // the reader went away (`| head`)
                }
            }
        }
        let Some(offset) = data["offset"].as_u64() else {
            eprintln!("error: this air-nanny cannot follow a log (no offset in its answer)");
            return 1;
        };
        path = format!("/task/logs?name={}&after={offset}&wait=25", enc(name));
    }
}

/// Colours for a terminal: only when stdout is one and `NO_COLOR` is not set.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn detect() -> Paint {
        use std::io::IsTerminal;
        Paint(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
    }

    fn paint(self, text: &str, code: &str) -> String {
        if self.0 {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_string()
        }
    }

    /// A state's name in the colour of what it means.
    fn state(self, name: &str, health: &str) -> String {
        let code = match (name, health) {
            (_, "unhealthy") | ("failed", _) => "1;31",
            ("running", _) => "32",
            ("backoff" | "starting" | "stopping", _) => "33",
            _ => "0",
        };
        self.paint(name, code)
    }
}

/// The names a start/stop/restart acts on: `all` is every task, in start order (stopped in
/// reverse).
async fn expand(target: &Target, names: &[String], reverse: bool) -> Result<Vec<String>, String> {
    if !names.iter().any(|n| n == "all") {
        return Ok(names.to_vec());
    }
    let tasks = target.call("GET", "/task/get", None).await?;
    let mut all: Vec<String> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["ServiceInfo"]["name"].as_str().map(str::to_string))
        .collect();
    if reverse {
        all.reverse();
    }
    Ok(all)
}

/// start, stop or restart of several services, one after the other; exits 1 when one failed.
async fn verb(target: &Target, verb: &str, names: &[String], json: bool) -> i32 {
    let names = match expand(target, names, verb == "stop").await {
        Ok(n) => n,
        Err(msg) => {
            eprintln!("error: {msg}");
            return 1;
        }
    };
    let mut code = 0;
    let mut results = Vec::new();
    for name in &names {
        match target.call("POST", &format!("/task/{verb}?name={}", enc(name)), None).await {
            Ok(data) => results.push(data),
            Err(msg) => {
                eprintln!("error: {name}: {msg}");
                code = 1;
            }
        }
    }
    if json {
        let out = if results.len() == 1 && names.len() == 1 { results.remove(0) } else { Value::Array(results) };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if !results.is_empty() {
        print!("{}", table(&results));
    }
    code
}

/// Unix seconds as `2026-11-25 10:42:07 UTC`.
fn when(secs: Option<u64>) -> String {
    match secs {
        Some(s) => {
            let t = crate::logfmt::rfc3339_utc(std::time::UNIX_EPOCH + Duration::from_secs(s));
            format!("{} {} UTC", &t[..10], &t[11..19])
        }
        None => "-".into(),
    }
}

/// One task in detail, with the last lines of its log.
fn status_text(t: &Value, log: &[String], paint: Paint) -> String {
    let info = &t["ServiceInfo"];
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let state = s(&t["StateName"]);
    let health = s(&t["Health"]);
    let mut out = format!(
        "{} {} - {} since {}",
        paint.state("●", &health),
        s(&info["name"]),
        paint.state(&state, &health),
        when(t["Since"].as_u64())
    );
    if state == "running" {
        out.push_str(&format!(" ({})", uptime(t)));
    }
    out.push('\n');
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:>11}: {v}\n"));
    if info["healthCheck"]["isHealthCheck"] == true {
        let hc = &info["healthCheck"];
        let mut h = format!("{} (failed in a row: {})", paint.state(&health, &health), t["HealthStreak"]);
        if let Some(c) = t["LastCheck"].as_object() {
            let result = match c.get("Error").and_then(Value::as_str) {
                Some(e) => format!("failed: {e}"),
                None => "ok".into(),
            };
            h.push_str(&format!("; last check {} ({} ms): {result}", when(c["Time"].as_u64()), c["DurationMs"]));
            for l in c["Output"].as_str().unwrap_or("").lines() {
                h.push_str(&format!("\n{:>13}| {l}", ""));
            }
        }
        row("Health", h);
        let test: Vec<String> = hc["test"].as_array().into_iter().flatten().map(&s).collect();
        row(
            "Check",
            format!(
                "{} every {}s, timeout {}s, start period {}s, retries {}",
                if test.is_empty() { "the program runs".to_string() } else { test.join(" ") },
                hc["interval"],
                hc["timeout"],
                hc["start_period"],
                hc["retries"]
            ),
        );
    }
    let pids: Vec<String> = t["Pids"].as_array().into_iter().flatten().map(|p| p.to_string()).collect();
    row("Pids", if pids.is_empty() { "-".into() } else { pids.join(", ") });
    row(
        "Restarts",
        format!("{}  (start faults {}, stop faults {})", t["Restarts"], t["StartFaultNum"], t["StopFaultNum"]),
    );
    if let Some(e) = t["LastExit"].as_str() {
        row("Last exit", format!("{e} at {}", when(t["LastExitTime"].as_u64())));
    }
    if let Some(e) = t["LastError"].as_str() {
        row("Last error", format!("{} at {}", paint.paint(e, "31"), when(t["LastErrorTime"].as_u64())));
    }
    if let (Some(next), Some(cause)) = (t["NextStart"].as_u64(), t["RestartCause"].as_str()) {
        row("Next start", format!("{} ({cause})", when(Some(next / 1000))));
    }
    let script = &info["script"];
    let program = s(&script["programFilePath"]);
    let args: Vec<String> = script["args"].as_array().into_iter().flatten().map(&s).collect();
    match script["execPath"].as_str().filter(|p| !p.is_empty()) {
        Some(exec) => row(
            "Program",
            format!("{program} (script {exec} {}|{})", s(&script["startCommand"]), s(&script["stopCommand"])),
        ),
        None => row("Program", format!("{program} {}", args.join(" ")).trim_end().to_string()),
    }
    row(
        "Boot",
        format!(
            "priority {}{}{}",
            info["priority"],
            if info["isInit"] == true { ", init" } else { "" },
            if info["isDaemon"] == false { ", one-shot" } else { "" }
        ),
    );
    if !log.is_empty() {
        out.push('\n');
        for l in log {
            out.push_str(&format!("  {l}\n"));
        }
    }
    out
}

/// `status NAME…`: each task in detail; exit 0 when all run, 3 when one does not, 1 on an error.
async fn status(target: &Target, names: &[String], json: bool) -> i32 {
    let paint = Paint::detect();
    let (mut code, mut tasks) = (0, Vec::new());
    for (i, name) in names.iter().enumerate() {
        let t = match target.call("GET", &format!("/task/find?name={}", enc(name)), None).await {
            Ok(t) => t,
            Err(msg) => {
                eprintln!("error: {name}: {msg}");
                code = 1;
                continue;
            }
        };
        if t["State"].as_u64() != Some(2) && code == 0 {
            code = 3;
        }
        if json {
            tasks.push(t);
            continue;
        }
        let log = match target.call("GET", &format!("/task/logs?name={}&lines=5", enc(name)), None).await {
            Ok(l) => {
                l["lines"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
            }
            Err(_) => Vec::new(),
        };
        if i > 0 {
            println!();
        }
        print!("{}", status_text(&t, &log, paint));
    }
    if json {
        let out = if names.len() == 1 && tasks.len() == 1 { tasks.remove(0) } else { Value::Array(tasks) };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    code
}

/// Runs one command and prints its result. Returns the process exit code.
pub async fn run(target: &Target, cmd: CtlCommand, json: bool) -> i32 {
    let q = |n: &str| format!("?name={}", enc(n));
    let result = match &cmd {
        CtlCommand::List => target.call("GET", "/task/get", None).await,
        CtlCommand::Status { names } => return status(target, names, json).await,
        CtlCommand::Start { names } => return verb(target, "start", names, json).await,
        CtlCommand::Stop { names } => return verb(target, "stop", names, json).await,
        CtlCommand::Restart { names } => return verb(target, "restart", names, json).await,
        CtlCommand::Del { name } => target.call("DELETE", &format!("/task/del{}", q(name)), None).await,
        CtlCommand::Reload => target.call("POST", "/reload", None).await,
        CtlCommand::Audit { lines } => target.call("GET", &format!("/audit?limit={lines}"), None).await,
        CtlCommand::Logs { name, lines, follow: true } => return follow_log(target, name, *lines, json).await,
        CtlCommand::Logs { name, lines, follow: false } => {
            target.call("GET", &format!("/task/logs?name={}&lines={lines}", enc(name)), None).await
        }
        CtlCommand::Events { name, lines, follow } => return events(target, name, *lines, *follow, json).await,
        CtlCommand::Set { file } => match read_set_body(file) {
            Ok(body) => target.call("POST", "/task/set", Some(&body)).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Err(msg) => {
            eprintln!("error: {msg}");
            1
        }
        Ok(data) if json => {
            println!("{}", serde_json::to_string_pretty(&data).unwrap_or_default());
            0
        }
        Ok(data) => {
            match cmd {
                CtlCommand::List => print!("{}", table(data.as_array().map(Vec::as_slice).unwrap_or_default())),
                CtlCommand::Logs { .. } => {
                    for l in data["lines"].as_array().into_iter().flatten() {
                        println!("{}", l.as_str().unwrap_or_default());
                    }
                }
                CtlCommand::Reload => println!("{}", serde_json::to_string(&data).unwrap_or_default()),
                CtlCommand::Audit { .. } => {
                    for r in data.as_array().into_iter().flatten() {
                        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                        println!(
                            "{}  {}  {}  {} {}  {}  {} {}",
                            s("time"),
                            s("peer"),
                            s("identity"),
                            s("method"),
                            s("endpoint"),
                            s("service"),
                            r["status"],
                            s("result")
                        );
                    }
                }
                CtlCommand::Del { name } => println!("{name}: stopped and no longer supervised"),
                _ if data.is_object() => print!("{}", table(std::slice::from_ref(&data))),
                _ => println!("ok"),
            }
            0
        }
    }
}

/// The body of `set`: a file, or standard input for `-`.
fn read_set_body(file: &Path) -> Result<Vec<u8>, String> {
    if file == Path::new("-") {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        return Ok(body);
    }
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// How long a running task has been up, from its `Since`.
fn uptime(t: &Value) -> String {
    let (Some(2), Some(since)) = (t["State"].as_u64(), t["Since"].as_u64()) else { return "-".into() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let s = now.saturating_sub(since);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// Tasks as an aligned table.
pub fn table(tasks: &[Value]) -> String {
    let mut rows =
        vec![["NAME", "STATE", "HEALTH", "PIDS", "RESTARTS", "START/STOP FAULTS", "UPTIME"].map(String::from).to_vec()];
    for t in tasks {
        let pids: Vec<String> = t["Pids"].as_array().into_iter().flatten().map(|p| p.to_string()).collect();
        rows.push(vec![
            t["ServiceInfo"]["name"].as_str().unwrap_or("?").to_string(),
            format!("{} ({})", t["StateName"].as_str().unwrap_or("?"), t["State"]),
            t["Health"].as_str().unwrap_or("-").to_string(),
            if pids.is_empty() { "-".into() } else { pids.join(",") },
            t["Restarts"].to_string(),
            format!("{}/{}", t["StartFaultNum"], t["StopFaultNum"]),
            uptime(t),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
