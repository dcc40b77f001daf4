#!/usr/bin/env python3
"""Which of air-nanny's functions its steady state runs: the input of the hot-code ordering.

Runs an unstripped release build under valgrind's callgrind on a small system (direct and
script-mode services, health checks of each kind), lets it boot, then plays the steady state: idle
time (timers, the log sweep, health checks), then API reads as a console and a monitoring scraper
make them, an operator's restart and stop/start, and a program killed and respawned. Writes the
names of the functions that ran then, without their hashes, one per line (packaging/hot/symbols.txt):
first, sorted, those of the idle time, then a line `--- REST`, then the others, sorted. The idle
ones are placed first and together, so that an idle air-nanny touches few 64 KiB windows of its
code (the kernel brings a file's pages in by whole windows: fault-around).

    packaging/hot/profile.py UNSTRIPPED-AIR-NANNY DEMO-SERVICE OUT.txt
    packaging/hot/profile.py --native LINK.map AIR-NANNY DEMO-SERVICE OUT.txt

The second form runs the binary natively and learns the same from gdb: a breakpoint on every
function of the link map's .text, each recorded and disabled at its first hit. It finds what runs
natively but not under valgrind (timing-dependent paths, clone3), and adds to OUT.txt. Both
forms play the same steady state. packaging/hot/update.sh builds what this needs and calls both.
"""
import bisect, json, os, re, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from order import REST, key_of, read_tiers  # noqa: E402

native_map = None
if sys.argv[1] == "--native":
    native_map = sys.argv.pop(2)
    sys.argv.pop(1)
nanny, program, out = sys.argv[1], sys.argv[2], sys.argv[3]
d = tempfile.mkdtemp(prefix="air-nanny-hot-")
root = os.path.join(d, "root")
os.makedirs(os.path.join(root, "bin"))
names = ["plain", "shellcheck", "alive", "web", "cmdcheck", "chatty", "script1", "script2"]
for n in names:
    os.link(program, os.path.join(root, "bin", n))
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
s = socket.socket(); s.bind(("127.0.0.1", 0)); web_port = s.getsockname()[1]; s.close()
open(os.path.join(d, "public.yaml"), "w").write(f"rootpath: {root}\n")
open(os.path.join(d, "config.yaml"), "w").write(
    f"SERVER: hot\nPUBLIC_CONF: public.yaml\nSERVER_PORT: {port}\nSTOP_TIMEOUT: 20\nLOG_DIR: logs\n"
    f"CGROUP_BASE: /air-nanny-hot/{os.getpid()}\nAPI_TIMEOUT: 120\nSTART_TIMEOUT: 120\n")
script = os.path.join(d, "ctl.sh")
open(script, "w").write(f"""#!/bin/sh
pidf={d}/$AIR_NANNY_SERVICE.pid
case "$1" in
start) "$AIR_NANNY_PROGRAM" --heartbeat 1 & echo $! > "$pidf" ;;
stop) kill "$(cat "$pidf")" ;;
esac
""")
os.chmod(script, 0o755)
def direct(name, args, check=None):
    svc = {"name": name, "priority": 0, "script": {"programFilePath": f"/bin/{name}", "args": args}}
    if check is not None:
        svc["healthCheck"] = dict({"isHealthCheck": True, "interval": 1, "timeout": 10, "retries": 3}, **check)
    return svc
services = [
    direct("plain", ["--heartbeat", "1"]),
    direct("shellcheck", ["--heartbeat", "1"], {"test": ["CMD-SHELL", "echo ok"]}),
    direct("alive", ["--heartbeat", "1"], {}),
    direct("web", ["--listen", f"127.0.0.1:{web_port}"], {"test": ["HTTP", f"http://127.0.0.1:{web_port}/"]}),
    direct("cmdcheck", ["--heartbeat", "1"], {"test": ["CMD", "/bin/true"]}),
    direct("chatty", ["--heartbeat-ms", "50"]),
]
for n in ("script1", "script2"):
    services.append({"name": n, "priority": 1, "script": {"execPath": script, "programFilePath": f"/bin/{n}"}})
