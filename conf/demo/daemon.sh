# Shared by the demo's control scripts (sourced, not run): start a program in the background the way
# the seed's run.sh scripts do, and stop it by its pid file.
#   daemon_main start|stop PROGRAM [ARGS...]
# air-nanny passes AIR_NANNY_SERVICE, AIR_NANNY_PROGRAM and AIR_NANNY_ROOTPATH; the scripts also work
# by hand, from any directory.

daemon_main() {
    action=$1; program=$2; shift 2
    name=$(basename "$program")
    run_dir="${AIR_NANNY_ROOTPATH:-$(dirname "$program")/..}/run"
    mkdir -p "$run_dir"
    pidfile="$run_dir/$name.pid"
    case "$action" in
    start)
        if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "$name already running (pid $(cat "$pidfile"))"
            return 0
        fi
        [ -x "$program" ] || { echo "$program is missing: run conf/demo/run-demo.sh" >&2; return 1; }
        nohup "$program" "$@" </dev/null >/dev/null 2>&1 &
        echo $! > "$pidfile"
        echo "$name started (pid $!)"
        ;;
    stop)
        [ -f "$pidfile" ] || { echo "$name is not running"; return 0; }
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
        rm -f "$pidfile"
        if kill -0 "$pid" 2>/dev/null; then echo "$name did not stop" >&2; return 1; fi
        echo "$name stopped"
        ;;
    *)
        echo "usage: $0 start|stop" >&2
        return 2
        ;;
    esac
}
