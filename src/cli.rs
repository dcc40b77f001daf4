//! The command line's definitions (clap), and nothing else: `main.rs` parses with them, and
//! `build.rs` includes this file to generate the man page and the shell completions from them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Process supervisor for onboard Linux computers: starts programs in order, keeps them alive with
/// health checks and restarts, stops them in reverse order, and serves a REST API.
#[derive(Parser)]
#[command(
    name = "air-nanny",
    version,
    propagate_version = true,
    after_long_help = "Files (as packaged):\n  \
        /etc/air-nanny/config.yaml         settings; token and TLS files beside it\n  \
        /var/lib/air-nanny/services.json   the services (written by the API)\n  \
        /var/lib/air-nanny/state.json      services stopped or unsupervised by the operator\n  \
        /var/lib/air-nanny/audit.log       every change made over the API\n  \
        /var/lib/air-nanny/events/         each service's history (ctl events)\n  \
        /var/log/air-nanny/NAME.log        each service's output and air-nanny's notes on it\n\n\
        Signals: SIGTERM stops every service in reverse order, then exits; SIGHUP re-reads \
        services.json and applies the difference.\n\n\
        Exit status of run: 0 after a clean stop, 1 when a service did not stop cleanly, 2 when it \
        cannot start (an invalid configuration, the port taken). Of check: 0 valid, 1 invalid.\n\n\
        Documentation: /usr/share/doc/air-nanny/README.md"
)]
pub struct Cli {
    /// config.yaml to use [default: /etc/air-nanny/config.yaml, else conf/config.yaml]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace); RUST_LOG works too.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the supervisor (what a bare `air-nanny` does).
    Run,
    /// Validate config.yaml, the public file and services.json; print every problem.
    Check,
    /// Talk to a running air-nanny over its REST API.
    Ctl {
        /// Base URL of the API [default: the local instance from config.yaml]
        #[arg(long)]
        url: Option<String>,
        /// File holding the bearer token [default: API_TOKEN_FILE from config.yaml]
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Print the API's data as JSON, for scripts (anywhere on the line).
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

/// ctl's TLS options: the CA to trust, and a client certificate to present.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the API's certificate; needed for https:// URLs
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) to present, when the API requires one (API_TLS_CLIENT_CA)
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// A ctl command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Every task: state, pids, health, restarts and faults.
    List,
    /// Tasks in detail: state, health, pids, last exit and error, configuration, last log lines.
    /// Exit status as `systemctl is-active`: 0 all running, 3 one is not running, 1 an error (no
    /// such service, no answer), 2 a usage error.
    Status {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Start services (started at boot again); `all` for every one.
    Start {
        #[arg(required = true, value_name = "NAME|all")]
        names: Vec<String>,
    },
    /// Stop services (they stay stopped across restarts of air-nanny); `all` for every one.
    Stop {
        #[arg(required = true, value_name = "NAME|all")]
        names: Vec<String>,
    },
    /// Stop, then start services; `all` for every one.
    Restart {
        #[arg(required = true, value_name = "NAME|all")]
        names: Vec<String>,
    },
    /// Persist a service object from a JSON file (`-`: standard input) and apply it now.
    Set { file: PathBuf },
    /// Stop a service and stop supervising it (its configuration stays).
    Del { name: String },
    /// The tail of a service's log.
    Logs {
        name: String,
        /// How many of the last lines
        #[arg(short = 'n', default_value_t = 50)]
        lines: usize,
        /// Keep printing lines as they are written, across rotations (Ctrl-C ends)
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// A service's history: state changes, exits, health results, restarts and their causes,
    /// operator actions (kept across restarts of air-nanny).
    Events {
        name: String,
        /// How many of the newest events
        #[arg(short = 'n', default_value_t = 50)]
        lines: usize,
        /// Keep printing new events as they happen (Ctrl-C ends)
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Re-read services.json and apply the difference.
    Reload,
    /// The audit trail: who changed what, when, from where.
    Audit {
        #[arg(short = 'n', default_value_t = 50)]
        lines: usize,
    },
}
