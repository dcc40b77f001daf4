#!/usr/bin/env bash
# Installs what packaging/build.sh and packaging/test.sh need, on Debian or Ubuntu (run as root, or
# by CI through tests/all.sh): the rustup targets, the cross C compilers ring needs, dpkg tools,
# lintian, qemu-user and systemd for the appliance tests. packaging/build.sh itself never installs
# anything, so building needs no root.
#   packaging/setup.sh [TARGET...]     default: all three targets
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

pkgs=(file binutils dpkg lintian qemu-user-static qemu-system-arm cpio curl systemd man-db)
for t in "${targets[@]}"; do
    case "$t" in
    armv7-unknown-linux-gnueabihf) pkgs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
    # ring (TLS) compiles a few C/assembly files; see .cargo/config.toml.
    aarch64-unknown-linux-musl) pkgs+=(gcc-aarch64-linux-gnu) ;;
    x86_64-unknown-linux-musl) ;;
    *) echo "unsupported target $t" >&2; exit 1 ;;
    esac
done
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# packaging/system-test.sh downloads Debian's arm64 and armhf kernels and busybox (apt-get
# download, nothing installed): apt must list those architectures.
foreign=$(dpkg --print-foreign-architectures)
for a in arm64 armhf; do
    if ! grep -qx "$a" <<< "$foreign"; then
        dpkg --add-architecture "$a"
        missing+=("--update-lists")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    install=()
    for p in "${missing[@]}"; do [ "$p" = --update-lists ] || install+=("$p"); done
    echo "== apt-get update${install[*]:+; apt-get install ${install[*]}}"
    # A mirror caught mid-sync fails one index now and then: try again, then go on with what
    # was fetched (an install or download that still lacks its list fails loudly below).
    for try in 1 2 3; do
        apt-get update -qq && break
        echo "apt-get update failed (try $try of 3)" >&2
        if [ "$try" -lt 3 ]; then sleep 10; fi
    done
    if [ ${#install[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${install[@]}" >/dev/null
    fi
fi
for t in "${targets[@]}"; do
    rustup target add "$t" >/dev/null
done
echo "== packaging tools and targets ready: ${targets[*]}"
