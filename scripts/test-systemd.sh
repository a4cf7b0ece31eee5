#!/usr/bin/env bash
# The systemd suite: the units as installed (heapd.service, heapd.socket,
# heapd-control.socket, and the service with the --metrics-listen drop-in)
# pass `systemd-analyze verify`, and `systemd-analyze security` rates each
# service 3.0 or better. Machines without systemd-analyze skip it, saying so.
# (heapd's side of the protocols, READY=1 and socket activation, is tested by
# the integration suite "operations" with a real daemon.)
# Usage: scripts/test-systemd.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd: skipped (no systemd-analyze here: apt-get install systemd)"
    exit 0
fi
tmp=$(mktemp -d /tmp/heapd-systemd-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test-systemd: FAIL: $*" >&2; exit 1; }
cmake --install "$build" --prefix "$tmp/p" >/dev/null
units=$tmp/p/lib/systemd/system
for u in heapd.service heapd.socket heapd-control.socket; do [ -f "$units/$u" ] || fail "$u not installed"; done
grep -q "^ExecStart=$tmp/p/sbin/heapd " "$units/heapd.service" || fail "ExecStart does not name the installed heapd"

verify() {
    local out
    if ! out=$(cd "$units" && systemd-analyze verify --man=no heapd.service heapd.socket heapd-control.socket 2>&1); then
        fail "systemd-analyze verify $1:
$out"
    fi
    [ -z "$out" ] || fail "systemd-analyze verify $1 warns:
$out"
    echo "verify $1: clean"
}
score() {
    local s
    s=$(cd "$units" && systemd-analyze security --offline=yes heapd.service 2>&1 |
        sed -n 's/.*Overall exposure level for heapd.service: \([0-9.]*\).*/\1/p')
    [ -n "$s" ] || fail "systemd-analyze security gave no score for $1"
    awk -v s="$s" 'BEGIN { exit !(s <= 3.0) }' || fail "systemd-analyze security rates $1 $s (over 3.0)"
    echo "security $1: $s"
}
verify "the units"
score "heapd.service"
mkdir -p "$units/heapd.service.d"
cp "$tmp/p/share/doc/heapd/systemd/heapd-metrics.conf" "$units/heapd.service.d/metrics.conf"
grep -q -- "--metrics-listen" "$units/heapd.service.d/metrics.conf" || fail "the drop-in does not pass --metrics-listen"
verify "with the metrics drop-in"
score "heapd.service + metrics drop-in"
echo "systemd: all checks passed"
