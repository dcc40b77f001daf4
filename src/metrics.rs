//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4): per service its state,
//! health, restarts, faults, uptime, last exit and, from its cgroup, memory and CPU; air-nanny's
//! own resident memory, open descriptors and API requests. How a fleet's monitoring scrapes every
//! onboard computer.
//!
//! Rendering is pure ([`render`]: snapshots and readings in, text out); reading the cgroup files
//! and `/proc/self` is done by the caller off the runtime thread ([`read_usage`], [`read_own`]).

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::supervisor::{Health, State, TaskSnapshot};

/// API requests answered, by status class (1xx … 5xx).
static API_REQUESTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Counts one answered API request.
pub fn count_request(status: u16) {
    if let Some(c) = API_REQUESTS.get(usize::from(status / 100).wrapping_sub(1)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a service's cgroup says it uses (absent without cgroups or without the controller).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// Reads `memory.current` and `cpu.stat`'s `usage_usec` of a cgroup. Blocking (two small files).
pub fn read_usage(cgroup: &Path) -> Usage {
    let memory_bytes = std::fs::read_to_string(cgroup.join("memory.current")).ok().and_then(|t| t.trim().parse().ok());
    let cpu_seconds = std::fs::read_to_string(cgroup.join("cpu.stat")).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us as f64 / 1e6)
    });
    Usage { memory_bytes, cpu_seconds }
}

/// air-nanny's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Own {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// Reads air-nanny's resident memory (`/proc/self/statm`) and its open descriptors. Blocking.
pub fn read_own() -> Own {
    // SAFETY: sysconf has no memory effects.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|pages| pages * page);
    // The directory's own descriptor, open while it is read, is not counted.
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| (d.count() as u64).saturating_sub(1));
    Own { resident_bytes, open_fds }
}

/// A label value, escaped as the format wants (`\`, `"` and newlines).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One metric family: its HELP and TYPE lines, then a sample per service.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    tasks: &'a [(std::sync::Arc<TaskSnapshot>, Usage)],
    mut sample: impl FnMut(&mut String, &str, &'a TaskSnapshot, &Usage),
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (t, u) in tasks {
        sample(out, &label(&t.info.name), t, u);
    }
}

