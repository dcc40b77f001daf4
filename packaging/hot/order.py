#!/usr/bin/env python3
"""The link order of air-nanny's hot code: the symbols of BINARY whose names are in KEYS.

    packaging/hot/order.py BINARY KEYS > ORDER        (an unstripped binary)
    packaging/hot/order.py --map LINK.map KEYS > ORDER (lld's link map of a first link)

then link with lld's --symbol-ordering-file=ORDER (packaging/hot/link.sh does both).

KEYS (packaging/hot/symbols.txt, written by profile.py) names the functions the steady state runs,
demangled and without the crate and symbol hashes, which differ between targets and builds: the
same list serves x86_64, aarch64 and armv7. Every symbol of BINARY whose key is listed is printed,
so all the instances of a listed function are placed together at the start of the text: those
listed before the `--- REST` line (what runs while air-nanny idles) first, then the others; the
rest keeps the linker's order after them.
"""
import re, subprocess, sys

HASHES = [re.compile(r"\[[0-9a-f]+\]"), re.compile(r"::h[0-9a-f]{16}$")]
# In KEYS, the line between what runs while air-nanny idles and the rest of its steady state.
REST = "--- REST"


def read_tiers(path):
    """(idle, rest): the two sets of keys of a KEYS file (a file without the REST line is all idle)."""
    idle, rest, cur = set(), set(), None
    cur = idle
    for line in open(path):
        line = line.rstrip("\n")
        if line == REST:
            cur = rest
        elif line.strip():
            cur.add(line)
    return idle, rest


def demangle(symbols):
    """Demangles Rust (legacy and v0) and C++ symbols with binutils' c++filt; others stay."""
    symbols = list(symbols)
    out = subprocess.run(["c++filt"], input="\n".join(symbols) + "\n", capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return out[:len(symbols)]


def key_of(symbols):
    """The target-independent keys of mangled symbols."""
    keys = []
    for d in demangle(symbols):
        for h in HASHES:
            d = h.sub("", d)
        keys.append(d)
    return keys


def symbols_of_binary(binary):
    """The function symbols of an unstripped binary."""
    nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    return [p[2] for p in (line.split() for line in nm.splitlines()) if len(p) == 3 and p[1] in "tTwW"]


def symbols_of_map(path):
    """The symbols of a link map written by lld (-Map, --no-demangle): the lines of five fields,
    addresses, size and alignment first, whose last field is neither a section nor an input."""
    out = []
    for line in open(path, errors="replace"):
        p = line.split()
        if len(p) == 5 and not p[4].startswith((".", "/", "<")) and ":(" not in p[4]:
            try:
                int(p[0], 16), int(p[2], 16)
            except ValueError:
                continue
            out.append(p[4])
    return out


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--map":
        source, syms = args[1], symbols_of_map(args[1])
        keys_file = args[2]
    elif len(args) == 2:
        source, syms = args[0], symbols_of_binary(args[0])
        keys_file = args[1]
    else:
        sys.exit("usage: order.py BINARY KEYS | order.py --map LINK.map KEYS")
    tiers = read_tiers(keys_file)
    keys = key_of(syms)
    found, seen = 0, set()
    # What runs while idle first, then the rest; each in the linker's own order.
    for wanted in tiers:
        for sym, key in zip(syms, keys):
            if key in wanted and sym not in seen:
                seen.add(sym)
                print(sym)
                found += 1
    print(f"order: {found} symbols of {source} for {len(tiers[0])} idle and {len(tiers[1])} other hot functions",
          file=sys.stderr)


if __name__ == "__main__":
    main()
