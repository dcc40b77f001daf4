#!/usr/bin/env bash
# Browser tests of the web console: Debian's headless Chromium driven by playwright-core (npm),
# against the real air-nanny on a copy of the demo configuration. Screenshots: target/ui-artifacts/.
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
cd tests/ui && node --test --test-concurrency=1 console.test.mjs
