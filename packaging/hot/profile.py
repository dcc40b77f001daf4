#!/usr/bin/env python3
"""Which of air-nanny's functions its steady state runs: the input of the hot-code ordering.

Runs an unstripped release build under valgrind's callgrind on a small system (direct and
script-mode services, health checks of each kind), lets it boot, then plays the steady state: idle
time (timers, the log sweep), health checks, API reads as a console and a monitoring scraper make
them, an operator's restart and stop/start, and a program killed and respawned. Writes the names of
the functions that ran then, without their hashes, one per line, sorted (packaging/hot/symbols.txt).

    packaging/hot/profile.py UNSTRIPPED-AIR-NANNY DEMO-SERVICE OUT.txt

packaging/hot/update.sh builds what this needs and calls it.
"""
import json, os, re, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from order import key_of  # noqa: E402

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
proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={cg}.%p",
                         "--trace-children=no", nanny, "run", "--log-level", "warn", "--config",
                         os.path.join(d, "config.yaml")],
                        env=dict(os.environ, NOTIFY_SOCKET=notify_path),
                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "valgrind.log"), "w"))
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
    control("--dump=boot")  # what the boot ran goes into its own dump; the steady state starts at zero
    time.sleep(12)  # timers, checks of every kind, the log sweep (every 10 s)
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
    control("--dump=steady")
finally:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()

steady = [f for f in os.listdir(d) if f.startswith("cg.") and "steady" in open(os.path.join(d, f)).read(4096)]
if not steady:
    sys.exit(f"profile: no steady-state dump in {d}")
hot = set()
name_of = {}
for line in open(os.path.join(d, steady[0])):
    m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if not m:
        continue
    ident, name = m.groups()
    if name:
        name_of[ident] = name
    if line.startswith("fn="):
        hot.add(name_of.get(ident, ""))
names = sorted(set(key_of(h for h in hot if h and not h.startswith("0x"))))
with open(out, "w") as f:
    f.write("".join(n + "\n" for n in names))
print(f"profile: {len(names)} functions ran in the steady state -> {out}")
subprocess.run(["rm", "-rf", d])
