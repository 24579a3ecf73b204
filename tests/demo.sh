#!/usr/bin/env bash
# `make demo`: a local etcd, one collector, the gateway and a looping streamer on a generated
# fleet. Logs go to .demo/logs; Ctrl-C stops everything (SIGTERM, then waits for each to drain).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.demo
mkdir -p "$demo/logs"

etcd_bin=$(cargo run -q --release -p pipeline-tests --bin etcd-path 2>/dev/null || true)
if [[ ! -x "$etcd_bin" ]]; then
  echo "no vendored etcd for this platform; falling back to Debian's etcd-server"
  ETCD_FALLBACK=1 bash .ci/deps.sh
  etcd_bin=$(command -v etcd) || { echo "error: no etcd binary; install one with 'apt-get install etcd-server'" >&2; exit 1; }
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
etcd_port=${DEMO_ETCD_PORT:-2379}
port_free "$etcd_port" || etcd_port=23790
port_free "$etcd_port" || { echo "error: ports 2379 and 23790 are busy; set DEMO_ETCD_PORT" >&2; exit 1; }
gw_port=${GATEWAY_PORT:-8080}
port_free "$gw_port" || { echo "error: port $gw_port is busy; set GATEWAY_PORT" >&2; exit 1; }

if [[ ! -f "$demo/fleet.csv" ]]; then
  bin/streamer generate --hosts 8 --gpus-per-host 8 --steps 30 --interval 10s --out "$demo/fleet.csv"
fi

# Each process runs in its own session (setsid), so Ctrl-C reaches only this script, which then
# stops them newest first: the streamer drains into a live etcd, and etcd goes last.
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; wait "${pids[$i]}" 2>/dev/null || true; done
  echo "stopped. Logs are in $demo/logs."
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

setsid "$etcd_bin" --name demo --data-dir "$demo/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "demo=http://127.0.0.1:$((etcd_port + 1))" \
  --quota-backend-bytes 4294967296 \
  --log-level warn >"$demo/logs/etcd.log" 2>&1 &
pids+=($!)
export ETCD_ENDPOINTS="127.0.0.1:$etcd_port"
for _ in $(seq 100); do port_free "$etcd_port" || break; sleep 0.1; done

TELEMETRY_RETENTION=${TELEMETRY_RETENTION:-2h} DEDUPE_WINDOW=${DEDUPE_WINDOW:-1h} ADMIN_LISTEN=127.0.0.1:9102 ETCD_QUOTA_BYTES=4GiB \
  setsid bin/collector >"$demo/logs/collector.log" 2>&1 &
pids+=($!)
GATEWAY_PORT=$gw_port setsid bin/gateway >"$demo/logs/gateway.log" 2>&1 &
pids+=($!)
STREAM_RATE=${STREAM_RATE:-200} ADMIN_LISTEN=127.0.0.1:9101 \
  setsid bin/streamer --csv "$demo/fleet.csv" --loop >"$demo/logs/streamer.log" 2>&1 &
pids+=($!)

cat <<TXT

The pipeline is running (etcd at 127.0.0.1:$etcd_port, streaming ${STREAM_RATE:-200} records/s).
Try, from another terminal:
  curl -s localhost:$gw_port/api/v1/gpus | head -c 600
  curl -s localhost:$gw_port/api/v1/hosts
  curl -s 'localhost:$gw_port/api/v1/gpus/0/telemetry?hostname=gpu-node-001&limit=5'
  wscat -c ws://localhost:$gw_port/api/v1/ws/telemetry?metric=DCGM_FI_DEV_GPU_TEMP
  curl -s localhost:$gw_port/metrics | grep http_requests
  curl -s localhost:9102/metrics | grep -E 'messages_processed|etcd_db_size|storage_'
  open http://localhost:$gw_port/docs
Ctrl-C stops everything.
TXT
wait -n "${pids[@]}" || true
echo "a process exited on its own; see $demo/logs"
