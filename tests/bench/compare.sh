#!/usr/bin/env bash
# Keel vs HAProxy vs nginx, same machine, same run, same backends.
#
#   tests/bench/compare.sh [seconds per run, default 10]
#
# Every proxy gets WORKERS workers (default 1: HAProxy nbthread, nginx
# worker_processes, keel --workers), keep-alive to clients and reused
# connections to the two backends, no access logs, and the same request
# headers added for the members (X-Forwarded-For, -Proto, -Port and
# Forwarded, which Keel always adds). wrk is the client.
# L7: a 13-byte response; L4: a 64 MiB file relayed by each proxy's TCP mode.
# Prints a Markdown table; the figures to compare are the ratios. The
# machine is shared and single runs swing by ±10%, so the proxies take
# turns, ROUNDS times (default 5), and a last table gives the median of
# each ratio over the rounds.
#
# With WORKERS equal to the cores, Keel pins each worker to a core of its
# own, as it does by default (KEEL_CPU_AFFINITY=false leaves them to the
# kernel, as HAProxy and nginx are).
#
# CLOSE=1 adds L7 rounds with a new connection per request ("Connection:
# close"): the accept path, which keep-alive leaves out. L4_ONLY=1 runs
# the L4 rounds alone.
#
# KEEL_B=PATH adds a second Keel build ("keel-b", L7 on 18083, L4 on
# 18093) to every round: two builds compared in the same run, since a
# change smaller than the machine's swing shows only that way.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}

. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light wrk=wrk \
  /usr/lib/nginx/modules/ngx_stream_module.so=libnginx-mod-stream
bench_keel
bench_work

B1=127.0.0.1:18001 B2=127.0.0.1:18002
mkdir -p "$work/www"
head -c $((64 * 1024 * 1024)) /dev/zero > "$work/www/big"

# Backends: two nginx servers, one worker each.
bench_backends 1800 "location = /big { root $work/www; }"

# HAProxy: L7 on 18081, L4 on 18091.
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread $WORKERS
  maxconn 8000
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend web
  mode http
  bind 127.0.0.1:18081
$(haproxy_forwarded http)
  default_backend app
backend app
  mode http
  balance roundrobin
  http-reuse always
  server a $B1
  server b $B2
listen bulk
  mode tcp
  bind 127.0.0.1:18091
  balance roundrobin
  server a $B1
  server b $B2
CONF
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
declare -A pid
pid[haproxy]=$!

# nginx as proxy: L7 on 18082, L4 on 18092.
cat > "$work/proxy.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $WORKERS;
pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections 8000; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server $B1; server $B2; keepalive 128; }
  server {
    listen 127.0.0.1:18082;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      $nginx_forwarded
    }
  }
}
stream {
  upstream bulk { server $B1; server $B2; }
  server { listen 127.0.0.1:18092; proxy_pass bulk; }
}
CONF
nginx -c "$work/proxy.conf" -g 'daemon off;' & pids+=($!)

# Keel: L7 on 18080, L4 on 18090.
cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: bench
    listeners:
      - { port: 18080, protocol: http, bind: 127.0.0.1, default_pool: app }
      - { port: 18090, protocol: tcp, bind: 127.0.0.1, default_pool: app }
$(keel_app "$B1" "$B2")
CONF
bench_run_keel keel "$KEEL_BIN" "$WORKERS" 18099 18098
names="haproxy keel nginx"
ports="18001 18002 18080 18081 18082 18090 18091 18092"
if [ -n "${KEEL_B:-}" ]; then
  sed -e 's/18080/18083/; s/18090/18093/' "$work/keel.yaml" > "$work/keel-b.yaml"
  bench_run_keel keel-b "$KEEL_B" "$WORKERS" 18097 18096
  names="haproxy keel keel-b nginx"
  ports="$ports 18083 18093"
fi

# shellcheck disable=SC2086 # a list of ports
bench_wait_ports $ports

# nginx's proxy workers are the children of its master: counted with it.
sleep 0.5
pid[nginx]=$(cat "$work/proxy.pid")

# Steady state: a short warm-up run through each proxy (member connections
# open, caches warm), and Keel's start-up work over.
for port in 18080 18081 18082 ${KEEL_B:+18083}; do
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
done
bench_settle "${pid[keel]}" $((WORKERS + 3))
[ -z "${KEEL_B:-}" ] || bench_settle "${pid[keel-b]}"


