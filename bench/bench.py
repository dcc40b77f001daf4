#!/usr/bin/env python3
"""The benchmark harness behind bench/run.sh: runs the real air-nanny on N copies (hard links, so
each has its own path) of a tiny program, in direct and script mode, and measures it from outside.

Every wait has a deadline; nothing is asserted about timing."""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, timeout, fn, step=0.001):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# The stop command of the control script. "cat" is the reference (what the seed's run.sh does): a
# subshell and a `cat` execed per stop. "read" is the same stop with the shell's own `read`, for the
# question how much of a script-mode shutdown is the stop commands' own cost (bench/shutdown.py
# --stop read); results are only comparable between runs with the same one.
STOPS = {"cat": 'kill "$(cat "$pidf")"', "read": 'read -r pid < "$pidf"; kill "$pid"'}

# Spare programs for script mode's baseline: one per sample of a benchmark's usual kill count.
SPARES = 32


class Setup:
    """A temp directory with config, services.json, N programs and (script mode) a control script."""

    def __init__(self, nanny, program, n, mode, check_every=None, stop="cat"):
        self.nanny, self.n, self.mode = nanny, n, mode
        self.dir = tempfile.mkdtemp(prefix=f"air-nanny-bench-{mode}-{n}-")
        self.root = os.path.join(self.dir, "root")
        self.rec = os.path.join(self.dir, "record.log")
        os.makedirs(os.path.join(self.root, "bin"))
        os.makedirs(os.path.join(self.dir, "run"))
        self.names = [f"svc{i:04d}" for i in range(n)]
        for name in self.names:
            os.link(program, os.path.join(self.root, "bin", name))
        # Programs no service names: the control script run by hand beside air-nanny (script mode's
        # baseline, timed at the same moments as the respawns). Each sample takes the next one, with
        # a pid file written now, as the services' were at boot: a respawn meets its service's files
        # cold (the pid file the script truncates, the program's name), and so must the baseline —
        # one spare run again and again had them hot, 0.1–0.3 ms of the script's time.
        self.spares = [f"spare{i:02d}" for i in range(SPARES)]
        for name in self.spares:
            os.link(program, os.path.join(self.root, "bin", name))
            with open(os.path.join(self.dir, "run", f"{name}.pid"), "w") as f:
                f.write("0\n")
        self.port = free_port()
        self.cgroup_base = f"/air-nanny-bench/{os.getpid()}-{self.port}"
        with open(os.path.join(self.dir, "public.yaml"), "w") as f:
            f.write(f"rootpath: {self.root}\n")
        with open(os.path.join(self.dir, "config.yaml"), "w") as f:
            f.write(f"SERVER: bench\nPUBLIC_CONF: public.yaml\nSERVER_PORT: {self.port}\n"
                    f"STOP_TIMEOUT: 5\nGROUP_START_TIMEOUT: 120\nLOG_DIR: logs\n"
                    # Cgroups of its own, apart from the demo's and the tests'.
                    f"CGROUP_BASE: {self.cgroup_base}\n"
                    # A service's run of 1 s counts as healthy: each kill then meets a first restart.
                    f"RESTART_BACKOFF_RESET: 1\n")
        script = os.path.join(self.dir, "ctl.sh")
        with open(script, "w") as f:
            f.write(f"""#!/bin/sh
# Daemonises the program like a seed run.sh; stop returns at once.
pidf={self.dir}/run/$AIR_NANNY_SERVICE.pid
case "$1" in
start) "$AIR_NANNY_PROGRAM" --record {self.rec} --heartbeat 3600 </dev/null >/dev/null 2>&1 &
       echo $! > "$pidf" ;;
stop) {STOPS[stop]} ;;
esac
""")
        os.chmod(script, 0o755)
        self.script = script
        services = []
        for name in self.names:
            svc = {"name": name, "priority": 0, "isInit": False, "isDaemon": True,
                   "script": {"execPath": script if mode == "script" else "",
                              "programFilePath": f"/bin/{name}",
                              "startCommand": "start" if mode == "script" else "",
                              "stopCommand": "stop" if mode == "script" else ""},
                   "healthCheck": {"isHealthCheck": False}}
            if mode == "direct":
                svc["script"]["args"] = ["--record", self.rec, "--heartbeat", "3600"]
            if check_every:
                svc["healthCheck"] = {"isHealthCheck": True, "interval": check_every, "timeout": 5, "retries": 3}
            services.append(svc)
        with open(os.path.join(self.dir, "services.json"), "w") as f:
            json.dump(services, f)

    def spare(self, i):
        """The program of the `i`th baseline sample (see `spares`)."""
        return self.spares[i % len(self.spares)]

    def starts(self):
        """{name: [(pid, ns)]} from the programs' own records."""
        out = {}
        try:
            with open(self.rec) as f:
                for line in f:
                    p = line.split()
                    if len(p) == 4 and p[0] == "start":
                        out.setdefault(p[1], []).append((int(p[2]), int(p[3])))
        except FileNotFoundError:
            pass
        return out

    def live_programs(self):
        bindir = os.path.join(self.root, "bin") + "/"
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.readlink(f"/proc/{d}/exe").startswith(bindir):
                        pids.append(int(d))
                except OSError:
                    pass
        return pids

    def cleanup(self):
        for pid in self.live_programs():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", self.dir])
        # A shutdown leaves the services' (empty) cgroups for the next start: this run's go here.
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    left, _, right = line.partition(" - ")
                    if right.split()[:1] == ["cgroup2"]:
                        base = left.split()[4] + self.cgroup_base
                        for d in os.listdir(base):
                            if os.path.isdir(os.path.join(base, d)):
                                os.rmdir(os.path.join(base, d))
                        os.rmdir(base)
                        break
        except OSError:
            pass


