#!/usr/bin/env bash
# Runs every test suite of a build directory and prints one closing line,
# "N passed, N failed", counting suites. Exits non-zero if any suite failed.
# Usage: scripts/run-tests.sh BUILD_DIR [unit|all]
set -u
build=${1:-build}
which=${2:-all}
passed=0 failed=0 names=()

run_suite() {   # name, time limit (s), command...
    local name=$1 limit=$2; shift 2
    echo "=== $name"
    if timeout --kill-after=10 "$limit" "$@"; then
        passed=$((passed + 1))
    else
        echo "*** suite $name FAILED (exit $?)"
        failed=$((failed + 1)); names+=("$name")
    fi
}

run_suite unit 600 "$build/heapd-unit"
if [ "$which" = all ]; then
    # the demo must run clean and report intact invariants
    run_suite pagealloc-demo 120 "$build/pagealloc-demo" 4
    # a real daemon and real client processes
    run_suite integration 900 "$build/heapd-itest"
    # install into a temp prefix, build programs outside the tree, run them.
    # Not for sanitizer builds: programs outside the tree are not instrumented.
    if grep -q '^HEAPD_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
        echo "=== install: skipped (a sanitizer build's libheapd.a needs instrumented programs)"
    else
        run_suite install 300 scripts/test-install.sh "$build"
    fi
    # real programs (python3, sqlite3, sort, C, C++) under libheapd-malloc.so
    # against glibc, on a daemon of its own (skipped in sanitizer builds)
    run_suite preload 600 scripts/test-preload.sh "$build"
    # the systemd units: systemd-analyze verify and security (skipped without it)
    run_suite systemd 120 scripts/test-systemd.sh "$build"
fi

echo
[ $failed -gt 0 ] && echo "failed suites: ${names[*]}"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
