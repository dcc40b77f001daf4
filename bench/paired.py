#!/usr/bin/env python3
"""Script-mode respawn against the control script's own time, for several air-nanny builds run by
run in turn (on a VM whose speed drifts within the hour only runs that alternate compare). Each run
boots N services in script mode (bench.py's setup), lets them settle, kills a program `--kills`
times and runs the control script by hand for a spare program at the same moments (bench.py's
paired baseline); a run's figure is median(respawn) − median(script alone), the overhead the
ownership issue bounds at 1 ms.

    python3 bench/paired.py --program target/x86_64-unknown-linux-musl/release/demo-service \\
        --n 1000 --runs 3 NAME=BINARY ...
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def one(binary, program, n, settle, kills):
    s = bench.Setup(binary, program, n, "script")
    try:
        nn = bench.Nanny(s)
        nn.all_started()
        nn.wait_ready()
        time.sleep(settle)  # the benchmark's own settling time, not a wait for a condition
        lat, alone = nn.respawns(kills, paired=True)
        ms, code, left = nn.shutdown()
    finally:
        s.cleanup()
    if code != 0 or left:
        raise SystemExit(f"paired: {binary} exited {code} with {left} programs left")
    return statistics.median(lat), statistics.median(alone)


def main():
    ap = bench.alternating_args(3, 1000, 3.0)
    ap.add_argument("--kills", type=int, default=20)
    a = ap.parse_args()
    res = bench.alternate(a.builds, a.runs, lambda b: one(b, a.program, a.n, a.settle, a.kills))
    print("| build | runs | respawn − script alone, median ms (per run) | respawn median ms | script alone median ms |")
    print("|---|---|---|---|---|")
    for name, runs in res.items():
        diffs = [r - b for r, b in runs]
        print(f"| {name} | {len(runs)} | {statistics.median(diffs):+.2f} ({', '.join(f'{d:+.2f}' for d in diffs)}) "
              f"| {statistics.median(r for r, _ in runs):.2f} | {statistics.median(b for _, b in runs):.2f} |")


if __name__ == "__main__":
    main()
