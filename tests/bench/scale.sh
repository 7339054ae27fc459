#!/usr/bin/env bash
# How Keel scales with cores, next to HAProxy and nginx, same machine, same
# run, same backends:
#
#   tests/bench/scale.sh [seconds per run, default 10]
#
# For each W in WORKERS_LIST (default "1 2 4 8 16"): Keel (--workers W
# --cpu-affinity), HAProxy (nbthread W) and nginx (worker_processes W),
# each pinned with taskset to cores 0..W-1; two nginx backends with
# max(1, W/4) workers each on the next cores; wrk on the rest. A row
# needs W + 2·max(1, W/4) + 4 cores; rows that do not fit are skipped and
# named (FORCE=1 runs them anyway, sharing cores: figures then mean less).
# Scenarios (wrk, the same forwarding headers added by all three):
#   keep-alive   HTTP/1.1, 256 keep-alive connections
#   close        HTTP/1.1, a new connection per request, 64 connections
#   tls          TLS 1.3 handshakes: HTTPS, a new connection per request
#                (ECDSA P-256, no resumption), 64 connections
#   https        HTTPS keep-alive, 256 connections
# SCENARIOS picks some of them (default all four, in this order).
# Each proxy runs ROUNDS times (default 3) per scenario, taking turns; the
# tables give medians: requests/s, p50, p99, proxy CPU µs per request, and
# the ratios of Keel's figures to each peer's.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
ROUNDS=${ROUNDS:-3}
WORKERS_LIST=${WORKERS_LIST:-"1 2 4 8 16"}
SCENARIOS=${SCENARIOS:-"keep-alive close tls https"}

. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light wrk=wrk openssl=openssl taskset=util-linux
bench_keel
bench_work

CORES=$(nproc)
# Every process here may open as many files as the machine allows; each
# proxy's connection limit follows (two descriptors per proxied connection).
ulimit -n "$(ulimit -Hn)"
MAXCONN=$(( $(ulimit -Hn) / 2 - 100 ))
(( MAXCONN > 100000 )) && MAXCONN=100000
bench_cert



# The median of the numbers on the lines of $1.
median() {
  sort -g <<<"$1" | awk 'NF { v[++n] = $1 }
    END { if (n == 0) print 0; else if (n % 2) print v[(n + 1) / 2]; else print (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

wait_ports() {
  local port _
  for port in "$@"; do
    for _ in $(seq 150); do
      (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
      sleep 0.1
    done
  done
}

# Starts the backends and the three proxies for W workers; sets pid[].
start_row() {
  local w=$1 bw=$2 proxy_cpus=$3 backend_cpus=$4 b
  row_pids=()
  for b in 1 2; do
    cat > "$work/backend$b.conf" <<CONF
worker_processes $bw;
pid $work/backend$b.pid;
error_log $work/backend$b.err;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:1820$b reuseport backlog=4096;
    location = / { return 200 "hello world\n"; }
  }
}
CONF
    taskset -c "$backend_cpus" nginx -c "$work/backend$b.conf" -g 'daemon off;' & row_pids+=($!)
  done
  cat > "$work/haproxy.cfg" <<CONF
$(haproxy_global "$w" "$MAXCONN")
frontend web
  bind 127.0.0.1:18281
  bind 127.0.0.1:18284 ssl crt $work/haproxy.pem alpn http/1.1
$(haproxy_forwarded http)
  default_backend app
$(haproxy_app 127.0.0.1:18201 127.0.0.1:18202)
CONF
  taskset -c "$proxy_cpus" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>"$work/haproxy.err" & row_pids+=($!)
  pid[haproxy]=$!
  nginx_proxy "$w" "$MAXCONN" 1820 127.0.0.1:18282 "127.0.0.1:18285 ssl" > "$work/proxy.conf"
  taskset -c "$proxy_cpus" nginx -c "$work/proxy.conf" -g 'daemon off;' & row_pids+=($!)
  cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: bench
    listeners:
      - { port: 18280, protocol: http, bind: 127.0.0.1, default_pool: app }
      - { port: 18283, protocol: https, bind: 127.0.0.1, default_pool: app, certificates: [site] }
$(keel_app 127.0.0.1:18201 127.0.0.1:18202)
$(keel_certificates)
CONF
  rm -rf "$work/keel-data"
  KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=warn taskset -c "$proxy_cpus" "$KEEL_BIN" run \
    --workers "$w" --cpu-affinity --config "$work/keel.yaml" --data-dir "$work/keel-data" \
    --admin-addr 127.0.0.1:18299 --cluster-addr 127.0.0.1:18298 2>"$work/keel.err" & row_pids+=($!)
  pid[keel]=$!
  pids+=("${row_pids[@]}")
  wait_ports 18201 18202 18280 18281 18282 18283 18284 18285
  sleep 0.5
  pid[nginx]=$(cat "$work/proxy.pid")
  bench_settle "${pid[keel]}" $((w + 3))
}

stop_row() {
  kill "${row_pids[@]}" 2>/dev/null || true
  wait "${row_pids[@]}" 2>/dev/null || true
  sleep 1
}

port_of() { # proxy scenario
  case $1-$2 in
    keel-tls | keel-https) echo 18283;; haproxy-tls | haproxy-https) echo 18284;; nginx-tls | nginx-https) echo 18285;;
    keel-*) echo 18280;; haproxy-*) echo 18281;; nginx-*) echo 18282;;
  esac
}

