#!/bin/sh
# Control script of the demo's preflight service: run.sh start|stop
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../daemon.sh"
program="${AIR_NANNY_PROGRAM:-$here/../../../target/demo/root/bin/preflight}"
daemon_main "$1" "$program" --exit-after 3
