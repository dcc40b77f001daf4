#!/bin/sh
# Control script of the demo's sensor-bus service: run.sh start|stop
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../daemon.sh"
program="${AIR_NANNY_PROGRAM:-$here/../../../target/demo/root/bin/sensor-bus}"
daemon_main "$1" "$program" --listen 127.0.0.1:18081 --heartbeat 15