class RecordTail:
    """The programs' start records appended after it was made, read a little at a time."""

    def __init__(self, path):
        size = os.path.getsize(path) if os.path.exists(path) else 0
        self.path, self.offset, self.partial, self.found = path, size, b"", None

    def start_of(self, name):
        """(pid, ns) of the first new start of `name`, or None yet."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return None
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            p = line.split()
            if self.found is None and len(p) == 4 and p[0] == b"start" and p[1].decode() == name:
                self.found = (int(p[2]), int(p[3]))
        return self.found


class Nanny:
    def __init__(self, setup):
        self.s = setup
        # air-nanny says READY=1 (sd_notify) once every service of the boot is running and watched:
        # a datagram socket of the benchmark's own stands in for systemd's.
        self.notify_path = os.path.join(setup.dir, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.t_ready = None
        threading.Thread(target=self._listen, daemon=True).start()
        self.t_launch = time.time_ns()
        self.proc = subprocess.Popen([setup.nanny, "run", "--log-level", "warn", "--config",
                                      os.path.join(setup.dir, "config.yaml")],
                                     env=dict(os.environ, NOTIFY_SOCKET=self.notify_path),
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(setup.dir, "nanny.log"), "w"))

    def _listen(self):
        # Reads for as long as air-nanny runs, as systemd does (STATUS= lines follow READY=1).
        while True:
            try:
                msg = self.notify.recv(4096)
            except OSError:
                return
            if self.t_ready is None and b"READY=1" in msg.split(b"\n"):
                self.t_ready = time.time_ns()

    def ready_ms(self, timeout=120):
        """From air-nanny's exec to its READY=1."""
        wait_until("READY=1", timeout, lambda: self.t_ready, step=0.002)
        return (self.t_ready - self.t_launch) / 1e6

    def all_started(self, timeout=120):
        n = self.s.n
        try:
            starts = wait_until(f"{n} programs to start", timeout,
                                lambda: (lambda st: st if len(st) == n else None)(self.s.starts()), step=0.002)
        except SystemExit:
            with open(os.path.join(self.s.dir, "nanny.log")) as f:
                print(f.read()[-3000:], file=sys.stderr)
            print(f"started: {sorted(self.s.starts())}", file=sys.stderr)
            raise
        return (max(v[0][1] for v in starts.values()) - self.t_launch) / 1e6

    def wait_ready(self):
        def up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.s.port}/task/get", timeout=5) as r:
                    tasks = json.load(r)["data"]
                    return len(tasks) == self.s.n and all(t["State"] == 2 for t in tasks)
            except OSError:
                return False
        wait_until("every task running", 120, up, step=0.05)

    def memory(self):
        fields = {}
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            for line in f:
                p = line.split()
                if p[0] in ("Rss:", "Pss:"):
                    fields[p[0][:-1].lower()] = int(p[1])
        return fields  # KiB

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime

    def respawns(self, count, paired=False):
        """`count` kills of a running program, each timed until its new start; with `paired`
        (script mode) also the control script run by hand for a spare program at the same moments
        — before the kill for even samples, after the respawn for odd ones, so that neither side
        always meets the machine colder — as (respawns, baselines)."""
        lat, base, last_kill = [], [], {}
        for i in range(count):
            if paired and i % 2 == 0:
                base.append(script_run(self.s, self.s.spare(len(base))))
            name = self.s.names[(i * 7919) % self.s.n]
            # With fewer services than kills, a service is killed again only after a run long enough
            # (RESTART_BACKOFF_RESET) to reset its backoff: every sample is a first restart.
            if name in last_kill:
                time.sleep(max(0.0, last_kill[name] + 1.2 - time.monotonic()))
            last_kill[name] = time.monotonic()
            pid = self.s.starts()[name][-1][0]
            # Only what the programs append from now on is read while waiting: parsing the whole
            # record (N lines) every millisecond kept one of the two cores busy at N = 1000, which
            # the control script and air-nanny then had to share (script mode suffered most).
            tail = RecordTail(self.s.rec)
            t0 = time.time_ns()
            os.kill(pid, signal.SIGKILL)
            new = wait_until(f"{name} to respawn", 30, lambda: tail.start_of(name))
            lat.append((new[1] - t0) / 1e6)
            # Let air-nanny settle (the next kill is a different service: first restart, no backoff).
            wait_until("the task to be running again", 30, lambda: self.task_running(name), step=0.005)
            if paired and i % 2 == 1:
                base.append(script_run(self.s, self.s.spare(len(base))))
        return (lat, base) if paired else lat

    def task_running(self, name):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.s.port}/task/find?name={name}", timeout=5) as r:
                t = json.load(r)["data"]
                return t["State"] == 2 and t["Pids"]
        except OSError:
            return False

    def shutdown(self):
        t0 = time.monotonic_ns()
        self.proc.send_signal(signal.SIGTERM)
        # A blocking wait: Popen.wait(timeout=) polls with doubling sleeps (0.5, 1, 2 … 32 ms), which
        # rounded a 33 ms shutdown up to 64 ms. The timer only guards against a hang.
        guard = threading.Timer(120, self.proc.kill)
        guard.start()
        code = self.proc.wait()
        guard.cancel()
        left = self.s.live_programs()
        ms = (time.monotonic_ns() - t0) / 1e6
        return ms, code, len(left)


