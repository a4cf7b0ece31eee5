#!/usr/bin/env bash
# Real programs under libheapd-malloc.so (LD_PRELOAD), each run once with
# glibc's malloc and once on a heapd of our own (a temp socket): the outputs
# must be identical, the preloaded run must print nothing of heapd's on
# stderr, and the daemon must have counted its allocations (heapctl stats
# --json). Then: the program name and HEAPD_QUOTA in heapctl clients, a quota
# refusing an allocation, the fallback policy (no daemon; the daemon killed
# mid-run; libc and abort), the reclaim of what a process holds at exit, and
# a fleet of 8 under --hard-limit with a lower --memory-limit.
# Usage: scripts/test-preload.sh BUILD_DIR
set -u
build=$(cd "${1:-build}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
lib=$build/libheapd-malloc.so heapd=$build/heapd heapctl=$build/heapctl
if grep -q '^HEAPD_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    echo "preload: skipped (a sanitizer's runtime owns malloc in a sanitizer build)"
    exit 0
fi
for f in "$lib" "$heapd" "$heapctl"; do
    [ -x "$f" ] || [ -f "$f" ] || { echo "preload: $f is missing (build first)"; exit 1; }
done
# The system's interpreter: a pyenv shim or a venv would be a wrapper that is
# itself a program under test (and may not be on every machine).
python=/usr/bin/python3
[ -x $python ] || python=$(command -v python3)
echo "preload: python is $python ($($python --version 2>&1))"
for p in sqlite3 sort g++ cc; do
    command -v $p >/dev/null || { echo "preload: $p is missing (scripts/install-deps.sh installs it)"; exit 1; }
done

tmp=$(mktemp -d /tmp/heapd-preload.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

# Poll a condition (a command) until it holds, for at most 20 s.
wait_for() {
    local what=$1 end=$((SECONDS + 20))
    shift
    until "$@"; do
        [ $SECONDS -ge $end ] && { fail "timed out waiting for $what"; return 1; }
        sleep 0.05
    done
}
# start_daemon NAME [heapd flags]: sock=its socket, dpid=its pid
start_daemon() {
    sock=$tmp/$1.sock
    "$heapd" --socket "$sock" --size 2GiB --foreground --quiet "${@:2}" 2>"$tmp/$1.log" &
    dpid=$!
    pids+=("$dpid")
    wait_for "heapd $1 to listen" test -S "$sock.ctl"
}
stats() { "$heapctl" --control "$sock.ctl" stats --json; }
field() { stats | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }
under() { HEAPD_SOCKET=$sock LD_PRELOAD=$lib "$@"; }

# ---- build the C and C++ programs -----------------------------------------------
cc -O2 -Wall -o "$tmp/stress" "$src/tests/preload/stress.c" -lpthread -ldl || exit 1
g++ -O2 -std=c++17 -Wall -o "$tmp/cxx" "$src/tests/preload/cxx.cpp" || exit 1

# ---- the inputs ------------------------------------------------------------------
# 2 million lines of pseudo-random numbers and words (fixed seed), about 30 MB.
awk 'BEGIN { s = 12345; for (i = 0; i < 2000000; i++) { s = (s * 1103515245 + 12345) % 2147483648;
     printf "%d w%x %d\n", s % 1000003, s, i } }' > "$tmp/big.txt"
cat > "$tmp/db.sql" <<'EOF'
create table t(id integer primary key, k text, v integer);
with recursive n(i) as (select 1 union all select i + 1 from n where i < 150000)
insert into t select i, printf('key%07d', (i * 7919) % 150000), (i * 31) % 1000 from n;
create index t_k on t(k);
select count(*), sum(v), count(distinct k) from t;
select k, v from t order by k desc limit 5;
select v % 10, count(*), avg(id) from t group by 1 order by 1;
delete from t where v < 500;
select count(*), min(k), max(k) from t;
EOF

