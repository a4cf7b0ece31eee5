#!/usr/bin/env bash
# The .deb check (make test-deb): the package `make deb` built lists the files
# an install needs (dpkg -c), declares its dependencies, and carries
# maintainer scripts that create the user heapd and the group heapd-clients.
# Usage: scripts/test-deb.sh DEB_BUILD_DIR
set -euo pipefail
dir=${1:-build-deb}
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
shopt -s nullglob
debs=("$dir"/heapd_*.deb)
[ ${#debs[@]} -eq 1 ] || fail "expected one heapd_*.deb in $dir, found ${#debs[@]}"
deb=${debs[0]}
list=$(dpkg -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
for f in /usr/sbin/heapd /usr/bin/heapctl /usr/include/heapd.h \
         "/usr/lib/$arch/libheapd.so.0.1.0" "/usr/lib/$arch/libheapd.so.0" "/usr/lib/$arch/libheapd.so" \
         "/usr/lib/$arch/libheapd.a" "/usr/lib/$arch/pkgconfig/heapd.pc" "/usr/lib/$arch/libheapd-malloc.so" \
         "/usr/lib/$arch/cmake/heapd/heapdConfig.cmake" "/usr/lib/$arch/cmake/heapd/heapdTargets.cmake" \
         /usr/share/man/man8/heapd.8 /usr/share/man/man8/heapctl.8 /usr/share/man/man3/libheapd.3 \
         /usr/lib/systemd/system/heapd.service /usr/lib/systemd/system/heapd.socket \
         /usr/lib/systemd/system/heapd-control.socket /usr/lib/sysusers.d/heapd.conf \
         /usr/share/doc/heapd/operations.md /usr/share/doc/heapd/systemd/heapd-metrics.conf \
         /usr/share/doc/heapd/systemd/heapd.default; do
    grep -qxF "$f" <<<"$list" || fail "$(basename "$deb") lacks $f"
    checked=$((${checked:-0} + 1))
done
echo "dpkg -c: $(grep -c . <<<"$list") entries, the $checked expected ones among them"
grep -q '^ExecStart=/usr/sbin/heapd ' < <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/heapd.service) ||
    fail "heapd.service does not run /usr/sbin/heapd"
depends=$(dpkg-deb -f "$deb" Depends)
for d in adduser libc6 libuv1 libprotobuf-c1 liburing2; do
    grep -q "$d" <<<"$depends" || fail "Depends lacks $d: $depends"
done
echo "Depends: $depends"
ctl=$(mktemp -d /tmp/heapd-deb-XXXXXX)
trap 'rm -rf "$ctl"' EXIT
dpkg-deb -e "$deb" "$ctl"
for s in postinst prerm postrm; do
    [ -x "$ctl/$s" ] || fail "no executable $s"
    sh -n "$ctl/$s" || fail "$s does not parse"
done
grep -q 'adduser .*--system .*heapd' "$ctl/postinst" || fail "postinst does not create the user heapd"
grep -q 'addgroup .*--system heapd-clients' "$ctl/postinst" || fail "postinst does not create the group heapd-clients"
[ -f "$ctl/shlibs" ] && grep -q '^libheapd 0 ' "$ctl/shlibs" || fail "no shlibs entry for libheapd 0"
echo "deb: $(basename "$deb") ok"
