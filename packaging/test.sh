#!/usr/bin/env bash
# Appliance tests: builds the static binaries and packages (packaging/build.sh), then
#  - lintian --pedantic on each .deb (clean; overrides justified in packaging/lintian-overrides),
#  - the man page and the bash/zsh/fish completions in every .deb and .ipk,
#  - the .ipk's structure (members, control fields, conffiles),
#  - each .deb installed into a scratch root with dpkg --root, files where they belong, purge,
#  - an upgrade respects a disabled unit and keeps services.json (not a conffile); an old
#    /etc/air-nanny/services.json moves to /var/lib/air-nanny once,
#  - the .ipk's maintainer scripts in an offline root ($D, $IPKG_INSTROOT, $OPKG_OFFLINE_ROOT), for
#    systemd and for procd, enabling once,
#  - systemd-analyze verify on the unit,
#  - the aarch64 and armv7 binaries on Debian's kernel under qemu-system (packaging/system-test.sh)
#  - the aarch64 and armv7 binaries under qemu-user: start on a demo configuration, answer over
#    HTTP on loopback, stop on SIGTERM with exit 0 and nothing left running.
# Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

packaging/setup.sh
packaging/build.sh
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
OUT=target/packages
fail() { echo "FAIL: $*" >&2; exit 1; }
pass=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }

echo "== lintian"
for arch in amd64 arm64 armhf; do
    deb="$OUT/air-nanny_${VERSION}_${arch}.deb"
    lintian --pedantic --display-info --fail-on error,warning,info,pedantic "$deb" || fail "lintian --pedantic reports tags in $deb"
    ok "lintian --pedantic $deb"
done

echo "== man page and completions"
docs="usr/share/man/man1/air-nanny.1.gz usr/share/bash-completion/completions/air-nanny usr/share/zsh/vendor-completions/_air-nanny usr/share/fish/vendor_completions.d/air-nanny.fish"
for arch in amd64 arm64 armhf; do
    deb="$OUT/air-nanny_${VERSION}_${arch}.deb"
    listing=$(dpkg-deb -c "$deb")
    for f in $docs usr/share/doc/air-nanny/examples/services.json; do
        echo "$listing" | grep -q " \./$f\$" || fail "$deb lacks /$f"
    done
    ok "man page and completions in $deb"
done
for arch in aarch64 armv7ahf x86_64; do
    ipk="$OUT/air-nanny_${VERSION}_${arch}.ipk"
    listing=$(ar p "$ipk" data.tar.gz | tar -tzf -)
    for f in $docs etc/init.d/air-nanny; do
        echo "$listing" | grep -qx "\./$f" || fail "$ipk lacks /$f"
    done
    ok "man page, completions and procd init script in $ipk"
done
gen=$(ls -td target/x86_64-unknown-linux-musl/release/build/air-nanny-*/out/generated | head -n1)
MANWIDTH=80 man -l "$gen/air-nanny.1" 2>/dev/null | grep -q "^SYNOPSIS" || fail "the man page does not render"
bash -c "source '$gen/air-nanny.bash' && complete -p air-nanny" >/dev/null || fail "the bash completion does not load"
ok "man page renders, bash completion loads"

echo "== ipk structure"
for arch in aarch64 armv7ahf x86_64; do
    ipk="$OUT/air-nanny_${VERSION}_${arch}.ipk"
    work=$(mktemp -d)
    members=$(ar t "$ipk" | tr '\n' ' ')
    [ "$members" = "debian-binary control.tar.gz data.tar.gz " ] || fail "$ipk members: $members"
    (cd "$work" && ar x "$OLDPWD/$ipk")
    [ "$(cat "$work/debian-binary")" = "2.0" ] || fail "$ipk debian-binary"
    mkdir "$work/c" "$work/d"
    tar -xzf "$work/control.tar.gz" -C "$work/c"
    tar -xzf "$work/data.tar.gz" -C "$work/d"
    for field in "Package: air-nanny" "Version: $VERSION" "Architecture: $arch" "Maintainer: " "Description: " "Section: admin"; do
        grep -q "^$field" "$work/c/control" || fail "$ipk control lacks '$field'"
    done
    for script in postinst prerm postrm; do
        [ -x "$work/c/$script" ] || fail "$ipk: $script missing or not executable"
    done
    while read -r conffile; do
        [ -f "$work/d$conffile" ] || fail "$ipk: conffile $conffile is not in data.tar.gz"
    done < "$work/c/conffiles"
    [ "$(wc -l < "$work/c/conffiles")" -eq 2 ] || fail "$ipk: expected 2 conffiles (services.json is not one)"
    for f in usr/bin/air-nanny lib/systemd/system/air-nanny.service etc/air-nanny/config.yaml; do
        [ -e "$work/d/$f" ] || fail "$ipk: $f missing"
    done
    [ -x "$work/d/usr/bin/air-nanny" ] || fail "$ipk: binary not executable"
    [ "$(tar -tvzf "$work/data.tar.gz" ./usr/bin/air-nanny | awk '{print $2}')" = "0/0" ] || fail "$ipk: files not owned by root"
    rm -rf "$work"
    ok "ipk structure $ipk"