# ---- identical output, counted allocations ----------------------------------------
start_daemon main
compare() {   # name, min mallocs, command...
    local name=$1 min=$2
    shift 2
    timeout 300 "$@" > "$tmp/$name.glibc" 2> "$tmp/$name.glibc.err"
    local rc1=$? before
    before=$(field Mallocs)
    under timeout 300 "$@" > "$tmp/$name.heapd" 2> "$tmp/$name.heapd.err"
    local rc2=$? after
    after=$(field Mallocs)
    if [ $rc1 -ne $rc2 ]; then
        fail "$name: exit $rc2 under preload, $rc1 with glibc"; cat "$tmp/$name.heapd.err"
    elif ! cmp -s "$tmp/$name.glibc" "$tmp/$name.heapd"; then
        fail "$name: output differs"; diff "$tmp/$name.glibc" "$tmp/$name.heapd" | head -10
    elif grep -q '^heapd' "$tmp/$name.heapd.err"; then
        fail "$name: heapd complained"; grep '^heapd' "$tmp/$name.heapd.err" | head -5
    elif [ $((after - before)) -lt "$min" ]; then
        fail "$name: the daemon counted $((after - before)) allocations, expected at least $min"
    else
        pass "$name: same output ($(wc -c < "$tmp/$name.heapd") bytes), exit $rc2, $((after - before)) allocations counted"
    fi
}
compare python 10000 $python "$src/tests/preload/prog.py"
compare sqlite3 10000 sqlite3 :memory: ".read $tmp/db.sql"
compare sort 300 sort "$tmp/big.txt"
compare sort-numeric 300 sort -n -k3,3 -k1,1 "$tmp/big.txt"
compare cxx 100000 "$tmp/cxx"
compare stress 100000 "$tmp/stress"

# ---- the program name, HEAPD_QUOTA --------------------------------------------------
# A process under preload waits on a fifo we hold open, so it stays while we
# look. HEAPD_PRELOAD_FORK=share: its fork child stays a client (with the
# default, copy, a child leaves the heap: docs/preload.md).
mkfifo "$tmp/hold"
exec 7<>"$tmp/hold"
HEAPD_PRELOAD_FORK=share HEAPD_QUOTA=64MiB under "$tmp/stress" hold <&7 &
holder=$!
pids+=("$holder")
has_two() { [ "$("$heapctl" --control "$sock.ctl" clients --json | grep -o '"Name":"stress","Slot":[0-9]*,[^}]*"Quota":67108864' | wc -l)" -ge 2 ]; }
# the child appears once it allocates (its first Refill)
if wait_for "stress and its child in heapctl clients with quota 64 MiB" has_two; then
    fams=$("$heapctl" --control "$sock.ctl" clients --json | grep -o '"Name":"stress",[^}]*"Family":[0-9]*' |
           sed 's/.*"Family"://' | sort -u)
    if [ "$(echo "$fams" | wc -l)" = 1 ] && [ "${fams:-0}" -gt 0 ]; then
        pass "heapctl clients: stress (parent and fork child) with HEAPD_QUOTA=64MiB's quota, one family ($fams)"
    else
        fail "heapctl clients: the parent and its share-mode child should show one family, got: $fams"
    fi
fi
echo xx >&7
wait "$holder" || fail "the held process and its child: exit $?"
exec 7>&-
out=$(HEAPD_QUOTA=32MiB under $python -c '
try:
    b = bytearray(64 << 20); print("allocated")
except MemoryError:
    print("MemoryError")
small = [bytes(1000) for _ in range(1000)]; print("small ok", len(small))' 2>&1)
if [ "$out" = "$(printf 'MemoryError\nsmall ok 1000')" ]; then
    pass "HEAPD_QUOTA=32MiB refuses a 64 MiB allocation, smaller ones go on"
else
    fail "HEAPD_QUOTA=32MiB: got: $out"
fi
out=$(HEAPD_QUOTA=lots under /bin/true 2>&1)
case $out in *"HEAPD_QUOTA=lots"*) pass "a malformed HEAPD_QUOTA is reported" ;;
             *) fail "malformed HEAPD_QUOTA: got: $out" ;; esac