def wrk(url, seconds, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = p99 = None
    for line in out.splitlines():
        p = line.split()
        if p[:1] == ["Requests/sec:"]:
            rps = float(p[1])
        if p[:1] == ["99%"]:
            v = p[1]
            p99 = float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    return rps, p99


def script_run(setup, name):
    """The control script run by hand for program `name`: ms from its start to the program's own
    start record; then stopped, and waited for until it is gone. The record is watched while the
    script runs, as a respawn's is: the benchmark's polling then competes with the same processes
    on both sides (waiting for the script's exit first left its two cores to the script alone)."""
    env = dict(os.environ, AIR_NANNY_SERVICE=name, AIR_NANNY_PROGRAM=os.path.join(setup.root, "bin", name))
    tail = RecordTail(setup.rec)
    t0 = time.time_ns()
    script = subprocess.Popen([setup.script, "start"], env=env)
    new = wait_until(f"{name} started by hand", 10, lambda: tail.start_of(name))
    if script.wait() != 0:
        raise SystemExit(f"bench: {setup.script} start exited {script.returncode}")
    subprocess.run([setup.script, "stop"], env=env, check=True)
    wait_until(f"{name} to stop", 10, lambda: exited(new[0]))
    return (new[1] - t0) / 1e6


def exited(pid):
    """Every thread of `pid` has ended: gone, or a zombie with no other thread left. A zombie
    leader alone said nothing of its other threads, whose exits went on while the next sample ran
    (seen in a scheduler trace: the heartbeat thread of the spare program just stopped still exiting
    on one core while the next respawn's killed program waited 0.3 ms for it)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return tasks in ([], [str(pid)]) and zombie(pid)


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def script_baseline(setup, runs):
    """How long the control script itself takes to get the program running (script-mode floor),
    with nothing else running."""
    return statistics.median(script_run(setup, setup.names[0]) for _ in range(runs))


def stop_scripts_alone(setup):
    """The floor of a script-mode shutdown: every program started by its control script by hand,
    then all N stop commands run at once (as air-nanny runs them) until no program is left. The
    stops are forked by one shell loop (`cmd &`, a fork each, nothing waited for in between): the
    quickest way to have them all running, where Python's Popen took 113 ms for what the shell's
    loop takes 104 ms (N = 100)."""
    start_by_hand(setup)
    return stop_by_hand(setup)


def start_by_hand(setup):
    """Every program of `setup` started by its control script, without air-nanny."""
    for name in setup.names:
        env = dict(os.environ, AIR_NANNY_SERVICE=name, AIR_NANNY_PROGRAM=os.path.join(setup.root, "bin", name))
        subprocess.run([setup.script, "start"], env=env, check=True)
    wait_until("every program", 60, lambda: len(setup.live_programs()) >= setup.n)


def stop_by_hand(setup):
    """All N stop commands at once, forked by one shell loop, until no program is left: ms."""
    loop = f'for n in {" ".join(setup.names)}; do AIR_NANNY_SERVICE=$n "$0" stop & done; wait'
    t0 = time.monotonic_ns()
    subprocess.run(["/bin/sh", "-c", loop, setup.script], check=True)
    wait_until("every program to stop", 60, lambda: not setup.live_programs(), step=0.0005)
    return (time.monotonic_ns() - t0) / 1e6


def alternating_args(runs, n, settle):
    """The arguments every script that compares builds run by run takes; add its own, then call
    `alternate` with what `parse_args` gives."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--program", required=True)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--mode", choices=("direct", "script"), default="direct")
    ap.add_argument("--settle", type=float, default=settle)
    ap.add_argument("builds", nargs="+", help="NAME=BINARY")
    return ap


