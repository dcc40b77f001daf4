//! A tiny real program for the demo and the tests to supervise: it logs a heartbeat, can serve a
//! minimal HTTP health endpoint, and exits cleanly on SIGTERM.
//!
//! Flags: `--listen ADDR` (answer `GET /` with 200), `--heartbeat SECS` (default 5),
//! `--exit-after SECS` (a one-shot job), `--exit-code N` (with --exit-after), `--ignore-term`
//! (ignore SIGTERM, to exercise forced stops), `--record FILE` (append "start NAME PID UNIX_NANOS" / "stop …").

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

struct Flags {
    listen: Option<String>,
    heartbeat: u64,
    exit_after: Option<u64>,
    exit_code: i32,
    ignore_term: bool,
    record: Option<String>,
}

fn parse() -> Flags {
    let mut f = Flags { listen: None, heartbeat: 5, exit_after: None, exit_code: 0, ignore_term: false, record: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--listen" => f.listen = Some(value()),
            "--heartbeat" => f.heartbeat = value().parse().unwrap_or_else(|_| die("--heartbeat: seconds")),
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

fn main() {
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
    let beat = flags.heartbeat.max(1);
    let me2 = me.clone();
    std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            std::thread::sleep(Duration::from_secs(beat));
            n += 1;
            println!("{me2}: heartbeat {n}");
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
        std::process::exit(0);
    }
}