# ---- fallback: no daemon ------------------------------------------------------------
$python "$src/tests/preload/prog.py" > "$tmp/ref.out" 2>/dev/null
HEAPD_SOCKET=$tmp/nobody.sock LD_PRELOAD=$lib $python "$src/tests/preload/prog.py" > "$tmp/nod.out" 2> "$tmp/nod.err"
if cmp -s "$tmp/ref.out" "$tmp/nod.out" && [ "$(grep -c '^heapd: cannot attach' "$tmp/nod.err")" = 1 ] &&
   [ "$(grep -c '^heapd' "$tmp/nod.err")" = 1 ]; then
    pass "no daemon, fallback libc: same output, said once on stderr"
else
    fail "no daemon, fallback libc"; cat "$tmp/nod.err" | head -5
fi
{ HEAPD_PRELOAD_FALLBACK=abort HEAPD_SOCKET=$tmp/nobody.sock LD_PRELOAD=$lib /bin/true 2> "$tmp/abort.err"; } 2>/dev/null
rc=$?
if [ $rc -eq 134 ] && [ "$(wc -l < "$tmp/abort.err")" = 1 ] && grep -q 'HEAPD_PRELOAD_FALLBACK=abort' "$tmp/abort.err"; then
    pass "no daemon, fallback abort: one line, SIGABRT"
else
    fail "no daemon, fallback abort: exit $rc"; cat "$tmp/abort.err"
fi

# ---- fallback: the daemon goes away mid-run ---------------------------------------------
# The program allocates (phase 1), says "ready", waits for a line on stdin;
# we kill its daemon, then let it go on: it frees what it had and allocates
# 100 MB more.
cat > "$tmp/mid.py" <<'EOF'
import sys
old = [str(i) * 10 for i in range(200000)] + [bytearray(1 << 20) for _ in range(8)]
print("ready", flush=True)
sys.stdin.readline()
total = sum(len(s) for s in old)
del old
new = [bytearray(1 << 20) for _ in range(100)] + [str(i) * 10 for i in range(300000)]
print("after", total, sum(len(s) for s in new))
EOF
echo go | $python "$tmp/mid.py" > "$tmp/mid.ref"
midrun() {   # policy -> prints exit status; output in $tmp/mid.out, $tmp/mid.err
    start_daemon "mid$1"
    rm -f "$tmp/go"; mkfifo "$tmp/go"
    HEAPD_PRELOAD_FALLBACK=$1 under $python "$tmp/mid.py" < "$tmp/go" > "$tmp/mid.out" 2> "$tmp/mid.err" &
    local prog=$!
    pids+=("$prog")
    exec 8>"$tmp/go"
    wait_for "the program's first phase" grep -q ready "$tmp/mid.out" >&2
    kill -9 "$dpid"
    wait "$dpid" 2>/dev/null
    echo go >&8
    exec 8>&-
    wait "$prog"
    echo $?
}
rc=$(midrun libc)
if [ "$rc" = 0 ] && cmp -s "$tmp/mid.ref" "$tmp/mid.out" &&
   [ "$(grep -c '^heapd: the daemon went away' "$tmp/mid.err")" = 1 ]; then
    pass "daemon killed mid-run, fallback libc: the program finished, said so once"
else
    fail "daemon killed mid-run, fallback libc: exit $rc"; cat "$tmp/mid.out" "$tmp/mid.err" | head -5
fi
rc=$(midrun abort)
if [ "$rc" = 134 ] && grep -q 'HEAPD_PRELOAD_FALLBACK=abort' "$tmp/mid.err"; then
    pass "daemon killed mid-run, fallback abort: one line, SIGABRT"
