#!/usr/bin/env bash
# Installs the Debian packages heapd builds against, only those that are missing.
# Usage: scripts/install-deps.sh [--bench] [--fuzz]
#   --bench adds the allocators bench/ compares with, --fuzz adds clang for libFuzzer
set -euo pipefail
pkgs=(build-essential cmake pkg-config libuv1-dev libprotobuf-c-dev protobuf-c-compiler
      liburing-dev libcunit1-dev
      systemd dpkg-dev file      # systemd-analyze (the systemd suite); dpkg-shlibdeps, file (make deb)
      python3 sqlite3 g++)       # programs the preload suite runs under libheapd-malloc.so
for a in "$@"; do
  case $a in
    --bench) pkgs+=(libjemalloc-dev libgoogle-perftools-dev libmimalloc-dev libboost-dev g++ gnuplot-nox) ;;
    --fuzz) pkgs+=(clang) ;;
    *) echo "install-deps: unknown option $a" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}"
SUDO=
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
