#!/usr/bin/env bash
# Static release builds and packages, without Docker.
#   packaging/build.sh [TARGET...]     default: all three targets below
# Installs the rustup target and the linker each target needs, builds air-nanny, checks the binary
# is static, and writes a .deb and an .ipk per target into target/packages/.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
OUT=target/packages
MAINTAINER="air-nanny maintainers <air-nanny-maintainers@example.com>"
mkdir -p "$OUT"

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

deb_arch() {
    case "$1" in
    aarch64-*) echo arm64 ;;
    armv7-*) echo armhf ;;
    x86_64-*) echo amd64 ;;
    *) echo "unsupported target $1" >&2; exit 1 ;;
    esac
}

# opkg architecture names (OpenWrt/Yocto style); feeds with finer names (cortexa7hf-neon…) can
# repackage with their own.
ipk_arch() {
    case "$1" in
    aarch64-*) echo aarch64 ;;
    armv7-*) echo armv7hf ;;
    x86_64-*) echo x86_64 ;;
    esac
}

build() {
    local target=$1
    rustup target add "$target" >/dev/null
    case "$target" in
    armv7-unknown-linux-gnueabihf) apt_install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ;;
    # ring (TLS) compiles a few C/assembly files; see .cargo/config.toml.
    aarch64-unknown-linux-musl) apt_install gcc-aarch64-linux-gnu ;;
    esac
    echo "== cargo build --release --target $target"
    cargo build --release --locked --bin air-nanny --target "$target"
    local bin="target/$target/release/air-nanny"
    local kind
    kind=$(file -b "$bin")
    case "$kind" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "error: $bin is not static: $kind" >&2; exit 1 ;;
    esac
    echo "   $bin: $(stat -c %s "$bin") bytes; $kind"
}

# The installed tree, shared by the .deb and the .ipk.
stage_data() {
    local target=$1 root=$2
    rm -rf "$root"
    install -D -m 0755 "target/$target/release/air-nanny" "$root/usr/bin/air-nanny"
    install -D -m 0644 systemd/air-nanny.service "$root/lib/systemd/system/air-nanny.service"
    for f in config.yaml public.yaml services.json; do
        install -D -m 0644 "packaging/etc/$f" "$root/etc/air-nanny/$f"
    done
    install -D -m 0644 README.md "$root/usr/share/doc/air-nanny/README.md"
    install -D -m 0644 packaging/copyright "$root/usr/share/doc/air-nanny/copyright"
}

control_fields() {
    local arch=$1 size=$2
    cat <<CONTROL
Package: air-nanny
Version: $VERSION
Architecture: $arch
Maintainer: $MAINTAINER
Installed-Size: $size
Section: admin
Priority: optional
Homepage: https://example.invalid/air-nanny
Description: process supervisor for onboard Linux computers
 air-nanny starts an airborne system's programs in order at boot, keeps them
 alive with health checks and restarts, stops them in reverse order running
 each one's stop command, and serves a REST API to inspect and change it all.
CONTROL
}

conffiles() {
    printf '/etc/air-nanny/config.yaml\n/etc/air-nanny/public.yaml\n/etc/air-nanny/services.json\n'
}

make_deb() {
    local target=$1 arch
    arch=$(deb_arch "$target")
    local stage="$OUT/stage/deb-$arch"
    stage_data "$target" "$stage"
    mkdir -p "$stage/DEBIAN"
    gzip -9n -c packaging/changelog > "$stage/usr/share/doc/air-nanny/changelog.gz"
    install -D -m 0644 packaging/lintian-overrides "$stage/usr/share/lintian/overrides/air-nanny"
    chmod 0644 "$stage/usr/share/doc/air-nanny/changelog.gz"
    local size
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    control_fields "$arch" "$size" > "$stage/DEBIAN/control"
    conffiles > "$stage/DEBIAN/conffiles"
    install -m 0755 packaging/scripts/postinst packaging/scripts/prerm packaging/scripts/postrm "$stage/DEBIAN/"
    (cd "$stage" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
        > "$stage/DEBIAN/md5sums"
    local deb="$OUT/air-nanny_${VERSION}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    echo "   $deb"
}

# The .ipk in opkg-utils' format (as Yocto builds it): an ar archive of debian-binary,
# control.tar.gz and data.tar.gz.
make_ipk() {
    local target=$1 arch
    arch=$(ipk_arch "$target")
    local stage="$OUT/stage/ipk-$arch"
    local data="$stage/data" ctl="$stage/control"
    rm -rf "$stage"
    stage_data "$target" "$data"
    mkdir -p "$ctl"
    local size
    size=$(du -sk "$data" | cut -f1)
    control_fields "$arch" "$size" | grep -v '^Homepage' > "$ctl/control"
    echo "License: MIT" >> "$ctl/control"
    conffiles > "$ctl/conffiles"
    install -m 0755 packaging/scripts/postinst packaging/scripts/prerm packaging/scripts/postrm "$ctl/"
    local tarflags=(--owner=0 --group=0 --numeric-owner --sort=name --mtime=@0)
    (cd "$ctl" && tar "${tarflags[@]}" -czf ../control.tar.gz ./control ./conffiles ./postinst ./prerm ./postrm)
    (cd "$data" && tar "${tarflags[@]}" -czf ../data.tar.gz .)
    printf '2.0\n' > "$stage/debian-binary"
    local ipk="$OUT/air-nanny_${VERSION}_${arch}.ipk"
    rm -f "$ipk"
    (cd "$stage" && ar rcD "../../$(basename "$ipk")" debian-binary control.tar.gz data.tar.gz)
    echo "   $ipk"
}

apt_install file binutils dpkg
for t in "${targets[@]}"; do
    build "$t"
done
echo "== packages (version $VERSION)"
for t in "${targets[@]}"; do
    make_deb "$t"
    make_ipk "$t"
done
