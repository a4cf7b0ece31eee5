#!/usr/bin/env bash
# The install suite: installs a build into a temp prefix and uses it the way a
# program outside the tree would.
#   - libheapd.so exports exactly the API of heapd.h (nm -D), SONAME libheapd.so.MAJOR;
#   - a program builds with pkg-config against the .so, against the .a, and
#     with the plain `cc t.c libheapd.a -lprotobuf-c -luring -lpthread`;
#   - a CMake project builds with find_package(heapd) (heapd::heapd, heapd::heapd_static);
#   - every one of them runs against the installed heapd (temp socket) and
#     allocates and frees; heapctl then sees their mallocs and frees.
# Usage: scripts/test-install.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/heapd-install-XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name heapd.pc)")/..
libdir=$(cd "$libdir" && pwd)
for f in "$prefix/sbin/heapd" "$prefix/bin/heapctl" "$prefix/include/heapd.h" "$libdir/libheapd.a" \
         "$libdir/libheapd.so" "$libdir/cmake/heapd/heapdConfig.cmake" "$libdir/libheapd-malloc.so"; do
    [ -e "$f" ] || fail "not installed: ${f#$prefix/}"
done
echo "installed into $prefix"

# The exported symbols are the API: each declared HEAPD_API in heapd.h, and all of those.
exported=$(nm -D --defined-only "$libdir/libheapd.so" | awk '{print $3}' | sort)
api=$(grep -o 'HEAPD_API [^(;]*(' "$prefix/include/heapd.h" | grep -v __attribute__ | sed 's/($//; s/.*[ *]//' | sort)
[ -n "$api" ] || fail "no HEAPD_API declarations in heapd.h"
[ "$exported" = "$api" ] || fail "libheapd.so exports other symbols than heapd.h's API:
$(diff <(echo "$api") <(echo "$exported") || true)"
echo "libheapd.so exports $(echo "$exported" | wc -l) symbols, all of them heapd.h's API"
soname=$(objdump -p "$libdir/libheapd.so" | awk '/SONAME/ {print $2}')
[[ $soname =~ ^libheapd\.so\.[0-9]+$ ]] || fail "SONAME is '$soname', not libheapd.so.MAJOR"
echo "SONAME $soname"

# The docs name everything: every heapd flag in heapd(8) and the README's
# usage line, every API function in libheapd(3), every heapctl command in heapctl(8).
man=$prefix/share/man
usage=$(awk '/^heapd \[--socket/ {on = 1} on && !/^(heapd |      )/ {on = 0} on' "$prefix/share/doc/heapd/README.md")
[ -n "$usage" ] || fail "no usage line (heapd [--socket ...) in the README"
for f in $("$prefix/sbin/heapd" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    grep -qF -- "${f//-/\\-}" "$man/man8/heapd.8" || fail "heapd(8) does not document $f"
    grep -qE -- "(\[|\| )$f( |\]|$)" <<<"$usage" || fail "README's usage line lacks $f"
done
for fn in $api; do grep -qw "$fn" "$man/man3/libheapd.3" || fail "libheapd(3) lacks $fn"; done
for c in stats clients metrics limit scavenge flush roots top; do
    grep -q "^\.BR\? $c\b" "$man/man8/heapctl.8" || fail "heapctl(8) lacks the command $c"
done
echo "heapd(8), heapctl(8), libheapd(3) and the README name every flag, command and function"

# Build the same program four ways, outside the tree.
src=$top/tests/install/heapd_user.c
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc=${CC:-cc}
$cc -o "$tmp/pc-shared" "$src" $(pkg-config --cflags --libs heapd) -Wl,-rpath,"$libdir"
$cc -o "$tmp/pc-static" "$src" $(pkg-config --cflags heapd) "$libdir/libheapd.a" \
    $(pkg-config --static --libs heapd | sed 's/-lheapd//')
$cc -o "$tmp/plain-static" "$src" -I"$prefix/include" "$libdir/libheapd.a" -lprotobuf-c -luring -lpthread
cmake -S "$top/tests/install" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_BUILD_RPATH="$libdir" >/dev/null
cmake --build "$tmp/cm" >/dev/null
for p in pc-static plain-static; do
    if objdump -p "$tmp/$p" | grep -q 'NEEDED.*libheapd'; then fail "$p links libheapd.so, not the .a"; fi
done
if objdump -p "$tmp/cm/user-static" | grep -q 'NEEDED.*libheapd'; then fail "heapd::heapd_static links the .so"; fi
objdump -p "$tmp/pc-shared" | grep -q 'NEEDED.*libheapd.so' || fail "pc-shared does not use libheapd.so"
objdump -p "$tmp/cm/user-shared" | grep -q 'NEEDED.*libheapd.so' || fail "heapd::heapd does not use libheapd.so"
echo "built with pkg-config (.so, .a), plain cc (.a), find_package (heapd::heapd, heapd::heapd_static)"

# A real daemon from the install, on a temp socket.
export HEAPD_SOCKET=$tmp/heapd.sock
"$prefix/sbin/heapd" --socket "$HEAPD_SOCKET" --size 256MiB --foreground --quiet &
pid=$!
for _ in $(seq 1 200); do [ -S "$HEAPD_SOCKET.ctl" ] && break; kill -0 "$pid" || fail "heapd exited"; sleep 0.05; done
[ -S "$HEAPD_SOCKET.ctl" ] || fail "heapd did not listen within 10 s"
progs=("$tmp/pc-shared" "$tmp/pc-static" "$tmp/plain-static" "$tmp/cm/user-shared" "$tmp/cm/user-static")
for p in "${progs[@]}"; do
    out=$(timeout 30 "$p") || fail "${p#$tmp/} failed: $out"
    [[ $out == ok* ]] || fail "${p#$tmp/} said: $out"
    echo "${p#$tmp/}: $out"
done
stats=$("$prefix/bin/heapctl" stats --json)
field() { grep -o "\"$1\":[0-9]*" <<<"$stats" | head -1 | cut -d: -f2; }
n=${#progs[@]}
[ "$(field ClientsTotal)" -ge "$n" ] || fail "heapctl saw $(field ClientsTotal) clients, not $n"
[ "$(field Mallocs)" -ge $((2 * n)) ] || fail "heapctl saw $(field Mallocs) mallocs, not >= $((2 * n))"
[ "$(field Frees)" -ge $((2 * n)) ] || fail "heapctl saw $(field Frees) frees, not >= $((2 * n))"
[ "$(field HeapAlloc)" -eq 0 ] || fail "HeapAlloc is $(field HeapAlloc) after every object was freed"
echo "heapctl: ClientsTotal $(field ClientsTotal), Mallocs $(field Mallocs), Frees $(field Frees), HeapAlloc $(field HeapAlloc)"
echo "install: all checks passed"
