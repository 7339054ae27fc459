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
# The proxies take turns, ROUNDS times (default 3), and a last table gives
# the median of each ratio over the rounds. KEEL_B=PATH adds a second Keel
# build ("keel-b", on 18445) to every round, as compare.sh does.
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
bench_run_keel keel "$KEEL_BIN" 1 18199 18198
names="haproxy keel"
ports="18101 18102 18443 18444"
if [ -n "${KEEL_B:-}" ]; then
  sed -e 's/18443/18445/' "$work/keel.yaml" > "$work/keel-b.yaml"
  bench_run_keel keel-b "$KEEL_B" 1 18197 18196
  names="haproxy keel keel-b"
  ports="$ports 18445"
fi

# shellcheck disable=SC2086 # a list of ports
bench_wait_ports $ports
for port in 18443 18444 ${KEEL_B:+18445}; do
  wrk -t1 -c64 -d2s "https://127.0.0.1:$port/" >/dev/null
done
bench_settle "${pid[keel]}" 4
[ -z "${KEEL_B:-}" ] || bench_settle "${pid[keel-b]}" 4

port_of() { case $1 in keel) echo 18443;; haproxy) echo 18444;; keel-b) echo 18445;; esac; }

# Per scenario and proxy, one line per round: "rate-ratio cpu-ratio".
declare -A ratios

# Runs "$@" against each proxy ({port} replaced), printing one table row
# each: rate, ratio to HAProxy, CPU µs per operation and its ratio.
# $1 names the scenario; $2 is the awk program that pulls the rate out of
# the tool's output.
compare() {
  local scenario=$1 extract=$2; shift 2
  local -A rate cpu
  for name in $names; do
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
    local ratio cratio
    ratio=$(awk -v a="$r" -v b="${rate[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
    cratio=$(awk -v a="${cpu[$name]}" -v b="${cpu[haproxy]}" 'BEGIN { printf "%.2f", a / b }')
    ratios[$scenario/$name]+="$ratio $cratio"$'\n'
    echo "| $name | $r | ${ratio}x | ${cpu[$name]} | ${cratio}x ${errs} |"
  done
}

wrk_rate='/^Requests\/sec/ {print $2}'
h2_rate='/^finished in/ {gsub(",", "", $4); print $4}'

for round in $(seq "${ROUNDS:-3}"); do
echo "## Round $round: TLS handshakes, a new TLS 1.3 connection per request, 32 connections, ${SECS}s"
echo
echo "| proxy | handshakes/s | vs HAProxy | CPU µs/handshake | CPU vs HAProxy |"
echo "|---|---|---|---|---|"
compare handshakes "$wrk_rate" wrk -t1 -c32 -d"${SECS}s" -H "Connection: close" "https://127.0.0.1:{port}/"

echo
echo "## Round $round: HTTPS keep-alive, 64 connections, ${SECS}s"
echo
echo "| proxy | req/s | vs HAProxy | CPU µs/req | CPU vs HAProxy |"
echo "|---|---|---|---|---|"
compare keepalive "$wrk_rate" wrk -t1 -c64 -d"${SECS}s" "https://127.0.0.1:{port}/"

echo
echo "## Round $round: HTTP/2 over TLS (h2load), 16 connections x 16 streams, ${SECS}s"
echo
echo "| proxy | req/s | vs HAProxy | CPU µs/req | CPU vs HAProxy |"
echo "|---|---|---|---|---|"
compare h2 "$h2_rate" h2load -c16 -m16 -D"$SECS" "https://127.0.0.1:{port}/"
echo
done

echo "## Medians over ${ROUNDS:-3} rounds, ratios to HAProxy"
echo
echo "| proxy | handshakes/s | CPU/handshake | HTTPS keep-alive req/s | CPU/req | HTTP/2 req/s | CPU/req |"
echo "|---|---|---|---|---|---|---|"
for name in ${names#haproxy }; do
  row="| $name"
  for scenario in handshakes keepalive h2; do
    row+=" | $(median "${ratios[$scenario/$name]}" 1)x | $(median "${ratios[$scenario/$name]}" 2)x"
  done
  echo "$row |"
done
