//! A tiny real program for the demo and the tests to supervise: it logs a heartbeat, can serve a
//! minimal HTTP health endpoint, and exits cleanly on SIGTERM.
//!
//! Flags: `--listen ADDR` (answer `GET /` with 200), `--heartbeat SECS` (default 5),
//! `--heartbeat-ms MS` (a chatty program), `--exit-after SECS` (a one-shot job), `--exit-code N`
//! (with --exit-after), `--ignore-term` (ignore SIGTERM, to exercise forced stops), `--record FILE`
//! (append "start NAME PID UNIX_NANOS" / "stop …"), `--workers N` (fork N worker processes of the
//! same executable), `--daemon PATH` (start PATH as a daemon the classic way: fork, `setsid`,
//! fork again, exec — it escapes the process group and is reparented away from us).
//!
//! Like a C program it dies of SIGPIPE when its output has no reader any more.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

struct Flags {
    listen: Option<String>,
    heartbeat: Duration,
    workers: u32,
    daemon: Option<String>,
    exit_after: Option<u64>,
    exit_code: i32,
    ignore_term: bool,
    record: Option<String>,
}

fn parse() -> Flags {
    let mut f = Flags {
        listen: None,
        heartbeat: Duration::from_secs(5),
        workers: 0,
        daemon: None,
        exit_after: None,
        exit_code: 0,
        ignore_term: false,
        record: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--listen" => f.listen = Some(value()),
            "--heartbeat" => {
                f.heartbeat = Duration::from_secs(value().parse().unwrap_or_else(|_| die("--heartbeat: seconds")))
            }
            "--heartbeat-ms" => {
                f.heartbeat =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| die("--heartbeat-ms: milliseconds")))
            }
            "--workers" => f.workers = value().parse().unwrap_or_else(|_| die("--workers: a number")),
            "--daemon" => f.daemon = Some(value()),
            "--exit-after" => f.exit_after = Some(value().parse().unwrap_or_else(|_| die("--exit-after: seconds"))),
            "--exit-code" => f.exit_code = value().parse().unwrap_or_else(|_| die("--exit-code: a number")),
            "--record" => f.record = Some(value()),
            "--ignore-term" => f.ignore_term = true,
            other => die(&format!("unknown flag {other}")),
        }
    }
    f
}

fn die(msg: &str) -> ! {
    eprintln!("demo-service: {msg}");
    std::process::exit(2)
}

fn name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "demo-service".into())
}

fn record(file: &Option<String>, what: &str) {
    if let Some(f) = file {
        if let Ok(mut out) = std::fs::OpenOptions::new().create(true).append(true).open(f) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            // One write per line: many programs append to the same file at once.
            let line = format!("{what} {} {} {}\n", name(), std::process::id(), now.as_nanos());
            let _ = out.write_all(line.as_bytes());
        }
    }
}

/// `--double-fork PATH`: the middle of `--daemon`, run in a fresh single-threaded process.
fn double_fork(path: &str) -> ! {
    let prog = std::ffi::CString::new(path).unwrap_or_else(|_| die("--double-fork: bad path"));
    let beat = std::ffi::CString::new("--heartbeat").expect("no NUL");
    let one = std::ffi::CString::new("1").expect("no NUL");
    // SAFETY: this process has one thread (nothing has been started yet); after each fork only
    // setsid, fork, execv and _exit run.
    unsafe {
        match libc::fork() {
            -1 => die("fork failed"),
            0 => {
                libc::setsid();
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => {
                        let argv = [prog.as_ptr(), beat.as_ptr(), one.as_ptr(), std::ptr::null()];
                        libc::execv(prog.as_ptr(), argv.as_ptr());
                        libc::_exit(127)
                    }
                    _ => libc::_exit(0),
                }
            }
            _ => std::process::exit(0),
        }
    }
}

fn main() {
    // Rust ignores SIGPIPE; a C program does not: writing to a pipe nobody reads kills it.
    // SAFETY: restoring a signal's default disposition at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--double-fork") {
        double_fork(argv.get(2).map(String::as_str).unwrap_or_else(|| die("--double-fork needs a path")));
    }
    let flags = parse();
    let me = name();
    println!("{me}: started, pid {}", std::process::id());
    record(&flags.record, "start");
    if let Some(addr) = flags.listen.clone() {
        let listener = TcpListener::bind(&addr).unwrap_or_else(|e| die(&format!("cannot listen on {addr}: {e}")));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
            }
        });
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    let mut workers = Vec::new();
    for _ in 0..flags.workers {
        let beat = flags.heartbeat.as_millis().to_string();
        match std::process::Command::new(&exe).args(["--heartbeat-ms", &beat]).spawn() {
            Ok(c) => workers.push(c),
            Err(e) => die(&format!("cannot fork a worker: {e}")),
        }
    }
    if let Some(path) = &flags.daemon {
        match std::process::Command::new(&exe).args(["--double-fork", path]).status() {
            Ok(s) if s.success() => println!("{me}: started daemon {path}"),
            other => die(&format!("cannot start daemon {path}: {other:?}")),
        }
    }
    let beat = flags.heartbeat.max(Duration::from_millis(1));
    let me2 = me.clone();
    std::thread::spawn(move || {
        let mut n = 0u64;
        let mut out = std::io::stdout();
        loop {
            std::thread::sleep(beat);
            n += 1;
            // A failed write (a full disk, say) is not fatal; a broken pipe is (SIGPIPE).
            let _ = writeln!(out, "{me2}: heartbeat {n}").and_then(|()| out.flush());
        }
    });
    if let Some(secs) = flags.exit_after {
        let (code, rec) = (flags.exit_code, flags.record.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            println!("{}: job done, exiting with {code}", name());
            record(&rec, "done");
            std::process::exit(code);
        });
    }
    let mut signals = Signals::new([SIGTERM, SIGINT]).unwrap_or_else(|e| die(&format!("signals: {e}")));
    for sig in signals.forever() {
        if flags.ignore_term && sig == SIGTERM {
            println!("{me}: ignoring SIGTERM");
            continue;
        }
        println!("{me}: stopping on signal {sig}");
        record(&flags.record, "stop");
        // Workers are told to stop as well (a careful master); a daemon is on its own.
        for w in &mut workers {
            // SAFETY: kill(2) of our own child's pid.
            unsafe {
                libc::kill(w.id() as i32, libc::SIGTERM);
            }
            let _ = w.wait();
        }
        std::process::exit(0);
    }
}
