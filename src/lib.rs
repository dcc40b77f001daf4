//! air-nanny: a process supervisor for the onboard Linux computers of aircraft. It starts an
//! airborne system's programs in order, keeps them alive with health checks and restarts, stops them
//! in reverse order, and serves a REST API to inspect and change all of it.
//!
//! # Layout
//! - [`config`]: config.yaml, the public file and services.json (the seed's formats), validated.
//! - [`store`]: the one owner of services.json; atomic, power-loss-safe writes ([`atomic`]).
//! - [`supervisor`]: one task per service behind handles; boot order, restarts, shutdown.
//! - [`process`]: finding programs in /proc, pidfd waits, process-group signals.
//! - [`cgroup`]: cgroup v2 discovery, one cgroup per service and the watch on their events.
//! - [`spawn`]: children born in their service's cgroup (`clone3(CLONE_INTO_CGROUP)`).
//! - [`ledger`]: the fallback mode's record of each service's processes.
//! - [`reaper`]: the single owner of `waitpid`; every child is spawned through it.
//! - [`health`]: one health probe (CMD, CMD-SHELL, HTTP, TCP).
//! - [`logfile`]: size-rotated per-service logs; [`logfmt`]: timestamps and journald priorities.
//! - [`cli`]: the command line's definitions (also read by build.rs for the man page).
//! - [`api`]: the REST API (axum); [`ctl`]: its command-line client; [`http`]: a tiny HTTP client.
//! - [`allow`]: what a request may make air-nanny run; [`audit`]: the trail of every change;
//!   [`tls`]: TLS on the API (rustls) and ctl's client side.
//! - [`notify`]: sd_notify readiness and watchdog; [`fdstore`]: `LOG_OUTPUT: pipe`, the services'
//!   pipes kept in systemd's file-descriptor store.
//! - [`image`]: once booted, air-nanny gives back the clean pages of its own code and the unused
//!   part of its stack (what stays resident is what the steady state runs).

pub mod allow;
pub mod api;
pub mod atomic;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod events;
pub mod fdstore;
pub mod health;
pub mod http;
pub mod image;
pub mod ledger;
pub mod logfile;
pub mod logfmt;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod reaper;
pub mod spawn;
pub mod store;
pub mod supervisor;
pub mod tls;

use std::sync::Arc;

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::Settings;
use store::ConfigStore;
use supervisor::{ShutdownReport, Supervisor};

