#!/bin/sh
# Control script of the demo's telemetry service: run.sh start|stop
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../daemon.sh"
program="${AIR_NANNY_PROGRAM:-$here/../../../target/demo/root/bin/telemetry}"
daemon_main "$1" "$program" --heartbeat 5
