//! The `air-nanny` command: parse flags, set up logging, hand over to the library, map the result
//! to an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use air_nanny::cli::{Cli, Cmd};
use air_nanny::config::{self, ServiceInfo};
use air_nanny::ctl;

/// Whether stderr is the journal (set once at start).
static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// An error that stops air-nanny, on stderr: with the journal's error priority on each line when
/// stderr is the journal.
fn report_error(msg: &str) {
    let journal = JOURNAL.get().copied().unwrap_or(false);
    for line in format!("error: {msg}").lines() {
        if journal {
            eprintln!("<3>{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

const PACKAGED_CONFIG: &str = "/etc/air-nanny/config.yaml";
const REPO_CONFIG: &str = "conf/config.yaml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level_text = cli.log_level.clone().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".into());
    let level = match level_text.trim().parse::<tracing::Level>() {
        Ok(l) => l,
        Err(_) => {
            eprintln!("error: --log-level/RUST_LOG: {level_text:?} is not one of error, warn, info, debug, trace");
            return ExitCode::from(2);
        }
    };
    // Colour only for a person at a terminal: never into journald or a file, never with NO_COLOR.
    // Into the journal: a `<N>` priority on every line (journald keeps the levels, `journalctl -p
    // warning` works) and no timestamp of ours (the journal has its own).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let subscriber = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false);
    if JOURNAL.get_or_init(air_nanny::logfmt::stderr_is_journal) == &true {
        let format = tracing_subscriber::fmt::format().with_target(false).with_ansi(false).without_time();
        subscriber.with_ansi(false).event_format(air_nanny::logfmt::Journald(format)).init();
    } else {
        subscriber.with_ansi(colour).init();
    }
    let config = cli.config.clone().unwrap_or_else(default_config);
    if matches!(cli.command, None | Some(Cmd::Run)) {
        // Before any thread exists: it takes the variables out of the environment.
        air_nanny::fdstore::take_handed_back();
    }
    // Blocking-pool threads (history and audit writes, log reads, /proc scans) end 1 s after their
    // last job: an idle air-nanny keeps no thread stack resident.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Check => check(&config),
        Cmd::Run => runtime.block_on(run(&config)),
        Cmd::Ctl { url, token_file, json, tls, command } => runtime.block_on(async {
            match ctl::Target::resolve(&config, url, token_file, &tls) {
                Ok(target) => ExitCode::from(ctl::run(&target, command, json).await as u8),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }),
    }
}

fn default_config() -> PathBuf {
    if Path::new(PACKAGED_CONFIG).exists() {
        PathBuf::from(PACKAGED_CONFIG)
    } else {
        PathBuf::from(REPO_CONFIG)
    }
}

fn check(config: &Path) -> ExitCode {
    let (_, services, problems) = config::check_all(config);
    for p in &problems.items {
        println!("{p}");
    }
    let (errors, warnings) = (problems.error_count(), problems.warnings().count());
    if errors > 0 {
        println!("{errors} error(s), {warnings} warning(s): {} is not valid", config.display());
        return ExitCode::from(1);
    }
    println!("{} is valid: {} service(s), {warnings} warning(s)", config.display(), services.len());
    println!("start order: {}", plan(&services));
    ExitCode::SUCCESS
}

/// The start order as one line: `[init, priority 0: a] -> [priority 1: b, c]` (the boot's own order).
fn plan(services: &[ServiceInfo]) -> String {
    air_nanny::supervisor::boot_order(services)
        .into_iter()
        .filter_map(|names| {
            let first = services.iter().find(|s| names.first() == Some(&s.name))?;
            let kind = if first.is_init { "init, " } else { "" };
            Some(format!("[{kind}priority {}: {}]", first.priority, names.join(", ")))
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

async fn run(config: &Path) -> ExitCode {
    let (settings, store, tokens) = match air_nanny::prepare(config) {
        Ok(x) => x,
        Err(e) => {
            report_error(&e.to_string());
            return ExitCode::from(2);
        }
    };
    {
        // A copy of every service for one log line: dropped here, not kept for as long as
        // air-nanny runs (this future lives that long; at N = 1000 the copy was 0.6 MiB).
        let services = store.list().await;
        tracing::info!(
            server = %settings.server,
            config = %settings.config_path.display(),
            services = services.len(),
            "air-nanny {} starting; start order: {}",
            env!("CARGO_PKG_VERSION"),
            plan(&services)
        );
    }
    let listener = match air_nanny::bind(&settings).await {
        Ok(l) => l,
        Err(e) => {
            report_error(&e.to_string());
            return ExitCode::from(2);
        }
    };
    tracing::info!("API listening on http://{}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    match air_nanny::run(settings, store, tokens, listener, CancellationToken::new()).await {
        Ok(report) if report.faults.is_empty() => {
            tracing::info!("all services stopped; exiting");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            for (name, reason) in &report.faults {
                tracing::error!(service = %name, "did not stop cleanly: {reason}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            report_error(&e.to_string());
            ExitCode::from(2)
        }
    }
}
