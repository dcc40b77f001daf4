#!/usr/bin/env bash
# The aarch64 and armv7 builds on a real Linux kernel, under full-system emulation: qemu-user has no
# clone3 and turns CLONE_VM into threads, so only here do the per-architecture spawn trampolines
# (src/spawn.rs, `sys::clone3_then`: clone3(CLONE_VM | CLONE_INTO_CGROUP) on a stack of the
# child's own) run the way they run on the aircraft's computers.
#   packaging/system-test.sh [aarch64|armv7]...     default: both
# Needs packaging/setup.sh (qemu-system-arm, cpio, the arm64 and armhf dpkg architectures) and the
# static builds of packaging/build.sh. Downloads Debian's kernel (6.1, the "cloud" flavour for
# arm64, "armmp" for armv7) and busybox-static for each architecture into target/system-test/
# (no root needed after setup). The guest's /init (busybox sh) mounts cgroup2, runs air-nanny as
# PID 1's child with cgroups required, and checks: every service running in its own cgroup, a
# forking service's members all listed, a killed program respawned, twenty restarts, no fallback
# to the fork path, then SIGTERM: exit 0 and every cgroup empty. It prints one PASS or FAIL line.
set -euo pipefail
cd "$(dirname "$0")/.."
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 armv7)
work=target/system-test
mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

kernel_flavour() { case "$1" in aarch64) echo cloud-arm64 ;; armv7) echo armmp ;; esac; }
debian_arch() { case "$1" in aarch64) echo arm64 ;; armv7) echo armhf ;; esac; }
rust_target() { case "$1" in aarch64) echo aarch64-unknown-linux-musl ;; armv7) echo armv7-unknown-linux-gnueabihf ;; esac; }

# The versioned kernel package that FLAVOUR's meta-package for DEBIAN_ARCH depends on.
kernel_package() {
    apt-cache depends "linux-image-$1:$2" | sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1
}

