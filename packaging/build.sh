#!/usr/bin/env bash
# Static release builds and packages, without Docker and without root.
#   packaging/build.sh [TARGET...]     default: all three targets below
# Builds air-nanny, checks the binary is static, and writes a .deb and an .ipk per target into
# target/packages/. The toolchains come from packaging/setup.sh (run it once, as root).
# PKG_VERSION overrides the version (default: Cargo.toml's); IPK_ARCH_<target with _> overrides
# an .ipk's architecture name (e.g. IPK_ARCH_armv7_unknown_linux_gnueabihf=arm_cortex-a7_neon-vfpv4
# for an OpenWrt feed).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

VERSION=${PKG_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
OUT=target/packages
MAINTAINER="air-nanny maintainers <air-nanny-maintainers@example.com>"
mkdir -p "$OUT"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: run packaging/setup.sh first" >&2; exit 1; }
}

deb_arch() {
    case "$1" in
    aarch64-*) echo arm64 ;;
    armv7-*) echo armhf ;;
    x86_64-*) echo amd64 ;;
    *) echo "unsupported target $1" >&2; exit 1 ;;
    esac
}

# opkg architecture names. The defaults are Yocto's package architectures for what the binaries
# need (aarch64; ARMv7-A with hardware floating point and no NEON, as the armv7 Rust target builds;
# x86_64), which Yocto feeds list in their PACKAGE_ARCHS. OpenWrt names its architectures per CPU
# (aarch64_generic, arm_cortex-a7_neon-vfpv4…): set IPK_ARCH_<target> for such a feed.
ipk_arch() {
    local var="IPK_ARCH_${1//-/_}"
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    case "$1" in
    aarch64-*) echo aarch64 ;;
    armv7-*) echo armv7ahf ;;
    x86_64-*) echo x86_64 ;;
    esac
}

build() {
    local target=$1
    rustup target list --installed 2>/dev/null | grep -qx "$target" ||
        { echo "error: rustup target $target is missing: run packaging/setup.sh $target" >&2; exit 1; }
    case "$target" in
    armv7-unknown-linux-gnueabihf) need arm-linux-gnueabihf-gcc ;;
    aarch64-unknown-linux-musl) need aarch64-linux-gnu-gcc ;;
    esac
    echo "== cargo build --release --target $target (hot code first: packaging/hot/link.sh)"
    need c++filt
    packaging/hot/link.sh "$target"
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
    for f in config.yaml public.yaml; do
        install -D -m 0644 "packaging/etc/$f" "$root/etc/air-nanny/$f"
    done
    install -D -m 0644 README.md "$root/usr/share/doc/air-nanny/README.md"
    install -D -m 0644 packaging/examples/services.json "$root/usr/share/doc/air-nanny/examples/services.json"
    # The man page and shell completions, generated from the command-line definitions by build.rs.
    local gen
    gen=$(generated_dir "$target")
    install -D -m 0644 "$gen/air-nanny.1" "$root/usr/share/man/man1/air-nanny.1"
    gzip -9n "$root/usr/share/man/man1/air-nanny.1"
    install -D -m 0644 "$gen/air-nanny.bash" "$root/usr/share/bash-completion/completions/air-nanny"
    install -D -m 0644 "$gen/_air-nanny" "$root/usr/share/zsh/vendor-completions/_air-nanny"
    install -D -m 0644 "$gen/air-nanny.fish" "$root/usr/share/fish/vendor_completions.d/air-nanny.fish"
    install -D -m 0644 packaging/copyright "$root/usr/share/doc/air-nanny/copyright"
}

# Where build.rs wrote the man page and completions for the last build of `target`.
generated_dir() {
    local dir
    dir=$(ls -td "target/$1"/release/build/air-nanny-*/out/generated 2>/dev/null | head -n1)
    [ -n "$dir" ] || { echo "error: no generated man page for $1 (build.rs did not run?)" >&2; exit 1; }
    echo "$dir"
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
    # services.json is not one: the API owns it (/var/lib/air-nanny, made by the postinst).
    printf '/etc/air-nanny/config.yaml\n/etc/air-nanny/public.yaml\n'
}

make_deb() {
    local target=$1 arch
    arch=$(deb_arch "$target")
    local stage="$OUT/stage/deb-$arch"
    stage_data "$target" "$stage"
    mkdir -p "$stage/DEBIAN"
    gzip -9n -c packaging/changelog > "$stage/usr/share/doc/air-nanny/changelog.gz"
    install -D -m 0644 packaging/lintian-overrides "$stage/usr/share/lintian/overrides/air-nanny"
    case "$(file -b "target/$target/release/air-nanny")" in
    *"static-pie linked"*)
        echo "air-nanny: shared-library-lacks-prerequisites [usr/bin/air-nanny]" ;;
    *)
        echo "air-nanny: statically-linked-binary [usr/bin/air-nanny]" ;;
    esac >> "$stage/usr/share/lintian/overrides/air-nanny"
    chmod 0644 "$stage/usr/share/doc/air-nanny/changelog.gz"
    local size
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    control_fields "$arch" "$size" > "$stage/DEBIAN/control"
    conffiles > "$stage/DEBIAN/conffiles"
    install -m 0755 packaging/scripts/deb/postinst packaging/scripts/deb/prerm packaging/scripts/deb/postrm "$stage/DEBIAN/"
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
    install -D -m 0755 packaging/openwrt/air-nanny.init "$data/etc/init.d/air-nanny"
    mkdir -p "$ctl"
    local size
    size=$(du -sk "$data" | cut -f1)
    control_fields "$arch" "$size" | grep -v '^Homepage' > "$ctl/control"
    echo "License: MIT" >> "$ctl/control"
    conffiles > "$ctl/conffiles"
    install -m 0755 packaging/scripts/ipk/postinst packaging/scripts/ipk/prerm packaging/scripts/ipk/postrm "$ctl/"
    local tarflags=(--owner=0 --group=0 --numeric-owner --sort=name --mtime=@0)
    (cd "$ctl" && tar "${tarflags[@]}" -czf ../control.tar.gz ./control ./conffiles ./postinst ./prerm ./postrm)
    (cd "$data" && tar "${tarflags[@]}" -czf ../data.tar.gz .)
    printf '2.0\n' > "$stage/debian-binary"
    local ipk="$OUT/air-nanny_${VERSION}_${arch}.ipk"
    rm -f "$ipk"
    (cd "$stage" && ar rcD "../../$(basename "$ipk")" debian-binary control.tar.gz data.tar.gz)
    echo "   $ipk"
}

for tool in file ar dpkg-deb gzip; do need "$tool"; done
for t in "${targets[@]}"; do
    build "$t"
done
echo "== packages (version $VERSION)"
for t in "${targets[@]}"; do
    make_deb "$t"
    make_ipk "$t"
done