done

echo "== dpkg --root install into a scratch root"
for arch in amd64 arm64 armhf; do
    deb="$OUT/air-nanny_${VERSION}_${arch}.deb"
    root=$(mktemp -d)
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc/systemd/system"
    : > "$root/var/lib/dpkg/status"
    : > "$root/var/lib/dpkg/available"
    dpkg --root="$root" --force-script-chrootless --force-not-root --force-architecture --log=/dev/null -i "$deb" >/dev/null
    for f in usr/bin/air-nanny lib/systemd/system/air-nanny.service etc/air-nanny/config.yaml \
             var/lib/air-nanny/services.json etc/air-nanny/public.yaml usr/share/doc/air-nanny/copyright \
             var/lib/air-nanny var/log/air-nanny; do
        [ -e "$root/$f" ] || fail "$deb: /$f not installed"
    done
    [ -L "$root/etc/systemd/system/multi-user.target.wants/air-nanny.service" ] || fail "$deb: not enabled at boot"
    dpkg --root="$root" --admindir="$root/var/lib/dpkg" --status air-nanny 2>/dev/null | grep -q "^Conffiles:" ||
        grep -q "^Conffiles:" "$root/var/lib/dpkg/status" || fail "$deb: conffiles not registered"
    dpkg --root="$root" --force-script-chrootless --force-not-root --log=/dev/null --purge air-nanny >/dev/null
    [ ! -e "$root/usr/bin/air-nanny" ] && [ ! -e "$root/etc/air-nanny/config.yaml" ] && [ ! -e "$root/var/lib/air-nanny" ] ||
        fail "$deb: purge left files behind"
    [ ! -e "$root/etc/systemd/system/multi-user.target.wants/air-nanny.service" ] || fail "$deb: still enabled after purge"
    rm -rf "$root"
    ok "scratch-root install and purge $deb"
done

# dpkg into a scratch root, as the tests above do.
new_root() {
    local root
    root=$(mktemp -d)
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc/systemd/system"
    : > "$root/var/lib/dpkg/status"
    : > "$root/var/lib/dpkg/available"
    echo "$root"
}
dpkg_in() {
    local root=$1; shift
    dpkg --root="$root" --force-script-chrootless --force-not-root --force-architecture --log=/dev/null "$@" >/dev/null
}

echo "== upgrade: a disabled unit stays disabled, services.json is kept"
PKG_VERSION="${VERSION}+upgradetest1" packaging/build.sh x86_64-unknown-linux-musl >/dev/null
root=$(new_root)
wants="$root/etc/systemd/system/multi-user.target.wants/air-nanny.service"
dpkg_in "$root" -i "$OUT/air-nanny_${VERSION}_amd64.deb"
[ -L "$wants" ] || fail "first installation did not enable the unit"
[ "$(cat "$root/var/lib/air-nanny/services.json")" = "[]" ] || fail "first installation did not make an empty services.json"
grep -q "services.json" "$root/var/lib/dpkg/status" && fail "services.json is registered as a conffile"
# What `systemctl disable` does, in the scratch root; and what the API writes.
rm "$wants"
echo '[{"name": "kept"}]' > "$root/var/lib/air-nanny/services.json"
dpkg_in "$root" -i "$OUT/air-nanny_${VERSION}+upgradetest1_amd64.deb"
grep -q "^Version: ${VERSION}+upgradetest1" "$root/var/lib/dpkg/status" || fail "the upgrade did not install"
[ ! -e "$wants" ] || fail "the upgrade enabled a unit the administrator had disabled"
[ "$(cat "$root/var/lib/air-nanny/services.json")" = '[{"name": "kept"}]' ] || fail "the upgrade replaced services.json"
dpkg_in "$root" --purge air-nanny
[ ! -e "$root/var/lib/air-nanny" ] || fail "purge left /var/lib/air-nanny"
rm -rf "$root"
ok "upgrade keeps a disabled unit disabled and services.json; purge removes /var/lib/air-nanny"
root=$(new_root)
mkdir -p "$root/etc/air-nanny"
echo '[{"name": "old"}]' > "$root/etc/air-nanny/services.json"
echo '[]' > "$root/etc/air-nanny/services.json.bak"
dpkg_in "$root" -i "$OUT/air-nanny_${VERSION}_amd64.deb"
[ "$(cat "$root/var/lib/air-nanny/services.json")" = '[{"name": "old"}]' ] || fail "/etc/air-nanny/services.json was not moved"
[ -e "$root/var/lib/air-nanny/services.json.bak" ] && [ ! -e "$root/etc/air-nanny/services.json" ] || fail "the move left files in /etc"
rm -rf "$root"
ok "an old /etc/air-nanny/services.json moves to /var/lib/air-nanny"