else
    fail "daemon killed mid-run, fallback abort: exit $rc"; cat "$tmp/mid.err" | head -5
fi

# ---- reclaim at exit -------------------------------------------------------------------
# A preload process is a family of its own: its spans are never shared, so
# when it ends (exit, or SIGKILL) the daemon frees everything it still held:
# small, large-class and large objects. The heap's pages in use, live bytes
# and live objects return to what they were before it ran (exactly, after a
# normal exit: its counts were flushed; after a SIGKILL, pages and spans).
start_daemon reclaim
clients_are() { [ "$(field Clients)" = "$1" ]; }
snap() { echo "HeapInuse=$(field HeapInuse) HeapAlloc=$(field HeapAlloc) HeapObjects=$(field HeapObjects) SpansLarge=$(field SpansLarge)"; }
heap_inuse() { field HeapInuse; }
s0=$(snap)
m0=$(field Mallocs)
under "$tmp/stress" leak
wait_for "the leaking process's connection to end" clients_are 0
s1=$(snap)
m1=$(field Mallocs)
if [ "$s1" = "$s0" ] && [ $((m1 - m0)) -ge 25000 ]; then
    pass "reclaim at exit: $((m1 - m0)) allocations, and back to $s1"
else
    fail "reclaim at exit: $s0 before, $s1 after the process exited ($((m1 - m0)) allocations counted)"
fi
(under "$tmp/stress" leak kill) 2>/dev/null   # (the shell's "Killed" line too)
wait_for "the killed process's connection to end" clients_are 0
if [ "$(heap_inuse)" = "$(echo "$s0" | sed 's/^HeapInuse=\([0-9]*\).*/\1/')" ]; then
    pass "reclaim after SIGKILL: pages in use back to $(heap_inuse) B"
else
    fail "reclaim after SIGKILL: HeapInuse $(heap_inuse), was $s0"
fi
under $python -c 'd = {i: str(i) * 3 for i in range(200000)}; print(len(d))' > /dev/null
wait_for "python's connection to end" clients_are 0
s2=$(snap)
if [ "$s2" = "$s0" ]; then
    pass "reclaim at exit: python3 with a 200k-entry dict left nothing ($s2)"
else
    fail "reclaim at exit, python3: $s0 before, $s2 after"
fi
# HEAPD_PRELOAD_FORK=share: parent and child are one family. The parent
# exits holding everything while its child, which shares its objects, lives
# on: nothing may be freed under the child (it checks its inherited objects
# once the parent's connection has ended, before and after allocating); once
# the child has exited too, everything is back.
rm -f "$tmp/go"; mkfifo "$tmp/go"
exec 8<>"$tmp/go"
HEAPD_PRELOAD_FORK=share under "$tmp/stress" family <&8 > "$tmp/family.out" 2>&1
wait_for "the family's parent's connection to end" clients_are 0
echo x >&8
family_done() { grep -q '^family:' "$tmp/family.out"; }
wait_for "the family's child to check its objects" family_done
wait_for "the family's child's connection to end" clients_are 0
s3=$(snap)
if grep -q '^family: ok' "$tmp/family.out" && [ "$s3" = "$s0" ]; then
    pass "HEAPD_PRELOAD_FORK=share: the child's inherited objects outlived its parent; back to $s3 once both exited"
else
    fail "HEAPD_PRELOAD_FORK=share family: $(cat "$tmp/family.out"); $s0 before, $s3 after both"
fi
# the same with a child that never allocates (it never connects: its
# membership is its pid's, and its exit alone ends the family)
: > "$tmp/family.out"
HEAPD_PRELOAD_FORK=share under "$tmp/stress" family quiet <&8 > "$tmp/family.out" 2>&1
wait_for "the quiet family's parent's connection to end" clients_are 0
echo x >&8
wait_for "the quiet family's child to check its objects" family_done
family_gone() { [ "$(snap)" = "$s0" ]; }
if grep -q '^family: ok' "$tmp/family.out" && wait_for "the quiet family's memory to be freed" family_gone; then
    pass "HEAPD_PRELOAD_FORK=share, a child that never allocates: its objects outlived its parent; freed once it exited"