json.dump(services, open(os.path.join(d, "services.json"), "w"))

notify_path = os.path.join(d, "notify.sock")
ready = threading.Event()
ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ns.bind(notify_path)
def listen():
    while True:
        try:
            if b"READY=1" in ns.recv(4096).split(b"\n"):
                ready.set()
        except OSError:
            return
threading.Thread(target=listen, daemon=True).start()
cg = os.path.join(d, "cg")
runner = [] if native_map else ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={cg}.%p",
                                "--trace-children=no"]
proc = subprocess.Popen(runner + [nanny, "run", "--log-level", "warn", "--config", os.path.join(d, "config.yaml")],
                        env=dict(os.environ, NOTIFY_SOCKET=notify_path),
                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "valgrind.log"), "w"))


def text_functions(link_map):
    """(address, symbol) of every function in the .text output section of an lld link map."""
    section, out = None, []
    for line in open(link_map, errors="replace"):
        p = line.split()
        if len(p) != 5:
            continue
        try:
            addr, size = int(p[0], 16), int(p[2], 16)
        except ValueError:
            continue
        if p[4].startswith(".") and ":(" not in p[4]:
            section = p[4]
        elif section == ".text" and not p[4].startswith(("/", "<")) and ":(" not in p[4]:
            out.append((addr, p[4]))
    return out


GDB_SCRIPT = """
import gdb
hits = []
class Once(gdb.Breakpoint):
    def stop(self):
        hits.append(self.location[1:])
        self.enabled = False
        return False
gdb.execute("set pagination off")
gdb.execute("set detach-on-fork on")
gdb.execute("set follow-fork-mode parent")
for line in open(ADDRS):
    Once("*" + line.strip(), internal=True)
# The functions on the stacks right now (the runtime's loop, the wait in epoll) are never entered
# again, so no breakpoint names them: their return addresses do.
frames = []
for thread in gdb.selected_inferior().threads():
    thread.switch()
    f = gdb.newest_frame()
    while f is not None:
        frames.append(hex(f.pc()))
        f = f.older()
open(HITS + ".frames", "w").write("\\n".join(frames) + "\\n")
open(ADDRS + ".armed", "w").close()
try:
    gdb.execute("continue")
except BaseException:
    pass
open(HITS, "w").write("\\n".join(hits) + "\\n")
gdb.execute("detach")
"""


class Native:
    """gdb attached after the boot, a breakpoint on every function, each recorded at its first hit."""

    def __init__(self):
        base = next(int(line.split("-")[0], 16) for line in open(f"/proc/{proc.pid}/maps")
                    if line.split()[2] == "00000000" and line.rstrip().endswith(os.path.realpath(nanny)))
        self.names = {}
        with open(os.path.join(d, "addrs"), "w") as f:
            for addr, name in text_functions(native_map):
                self.names[base + addr] = name
                f.write(f"{base + addr:#x}\n")
        script = os.path.join(d, "hits.py")
        open(script, "w").write(GDB_SCRIPT.replace("ADDRS", repr(os.path.join(d, "addrs")))
                                .replace("HITS", repr(os.path.join(d, "hits"))))
        self.gdb = subprocess.Popen(["gdb", "-q", "-batch", "-p", str(proc.pid), "-x", script],
                                    stdout=open(os.path.join(d, "gdb.log"), "w"), stderr=subprocess.STDOUT)

    def armed(self):
        return os.path.exists(os.path.join(d, "addrs.armed"))

    def finish(self):
        self.gdb.send_signal(signal.SIGINT)
        self.gdb.wait(timeout=120)
        hits = {self.names.get(int(h, 16), "") for h in open(os.path.join(d, "hits")).read().split()}
        # A return address lies inside its function: the nearest function start at or below it.
        starts = sorted(self.names)
        for pc in open(os.path.join(d, "hits.frames")).read().split():
            i = bisect.bisect_right(starts, int(pc, 16)) - 1
            if i >= 0:
                hits.add(self.names[starts[i]])
        return hits