# wrk output → "req/s p50 p99 transfer/s"; more wrk arguments after the
# connection count.
measure() {
  local url=$1 conns=$2
  shift 2
  local out
  out=$(wrk -t"$THREADS" -c"$conns" -d"${SECS}s" --latency "$@" "$url")
  local rps p50 p99 xfer
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  xfer=$(awk '/^Transfer\/sec/ {print $2}' <<<"$out")
  local errs
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$rps $p50 $p99 $xfer ${errs:-}"
}

# L7 rounds: $1 the title, the rest more wrk arguments. A table per round,
# then the medians of the ratios.
l7() {
  local title=$1
  shift
  local -A rps cpu p99s
  # Per proxy, one line per round: "req/s-ratio cpu-ratio p99-ratio".
  local -A ratios
  echo "## L7 $title, $CONNS connections, ${SECS}s each, wrk -t$THREADS, $WORKERS worker(s) per proxy"
  echo
  echo "| proxy | req/s | p50 | p99 | req/s vs HAProxy | CPU µs/req | CPU/req vs HAProxy |"
  echo "|---|---|---|---|---|---|---|"
  local round name port t0 t1 r p50 p99 errs ratio cratio pratio
  for round in $(seq "${ROUNDS:-5}"); do
  for name in $names; do
    case $name in keel) port=18080;; haproxy) port=18081;; nginx) port=18082;; keel-b) port=18083;; esac
    t0=$(ticks "${pid[$name]}")
    read -r r p50 p99 _ errs < <(measure "http://127.0.0.1:$port/" "$CONNS" "$@")
    t1=$(ticks "${pid[$name]}")
    rps[$name]=$r
    cpu[$name]=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v r="$r" -v s="$SECS" 'BEGIN { printf "%.1f", t / hz * 1e6 / (r * s) }')
    ratio=$(awk -v a="$r" -v b="${rps[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
    cratio=$(awk -v a="${cpu[$name]}" -v b="${cpu[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
    p99s[$name]=$(to_ms "$p99")
    pratio=$(awk -v a="${p99s[$name]}" -v b="${p99s[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
    ratios[$name]+="$ratio $cratio $pratio"$'\n'
    echo "| $name | $r | $p50 | $p99 | ${ratio}x | ${cpu[$name]} | ${cratio}x ${errs} |"
  done
  done
  echo
  echo "### L7 $title, medians over ${ROUNDS:-5} rounds"
  echo
  echo "| proxy | req/s vs HAProxy | CPU/req vs HAProxy | p99 vs HAProxy |"
  echo "|---|---|---|---|"
  for name in ${names#haproxy }; do
    echo "| $name | $(median "${ratios[$name]}" 1)x | $(median "${ratios[$name]}" 2)x | $(median "${ratios[$name]}" 3)x |"
  done
}

if [ -z "${L4_ONLY:-}" ]; then
  l7 "HTTP/1.1 keep-alive"
  if [ -n "${CLOSE:-}" ]; then
    echo
    l7 "HTTP/1.1, a new connection per request" -H "Connection: close"
  fi
  echo
fi
echo "## L4 TCP bulk: 64 MiB responses relayed, 8 connections, ${SECS}s each"
echo
echo "| proxy | transfer/s | vs HAProxy | CPU ms/GiB | CPU/GiB vs HAProxy |"
echo "|---|---|---|---|---|"
declare -A l4 l4cpu l4ratios
for round in $(seq "${ROUNDS:-5}"); do
for name in $names; do
  case $name in keel) port=18090;; haproxy) port=18091;; nginx) port=18092;; keel-b) port=18093;; esac
  t0=$(ticks "${pid[$name]}")
  read -r r _ _ x errs < <(measure "http://127.0.0.1:$port/big" 8)
  t1=$(ticks "${pid[$name]}")
  l4[$name]=$r
  # Each request is 64 MiB: GiB moved = req/s * seconds / 16.
  l4cpu[$name]=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v r="$r" -v s="$SECS" 'BEGIN { printf "%.0f", t / hz * 1e3 / (r * s / 16) }')
  ratio=$(awk -v a="$r" -v b="${l4[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
  cratio=$(awk -v a="${l4cpu[$name]}" -v b="${l4cpu[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
  l4ratios[$name]+="$ratio $cratio"$'\n'
  echo "| $name | $x | ${ratio}x | ${l4cpu[$name]} | ${cratio}x ${errs} |"
done
done

echo
echo "### L4, medians over ${ROUNDS:-5} rounds"
echo
echo "| proxy | transfer/s vs HAProxy | CPU/GiB vs HAProxy |"
echo "|---|---|---|"
for name in ${names#haproxy }; do
  echo "| $name | $(median "${l4ratios[$name]}" 1)x | $(median "${l4ratios[$name]}" 2)x |"
done
