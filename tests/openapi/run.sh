#!/usr/bin/env bash
# The OpenAPI document against the live binary: schemathesis (PyPI) generates requests from
# /openapi.json (valid ones and invalid ones) for every operation and fails on any answer the
# document does not describe (status, content type, headers, body schema) and on any 5xx.
# Run twice: without a token (no security declared) and with one (bearer security declared).
# Each run is a private air-nanny: an ephemeral port, its own temp directory and cgroup base.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
venv="$repo/target/schemathesis-venv"
if [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
cargo build --locked --bins --quiet
examples="${SCHEMATHESIS_EXAMPLES:-25}"

run_one() {
    local mode="$1" dir port pid rc=0
    dir="$(mktemp -d /tmp/air-nanny-openapi.XXXXXX)"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    mkdir -p "$dir/root/bin"
    cp target/debug/demo-service "$dir/root/bin/telemetry"
    cp target/debug/demo-service "$dir/root/bin/recorder"
    cat >"$dir/run.sh" <<'EOF'
#!/bin/sh
# a seed-style control script: start daemonises the program, stop ends it
case "$1" in
  start) "$(dirname "$0")/root/bin/recorder" --heartbeat 30 & ;;
  stop) pkill -f "$(dirname "$0")/root/bin/recorder" || true ;;
esac
EOF
    chmod +x "$dir/run.sh"
    echo "rootpath: $dir/root" >"$dir/public.yaml"
    cat >"$dir/services.json" <<EOF
[
  {"name": "telemetry", "priority": 1, "script": {"programFilePath": "/bin/telemetry", "args": ["--heartbeat", "30"]},
   "healthCheck": {"isHealthCheck": true, "interval": 5, "timeout": 2, "retries": 3, "test": ["CMD-SHELL", "echo checked"]}},
  {"name": "recorder", "priority": 2, "script": {"execPath": "run.sh", "programFilePath": "/bin/recorder"}}
]
EOF
    # API_TIMEOUT 3: a long-poll (?wait=) answers within 2 s, so generated waits stay short.
    cat >"$dir/config.yaml" <<EOF
SERVER: openapi-$mode
PUBLIC_CONF: public.yaml
SERVER_PORT: $port
STOP_TIMEOUT: 5
API_TIMEOUT: 3
WORK_DIR: .
CGROUP_BASE: /air-nanny-test/openapi-$$-$mode
EOF
    local auth=()
    if [ "$mode" = token ]; then
        echo "openapi-test-token-0123456789" >"$dir/token"
        echo "API_TOKEN_FILE: token" >>"$dir/config.yaml"
        auth=(-H "Authorization: Bearer openapi-test-token-0123456789")
    fi
    target/debug/air-nanny run --config "$dir/config.yaml" 2>"$dir/nanny.log" &
    pid=$!
    local up=""
    for _ in $(seq 200); do
        if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then up=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$up" ]; then
        echo "air-nanny did not come up:" >&2
        cat "$dir/nanny.log" >&2
        kill "$pid" 2>/dev/null || true
        return 1
    fi
    echo "== schemathesis ($mode): $examples examples per operation against http://127.0.0.1:$port"
    "$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" "${auth[@]}" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method \
        --phases examples,coverage,fuzzing --max-examples "$examples" --seed 20261204 \
        --workers 1 --request-timeout 10 --no-color --warnings off \
        --generation-database none --report junit --report-dir "$repo/target/schemathesis-$mode" || rc=$?
    kill -TERM "$pid"
    local exit_rc=0
    wait "$pid" || exit_rc=$?
    if [ "$rc" -ne 0 ] || [ "$exit_rc" -gt 1 ]; then
        echo "--- air-nanny's log ($mode), exit $exit_rc" >&2
        tail -n 60 "$dir/nanny.log" >&2
    fi
    rm -rf "$dir"
    # A shutdown leaves the services' empty cgroups for the next start: this run's are removed here.
    local cg
    cg="$(awk '{for (i = 1; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break }}' /proc/self/mountinfo)"
    if [ -n "$cg" ] && [ -d "$cg/air-nanny-test/openapi-$$-$mode" ]; then
        rmdir "$cg/air-nanny-test/openapi-$$-$mode"/svc-* "$cg/air-nanny-test/openapi-$$-$mode" 2>/dev/null || true
    fi
    [ "$rc" -eq 0 ] || return "$rc"
    # air-nanny exits 1 when a stop needed force; anything else is a failure.
    [ "$exit_rc" -le 1 ] || return 1
}

run_one open
run_one token
echo "schemathesis: the API matches its OpenAPI document, with and without a token"