# One wrk run: "req/s p50-ms p99-ms cpu-µs/req errors".
measure() {
  local name=$1 scenario=$2 wrk_cpus=$3 threads=$4
  local port scheme=http conns=256 extra=() out t0 t1 r
  port=$(port_of "$name" "$scenario")
  case $scenario in
    close) conns=64; extra=(-H "Connection: close");;
    tls) scheme=https; conns=64; extra=(-H "Connection: close");;
    https) scheme=https;;
  esac
  t0=$(ticks "${pid[$name]}")
  out=$(taskset -c "$wrk_cpus" wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency "${extra[@]}" \
    "$scheme://127.0.0.1:$port/" 2>&1)
  t1=$(ticks "${pid[$name]}")
  r=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  [ -n "$r" ] || r=0.001
  local p50 p99 errs
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  errs=$(grep -cE 'Non-2xx|Socket errors' <<<"$out" || true)
  echo "$r $p50 $p99 $(awk -v t=$((t1 - t0)) -v hz="$HZ" -v r="$r" -v s="$SECS" 'BEGIN { printf "%.1f", t / hz * 1e6 / (r * s) }') $errs"
}

declare -A pid
skipped=()
echo "# Scaling: Keel, HAProxy and nginx by workers (${SECS}s runs, medians of $ROUNDS, $CORES cores)"
for w in $WORKERS_LIST; do
  bw=$(( w / 4 > 1 ? w / 4 : 1 ))
  need=$(( w + 2 * bw + 4 ))
  if (( need > CORES )) && [ -z "${FORCE:-}" ]; then
    skipped+=("W=$w (needs $need cores)")
    continue
  fi
  proxy_cpus="0-$((w - 1))"
  if (( need > CORES )); then
    # FORCE: everything shares the machine's cores.
    proxy_cpus="0-$((CORES - 1))"; backend_cpus=$proxy_cpus; wrk_cpus=$proxy_cpus
    wrk_threads=$(( CORES < 4 ? CORES : 4 ))
  else
    backend_cpus="$w-$((w + 2 * bw - 1))"
    wrk_cpus="$((w + 2 * bw))-$((CORES - 1))"
    wrk_threads=$(( CORES - w - 2 * bw ))
    (( wrk_threads > 8 )) && wrk_threads=8
  fi
  start_row "$w" "$bw" "$proxy_cpus" "$backend_cpus"
  # Warm up: member connections open, caches warm.
  for name in keel haproxy nginx; do
    taskset -c "$wrk_cpus" wrk -t"$wrk_threads" -c256 -d2s "http://127.0.0.1:$(port_of $name keep-alive)/" >/dev/null
  done
  echo
  echo "## W = $w (proxy cores $proxy_cpus, backends $backend_cpus with $bw workers each, wrk -t$wrk_threads on $wrk_cpus)"
  echo
  echo "| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req | Keel ÷ HAProxy (req/s) | Keel ÷ nginx (req/s) | errors |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for scenario in $SCENARIOS; do
    declare -A runs=()
    for _ in $(seq "$ROUNDS"); do
      for name in keel haproxy nginx; do
        runs[$name]+="$(measure "$name" "$scenario" "$wrk_cpus" "$wrk_threads")"$'\n'
      done
    done
    declare -A med=()
    for name in keel haproxy nginx; do
      med[$name]=$(median "$(awk '{print $1}' <<<"${runs[$name]}")")
    done
    for name in keel haproxy nginx; do
      p50=$(median "$(awk '{print $2}' <<<"${runs[$name]}")")
      p99=$(median "$(awk '{print $3}' <<<"${runs[$name]}")")
      cpu=$(median "$(awk '{print $4}' <<<"${runs[$name]}")")
      errs=$(awk '{s += $5} END {print s + 0}' <<<"${runs[$name]}")
      ratios="|"
      if [ "$name" = keel ]; then
        ratios=$(awk -v k="${med[keel]}" -v h="${med[haproxy]}" -v n="${med[nginx]}" \
          'BEGIN { printf "%.2f | %.2f", k / h, k / n }')
      fi
      echo "| $scenario | $name | ${med[$name]} | $p50 | $p99 | $cpu | $ratios | $errs |"
    done
    unset runs med
  done
  stop_row
done
if ((${#skipped[@]})); then
  echo
  echo "Skipped (too few cores here; FORCE=1 runs them sharing cores): ${skipped[*]}"
fi
