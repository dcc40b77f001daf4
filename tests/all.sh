#!/usr/bin/env bash
# The whole test suite: installs what it needs (on a fresh Debian/Ubuntu machine), then checks
# formatting and lints, and runs every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v ps >/dev/null || need_apt+=(procps)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Prometheus' own text parser, for the /metrics test (tests/metrics/check.py).
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'prometheus-client==0.21.1'
    else
        apt-get update -qq && apt-get install -y -qq python3-prometheus-client
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
echo "== fuzz targets, 20 s each (tests/fuzz; stable Rust)"
FUZZ_SECONDS=20 cargo test --locked --test fuzz -- --test-threads 2
echo "== OpenAPI document against the live binary (schemathesis; tests/openapi/run.sh)"
tests/openapi/run.sh
echo "== packaging tools (packaging/setup.sh: the only step that installs; building needs no root)"
packaging/setup.sh
echo "== appliance: static builds, packages, lintian --pedantic, upgrades, offline roots, qemu smoke tests"
packaging/test.sh
echo "== benchmark smoke run (bench/run.sh --quick; no timing is asserted)"
bench/run.sh --quick
echo "== web console in headless Chromium"
tests/ui/run.sh
