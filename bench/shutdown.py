#!/usr/bin/env python3
"""Shutdowns of several air-nanny builds, one after another, over and over: on a VM whose speed
drifts within the hour only runs that alternate compare. Each run boots N services (bench.py's
setup), lets them settle, sends SIGTERM and times it until air-nanny has exited with every program
gone; it also reads the machine's busy CPU time over the shutdown (/proc/stat: user, nice, system,
irq, softirq), since with a thousand programs ending at once both cores are busy and what
air-nanny spends is taken from the programs' exits.

    python3 bench/shutdown.py --program target/x86_64-unknown-linux-musl/release/demo-service \\
        --runs 7 --n 1000 --mode direct NAME=BINARY ...

In script mode, `--floor` adds the same N stop commands run by a shell loop without air-nanny
(bench.stop_scripts_alone) to the alternation, and `--stop read` gives the control script a stop
command that reads the pid file with the shell's `read` instead of a `cat` (bench.STOPS).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def busy_ms():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) * 1000 // os.sysconf("SC_CLK_TCK")


def one(binary, program, n, mode, settle, extra, stop):
    if binary is None:
        s = bench.Setup(program, program, n, mode, stop=stop)
        try:
            bench.start_by_hand(s)
            b0 = busy_ms()
            ms = bench.stop_by_hand(s)
            return ms, busy_ms() - b0
        finally:
            s.cleanup()
    s = bench.Setup(binary, program, n, mode, stop=stop)
    if extra:
        with open(os.path.join(s.dir, "config.yaml"), "a") as f:
            f.write("".join(line + "\n" for line in extra))
    try:
        nn = bench.Nanny(s)
        nn.all_started()
        nn.wait_ready()
        time.sleep(settle)  # the benchmark's own settling time, not a wait for a condition
        b0 = busy_ms()
        ms, code, left = nn.shutdown()
        busy = busy_ms() - b0
    finally:
        s.cleanup()
    if code != 0 or left:
        raise SystemExit(f"shutdown: {binary} exited {code} with {left} programs left")
    return ms, busy


def main():
    ap = bench.alternating_args(7, 1000, 4.0)
    ap.add_argument("--config", action="append", default=[], metavar="LINE",
                    help="a line added to config.yaml, e.g. 'CGROUPS: off' for the fallback mode")
    ap.add_argument("--stop", choices=sorted(bench.STOPS), default="cat",
                    help="the control script's stop command (script mode; default: the reference cat)")
    ap.add_argument("--floor", action="store_true",
                    help="also time the N stop commands alone, run by a shell loop (script mode)")
    a = ap.parse_args()
    if a.floor and a.mode != "script":
        ap.error("--floor is script mode's: direct mode has no stop commands")
    builds = a.builds + (["floor="] if a.floor else [])
    res = bench.alternate(builds, a.runs,
                          lambda b: one(b or None, a.program, a.n, a.mode, a.settle, a.config, a.stop))
    bench.print_pairs(res, "shutdown ms", "busy CPU ms over it")

if __name__ == "__main__":
    main()
