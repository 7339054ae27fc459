#!/usr/bin/env bash
# Keel vs HAProxy over TLS, same machine, same run, same backends:
#
#   tests/bench/tls.sh [seconds per run, default 10]
#
#   1. TLS handshakes/s: wrk with "Connection: close", so every request is a
#      new connection and a full TLS 1.3 handshake (no resumption).
#   2. HTTPS keep-alive requests/s: wrk, 64 connections.
#   3. HTTP/2 requests/s: h2load, ALPN h2, 16 connections x 16 streams.
#
# One worker each (HAProxy nbthread 1, keel --workers 1), the same ECDSA
# P-256 certificate, two nginx backends reached over reused HTTP/1.1
# connections. Prints Markdown tables; compare the ratios, not the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}

. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light wrk=wrk h2load=nghttp2-client openssl=openssl
bench_keel
bench_work

# One certificate for both proxies.
bench_cert

B1=127.0.0.1:18101 B2=127.0.0.1:18102
bench_backends 1810

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend web
  bind 127.0.0.1:18444 ssl crt $work/haproxy.pem alpn h2,http/1.1
$(haproxy_forwarded https)
  default_backend app
backend app
  balance roundrobin
  http-reuse always
  server a $B1
  server b $B2
CONF
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
declare -A pid
pid[haproxy]=$!

cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: bench
    listeners:
      - { port: 18443, protocol: https, bind: 127.0.0.1, default_pool: app, certificates: [site] }
pools:
  - name: app
    members: [ { address: "$B1" }, { address: "$B2" } ]
$(keel_certificates)
CONF
KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=warn "$KEEL_BIN" run --workers 1 --config "$work/keel.yaml" \
  --data-dir "$work/keel-data" --admin-addr 127.0.0.1:18199 --cluster-addr 127.0.0.1:18198 \
  2>"$work/keel.err" & pids+=($!)
pid[keel]=$!

for port in 18101 18102 18443 18444; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done
for port in 18443 18444; do
  wrk -t1 -c64 -d2s "https://127.0.0.1:$port/" >/dev/null
done
bench_settle "${pid[keel]}" 4

port_of() { case $1 in keel) echo 18443;; haproxy) echo 18444;; esac; }

# Runs "$@" against each proxy ({port} replaced), printing one table row
# each: rate, ratio to HAProxy, CPU µs per operation and its ratio.
# $1 is the awk program that pulls the rate out of the tool's output.
compare() {
  local extract=$1; shift
  local -A rate cpu
  for name in haproxy keel; do
    local port args=() t0 t1 out r
    port=$(port_of "$name")
    for a in "$@"; do args+=("${a//\{port\}/$port}"); done
    t0=$(ticks "${pid[$name]}")
    out=$("${args[@]}" 2>&1)
    t1=$(ticks "${pid[$name]}")
    r=$(awk "$extract" <<<"$out")
    [ -n "$r" ] || { echo "no figure from $name: $out" >&2; r=0.001; }
    rate[$name]=$r
    cpu[$name]=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v r="$r" -v s="$SECS" 'BEGIN { printf "%.1f", t / hz * 1e6 / (r * s) }')
    local errs
    errs=$(grep -E 'Non-2xx|Socket errors|failed, [1-9]|errored, [1-9]' <<<"$out" | tr '\n' ' ' || true)
    echo "| $name | $r | $(awk -v a="$r" -v b="${rate[haproxy]}" 'BEGIN { printf "%.2f", a / b }')x | ${cpu[$name]} | $(awk -v a="${cpu[$name]}" -v b="${cpu[haproxy]}" 'BEGIN { printf "%.2f", a / b }')x ${errs} |"
  done
}

wrk_rate='/^Requests\/sec/ {print $2}'
h2_rate='/^finished in/ {gsub(",", "", $4); print $4}'

echo "## TLS handshakes: a new TLS 1.3 connection per request, 32 connections, ${SECS}s"
echo
echo "| proxy | handshakes/s | vs HAProxy | CPU µs/handshake | CPU vs HAProxy |"
echo "|---|---|---|---|---|"
compare "$wrk_rate" wrk -t1 -c32 -d"${SECS}s" -H "Connection: close" "https://127.0.0.1:{port}/"

echo
echo "## HTTPS keep-alive, 64 connections, ${SECS}s"
echo
echo "| proxy | req/s | vs HAProxy | CPU µs/req | CPU vs HAProxy |"
echo "|---|---|---|---|---|"
compare "$wrk_rate" wrk -t1 -c64 -d"${SECS}s" "https://127.0.0.1:{port}/"

echo
echo "## HTTP/2 over TLS (h2load), 16 connections x 16 streams, ${SECS}s"
echo
echo "| proxy | req/s | vs HAProxy | CPU µs/req | CPU vs HAProxy |"
echo "|---|---|---|---|---|"
compare "$h2_rate" h2load -c16 -m16 -D"$SECS" "https://127.0.0.1:{port}/"
