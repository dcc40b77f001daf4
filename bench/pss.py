#!/usr/bin/env python3
"""What several air-nanny builds keep resident, one after another, over and over: each run boots N
services (bench.py's setup), waits `--settle` seconds after READY (air-nanny gives back its clean
code pages at READY and 3 s later, so what is resident then is what the idle steady state brought
back), and reads /proc/PID/smaps: PSS in all, and of it the binary's own pages.

    python3 bench/pss.py --program target/x86_64-unknown-linux-musl/release/demo-service \\
        --runs 3 --n 10 --mode direct NAME=BINARY ...
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def one(binary, program, n, mode, settle):
    s = bench.Setup(binary, program, n, mode)
    try:
        nn = bench.Nanny(s)
        nn.all_started()
        nn.wait_ready()
        time.sleep(settle)  # the benchmark's own settling time, not a wait for a condition
        total, own, current = 0, 0, None
        real = os.path.realpath(binary)
        with open(f"/proc/{nn.proc.pid}/smaps") as f:
            for line in f:
                p = line.split()
                if not p[0].endswith(":"):
                    current = p[5] if len(p) > 5 else None
                elif p[0] == "Pss:":
                    total += int(p[1])
                    if current == real:
                        own += int(p[1])
        nn.shutdown()
    finally:
        s.cleanup()
    return total, own


def main():
    ap = bench.alternating_args(3, 10, 10.0)
    a = ap.parse_args()
    res = bench.alternate(a.builds, a.runs, lambda b: one(b, a.program, a.n, a.mode, a.settle))
    bench.print_pairs(res, "PSS KiB", "of it the binary's own pages, KiB")

if __name__ == "__main__":
    main()
