//! Shared helpers for the end-to-end tests: a temp directory with a real configuration, real
//! programs (copies of `demo-service`) and control scripts, the real `air-nanny` binary, real HTTP
//! over loopback, and waits on conditions with deadlines (never a fixed sleep).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const AIR_NANNY: &str = env!("CARGO_BIN_EXE_air-nanny");
pub const DEMO: &str = env!("CARGO_BIN_EXE_demo-service");

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A temp directory holding conf/ (config.yaml, public.yaml, services.json), root/ (the rootpath,
/// with programs in root/bin), scripts/ and record.log (what the scripts did, in order).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub port: u16,
    rt: tokio::runtime::Runtime,
    /// `CGROUP_BASE` of this fixture (used when cgroup v2 is writable here).
    cgroup_base: String,
}

/// The cgroup2 mount when cgroups can be used by tests here (root, cgroup2 mounted and writable);
/// `None` says so loudly once per call site's test.
pub fn cgroup_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = air_nanny::cgroup::cgroup2_mount(&mountinfo)?;
    let probe = mount.join(format!("air-nanny-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Some(mount)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(mount),
        Err(_) => None,
    }
}

/// Whether cgroup mode can be tested here; says loudly when not.
pub fn cgroups_here(test: &str) -> bool {
    let here = cgroup_mount().is_some();
    if !here {
        eprintln!("!!! {test}: NO WRITABLE CGROUP V2 HERE: the cgroup-mode half of this test is SKIPPED");
    }
    here
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config("")
    }

    /// `extra` is appended to config.yaml (extension keys).
    pub fn with_config(extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for d in ["conf", "root/bin", "scripts", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let port = free_port();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Each fixture's services get cgroups of their own, apart from every other test's and the
        // demo's.
        let cgroup_base = format!("/air-nanny-test/{}-{n}", std::process::id());
        let f = Fixture {
            dir,
            port,
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            cgroup_base: cgroup_base.clone(),
        };
        f.write("conf/public.yaml", &format!("rootpath: {}\n", f.root().display()));
        f.write(
            "conf/config.yaml",
            &format!(
                "SERVER: test-nanny\nPUBLIC_CONF: public.yaml\nSERVER_PORT: {port}\nSTOP_TIMEOUT: 3\nKILL_GRACE: 1\nRESTART_BACKOFF_BASE_MS: 100\nRESTART_BACKOFF_MAX: 2\nCGROUP_BASE: {cgroup_base}\n{extra}"
            ),
        );
        f.write("conf/services.json", "[]\n");
        f
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    pub fn config(&self) -> PathBuf {
        self.path("conf/config.yaml")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Installs a distinct copy of the demo program as root/bin/NAME; returns its programFilePath.
    pub fn program(&self, name: &str) -> String {
        let dest = self.root().join("bin").join(name);
        if !dest.exists() {
            std::fs::copy(DEMO, &dest).unwrap();
        }
        format!("/bin/{name}")
    }

    /// Like [`Fixture::program`], a hard link where the file system allows (many services, no copies).
    pub fn program_linked(&self, name: &str) -> String {
        let dest = self.root().join("bin").join(name);
        if !dest.exists() && std::fs::hard_link(DEMO, &dest).is_err() {
            std::fs::copy(DEMO, &dest).unwrap();
        }
        format!("/bin/{name}")
    }

    pub fn program_path(&self, name: &str) -> PathBuf {
        self.root().join("bin").join(name)
    }

    /// A control script that daemonises the service's program with `args` (like the seed's run.sh)
    /// and records `script-start NAME` / `script-stop NAME`. `stop` replaces the stop body.
    pub fn script(&self, name: &str, args: &str, stop: Option<&str>) -> String {
        let pidf = self.path(&format!("run/{name}.pid")).display().to_string();
        let default_stop = format!(
            "pid=$(cat {pidf}); kill -TERM $pid; i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done"
        );
        // Output goes where the script's goes (the service log), as a real program's does.
        let start = format!("\"$AIR_NANNY_PROGRAM\" {args} </dev/null &\n  echo $! > {pidf}");
        self.script_with(name, &start, stop.unwrap_or(&default_stop))
    }

    /// A control script with these `start` and `stop` bodies, recording `script-start NAME` /
    /// `script-stop NAME` before each.
    pub fn script_with(&self, name: &str, start: &str, stop: &str) -> String {
        let rec = self.path("record.log").display().to_string();
        let text = format!(
            "#!/bin/sh\ncase \"$1\" in\nstart)\n  echo \"script-start $AIR_NANNY_SERVICE\" >> {rec}\n  {start}\n  ;;\nstop)\n  echo \"script-stop $AIR_NANNY_SERVICE\" >> {rec}\n  {stop}\n  ;;\n*) exit 2 ;;\nesac\n"
        );
        let path = self.path(&format!("scripts/{name}.sh"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    /// Waits until air-nanny's own log (stderr of every run of this fixture) contains `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        wait_until(&format!("{text:?} in air-nanny's log"), timeout, || {
            std::fs::read_to_string(self.path("nanny.log")).unwrap_or_default().contains(text).then_some(())
        });
    }

    /// A script-mode service object.
    pub fn script_service(&self, name: &str, priority: i64, is_init: bool, args: &str) -> Value {
        serde_json::json!({
            "name": name, "priority": priority, "isInit": is_init, "isDaemon": true,
            "script": { "execPath": self.script(name, args, None), "programFilePath": self.program(name),
                        "startCommand": "start", "stopCommand": "stop" },
            "healthCheck": { "isHealthCheck": false, "interval": 30, "timeout": 30, "start_period": 0, "retries": 3 }
        })
    }

    /// A direct-mode service object.
    pub fn direct_service(&self, name: &str, priority: i64, args: &[&str]) -> Value {
        serde_json::json!({
            "name": name, "priority": priority, "isInit": false, "isDaemon": true,
            "script": { "execPath": "", "programFilePath": self.program(name), "startCommand": "", "stopCommand": "", "args": args },
            "healthCheck": { "isHealthCheck": false }
        })
    }

    pub fn write_services(&self, services: &Value) {
        self.write("conf/services.json", &serde_json::to_string_pretty(services).unwrap());
    }

    pub fn services_bytes(&self) -> Vec<u8> {
        std::fs::read(self.path("conf/services.json")).unwrap()
    }

    /// The lines the control scripts and programs recorded, in order.
    pub fn records(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("record.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.path(&format!("conf/logs/{service}.log"))).unwrap_or_default()
    }

    /// Runs `air-nanny ARGS… --config conf/config.yaml`, returning (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(AIR_NANNY).args(args).arg("--config").arg(self.config()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts air-nanny and waits until its API answers.
    pub fn start(&self) -> Nanny<'_> {
        self.start_with_env(&[])
    }

    /// [`Fixture::start`] with extra environment variables (systemd's, for instance).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Nanny<'_> {
        self.start_in(env, None)
    }

    /// [`Fixture::start`] with extra environment variables, in working directory `cwd` (systemd
    /// starts services in `/`).
    pub fn start_in(&self, env: &[(&str, &str)], cwd: Option<&std::path::Path>) -> Nanny<'_> {
        self.spawn(env, cwd).api_up()
    }

    /// Starts air-nanny without waiting for its API (the caller waits its own way, over TLS say).
    pub fn spawn(&self, env: &[(&str, &str)], cwd: Option<&std::path::Path>) -> Nanny<'_> {
        self.spawn_cmd(env, cwd, None, &[])
    }

    /// [`Fixture::start`] under an open-file limit of `soft` (systemd gives services 1024), with a
    /// hard limit of at least `hard` (raised as root where the machine's is lower).
    pub fn start_with_nofile(&self, soft: u64, hard: u64) -> Nanny<'_> {
        self.spawn_cmd(&[], None, Some((soft, hard)), &[]).api_up()
    }

    /// [`Fixture::start`] as systemd starts a service again: with the descriptors of its store
    /// (`store`) from fd 3 on, named in `LISTEN_FDNAMES`, for the new process's pid (`LISTEN_PID`:
    /// a shell sets it to its own pid and execs air-nanny, which keeps it).
    pub fn start_handing_back(&self, store: &StandInStore) -> Nanny<'_> {
        self.start_handing_back_with(store, store.env())
    }

    /// [`Fixture::start_handing_back`] with `env` instead of the store's own variables (systemd
    /// before 254 sets no `FDSTORE`).
    pub fn start_handing_back_with(&self, store: &StandInStore, env: Vec<(&'static str, String)>) -> Nanny<'_> {
        let kept = store.kept();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.spawn_cmd(&env, None, None, &kept).api_up()
    }

    fn spawn_cmd(
        &self,
        env: &[(&str, &str)],
        cwd: Option<&std::path::Path>,
        nofile: Option<(u64, u64)>,
        handed: &[(String, std::os::fd::RawFd)],
    ) -> Nanny<'_> {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(self.path("nanny.log")).unwrap();
        let mut cmd = Command::new(AIR_NANNY);
        if !handed.is_empty() {
            cmd = Command::new("/bin/sh");
            cmd.args(["-c", "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"", AIR_NANNY]);
            let names: Vec<&str> = handed.iter().map(|(n, _)| n.as_str()).collect();
            cmd.env("LISTEN_FDS", handed.len().to_string()).env("LISTEN_FDNAMES", names.join(":"));
            let fds: Vec<std::os::fd::RawFd> = handed.iter().map(|(_, fd)| *fd).collect();
            // SAFETY: the closure only calls fcntl and dup2 (async-signal-safe) on numbers it owns.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    // Out of the way first (a descriptor may sit where another must go), then to 3….
                    let mut high = [0; 64];
                    for (i, fd) in fds.iter().enumerate() {
                        high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 1000);
                        if high[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, fd) in high.iter().take(fds.len()).enumerate() {
                        if libc::dup2(*fd, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        if let Some((soft, hard)) = nofile {
            let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit with a valid pointer.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) }, 0);
            let lim = libc::rlimit { rlim_cur: soft, rlim_max: cur.rlim_max.max(hard) };
            // SAFETY: the closure only calls setrlimit (async-signal-safe) with a value it owns.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        }
        let child = cmd
            .args(["run", "--log-level", "debug", "--config"])
            .arg(self.config())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Nanny { child: Some(child), fixture: self, token: None }
    }

    /// Every live process of a program of this fixture.
    pub fn pids_of(&self, name: &str) -> Vec<i32> {
        air_nanny::process::find_program(&self.program_path(name))
    }

    /// Every live process of a program at `rel` under the rootpath.
    pub fn pids_of_path(&self, rel: &str) -> Vec<i32> {
        air_nanny::process::find_program(&self.root().join(rel))
    }

    pub fn http(&self, method: &str, path: &str, body: Option<&[u8]>, token: Option<&str>) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        match self.rt.block_on(air_nanny::http::request(method, &url, &headers, body, Duration::from_secs(30))) {
            Ok(r) => (r.status, r.json()),
            Err(_) => (0, Value::Null),
        }
    }

    /// Sends `raw` as it is (an attacker's request) and returns the status and the body.
    pub fn raw(&self, raw: &[u8]) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Kills every process left of this fixture's programs (cleanup after a failed test).
    fn kill_programs(&self) {
        for pid in self.live_programs() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Every live process of any program of this fixture, in one pass over /proc.
    pub fn live_programs(&self) -> Vec<i32> {
        let bin = self.root().join("bin");
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
            if exe.starts_with(&bin) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Fixture {
    /// This fixture's cgroup base directory, when cgroups are used here.
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        cgroup_mount().map(|m| m.join(self.cgroup_base.trim_start_matches('/')))
    }

    /// The processes in service `name`'s cgroup (empty when it has none).
    pub fn cgroup_members(&self, name: &str) -> Vec<i32> {
        let Some(dir) = self.cgroup_dir() else { return Vec::new() };
        let text = std::fs::read_to_string(dir.join(format!("svc-{name}")).join("cgroup.procs")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Kills whatever is left in this fixture's cgroups and removes them.
    fn remove_cgroups(&self) {
        let Some(dir) = self.cgroup_dir() else { return };
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(e.path()).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill_programs();
        self.remove_cgroups();
    }
}

/// A running air-nanny. Killed on drop.
pub struct Nanny<'a> {
    child: Option<Child>,
    pub fixture: &'a Fixture,
    pub token: Option<String>,
}

impl Nanny<'_> {
    /// Panics with air-nanny's log if it has exited.
    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "air-nanny exited early ({status}):\n{}",
                std::fs::read_to_string(self.fixture.path("nanny.log")).unwrap_or_default()
            );
        }
    }

    /// Waits until the API answers /health (panicking with the log if air-nanny exits first).
    fn api_up(mut self) -> Self {
        wait_until("the API to answer /health", Duration::from_secs(20), || {
            self.check_alive();
            (self.call("GET", "/health", None).0 == 200).then_some(())
        });
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.fixture.http(method, path, body.map(str::as_bytes), self.token.as_deref())
    }

    /// `data` of a successful call; panics with the answer otherwise.
    pub fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert_eq!((status, v["msg"].as_str()), (200, Some("SUCCESS")), "{method} {path}: {v}");
        v["data"].clone()
    }

    pub fn task(&self, name: &str) -> Value {
        self.ok("GET", &format!("/task/find?name={name}"), None)
    }

    pub fn pids(&self, name: &str) -> Vec<i64> {
        self.task(name)["Pids"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap()).collect()
    }

    /// Waits until `name` is running (State 2) with at least one pid; returns the pids.
    pub fn wait_running(&self, name: &str) -> Vec<i64> {
        wait_until(&format!("{name} to run"), Duration::from_secs(20), || {
            let t = self.task(name);
            (t["State"] == 2 && !t["Pids"].as_array().unwrap().is_empty()).then(|| self.pids(name))
        })
    }

    pub fn wait_state(&self, name: &str, state: u64) -> Value {
        wait_until(&format!("{name} to reach state {state}"), Duration::from_secs(20), || {
            let t = self.task(name);
            (t["State"] == state).then_some(t)
        })
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGTERM, then wait (bounded) for air-nanny to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// SIGTERM, then wait up to `timeout` for air-nanny to exit.
    pub fn wait_exit_after_term(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = wait_until("air-nanny to exit", timeout, || child.try_wait().unwrap());
        self.child = None;
        status
    }

    /// `kill -9` of air-nanny itself; its services keep running.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Nanny<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn kill9(pid: i64) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

pub fn alive(pid: i64) -> bool {
    air_nanny::process::is_alive(pid as i32)
}

/// A stand-in for systemd where the tests have none: its notification socket (`NOTIFY_SOCKET`)
/// and its file-descriptor store, with systemd's rules — `FDSTORE=1` keeps the descriptors sent
/// with the message under its `FDNAME` (the same open file only once), `FDSTOREREMOVE=1` closes
/// every one of a name, and the store outlives the process that filled it. Other notifications
/// (READY, STATUS, WATCHDOG) are read and dropped.
pub struct StandInStore {
    path: PathBuf,
    kept: std::sync::Arc<std::sync::Mutex<Vec<(String, std::os::fd::OwnedFd)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StandInStore {
    pub fn new(path: PathBuf) -> StandInStore {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, OwnedFd)>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, halt) = (kept.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 16]);
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let Ok(msg) = nix::sys::socket::recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
                ) else {
                    continue;
                };
                let mut fds = Vec::new();
                for c in msg.cmsgs().unwrap() {
                    if let nix::sys::socket::ControlMessageOwned::ScmRights(r) = c {
                        // SAFETY: the kernel just gave us these descriptors.
                        fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let fields: Vec<&str> = text.lines().collect();
                let name = fields.iter().find_map(|l| l.strip_prefix("FDNAME=")).unwrap_or("stored").to_string();
                let mut kept = k.lock().unwrap();
                if fields.contains(&"FDSTORE=1") {
                    for fd in fds {
                        let id =
                            |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).map(|s| (s.st_dev, s.st_ino)).ok();
                        if !kept.iter().any(|(_, k)| id(k) == id(&fd)) {
                            kept.push((name.clone(), fd));
                        }
                    }
                } else if fields.contains(&"FDSTOREREMOVE=1") {
                    kept.retain(|(n, _)| *n != name);
                }
            }
        });
        StandInStore { path, kept, stop }
    }

    /// What air-nanny is given to find it: `NOTIFY_SOCKET`, and `FDSTORE` as systemd 254 sets it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("NOTIFY_SOCKET", self.path.display().to_string()), ("FDSTORE", "64".into())]
    }

    /// The names kept, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.kept.lock().unwrap().iter().map(|(n, _)| n.clone()).collect();
        n.sort();
        n
    }

    /// The kept descriptors (still the store's) with their names.
    pub fn kept(&self) -> Vec<(String, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd;
        self.kept.lock().unwrap().iter().map(|(n, fd)| (n.clone(), fd.as_raw_fd())).collect()
    }

    /// Bytes waiting in the kept pipe `name` (FIONREAD), read by nobody.
    pub fn pending(&self, name: &str) -> usize {
        use std::os::fd::AsRawFd;
        let kept = self.kept.lock().unwrap();
        let Some((_, fd)) = kept.iter().find(|(n, _)| n == name) else { return 0 };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        n.max(0) as usize
    }
}

impl Drop for StandInStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