/// How long open API connections may delay the exit once every service has stopped.
const API_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors that stop air-nanny from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration problems:\n{0}")]
    Config(config::Problems),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("refusing to start: {0}")]
    Token(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot set up {what}: {source}")]
    Setup { what: &'static str, source: std::io::Error },
    #[error("CGROUPS: required, but cgroup v2 cannot be used: {0}")]
    Cgroup(String),
}

/// Loads and validates everything `run` needs; warnings are logged, errors stop here.
pub fn prepare(config_path: &std::path::Path) -> Result<(Settings, ConfigStore, api::Tokens), StartupError> {
    let mut problems = config::Problems::default();
    let settings = Settings::load(config_path, &mut problems);
    let Some(settings) = settings.filter(|_| !problems.has_errors()) else {
        return Err(StartupError::Config(problems));
    };
    for w in problems.warnings() {
        tracing::warn!("{w}");
    }
    let tokens = api::Tokens::load(&settings).map_err(StartupError::Token)?;
    let (mut store, report) = ConfigStore::load(&settings.services_file)?;
    if let Some(reason) = report.fell_back {
        tracing::error!(
            file = %settings.services_file.display(),
            "services.json is unusable ({reason}); USING THE BACKUP {}; the bad file is kept as services.json.corrupt",
            atomic::backup_path(&settings.services_file).display()
        );
    }
    for w in report.warnings.warnings() {
        tracing::warn!("{w}");
    }
    for w in store.keep_requests(&settings) {
        tracing::warn!("{w}");
    }
    Ok((settings, store, tokens))
}

/// Runs the supervisor and the API until `shutdown` is cancelled (or SIGTERM/SIGINT arrives), then
/// stops every service in reverse order. Returns what the shutdown ended with.
pub async fn run(
    settings: Settings,
    store: ConfigStore,
    tokens: api::Tokens,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<ShutdownReport, StartupError> {
    let settings = Arc::new(settings);
    // While the descriptor table is nearly empty: the low numbers every spawn's child keeps.
    spawn::reserve_slots();
    spawn::keep_environment();
    std::fs::create_dir_all(&settings.log_dir).map_err(|source| StartupError::Setup { what: "LOG_DIR", source })?;
    match process::raise_nofile_limit() {
        Ok((before, after)) if after > before => tracing::info!("open-file limit raised from {before} to {after}"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    // The services' names only where pipes are to be matched to them (a copy of every service).
    let names: Vec<String> = match settings.log_output {
        config::LogOutput::Pipe => store.list().await.into_iter().map(|s| s.name).collect(),
        config::LogOutput::File => Vec::new(),
    };
    fdstore::init(settings.log_output, &names);
    drop(names);
    if let Err(e) = process::reserve_descriptors(store.count().await) {
        tracing::debug!("cannot grow the descriptor table ahead of the boot: {e}");
    }
    if let Err(e) = process::become_subreaper() {
        tracing::warn!("cannot become a child subreaper ({e}); daemonised programs are watched by pidfd only");
    }
    // Handlers are installed before the first service starts, so no stop signal is ever missed.
    let signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|source| StartupError::Setup { what: "signal handling", source })?;
    let tls = match &settings.tls {
        Some(files) => Some(tls::TlsState::load(files.clone()).map_err(StartupError::Token)?),
        None => None,
    };
    let listener = tls::ApiListener::new(listener, tls.clone())
        .map_err(|source| StartupError::Setup { what: "the API listener", source })?;
    let security = api::Security::new(settings.clone(), tokens, tls);
    // Temp files of writes interrupted by a crash or a power cut: never read, only in the way.
    for file in [settings.services_file.clone(), settings.state_file(), settings.state_dir.join(store::REQUESTED_FILE)]
    {
        let removed = atomic::remove_leftovers(&file);
        if removed > 0 {
            tracing::info!(file = %file.display(), removed, "removed temp files of interrupted writes");
        }
    }
    let cgroups = open_cgroups(&settings)?;
    // With cgroups every program's end is seen by its cgroup, which reaps it by pid: the walk over
    // every child waits (see `reaper`).
    let walk_defer = cgroups.as_ref().map(|_| reaper::WALK_DEFER);
    let reaper = reaper::Reaper::start_deferring(walk_defer)
        .map_err(|source| StartupError::Setup { what: "SIGCHLD handling", source })?;
    let (sup, supervisor_done) = Supervisor::start(settings.clone(), store.clone(), reaper, cgroups, shutdown.clone())?;
    tokio::spawn(async {
        let mut every = tokio::time::interval(logfile::SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // Here, on the runtime thread: one `fstat` per service (about 1 ms at N = 1000); a log
            // found full is copied on a blocking-pool thread. (The whole sweep on a blocking
            // thread made one every 10 s, whose start-up code, given back after the boot, came
            // back resident: +580 KiB PSS at N = 10.)
            logfile::sweep_all();
        }
    });
    spawn_signal_task(signals, sup.clone(), security.clone(), shutdown.clone());

    let state = api::AppState {
        settings: settings.clone(),
        store,
        supervisor: sup.clone(),
        security,
        task_cache: Arc::default(),
        audit: audit::Audit::new(&settings.state_dir),
    };
    let app = api::router(state).into_make_service_with_connect_info::<tls::Peer>();
    let api_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { api_shutdown.cancelled().await }).await
    });
    let ready = sup.clone();
    let ready_task = tokio::spawn(async move {
        ready.booted().await;
        notify::send("READY=1\nSTATUS=all services started");
        // What start-up and the boot touched of air-nanny's own code, and of the runtime thread's
        // stack, need not stay resident. On the runtime thread itself (one read of
        // /proc/self/smaps, about 0.1 ms): only there is the stack's unused part known. Again a
        // little later, for what the boot's aftermath (its last notes, its tasks ending) touched.
        for pause in [std::time::Duration::ZERO, image::AFTERMATH] {
            tokio::time::sleep(pause).await;
            match image::release_clean_pages() {
                Ok(bytes) => tracing::debug!("gave back {} KiB of clean code and read-only data", bytes / 1024),
                Err(e) => tracing::debug!("could not give back the clean code pages: {e}"),
            }
            // The stacks kept for the boot's children: the next spawn maps one again.
            spawn::drop_spare_stacks();
        }
    });

    let report = supervisor_done
        .await
        .unwrap_or(ShutdownReport { faults: vec![("air-nanny".into(), "supervisor task panicked".into())] });
    ready_task.abort();
    // The last events (the services' stops) reach the history before air-nanny exits.
    let journal = sup.journal().clone();
    let _ = tokio::task::spawn_blocking(move || journal.flush()).await;
    // The API shut down gracefully while the services stopped; a connection that still holds it
    // (a half-sent request, a client that never reads) gets at most this long more.
    let mut server = server;
    match tokio::time::timeout(API_DRAIN, &mut server).await {
        Ok(Ok(Err(e))) => tracing::error!("API server error: {e}"),
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("API connections still open {}s after the stop; closing them", API_DRAIN.as_secs());
            server.abort();
        }
    }
    Ok(report)
}

