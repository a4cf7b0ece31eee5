#!/usr/bin/env bash
# `make run`: start heapd in the foreground on its embedded defaults, with the
# socket under run/ in the checkout, after saying how to talk to it.
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$top/run"
sock="$top/run/heapd.sock"
cat <<MSG
heapd: starting on $sock (Ctrl-C stops it).
In another terminal, attach a client and run the example:

  export HEAPD_SOCKET=$sock
  $build/table-build 1000          # builds a hash table in the shared heap, prints its offset
  $build/table-read  OFFSET        # another process reads it by offset and frees it
  $build/heapctl stats             # memstats (the control socket: \$HEAPD_SOCKET.ctl); also clients, top

Programs link libheapd ($build/libheapd.so, header client/heapd.h) and call
heapd_attach(NULL) to use \$HEAPD_SOCKET.
MSG
exec "$top/$build/heapd" --socket "$sock" --foreground
