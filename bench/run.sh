#!/usr/bin/env bash
# Benchmarks of air-nanny: memory, idle CPU, bring-up, respawn latency, orderly shutdown, API speed
# and binary sizes, at N = 10, 100 and 1000 services, in direct and script mode.
#   bench/run.sh            the full run (about 10 minutes on 2 cores)
#   bench/run.sh --quick    small N, few repetitions: proves the benchmark works (CI); no timing asserted
# Results: bench/results/results.md and results.json, and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for p in wrk python3 file; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target add x86_64-unknown-linux-musl >/dev/null
# What ships: the static musl release build. The supervised program: the tiny demo-service, static too (no dynamic loader in its start time).
packaging/hot/link.sh x86_64-unknown-linux-musl
cargo build --release --locked --bin demo-service --target x86_64-unknown-linux-musl
exec python3 bench/bench.py \
    --nanny target/x86_64-unknown-linux-musl/release/air-nanny \
    --program target/x86_64-unknown-linux-musl/release/demo-service \
    --out bench/results "$@"
