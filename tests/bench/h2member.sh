#!/usr/bin/env bash
# HTTP/2 to a member: h2c clients (h2load) through Keel and HAProxy to one
# nginx member speaking HTTP/2 (prior knowledge), which, as nginx does by
# default, ends each connection with a GOAWAY after 1,000 requests. Prints
# requests/s and the 5xx answers of each proxy, round by round. (nginx
# cannot speak HTTP/2 to a member, so it is not in this one.)
#
#   tests/bench/h2member.sh [ROUNDS, default 3]
#     KEEL_BIN picks the Keel build; KEEL_B adds a second one to the rounds;
#     BODY=BYTES makes each request a POST with a body that long
#
# Each proxy runs one worker, pinned to core 0; h2load and the member run
# where the scheduler puts them: compare within a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx h2load=nghttp2-client
bench_keel
bench_work
ROUNDS=${1:-3}
member=18486

cat > "$work/member.conf" <<CONF
worker_processes 1;
pid $work/member.pid;
error_log $work/member.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$member http2; location / { return 200 "hello world\n"; } }
}
CONF
nginx -c "$work/member.conf" -g 'daemon off;' & pids+=($!)

cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: h2
    listeners: [ { port: 18480, protocol: http, bind: 127.0.0.1, default_pool: member } ]
pools:
  - name: member
    http_version: http2
    members: [ { address: "127.0.0.1:$member" } ]
CONF
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend h2
  bind 127.0.0.1:18481 proto h2
  default_backend member
backend member
  http-reuse always
  server m 127.0.0.1:$member proto h2
CONF

# One round against the proxy on PORT: "requests/s 5xx". Each round sets
# $result to it, once its proxy is gone (the next one binds the same ports).
body=()
if [ -n "${BODY:-}" ]; then
  head -c "$BODY" /dev/zero >"$work/body"
  body=(-d "$work/body")
fi
load() {
  h2load -c 16 -m 10 -n 200000 -t 1 "${body[@]}" "http://127.0.0.1:$1/" 2>&1 |
    awk '/^finished in/ {rate=$4} /^status codes:/ {fives=$9} END {print rate, fives}'
}

keel_round() {
  rm -rf "$work/keel-data"
  KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=error taskset -c 0 "$1" run --workers 1 \
    --config "$work/keel.yaml" --data-dir "$work/keel-data" \
    --admin-addr 127.0.0.1:18499 --cluster-addr 127.0.0.1:18498 2>>"$work/keel.err" &
  local pid=$!
  until curl -s --http2-prior-knowledge -o /dev/null http://127.0.0.1:18480/; do sleep 0.1; done
  bench_settle "$pid" 4
  result=$(load 18480)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

haproxy_round() {
  taskset -c 0 haproxy -f "$work/haproxy.cfg" -db 2>>"$work/haproxy.err" &
  local pid=$!
  until curl -s --http2-prior-knowledge -o /dev/null http://127.0.0.1:18481/; do sleep 0.1; done
  result=$(load 18481)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

printf '| round | proxy | requests/s | 5xx of 200,000 |\n|---|---|---|---|\n'
for round in $(seq "$ROUNDS"); do
  keel_round "$KEEL_BIN"
  read -r rate fives <<<"$result"
  printf '| %s | Keel | %s | %s |\n' "$round" "$rate" "$fives"
  if [ -n "${KEEL_B:-}" ]; then
    keel_round "$KEEL_B"
    read -r rate fives <<<"$result"
    printf '| %s | Keel B | %s | %s |\n' "$round" "$rate" "$fives"
  fi
  haproxy_round
  read -r rate fives <<<"$result"
  printf '| %s | HAProxy | %s | %s |\n' "$round" "$rate" "$fives"
done
