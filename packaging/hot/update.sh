#!/usr/bin/env bash
# Re-measures which functions air-nanny's steady state runs and rewrites packaging/hot/symbols.txt,
# the input of the hot-code order (packaging/hot/link.sh). Run it after changes to the runtime's
# paths (the service task, the API, the reaper, health checks), then look at the PSS column of
# bench/run.sh. Needs valgrind and gdb (apt) and root (cgroups), about 8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
target=x86_64-unknown-linux-musl
# Symbols kept (strip=false); the same code and symbol names as the shipped build.
CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --locked --bin air-nanny --target "$target" --target-dir target/hot-profile
cargo build --release --locked --bin demo-service --target "$target"
python3 packaging/hot/profile.py "target/hot-profile/$target/release/air-nanny" \
    "target/$target/release/demo-service" packaging/hot/symbols.txt
# What runs natively but not under valgrind (its own memcpy and memset, timing-dependent paths):
# the shipped link, then gdb's breakpoints on every function of its link map.
command -v gdb >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdb >/dev/null; }
packaging/hot/link.sh "$target"
python3 packaging/hot/profile.py --native "target/hot/$target.map" "target/$target/release/air-nanny" \
    "target/$target/release/demo-service" packaging/hot/symbols.txt
