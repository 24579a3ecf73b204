#!/usr/bin/env bash
# Installs what the build and tests need and a fresh Debian lacks: protoc (protobuf-compiler).
# etcd comes from the etcd-bin-vendored crate (etcd 3.7); Debian's etcd-server is installed only
# as a fallback when ETCD_FALLBACK=1. With BENCH=1 it also installs wrk, the benchmark's HTTP
# load tool.
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [[ "${ETCD_FALLBACK:-0}" == 1 ]] && ! command -v etcd >/dev/null 2>&1; then need+=(etcd-server); fi
if [[ "${BENCH:-0}" == 1 ]] && ! command -v wrk >/dev/null 2>&1; then need+=(wrk); fi
((${#need[@]} == 0)) && exit 0

echo "installing: ${need[*]}"
if [[ "$(id -u)" == 0 ]]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
  echo "error: ${need[*]} missing and not root: run 'sudo apt-get install ${need[*]}'" >&2; exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: ${need[*]} missing and apt-get not available: install them with your package manager" >&2; exit 1
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null || {
  echo "error: apt-get could not install ${need[*]}; install them by hand and retry" >&2; exit 1; }
