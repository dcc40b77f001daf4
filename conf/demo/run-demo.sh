#!/bin/sh
# Builds air-nanny and the demo program, installs one copy of the program per demo service under the
# demo rootpath (target/demo/root/bin), and runs air-nanny on conf/config.yaml. Ctrl-C stops it all.
set -eu
cd "$(dirname "$0")/../.."
cargo build --bins
mkdir -p target/demo/root/bin target/demo/logs
for name in timesync sensor-bus recorder telemetry preflight; do
    # Copy to a temp name, then rename: replacing a running program's file in place would fail.
    cp target/debug/demo-service "target/demo/root/bin/.$name.new"
    mv "target/demo/root/bin/.$name.new" "target/demo/root/bin/$name"
done
target/debug/air-nanny check --config conf/config.yaml
echo "console: http://127.0.0.1:8090/   API: http://127.0.0.1:8090/task/get   logs: target/demo/logs/   stop: Ctrl-C"
exec target/debug/air-nanny run --config conf/config.yaml "$@"