def alternate(builds, runs, one):
    """`one(binary)` for every NAME=BINARY of `builds`, build after build, `runs` times over (on a
    VM whose speed drifts within the hour only runs that alternate compare): {name: [results]}."""
    pairs = [b.split("=", 1) for b in builds]
    res = {name: [] for name, _ in pairs}
    for _ in range(runs):
        for name, binary in pairs:
            res[name].append(one(binary))
    return res


def print_pairs(res, first, second):
    """The table of `alternate`'s results whose runs are (a, b) pairs: per build, the median and
    range of a, and the median of b, under the column titles `first` and `second`."""
    print(f"| build | runs | {first}, median (range) | {second}, median |")
    print("|---|---|---|---|")
    for name, runs in res.items():
        a = sorted(r[0] for r in runs)
        print(f"| {name} | {len(runs)} | {statistics.median(a):.0f} ({a[0]:.0f}–{a[-1]:.0f}) "
              f"| {statistics.median(r[1] for r in runs):.0f} |")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nanny", required=True)
    ap.add_argument("--program", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="one run, e.g. direct:100 (for profiling)")
    a = ap.parse_args()
    q = a.quick
    sizes = [5, 20] if q else [10, 100, 1000]
    if a.only:
        sizes = [int(a.only.split(":")[1])]
    idle_s, settle_s, kills, api_s = (2, 1, 5, 2) if q else (30, 10, 20, 10)
    api_n = sizes[-1] if q else 100
    results = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model(),
                           "quick": q}, "runs": [], "api": {}, "binary_sizes": binary_sizes()}
    for mode in ("direct", "script"):
        for n in sizes:
            if a.only and a.only != f"{mode}:{n}":
                continue
            s = Setup(a.nanny, a.program, n, mode)
            try:
                nn = Nanny(s)
                bring_up = nn.all_started()
                ready = nn.ready_ms()
                nn.wait_ready()
                time.sleep(settle_s)  # the benchmark's own settling time, not a wait for a condition
                mem = nn.memory()
                c0 = nn.cpu_ticks()
                time.sleep(idle_s)
                idle = nn.cpu_ticks() - c0
                # The web console polls /task/get once a second: what does a viewer cost?
                c0 = nn.cpu_ticks()
                end = time.monotonic() + idle_s
                while time.monotonic() < end:
                    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/task/get", timeout=5) as r:
                        r.read()
                    time.sleep(1)
                console = nn.cpu_ticks() - c0
                if mode == "script":
                    lat, paired = nn.respawns(kills, paired=True)
                else:
                    lat, paired = nn.respawns(kills), None
                api = {}
                if mode == "direct" and n == api_n:
                    base = f"http://127.0.0.1:{s.port}"
                    api["find_rps"], api["find_p99_ms"] = wrk(f"{base}/task/find?name={s.names[n // 2]}", api_s, 8)
                    api["get_rps"], api["get_p99_ms"] = wrk(f"{base}/task/get", api_s, 8)
                    results["api"] = dict(api, n=n)
                shut_ms, code, left = nn.shutdown()
            finally:
                s.cleanup()
            s2 = Setup(a.nanny, a.program, n, mode, check_every=1)
            try:
                nn = Nanny(s2)
                nn.all_started()
                nn.wait_ready()
                time.sleep(settle_s)
                c0 = nn.cpu_ticks()
                time.sleep(idle_s)
                idle_checked = nn.cpu_ticks() - c0
                nn.shutdown()
            finally:
                s2.cleanup()
            run = {"mode": mode, "n": n, "bring_up_ms": round(bring_up, 2), "ready_ms": round(ready, 2),
                   "ready_over_bring_up": round(ready / bring_up, 3), "rss_kib": mem["rss"],
                   "pss_kib": mem["pss"], "idle_ticks": idle, "idle_ticks_checked_1s": idle_checked, "console_ticks": console,
                   "idle_seconds": idle_s, "respawn_median_ms": round(statistics.median(lat), 3),
                   "respawn_p90_ms": round(pct(lat, 0.9), 3), "respawn_samples": len(lat),
                   "shutdown_ms": round(shut_ms, 2), "shutdown_exit": code, "left_after_shutdown": left}
            if paired:
                run["script_alone_paired_ms"] = round(statistics.median(paired), 3)
            if mode == "script":
                s3 = Setup(a.nanny, a.program, 1, mode)
                try:
                    run["script_alone_ms"] = round(script_baseline(s3, 3 if q else 10), 3)
                finally:
                    s3.cleanup()
                s4 = Setup(a.nanny, a.program, n, mode)
                try:
                    run["stop_scripts_alone_ms"] = round(stop_scripts_alone(s4), 2)
                finally:
                    s4.cleanup()
            results["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
    direct = {r["n"]: r for r in results["runs"] if r["mode"] == "direct"}
    if len(direct) >= 2:
        lo, hi = min(direct), max(direct)
        results["pss_per_service_kib"] = round((direct[hi]["pss_kib"] - direct[lo]["pss_kib"]) / (hi - lo), 2)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = table(results)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    bad = [r for r in results["runs"] if r["shutdown_exit"] != 0 or r["left_after_shutdown"]]
    if bad:
        raise SystemExit(f"bench: a shutdown failed or left programs running: {bad}")
    print(f"{len(results['runs'])} passed, 0 failed")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def binary_sizes():
    out = {}
    for t in ("aarch64-unknown-linux-musl", "armv7-unknown-linux-gnueabihf", "x86_64-unknown-linux-musl"):
        p = f"target/{t}/release/air-nanny"
        if os.path.exists(p):
            out[t] = os.path.getsize(p)
    return out


def alone(x):
    if "script_alone_ms" not in x:
        return "-"
    if "script_alone_paired_ms" not in x:
        return str(x["script_alone_ms"])
    return f"{x['script_alone_ms']} ({x['script_alone_paired_ms']})"


def table(r):
    m = r["machine"]
    lines = [f"Machine: {m['cpus']} cores, {m['cpu']}, Linux {m['kernel']}{' (quick run)' if m['quick'] else ''}", "",
             "| mode | N | bring-up ms | READY ms (× bring-up) | PSS KiB | RSS KiB | idle ticks (no checks) | idle ticks (check/1 s each) "
             "| console polling ticks | respawn median ms | respawn p90 ms | script alone ms (at the respawns' moments) | shutdown ms | N stop scripts alone ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        lines.append(f"| {x['mode']} | {x['n']} | {x['bring_up_ms']} | {x['ready_ms']} ({x['ready_over_bring_up']}) | {x['pss_kib']} | {x['rss_kib']} | "
                     f"{x['idle_ticks']} in {x['idle_seconds']} s | {x['idle_ticks_checked_1s']} in {x['idle_seconds']} s | "
                     f"{x['console_ticks']} in {x['idle_seconds']} s | "
                     f"{x['respawn_median_ms']} | {x['respawn_p90_ms']} | {alone(x)} | {x['shutdown_ms']} | {x.get('stop_scripts_alone_ms', '-')} |")
    if "pss_per_service_kib" in r:
        lines += ["", f"PSS per extra service (direct): {r['pss_per_service_kib']} KiB"]
    if r["api"]:
        a = r["api"]
        lines += ["", f"API at N = {a['n']} (wrk -t1 -c8): `/task/find` {a['find_rps']:.0f} req/s, p99 {a['find_p99_ms']} ms; "
                  f"`/task/get` {a['get_rps']:.0f} req/s, p99 {a['get_p99_ms']} ms"]
    if r["binary_sizes"]:
        lines += ["", "Binary sizes: " + ", ".join(f"{t} {s / 1e6:.2f} MB" for t, s in r["binary_sizes"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