echo "== ipk maintainer scripts in offline roots"
ipk="$OUT/air-nanny_${VERSION}_x86_64.ipk"
for var in D IPKG_INSTROOT OPKG_OFFLINE_ROOT; do
    for init in systemd procd; do
        root=$(mktemp -d) work=$(mktemp -d)
        (cd "$work" && ar x "$OLDPWD/$ipk" && mkdir c && tar -xzf control.tar.gz -C c)
        ar p "$ipk" data.tar.gz | tar -xzf - -C "$root"
        [ "$init" = systemd ] || touch "$root/etc/rc.common"
        env "$var=$root" sh "$work/c/postinst" configure
        case "$init" in
        systemd) link="$root/etc/systemd/system/multi-user.target.wants/air-nanny.service" ;;
        procd) link="$root/etc/rc.d/S95air-nanny" ;;
        esac
        [ -L "$link" ] || fail "ipk postinst with $var ($init): not enabled"
        [ -e "$root/var/lib/air-nanny/services.json" ] || fail "ipk postinst with $var: no services.json"
        # Disabled by the administrator, then upgraded: stays disabled.
        rm "$link"
        env "$var=$root" sh "$work/c/postinst" configure
        [ ! -e "$link" ] || fail "ipk upgrade with $var ($init) enabled a disabled service"
        env "$var=$root" sh "$work/c/prerm" remove
        env "$var=$root" sh "$work/c/postrm" remove
        [ ! -e "$root/var/lib/air-nanny/.enabled-by-package" ] || fail "ipk postrm with $var left its marker"
        rm -rf "$root" "$work"
    done
    ok "ipk scripts with $var, systemd and procd"
done

echo "== systemd-analyze verify"
unit_dir=$(mktemp -d)
sed "s#/usr/bin/air-nanny#$PWD/target/x86_64-unknown-linux-musl/release/air-nanny#" systemd/air-nanny.service \
    > "$unit_dir/air-nanny.service"
systemd-analyze verify "$unit_dir/air-nanny.service" || fail "systemd-analyze verify"
rm -rf "$unit_dir"
ok "systemd-analyze verify"

echo "== qemu-user smoke tests"
smoke() {
    local qemu=$1 bin=$2
    local dir port pid status
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$dir/root/bin"
    # The supervised program is a host-native executable: qemu-user runs only air-nanny emulated.
    cp "$(command -v sleep)" "$dir/root/bin/smoke-sleeper"
    printf 'SERVER: smoke\nPUBLIC_CONF: public.yaml\nSERVER_PORT: %s\nSTOP_TIMEOUT: 5\n' "$port" > "$dir/config.yaml"
    printf 'rootpath: %s/root\n' "$dir" > "$dir/public.yaml"
    cat > "$dir/services.json" <<JSON
[{"name": "sleeper", "priority": 0, "isInit": false, "isDaemon": true,
  "script": {"execPath": "", "programFilePath": "/bin/smoke-sleeper", "startCommand": "", "stopCommand": "", "args": ["600"]},
  "healthCheck": {"isHealthCheck": false}}]
JSON
    "$qemu" "$bin" run --config "$dir/config.yaml" 2> "$dir/nanny.log" &
    pid=$!
    local deadline=$((SECONDS + 60)) answer=""
    until answer=$(curl -sf "http://127.0.0.1:$port/task/find?name=sleeper") && echo "$answer" | grep -q '"State":2'; do
        kill -0 "$pid" 2>/dev/null || { cat "$dir/nanny.log"; fail "$bin exited early under $qemu"; }
        [ $SECONDS -lt $deadline ] || { kill -9 "$pid"; cat "$dir/nanny.log"; fail "$bin: sleeper not running: $answer"; }
        sleep 0.2
    done
    curl -sf "http://127.0.0.1:$port/health" | grep -q '"msg":"SUCCESS"' || fail "$bin: /health"
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    [ "$status" -eq 0 ] || { cat "$dir/nanny.log"; fail "$bin exited $status on SIGTERM"; }
    if pgrep -f "$dir/root/bin/smoke-sleeper" >/dev/null; then fail "$bin left its service running"; fi
    rm -rf "$dir"
    ok "qemu smoke $bin"
}
smoke qemu-aarch64-static target/aarch64-unknown-linux-musl/release/air-nanny
smoke qemu-arm-static target/armv7-unknown-linux-gnueabihf/release/air-nanny

echo "== full-system emulation: the ARM builds on Debian's kernel (packaging/system-test.sh)"
# qemu-user has no clone3: only a real kernel runs the spawn's CLONE_VM trampolines.
for arch in aarch64 armv7; do
    packaging/system-test.sh "$arch" || fail "system test on $arch"
    ok "system test $arch: services in their cgroups, respawn, 20 restarts, clean SIGTERM"
done

echo "$pass passed, 0 failed"