else
    fail "HEAPD_PRELOAD_FORK=share quiet family: $(cat "$tmp/family.out"); $s0 before, $(snap) after"
fi
exec 8>&-

# ---- a fleet of 8 under one hard limit -------------------------------------------------
# 8 processes each want 64 MiB (512 MiB in all) under --hard-limit 256MiB and
# --memory-limit 192MiB: some must get a MemoryError, none may crash (their
# interpreters start before any fills the heap; the waits after the fill
# retry an allocation the limit refuses), the
# heap's committed bytes must never be seen above the hard limit, and the
# daemon must have refused and asked for memory back (pressure, flushes).
start_daemon fleet --hard-limit 256MiB --memory-limit 192MiB
cat > "$tmp/fleet.py" <<'EOF'
import os, sys, time
d = sys.argv[1]
def count(prefix):
    try:
        return sum(n.startswith(prefix) for n in os.listdir(d))
    except (MemoryError, OSError):     # the heap is at its hard limit: ask again
        return -1
def mark(prefix):
    while True:
        try:
            open(os.path.join(d, "%s.%d" % (prefix, os.getpid())), "w").close()
            return
        except (MemoryError, OSError):
            time.sleep(0.01)
def wait_all(prefix):
    deadline = time.time() + 30
    while count(prefix) < 8 and time.time() < deadline:
        time.sleep(0.01)
# all 8 interpreters are up before any of them fills the heap (an
# interpreter that cannot start aborts, under any allocator)
mark("up")
wait_all("up")
held = []
try:
    while len(held) < 64:
        held.append(bytearray(1 << 20))
except MemoryError:
    pass
refused = len(held) < 64
if refused:
    del held[len(held) // 2:]          # give half back, as a program that caught it would
# hold the rest until all 8 have tried (or 30 s), so that they overlap
mark("done")
wait_all("done")
print(refused)
EOF
mkdir -p "$tmp/fleet.done"
fleet=()
for i in 1 2 3 4 5 6 7 8; do
    under $python "$tmp/fleet.py" "$tmp/fleet.done" > "$tmp/fleet.$i" 2>&1 &
    fleet+=($!)
    pids+=($!)
done
maxc=0 hard=$((256 << 20))
while :; do
    c=$(stats | grep -o '"Committed":[0-9]*' | cut -d: -f2)
    [ -n "$c" ] && [ "$c" -gt "$maxc" ] && maxc=$c
    alive=0
    for p in "${fleet[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
done
bad=0
for i in "${!fleet[@]}"; do
    wait "${fleet[$i]}" || bad=$((bad + 1))
done
refused=$(stats | grep -o '"HardLimitRefusals":[0-9]*' | cut -d: -f2)
pressed=$(stats | grep -o '"PressureSent":[0-9]*' | cut -d: -f2)
refusedp=$(cat "$tmp"/fleet.? | grep -c '^True$')
if [ $bad = 0 ] && [ "$refusedp" -gt 0 ] && [ "$maxc" -le $hard ] && [ "$maxc" -gt 0 ] &&
   [ "${refused:-0}" -gt 0 ] && [ "${pressed:-0}" -gt 0 ]; then
    pass "fleet of 8 under --hard-limit 256MiB: none crashed, $refusedp got a MemoryError, committed peaked at $maxc bytes (seen), $refused refusals, $pressed pressures sent"
else
    fail "fleet: $bad crashed, peak committed seen $maxc (hard limit $hard), refusals ${refused:-?}, pressures ${pressed:-?}"
    head -3 "$tmp"/fleet.?
fi

echo
if [ $fails -gt 0 ]; then
    echo "preload: $fails check(s) failed"
    exit 1
fi
echo "preload: every check passed"