/// The exposition text. `now` is the time of the scrape (uptimes are computed from it).
pub fn render(tasks: &[(std::sync::Arc<TaskSnapshot>, Usage)], own: Own, ownership: &str, now: SystemTime) -> String {
    let mut out = String::with_capacity(256 + tasks.len() * 1024);
    family(
        &mut out,
        "air_nanny_service_state",
        "gauge",
        "1 for the state the service is in, 0 for the others.",
        tasks,
        |o, n, t, _| {
            for s in State::ALL {
                let _ = writeln!(
                    o,
                    "air_nanny_service_state{{service=\"{n}\",state=\"{}\"}} {}",
                    s.name(),
                    u8::from(t.state == s)
                );
            }
        },
    );
    // One number per service.
    type Value = fn(&TaskSnapshot) -> u64;
    let simple: [(&str, &str, &str, Value); 6] = [
        ("air_nanny_service_up", "gauge", "1 when the program runs (state running).", |t| {
            u64::from(t.state == State::Running)
        }),
        ("air_nanny_service_health_failures", "gauge", "Consecutive failed health checks of the current run.", |t| {
            u64::from(t.streak)
        }),
        ("air_nanny_service_restarts_total", "counter", "Restarts since air-nanny started.", |t| t.restarts),
        ("air_nanny_service_start_faults_total", "counter", "Failed starts (StartFaultNum).", |t| t.start_faults),
        (
            "air_nanny_service_stop_faults_total",
            "counter",
            "Stops that needed force or whose command failed (StopFaultNum).",
            |t| t.stop_faults,
        ),
        ("air_nanny_service_processes", "gauge", "Processes of the service (Pids).", |t| t.pids.len() as u64),
    ];
    for (name, kind, help, value) in simple {
        family(&mut out, name, kind, help, tasks, |o, n, t, _| {
            let _ = writeln!(o, "{name}{{service=\"{n}\"}} {}", value(t));
        });
    }
    family(
        &mut out,
        "air_nanny_service_health",
        "gauge",
        "1 for the health the service has (none: no check, or not running).",
        tasks,
        |o, n, t, _| {
            for h in [Health::None, Health::Starting, Health::Healthy, Health::Unhealthy] {
                let _ = writeln!(
                    o,
                    "air_nanny_service_health{{service=\"{n}\",health=\"{}\"}} {}",
                    h.name(),
                    u8::from(t.health == h)
                );
            }
        },
    );
    family(
        &mut out,
        "air_nanny_service_uptime_seconds",
        "gauge",
        "How long the program has run (0 when it does not).",
        tasks,
        |o, n, t, _| {
            let up = if t.state == State::Running {
                now.duration_since(t.since).map(|d| d.as_secs_f64()).unwrap_or(0.0)
            } else {
                0.0
            };
            let _ = writeln!(o, "air_nanny_service_uptime_seconds{{service=\"{n}\"}} {up:.3}");
        },
    );
    family(
        &mut out,
        "air_nanny_service_last_exit_timestamp_seconds",
        "gauge",
        "When the program last ended; the exit label says how (LastExit).",
        tasks,
        |o, n, t, _| {
            if let (Some(e), Some(at)) = (&t.last_exit, t.last_exit_at) {
                let _ = writeln!(
                    o,
                    "air_nanny_service_last_exit_timestamp_seconds{{service=\"{n}\",exit=\"{}\"}} {:.3}",
                    label(e),
                    secs(at)
                );
            }
        },
    );
    family(
        &mut out,
        "air_nanny_service_memory_bytes",
        "gauge",
        "Memory of the service's cgroup (memory.current).",
        tasks,
        |o, n, _, u| {
            if let Some(m) = u.memory_bytes {
                let _ = writeln!(o, "air_nanny_service_memory_bytes{{service=\"{n}\"}} {m}");
            }
        },
    );
    family(
        &mut out,
        "air_nanny_service_cpu_seconds_total",
        "counter",
        "CPU time of the service's cgroup (cpu.stat usage_usec).",
        tasks,
        |o, n, _, u| {
            if let Some(c) = u.cpu_seconds {
                let _ = writeln!(o, "air_nanny_service_cpu_seconds_total{{service=\"{n}\"}} {c:.6}");
            }
        },
    );
    let _ = writeln!(out, "# HELP air_nanny_info air-nanny's version and how it owns processes (cgroup or fallback).");
    let _ = writeln!(out, "# TYPE air_nanny_info gauge");
    let _ = writeln!(out, "air_nanny_info{{version=\"{}\",ownership=\"{ownership}\"}} 1", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "# HELP air_nanny_services Services supervised.");
    let _ = writeln!(out, "# TYPE air_nanny_services gauge");
    let _ = writeln!(out, "air_nanny_services {}", tasks.len());
    if let Some(r) = own.resident_bytes {
        let _ = writeln!(out, "# HELP air_nanny_resident_memory_bytes air-nanny's resident memory.");
        let _ = writeln!(out, "# TYPE air_nanny_resident_memory_bytes gauge");
        let _ = writeln!(out, "air_nanny_resident_memory_bytes {r}");
    }
    if let Some(f) = own.open_fds {
        let _ = writeln!(out, "# HELP air_nanny_open_fds air-nanny's open file descriptors.");
        let _ = writeln!(out, "# TYPE air_nanny_open_fds gauge");
        let _ = writeln!(out, "air_nanny_open_fds {f}");
    }
    let _ = writeln!(out, "# HELP air_nanny_api_requests_total API requests answered, by status class.");
    let _ = writeln!(out, "# TYPE air_nanny_api_requests_total counter");
    for (i, c) in API_REQUESTS.iter().enumerate() {
        let _ = writeln!(out, "air_nanny_api_requests_total{{code=\"{}xx\"}} {}", i + 1, c.load(Ordering::Relaxed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let info = crate::config::ServiceInfo::from_json(br#"{"name":"a","script":{"programFilePath":"/a"}}"#).unwrap();
        let mut t = TaskSnapshot::new(Arc::new(info));
        t.state = State::Running;
        t.pids = vec![7, 8];
        t.restarts = 3;
        t.last_exit = Some("killed by \"SIGKILL\"".into());
        t.last_exit_at = Some(UNIX_EPOCH + std::time::Duration::from_secs(100));
        t.since = UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let usage = Usage { memory_bytes: Some(4096), cpu_seconds: Some(1.5) };
        let text = render(
            &[(Arc::new(t), usage)],
            Own { resident_bytes: Some(1), open_fds: Some(2) },
            "cgroup",
            UNIX_EPOCH + std::time::Duration::from_secs(1010),
        );
        for want in [
            "air_nanny_service_state{service=\"a\",state=\"running\"} 1",
            "air_nanny_service_state{service=\"a\",state=\"stopped\"} 0",
            "air_nanny_service_up{service=\"a\"} 1",
            "air_nanny_service_processes{service=\"a\"} 2",
            "air_nanny_service_restarts_total{service=\"a\"} 3",
            "air_nanny_service_uptime_seconds{service=\"a\"} 10.000",
            "air_nanny_service_last_exit_timestamp_seconds{service=\"a\",exit=\"killed by \\\"SIGKILL\\\"\"} 100.000",
            "air_nanny_service_memory_bytes{service=\"a\"} 4096",
            "air_nanny_service_cpu_seconds_total{service=\"a\"} 1.500000",
            "air_nanny_open_fds 2",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