/// The services' cgroups as `CGROUPS` asks: `off` → none; `auto` → where cgroup v2 is writable,
/// else the fallback with a loud warning; `required` → an error when it is not.
fn open_cgroups(settings: &Settings) -> Result<Option<cgroup::Cgroups>, StartupError> {
    if settings.cgroups == config::CgroupMode::Off {
        tracing::info!("CGROUPS: off: processes are owned by pid (fallback mode)");
        return Ok(None);
    }
    let opened = cgroup::Hierarchy::open(settings.cgroup_base.as_deref()).and_then(|hierarchy| {
        let monitor = cgroup::Monitor::start().map_err(|e| format!("epoll: {e}"))?;
        Ok(cgroup::Cgroups { hierarchy, monitor })
    });
    match opened {
        Ok(c) => {
            tracing::info!(base = %c.hierarchy.base().display(), "one cgroup per service");
            Ok(Some(c))
        }
        Err(reason) if settings.cgroups == config::CgroupMode::Required => Err(StartupError::Cgroup(reason)),
        Err(reason) => {
            tracing::warn!("NO CGROUPS ({reason}): processes are owned by pid and found by path (fallback mode)");
            Ok(None)
        }
    }
}

/// SIGTERM/SIGINT cancel the root token (a second one exits at once); SIGHUP reloads services.json,
/// the token files and the TLS certificates.
fn spawn_signal_task(
    mut signals: signal_hook_tokio::Signals,
    sup: Supervisor,
    security: Arc<api::Security>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGHUP => {
                    let sec = security.clone();
                    let problems = tokio::task::spawn_blocking(move || sec.reload()).await.unwrap_or_default();
                    for p in &problems {
                        tracing::error!("SIGHUP: {p}; the previous one stays in force");
                    }
                    let sup = sup.clone();
                    tokio::spawn(async move {
                        match sup.reload().await {
                            Ok(s) => {
                                tracing::info!(added = ?s.added, removed = ?s.removed, changed = ?s.changed, "SIGHUP: reloaded")
                            }
                            Err(e) => tracing::error!("SIGHUP: reload refused, nothing changed: {e}"),
                        }
                    });
                }
                _ if shutdown.is_cancelled() => {
                    tracing::error!(
                        "second stop signal: exiting now; services still running will be adopted at the next start"
                    );
                    std::process::exit(130);
                }
                _ => {
                    tracing::info!(signal = sig, "stop signal: stopping services in reverse order");
                    notify::send("STOPPING=1");
                    shutdown.cancel();
                }
            }
        }
    });
}

/// Connections the kernel holds for the API beyond those being served (`tls::MAX_CONNECTIONS`):
/// clients past the cap wait there instead of timing out on SYN retries.
const API_BACKLOG: u32 = 1024;

/// Binds the API listener for `settings`.
pub async fn bind(settings: &Settings) -> Result<TcpListener, StartupError> {
    let addr = std::net::SocketAddr::new(settings.addr, settings.port);
    let err = |source| StartupError::Listen { addr: addr.to_string(), source };
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(API_BACKLOG).map_err(err)
}
