#!/usr/bin/env bash
# `make demo-secure`: the demo with everything docs/security.md asks of production. etcd serves
# clients only over mutual TLS with authentication on; each process logs in as its own
# least-privilege user (made by `collector etcd-auth`); the gateway and the push listener serve
# HTTPS and want API tokens. Certificates come from a throw-away CA made with openssl.
# State goes to .demo-secure/; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.demo-secure
pki=$demo/pki
mkdir -p "$demo/logs" "$pki"

command -v openssl >/dev/null || {
  echo "installing: openssl"
  DEBIAN_FRONTEND=noninteractive $([ "$(id -u)" = 0 ] || echo sudo) apt-get install -y -qq openssl >/dev/null
}
etcd_bin=$(cargo run -q --release -p pipeline-tests --bin etcd-path 2>/dev/null || true)
if [[ ! -x "$etcd_bin" ]]; then
  ETCD_FALLBACK=1 bash .ci/deps.sh
  etcd_bin=$(command -v etcd) || { echo "error: no etcd binary; install one with 'apt-get install etcd-server'" >&2; exit 1; }
fi

# A CA, a certificate for the servers (etcd, gateway, push listener) and client certificates:
# `root` for the one-time setup, `pipeline` for mutual TLS of the processes (their etcd user
# comes from their password login).
issue() { # name CN extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
    -keyout "$pki/$1-key.pem" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial \
    -days 30 -out "$pki/$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
}
if [[ ! -f "$pki/ca.pem" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=telemetry demo CA" -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>/dev/null
  issue server localhost $'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth'
  issue root root 'extendedKeyUsage=clientAuth'
  issue pipeline pipeline 'extendedKeyUsage=clientAuth'
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
etcd_port=${DEMO_ETCD_PORT:-2379}
port_free "$etcd_port" || etcd_port=23790
port_free "$etcd_port" || { echo "error: ports 2379 and 23790 are busy; set DEMO_ETCD_PORT" >&2; exit 1; }
gw_port=${GATEWAY_PORT:-8443}
ingest_port=${INGEST_PORT:-9443}
for p in "$gw_port" "$ingest_port"; do port_free "$p" || { echo "error: port $p is busy" >&2; exit 1; }; done
[[ -f "$demo/fleet.csv" ]] || bin/streamer generate --hosts 8 --gpus-per-host 8 --steps 30 --out "$demo/fleet.csv"

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
  --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "demo=http://127.0.0.1:$((etcd_port + 1))" \
  --client-cert-auth --trusted-ca-file "$pki/ca.pem" --cert-file "$pki/server.pem" --key-file "$pki/server-key.pem" \
  --quota-backend-bytes 4294967296 --log-level warn >"$demo/logs/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do port_free "$etcd_port" || break; sleep 0.1; done

export ETCD_ENDPOINTS="127.0.0.1:$etcd_port" ETCD_CA_FILE="$pki/ca.pem"
# Roles, users and their passwords (under $demo/secrets), then auth on: as root, by certificate.
ETCD_CERT_FILE=$pki/root.pem ETCD_KEY_FILE=$pki/root-key.pem \
  bin/collector etcd-auth --secrets-dir "$demo/secrets" >"$demo/logs/etcd-auth.log"
export ETCD_CERT_FILE="$pki/pipeline.pem" ETCD_KEY_FILE="$pki/pipeline-key.pem"
as() { # user command... (only in a subshell: `as ... &` or `$(as ...)`, since it execs)
  local user=$1; shift
  # exec, so that `$!` of `as ... &` is the process itself, which cleanup then stops.
  ETCD_USERNAME="telemetry-$user" ETCD_PASSWORD_FILE="$demo/secrets/telemetry-$user.password" exec "$@"
}
token() { as gateway bin/gateway token create --role "$1" --name "demo $1" 2>/dev/null; }
read_token=$(token read); admin_token=$(token admin); ingest_token=$(token ingest)
printf 'read=%s\nadmin=%s\ningest=%s\n' "$read_token" "$admin_token" "$ingest_token" >"$demo/tokens"
chmod 600 "$demo/tokens"

TELEMETRY_RETENTION=2h DEDUPE_WINDOW=1h ADMIN_LISTEN=127.0.0.1:9102 ETCD_QUOTA_BYTES=4GiB \
  ETCD_MAINTENANCE_USERNAME=telemetry-maintenance ETCD_MAINTENANCE_PASSWORD_FILE="$demo/secrets/telemetry-maintenance.password" \
  as collector setsid bin/collector >"$demo/logs/collector.log" 2>&1 &
pids+=($!)
GATEWAY_PORT=$gw_port AUTH_MODE=token TLS_CERT_FILE=$pki/server.pem TLS_KEY_FILE=$pki/server-key.pem \
  as gateway setsid bin/gateway >"$demo/logs/gateway.log" 2>&1 &
pids+=($!)
STREAM_RATE=${STREAM_RATE:-200} ADMIN_LISTEN=127.0.0.1:9101 AUTH_MODE=token \
  TLS_CERT_FILE=$pki/server.pem TLS_KEY_FILE=$pki/server-key.pem \
  as streamer setsid bin/streamer --csv "$demo/fleet.csv" --loop --listen "127.0.0.1:$ingest_port" >"$demo/logs/streamer.log" 2>&1 &
pids+=($!)

cat <<TXT

The secure pipeline is running: etcd over mutual TLS with auth at 127.0.0.1:$etcd_port, the
gateway at https://localhost:$gw_port, push ingest at https://localhost:$ingest_port.
Tokens are in $demo/tokens, etcd passwords in $demo/secrets. Try, from another terminal:
  curl -s --cacert $pki/ca.pem https://localhost:$gw_port/api/v1/gpus                 # 401
  curl -s --cacert $pki/ca.pem -H "Authorization: Bearer $read_token" https://localhost:$gw_port/api/v1/hosts
  curl -s --cacert $pki/ca.pem -X PUT -H "Authorization: Bearer $admin_token" -H 'content-type: application/json' \\
       -d '{"value": 100}' https://localhost:$gw_port/api/v1/config/stream.rate
  wscat --ca $pki/ca.pem -H "Authorization: Bearer $read_token" -c wss://localhost:$gw_port/api/v1/ws/telemetry
Ctrl-C stops everything.
TXT
wait -n "${pids[@]}" || true
echo "a process exited on its own; see $demo/logs"
