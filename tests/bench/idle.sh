#!/usr/bin/env bash
# Memory per idle keep-alive client connection: Keel, HAProxy and nginx,
# same run, same backend, same client, one at a time.
#
#   tests/bench/idle.sh [connections, default 100000]
#
# Each proxy (one worker: --workers 1, nbthread 1, worker_processes 1;
# idle keep-alive allowed 10 minutes) gets N connections from
# `idle_clients` (127.0.0.1-8 as sources), each served one GET and then
# left idle; its resident memory (VmRSS, summed over nginx's processes) is
# read before and after, and the difference divided by N. Run as root: the
# file-descriptor limit is raised to 1,048,576 where the host lets it, else
# to its hard limit, and N is cut to what one Keel worker then accepts
# (half the limit less a reserve: the other half is for member
# connections). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}

. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light
bench_keel
# The client's speed does not matter here: a debug build does.
cargo build -p keel-tests --bin idle_clients -q
bench_work
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
most=$(((limit - (limit / 4 < 1024 ? limit / 4 : 1024)) / 2 - 100))
if [ "$N" -gt "$most" ]; then
  echo "(the file-descriptor limit here is $limit: $most connections, not $N)" >&2
  N=$most
fi

bench_backends 1900

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn $((N + 100))
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 60s
  timeout http-keep-alive 600s
frontend web
  bind 127.0.0.1:19080
  default_backend app
backend app
  http-reuse always
  server a 127.0.0.1:19001
CONF

cat > "$work/proxy.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $limit;
pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections $((N + 100)); }
http {
  access_log off;
  keepalive_timeout 600s;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:19001; keepalive 16; }
  server {
    listen 127.0.0.1:19080;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF

cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: bench
    listeners:
      - { port: 19080, protocol: http, bind: 127.0.0.1, default_pool: app, keepalive_timeout: 600s }
pools:
  - name: app
    members: [ { address: "127.0.0.1:19001" } ]
CONF

# Resident memory in KiB of PID and its child processes.
rss() {
  local p t=0
  for p in "$1" $(pgrep -P "$1"); do
    t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/19080) 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on 19080" >&2
  exit 1
}

measure() {
  local name=$1 pid=$2 before after ready
  wait_port
  sleep 1
  before=$(rss "$pid")
  coproc CLIENTS { target/debug/idle_clients 127.0.0.1:19080 "$N"; }
  read -r ready <&"${CLIENTS[0]}"
  sleep 2
  after=$(rss "$pid")
  eval "exec ${CLIENTS[1]}>&-"
  wait "$CLIENTS_PID" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v n="$name" -v b="$before" -v a="$after" -v r="$ready" -v c="$N" 'BEGIN {
    printf "| %s | %.1f | %.1f | %.2f | %s |\n", n, b / 1024, a / 1024, (a - b) * 1024 / c / 1024, r
  }'
}

echo "| proxy | RSS idle (MiB) | RSS with $N connections (MiB) | KiB per connection | clients |"
echo "|---|---|---|---|---|"
KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=warn "$KEEL_BIN" run --workers 1 --config "$work/keel.yaml" \
  --data-dir "$work/keel-data" --admin-addr 127.0.0.1:19099 --cluster-addr 127.0.0.1:19098 \
  2>"$work/keel.err" &
keel=$!
bench_settle "$keel" 4
measure keel "$keel"
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
measure haproxy $!
nginx -c "$work/proxy.conf" -g 'daemon off;' &
measure nginx $!
