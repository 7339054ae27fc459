#!/usr/bin/env bash
# Memory per idle keep-alive client connection: Keel, HAProxy and nginx,
# same run, same backend, same client, one at a time.
#
#   tests/bench/idle.sh [connections, default 100000]
#
# Each proxy (one worker: --workers 1, nbthread 1, worker_processes 1;
# idle keep-alive allowed 10 minutes) gets N connections from
# `idle_clients` (127.0.0.1-8 as sources), each served one GET and then
# left idle, in two batches of N/2; its resident memory (VmRSS, summed over
# nginx's processes) is read before, between and after, and the growth is
# divided by N, and the second batch's by N/2 (memory a proxy freed earlier
# and kept absorbs the first connections; the second half shows what each
# costs once that is used up). tests/bench/idle-vm.sh runs it in a virtual
# machine where the limit below can be raised. Run as root: the
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
# IDLE_CLIENTS names one built already (idle-vm.sh, in its VM).
if [ -z "${IDLE_CLIENTS:-}" ]; then
  cargo build -p keel-tests --bin idle_clients -q
  IDLE_CLIENTS=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')/debug/idle_clients
fi
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

# Starts `idle_clients` with COUNT connections as batch NAME and waits
# until they are all open; they stay open until `end_batch NAME`.
start_batch() {
  local name=$1 count=$2 fd
  mkfifo "$work/$name.in"
  "$IDLE_CLIENTS" 127.0.0.1:19080 "$count" <"$work/$name.in" >"$work/$name.out" &
  exec {fd}>"$work/$name.in"
  eval "hold_$name=$fd"
  until grep -q ready "$work/$name.out" 2>/dev/null; do sleep 0.2; done
}

end_batch() {
  local fd
  eval "fd=\$hold_$1"
  exec {fd}>&-
  rm -f "$work/$1.in" "$work/$1.out"
}

# Two batches of N/2: the second half's growth is what a connection costs
# once memory the proxy had already freed (and kept) is used up.
measure() {
  local name=$1 pid=$2 before mid after ready half=$((N / 2))
  wait_port
  sleep 1
  before=$(rss "$pid")
  start_batch first "$half"
  sleep 2
  mid=$(rss "$pid")
  start_batch second "$half"
  sleep 2
  after=$(rss "$pid")
  ready="$(cat "$work/first.out") / $(cat "$work/second.out")"
  end_batch first
  end_batch second
  wait_gone 19080
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v n="$name" -v b="$before" -v m="$mid" -v a="$after" -v r="$ready" -v c="$N" 'BEGIN {
    printf "| %s | %.1f | %.1f | %.2f | %.2f | %s |\n", n, b / 1024, a / 1024, (a - b) * 1024 / c / 1024, (a - m) * 1024 / (c / 2) / 1024, r
  }'
}

# Waits until the clients of the last measure are gone from PORT.
wait_gone() {
  for _ in $(seq 50); do
    ss -Htn state established "( sport = :$1 )" | grep -q . || return 0
    sleep 0.1
  done
}

echo "| proxy | RSS idle (MiB) | RSS with $N connections (MiB) | KiB per connection | KiB per connection, second half | clients |"
echo "|---|---|---|---|---|---|"
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