# Debian's kernel and busybox for ARCH, unpacked under $work/ARCH/deb (once).
fetch() {
    local arch=$1 darch flavour pkg dir="$work/$1"
    darch=$(debian_arch "$arch")
    flavour=$(kernel_flavour "$arch")
    [ -f "$dir/vmlinuz" ] && [ -f "$dir/busybox" ] && return
    mkdir -p "$dir/deb" "$dir/x"
    pkg=$(kernel_package "$flavour" "$darch")
    [ -n "$pkg" ] || fail "no linux-image-$flavour:$darch in apt's lists (run packaging/setup.sh)"
    if ! (cd "$dir/deb" && apt-get download -qq "$pkg:$darch" "busybox-static:$darch" 2>/dev/null); then
        # Lists older than the mirror name files it no longer has: refresh them once.
        apt-get update -qq || true
        pkg=$(kernel_package "$flavour" "$darch")
        (cd "$dir/deb" && apt-get download -qq "$pkg:$darch" "busybox-static:$darch") ||
            fail "cannot download $pkg:$darch and busybox-static:$darch"
    fi
    for d in "$dir"/deb/*.deb; do dpkg-deb -x "$d" "$dir/x"; done
    cp "$dir"/x/boot/vmlinuz-* "$dir/vmlinuz"
    cp "$dir/x/bin/busybox" "$dir/busybox"
    rm -rf "$dir/x" "$dir/deb"
}

# The guest's initramfs for ARCH: busybox, air-nanny, its configuration and the test as /init.
initramfs() {
    local arch=$1 root="$work/$1/root" bin
    bin="target/$(rust_target "$arch")/release/air-nanny"
    [ -x "$bin" ] || fail "$bin is missing (packaging/build.sh builds it)"
    rm -rf "$root"
    mkdir -p "$root"/{bin,proc,sys,dev,tmp,run,etc/air-nanny,var/lib/air-nanny,svc}
    cp "$work/$arch/busybox" "$root/bin/busybox"
    cp "$bin" "$root/bin/air-nanny"
    cat > "$root/etc/air-nanny/config.yaml" <<'EOF'
SERVER: system-test
PUBLIC_CONF: public.yaml
SERVER_PORT: 8090
CGROUPS: required
STATE_DIR: /var/lib/air-nanny
LOG_DIR: /var/lib/air-nanny/logs
STOP_TIMEOUT: 5
RESTART_BACKOFF_RESET: 1
EOF
    echo "rootpath: /" > "$root/etc/air-nanny/public.yaml"
    # Programs are busybox applets ("busybox sh -c …"): the exec'd file is busybox itself.
    cat > "$root/etc/air-nanny/services.json" <<'EOF'
[
  {"name": "ticker", "priority": 0, "isInit": false, "isDaemon": true,
   "script": {"execPath": "", "programFilePath": "/bin/busybox", "startCommand": "", "stopCommand": "",
              "args": ["sh", "-c", "echo up; while true; do echo tick; sleep 1; done"]},
   "healthCheck": {"isHealthCheck": false}},
  {"name": "forker", "priority": 0, "isInit": false, "isDaemon": true,
   "script": {"execPath": "", "programFilePath": "/bin/busybox", "startCommand": "", "stopCommand": "",
              "args": ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]},
   "healthCheck": {"isHealthCheck": false}},
  {"name": "daemon", "priority": 1, "isInit": false, "isDaemon": true,
   "script": {"execPath": "/svc/ctl.sh", "programFilePath": "/svc/bin/busybox",
              "startCommand": "start", "stopCommand": "stop"},
   "healthCheck": {"isHealthCheck": false}}
]
EOF
    # A script-mode service: its control script daemonises a program (a copy of busybox, so that
    # its executable is not the shell's).
    mkdir -p "$root/svc/bin"
    cp "$work/$arch/busybox" "$root/svc/bin/busybox"
    cat > "$root/svc/ctl.sh" <<'EOF'
#!/bin/busybox sh
case "$1" in
start) /svc/bin/busybox setsid /svc/bin/busybox sleep 1000 </dev/null >/dev/null 2>&1 & ;;
stop) for p in $(cat /sys/fs/cgroup/air-nanny/svc-daemon/cgroup.procs); do
          [ "$(readlink /proc/$p/exe)" = /svc/bin/busybox ] && kill $p
      done; true ;;
esac
EOF
    chmod 755 "$root/svc/ctl.sh"
    cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
CG=/sys/fs/cgroup/air-nanny
result() { echo "AIR-NANNY SYSTEM TEST ($(uname -m)): $*"; echo "--- air-nanny's log"; cat /tmp/an.log; poweroff -f; }
members() { cat "$CG/svc-$1/cgroup.procs" 2>/dev/null; }
# wait_for SECONDS COMMAND...: until the command succeeds.
wait_for() { n=$(($1 * 10)); shift; while ! "$@" >/dev/null 2>&1; do n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.1; done; }
ctl() { /bin/air-nanny ctl --config /etc/air-nanny/config.yaml "$@"; }
/bin/air-nanny run --config /etc/air-nanny/config.yaml --log-level debug > /tmp/an.log 2>&1 &
AN=$!
for s in ticker forker daemon; do
    wait_for 120 ctl status "$s" || result "FAIL: $s did not run"
done
[ "$(members forker | wc -l)" -ge 3 ] || result "FAIL: forker's members: $(members forker)"
for s in ticker forker daemon; do
    for p in $(members "$s"); do
        case "$(readlink /proc/$p/exe)" in /bin/busybox|/svc/bin/busybox) ;; *) result "FAIL: $s member $p is $(readlink /proc/$p/exe)" ;; esac
    done
done
old=$(members ticker)
kill -9 $old
respawned() { m=$(members ticker); [ -n "$m" ] && [ "$m" != "$old" ]; }
wait_for 30 respawned || result "FAIL: ticker was not respawned after kill -9 of $old"
i=0
while [ $i -lt 20 ]; do ctl restart ticker >/dev/null || result "FAIL: restart $i"; i=$((i + 1)); done
wait_for 30 ctl status ticker || result "FAIL: ticker not running after 20 restarts"
grep -q "ticker.*tick\|tick" /var/lib/air-nanny/logs/ticker.log || result "FAIL: ticker's output is not in its log"
if grep -q "is not available\|killed at birth" /tmp/an.log; then result "FAIL: the spawn fell back from clone3"; fi
kill -TERM $AN
wait $AN
code=$?
[ $code -eq 0 ] || result "FAIL: air-nanny exited $code after SIGTERM"
for s in ticker forker daemon; do
    [ -z "$(members "$s")" ] || result "FAIL: $s's cgroup still holds $(members "$s")"
done
result "PASS"
EOF
    chmod 755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/$arch/initrd.gz"
}

boot() {
    local arch=$1 out="$work/$1/console.log"
    local qemu=(qemu-system-aarch64 -M virt -cpu cortex-a57)
    [ "$arch" = armv7 ] && qemu=(qemu-system-arm -M virt -cpu cortex-a15)
    echo "== $arch: booting Debian's kernel under ${qemu[0]} (software emulation, a minute or two)"
    timeout 600 "${qemu[@]}" -m 512 -smp 2 -nographic -no-reboot \
        -kernel "$work/$arch/vmlinuz" -initrd "$work/$arch/initrd.gz" \
        -append "console=ttyAMA0 rdinit=/init panic=-1 quiet" > "$out" 2>&1 || true
    if grep -q "AIR-NANNY SYSTEM TEST.*: PASS" "$out"; then
        echo "ok - $arch: $(grep -a 'AIR-NANNY SYSTEM TEST' "$out" | tr -d '\r')"
    else
        tail -60 "$out" >&2
        fail "$arch: the system test did not pass (console: $out)"
    fi
}

for arch in "${arches[@]}"; do
    fetch "$arch"
    initramfs "$arch"
    boot "$arch"
done