def get(path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()
def control(arg):
    subprocess.run(["callgrind_control", arg, str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
def task(name):
    return json.loads(get(f"/task/find?name={name}"))["data"]
def wait(what, f, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = f()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"profile: timed out waiting for {what}; see {d}/valgrind.log")
try:
    wait("READY=1", ready.is_set)
    if native_map:
        time.sleep(2)
        native = Native()
        wait("gdb's breakpoints", native.armed)
        time.sleep(2)
    else:
        control("--dump=boot")  # what the boot ran goes into its own dump; the steady state starts at zero
    time.sleep(12)  # timers, checks of every kind, the log sweep (every 10 s)
    if not native_map:
        control("--dump=idle")  # what runs while nobody asks anything: placed first, together
    for _ in range(3):
        get("/task/get"); get("/task/get?since=0&wait=1"); get("/task/find?name=web")
        get("/health"); get("/metrics"); get("/task/events?name=plain&limit=20")
        get("/task/logs?name=chatty&lines=20")
        offset = json.loads(get("/task/logs?name=chatty&lines=1"))["data"]["offset"]
        get(f"/task/logs?name=chatty&after={offset}&wait=1")
        get("/serviceInfo/get"); get("/task/order")
    for name in ("plain", "script1"):
        pid = wait(f"{name} running", lambda: task(name)["State"] == 2 and task(name)["Pids"])[0]
        os.kill(pid, signal.SIGKILL)
        wait(f"{name} respawned", lambda: task(name)["State"] == 2 and task(name)["Pids"] and task(name)["Pids"][0] != pid)
    get("/task/restart?name=alive", "POST")
    get("/task/stop?name=script2", "POST"); get("/task/start?name=script2", "POST")
    wait("everything running", lambda: all(t["State"] == 2 for t in json.loads(get("/task/get"))["data"]))
    time.sleep(3)
    if native_map:
        hot = native.finish()
    else:
        control("--dump=steady")
finally:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
    # A shutdown leaves the services' empty cgroups for the next start: this run's are removed.
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        if right.startswith("cgroup2 "):
            base = left.split()[4] + f"/air-nanny-hot/{os.getpid()}"
            for e in (os.listdir(base) if os.path.isdir(base) else []):
                try:
                    os.rmdir(os.path.join(base, e))
                except OSError:
                    pass
            try:
                os.rmdir(base)
            except OSError:
                pass
            break

def dump(label):
    """The names of the functions that ran in callgrind's dump `label`."""
    for f in os.listdir(d):
        if not f.startswith("cg."):
            continue
        with open(os.path.join(d, f)) as fh:
            head = fh.read(4096)
        if not any(line.startswith("desc: Trigger:") and line.rstrip().endswith(label) for line in head.splitlines()):
            continue
        ran, name_of = set(), {}
        for line in open(os.path.join(d, f)):
            m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if not m:
                continue
            ident, name = m.groups()
            if name:
                name_of[ident] = name
            if line.startswith("fn="):
                ran.add(name_of.get(ident, ""))
        return set(key_of(h for h in ran if h and not h.startswith("0x")))
    sys.exit(f"profile: no {label} dump in {d}")


if native_map:
    idle, rest = read_tiers(out) if os.path.exists(out) else (set(), set())
    new = set(key_of(h for h in hot if h)) - idle - rest
    print(f"profile: {len(new)} functions found natively that the list lacked")
    # Mostly what valgrind runs in place of the program's own (memcpy, memset): used everywhere.
    idle |= new
else:
    idle = dump("idle")
    rest = dump("steady") - idle
with open(out, "w") as f:
    f.write("".join(n + "\n" for n in sorted(idle)))
    f.write(REST + "\n")
    f.write("".join(n + "\n" for n in sorted(rest - idle)))
names = idle | rest
print(f"profile: {len(names)} functions ran in the steady state ({len(idle)} of them while idle) -> {out}")
subprocess.run(["rm", "-rf", d])
