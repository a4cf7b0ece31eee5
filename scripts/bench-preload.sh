#!/usr/bin/env bash
# The cost of preload mode: wall time of the preload suite's programs under
# glibc's malloc, jemalloc, mimalloc (LD_PRELOAD of the Debian libraries, if
# installed: scripts/install-deps.sh --bench) and libheapd-malloc.so (on a
# heapd of its own), each the median of RUNS runs. Prints a Markdown table
# (docs/preload.md has one). Usage: scripts/bench-preload.sh BUILD_DIR [RUNS]
set -u
build=$(cd "${1:-build}" && pwd)
runs=${2:-5}
src=$(cd "$(dirname "$0")/.." && pwd)
python=/usr/bin/python3
[ -x $python ] || python=$(command -v python3)
tmp=$(mktemp -d /tmp/heapd-bench-preload.XXXXXX)
dpid=
cleanup() { [ -n "$dpid" ] && kill "$dpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
"$build/heapd" --socket "$tmp/s" --size 8GiB --foreground --quiet &
dpid=$!
end=$((SECONDS + 20))
until [ -S "$tmp/s" ]; do [ $SECONDS -ge $end ] && { echo "heapd did not start"; exit 1; }; sleep 0.05; done

cc -O2 -o "$tmp/stress" "$src/tests/preload/stress.c" -lpthread -ldl
g++ -O2 -std=c++17 -o "$tmp/cxx" "$src/tests/preload/cxx.cpp"
awk 'BEGIN { s = 12345; for (i = 0; i < 2000000; i++) { s = (s * 1103515245 + 12345) % 2147483648;
     printf "%d w%x %d\n", s % 1000003, s, i } }' > "$tmp/big.txt"
sed -n '/^create table/,/^select count(\*), min/p' "$src/scripts/test-preload.sh" > "$tmp/db.sql"

libdir=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
declare -A pre=([glibc]="" [jemalloc]=$libdir/libjemalloc.so.2 [mimalloc]=$libdir/libmimalloc.so.2
                [heapd]=$build/libheapd-malloc.so)
order=(glibc jemalloc mimalloc heapd)
median() { sort -n | awk '/fails/ { f = 1 } { a[NR] = $1 } END { if (f) printf "fails"; else printf "%.2f s", a[int((NR + 1) / 2)] }'; }
run() {   # allocator, command... -> median seconds, or "fails" when a run failed
    local a=$1 s
    shift
    for _ in $(seq "$runs"); do
        s=$(date +%s.%N)
        { HEAPD_SOCKET=$tmp/s LD_PRELOAD=${pre[$a]} "$@" > /dev/null 2>&1; } 2>/dev/null || { echo fails; return; }
        awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }'
    done | median
}
printf "| program | %s |\n|---|%s\n" "$(IFS='|'; echo "${order[*]}" | sed 's/|/ | /g')" "$(printf -- '---|%.0s' "${order[@]}")"
bench() {   # label, command...
    local label=$1 row
    shift
    row="| $label |"
    for a in "${order[@]}"; do
        if [ -n "${pre[$a]}" ] && [ ! -e "${pre[$a]}" ]; then row+=" n/a |"; continue; fi
        row+=" $(run "$a" "$@") |"
    done
    echo "$row"
}
bench "python3 prog.py (dicts, threads, fork)" $python "$src/tests/preload/prog.py"
bench "sqlite3 :memory: (150k rows)" sqlite3 :memory: ".read $tmp/db.sql"
bench "sort (2M lines, 30 MB)" sort "$tmp/big.txt"
bench "C++ std::map/std::string" "$tmp/cxx"
bench "stress.c (2000 threads, 50 forks)" "$tmp/stress"
