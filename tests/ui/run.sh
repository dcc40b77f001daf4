#!/usr/bin/env bash
# Browser tests of the web console: Debian's headless Chromium driven by playwright-core (npm),
# against the real air-nanny on a copy of the demo configuration. Screenshots: target/ui-artifacts/.
# The demo's ports (8090 for the API, 18081 for sensor-bus) are held by a stand-in for the whole
# run: the tests must pass while the demo runs, so they may use none of its ports or files.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
(cd tests/ui && npm ci --no-audit --no-fund --silent)
cargo build --locked --bins
export AIR_NANNY="$PWD/target/debug/air-nanny" DEMO="$PWD/target/debug/demo-service"
export ARTIFACTS="$PWD/target/ui-artifacts"
ready="$(mktemp -u)"
python3 -c '
import socket, sys, time
held = []
for port in (8090, 18081):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen(8)
        held.append(s)
    except OSError:
        pass  # taken already (a running demo, say): the same condition for the tests
open(sys.argv[1], "w").close()
time.sleep(3600)
' "$ready" &
holder=$!
trap 'kill $holder 2>/dev/null || true; rm -f "$ready"' EXIT
for _ in $(seq 100); do [ -e "$ready" ] && break; sleep 0.1; done
[ -e "$ready" ] || { echo "could not hold the demo ports" >&2; exit 1; }
echo "ports 8090 and 18081 (the demo's) are taken during the console tests"
cd tests/ui && node --test --test-concurrency=1 console.test.mjs
