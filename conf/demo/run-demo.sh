#!/bin/sh
# Builds air-nanny and the demo program and runs air-nanny on a copy of the demo configuration in
# target/demo/ (tracked files are never rewritten: what the API changes lands in the copy).
#   target/demo/conf/   config.yaml and public.yaml (made anew each run), the control scripts, and
#                       services.json (copied from conf/ once; delete it to start over)
#   target/demo/root/   the rootpath: one copy of the demo program per service
#   target/demo/logs/   service logs; target/demo/state.json: operator decisions
# Ctrl-C stops it all.
set -eu
cd "$(dirname "$0")/../.."
cargo build --bins
demo="$(pwd)/target/demo"
mkdir -p "$demo/root/bin" "$demo/logs" "$demo/conf"
for name in timesync sensor-bus recorder telemetry preflight; do
    # Copy to a temp name, then rename: replacing a running program's file in place would fail.
    cp target/debug/demo-service "$demo/root/bin/.$name.new"
    mv "$demo/root/bin/.$name.new" "$demo/root/bin/$name"
done
rm -rf "$demo/conf/demo"
cp -R conf/demo "$demo/conf/demo"
# The tracked config with its paths pointed at the copy (relative paths resolve against the
# config file's directory, which is now target/demo/conf).
sed -e "s|^LOG_DIR:.*|LOG_DIR: \"$demo/logs\"|" -e "s|^STATE_DIR:.*|STATE_DIR: \"$demo\"|" conf/config.yaml >"$demo/conf/config.yaml"
printf '# Made by conf/demo/run-demo.sh from conf/public.yaml.\nrootpath: "%s/root"\n' "$demo" >"$demo/conf/public.yaml"
if [ ! -f "$demo/conf/services.json" ]; then
    cp conf/services.json "$demo/conf/services.json"
else
    echo "using the demo's own target/demo/conf/services.json (delete it to start from conf/services.json again)"
fi
target/debug/air-nanny check --config "$demo/conf/config.yaml"
echo "console: http://127.0.0.1:8090/   API: http://127.0.0.1:8090/task/get   logs: target/demo/logs/   stop: Ctrl-C"
exec target/debug/air-nanny run --config "$demo/conf/config.yaml" "$@"
