#!/usr/bin/env bash
# Builds the release air-nanny for TARGET with its hot code first in the text.
#   packaging/hot/link.sh TARGET
# A first link (lld, with a link map) names this target's symbols; packaging/hot/order.py picks
# those of the functions the steady state runs (packaging/hot/symbols.txt, target-independent
# names); a second link places them together at the start of the text (lld's
# --symbol-ordering-file). air-nanny gives back its clean code pages once booted (src/image.rs), so
# what comes back is this hot part: about 0.8 MiB of 2.5 instead of nearly all of it. Only the
# final crate is linked again; the result is target/TARGET/release/air-nanny, stripped as usual.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=$1
host=$(rustc -vV | sed -n 's/^host: //p')
gcc_ld="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
out=target/hot
mkdir -p "$out"
map="$out/$target.map"
order="$out/$target.order"
args=()
link_args() {
    # aarch64 links with rust-lld itself (.cargo/config.toml); the others through a gcc driver,
    # told to use lld (the toolchain's own, in gcc-ld).
    case "$target" in
    aarch64-*) for a; do args+=(-C "link-arg=$a"); done ;;
    *) for a; do args+=(-C "link-arg=-Wl,$a"); done ;;
    esac
}
case "$target" in
aarch64-*) ;;
*) args+=(-C link-arg=-fuse-ld=lld -C "link-arg=-B$gcc_ld") ;;
esac
base=("${args[@]}")
link_args "-Map=$map" --no-demangle
cargo rustc --release --locked --bin air-nanny --target "$target" -- "${args[@]}"
python3 packaging/hot/order.py --map "$map" packaging/hot/symbols.txt > "$order"
args=("${base[@]}")
link_args "-Map=$map" --no-demangle "--symbol-ordering-file=$order" --no-warn-symbol-ordering
cargo rustc --release --locked --bin air-nanny --target "$target" -- "${args[@]}"
