#!/usr/bin/env bash
# Installs what the build and tests need and a fresh Debian lacks: protoc (protobuf-compiler),
# and with TESTS=1 schemathesis (from PyPI, in a virtualenv under ~/.cache) for the OpenAPI
# conformance test, and Chromium with its ChromeDriver for the dashboard's browser tests.
# etcd comes from the etcd-bin-vendored crate (etcd 3.7); Debian's etcd-server is installed only
# as a fallback when ETCD_FALLBACK=1. With BENCH=1 it also installs wrk, the benchmark's HTTP
# load tool.
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [[ "${ETCD_FALLBACK:-0}" == 1 ]] && ! command -v etcd >/dev/null 2>&1; then need+=(etcd-server); fi
if [[ "${BENCH:-0}" == 1 ]] && ! command -v wrk >/dev/null 2>&1; then need+=(wrk); fi
# The dashboard's browser tests drive Debian's Chromium through its ChromeDriver (~500 MB).
if [[ "${TESTS:-0}" == 1 ]]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if ! python3 -m venv --help >/dev/null 2>&1; then need+=(python3-venv); fi
install_schemathesis() {
  [[ "${TESTS:-0}" == 1 ]] || return 0
  local venv="$HOME/.cache/telemetry-pipeline/schemathesis" version=4.32.5
  if [[ -x "$venv/bin/schemathesis" ]] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    return 0
  fi
  echo "installing: schemathesis $version (PyPI, into $venv)"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q "schemathesis==$version" || {
    echo "error: could not install schemathesis into $venv" >&2; exit 1; }
}
if ((${#need[@]} == 0)); then install_schemathesis; exit 0; fi

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
install_schemathesis
