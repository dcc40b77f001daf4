#!/usr/bin/env python3
"""Bring-up, respawn and shutdown of several air-nanny builds, run by run in turn: on a VM whose
speed drifts within the hour only runs that alternate compare. Each run boots N services with
bench.py's setup, times the bring-up (air-nanny's exec to the last program's start record), lets
it settle, kills a program 20 times (median respawn: the kill to the new program's start record),
and times the shutdown after a pause (SIGTERM to air-nanny's exit with every program gone;
`--pause 0` is bench.py's shutdown, right after the last respawn).

    python3 bench/alternate.py --program target/x86_64-unknown-linux-musl/release/demo-service \\
        --n 100 --mode direct --runs 5 NAME=BINARY ...
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def one(binary, program, n, mode, settle, kills, pause):
    s = bench.Setup(binary, program, n, mode)
    try:
        nn = bench.Nanny(s)
        up = nn.all_started()
        nn.wait_ready()
        time.sleep(settle)  # the benchmark's own settling time, not a wait for a condition
        respawn = statistics.median(nn.respawns(kills))
        time.sleep(pause)  # 0: the shutdown right after the last respawn, as bench.py's
        ms, code, left = nn.shutdown()
    finally:
        s.cleanup()
    if code != 0 or left:
        raise SystemExit(f"alternate: {binary} exited {code} with {left} programs left")
    return up, respawn, ms


def main():
    ap = bench.alternating_args(5, 100, 3.0)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between the last respawn and SIGTERM")
    a = ap.parse_args()
    res = bench.alternate(a.builds, a.runs, lambda b: one(b, a.program, a.n, a.mode, a.settle, a.kills, a.pause))
    fmt = lambda xs, d: f"{statistics.median(xs):.{d}f} ({min(xs):.{d}f}–{max(xs):.{d}f})"  # noqa: E731
    print("| mode | N | build | runs | bring-up ms | respawn median ms | shutdown ms |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in res.items():
        up, resp, shut = zip(*runs)
        print(f"| {a.mode} | {a.n} | {name} | {len(runs)} | {fmt(up, 1)} | {fmt(resp, 2)} | {fmt(shut, 1)} |")


if __name__ == "__main__":
    main()
