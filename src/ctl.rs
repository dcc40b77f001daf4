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

/// Runs one command and prints its result. Returns the process exit code.
pub async fn run(target: &Target, cmd: CtlCommand, json: bool) -> i32 {
    let q = |n: &str| format!("?name={n}");
    let result = match &cmd {
        CtlCommand::List => target.call("GET", "/task/get", None).await,
        CtlCommand::Status { name } => target.call("GET", &format!("/task/find{}", q(name)), None).await,
        CtlCommand::Start { name } => target.call("POST", &format!("/task/start{}", q(name)), None).await,
        CtlCommand::Stop { name } => target.call("POST", &format!("/task/stop{}", q(name)), None).await,
        CtlCommand::Restart { name } => target.call("POST", &format!("/task/restart{}", q(name)), None).await,
        CtlCommand::Del { name } => target.call("DELETE", &format!("/task/del{}", q(name)), None).await,
        CtlCommand::Reload => target.call("POST", "/reload", None).await,
        CtlCommand::Audit { lines } => target.call("GET", &format!("/audit?limit={lines}"), None).await,
        CtlCommand::Logs { name, lines } => {
            target.call("GET", &format!("/task/logs?name={name}&lines={lines}"), None).await
        }
        CtlCommand::Set { file } => match std::fs::read(file) {
            Ok(body) => target.call("POST", "/task/set", Some(&body)).await,
            Err(e) => Err(format!("cannot read {}: {e}", file.display())),
        },
    };
    // `status` answers like `systemctl is-active`: 3 when the service exists but does not run.
    let code = match (&cmd, &result) {
        (CtlCommand::Status { .. }, Ok(data)) if data["State"].as_u64() != Some(2) => 3,
        _ => 0,
    };
    match result {
        Err(msg) => {
            eprintln!("error: {msg}");
            1
        }
        Ok(data) if json => {
            println!("{}", serde_json::to_string_pretty(&data).unwrap_or_default());
            code
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
            code
        }
    }
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
