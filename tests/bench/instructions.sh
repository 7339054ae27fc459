#!/usr/bin/env bash
# User-space instructions per proxied request, Keel vs HAProxy, counted by
# valgrind (callgrind) over a fixed number of requests:
#
#   tests/bench/instructions.sh [requests, default 20000]
#
# Timing figures on a shared machine swing by 20% from run to run; an
# instruction count does not, so this is the figure to compare when a
# change to the request path is small. It leaves out the kernel (about
# two-thirds of a proxy's CPU here, and the same for both: two reads and
# two writes per request) and how well the instructions run.
#
# Beside each count: the atomic read-modify-writes executed per request
# (locked instructions: `Arc` clones and drops, mutex locks and unlocks,
# atomic counters), counted by tests/bench/locked.py from the same
# per-instruction figures, and the Keel functions that executed the most.
#
# LOCKED_TOP=N lists N functions (default 12); KEEP_DUMPS=DIR keeps each
# count's callgrind dump there (NAME-h1.N.cg, NAME-close.N.cg, NAME-h2c.N.cg,
# NAME-https.N.cg, for callgrind_annotate, or for
# `LOCKED_TOP=60 tests/bench/locked.py N DUMP` to compare two builds).
#
# Same setup as compare.sh: one worker each, two nginx backends, reused
# backend connections. Clients: h2load over HTTP/1.1 (16 connections; then
# 16 at a time, a new connection per request), over cleartext HTTP/2 (4
# connections x 16 streams) and over HTTP/1.1 in TLS 1.3 (16 connections,
# ECDSA P-256; each run's 16 handshakes are in its count, a small share
# of it).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light h2load=nghttp2-client valgrind=valgrind
bench_keel
bench_work
bench_backends 1810
bench_cert

cat > "$work/haproxy.cfg" <<CONF
$(haproxy_global 1)
frontend web
  bind 127.0.0.1:18181
  bind 127.0.0.1:18182 proto h2
  bind 127.0.0.1:18183 ssl crt $work/haproxy.pem alpn http/1.1
$(haproxy_forwarded http)
  default_backend app
$(haproxy_app 127.0.0.1:18101 127.0.0.1:18102)
CONF
cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: bench
    listeners:
      - { port: 18180, protocol: http, bind: 127.0.0.1, default_pool: app }
      - { port: 18184, protocol: https, bind: 127.0.0.1, default_pool: app, certificates: [site] }
$(keel_app 127.0.0.1:18101 127.0.0.1:18102)
$(keel_certificates)
CONF

grind() {
  exec valgrind --tool=callgrind --callgrind-out-file="$work/$1.cg" --dump-instr=yes \
    --dump-line=no --compress-strings=no --compress-pos=no --instr-atstart=no "${@:2}"
}
grind haproxy haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>"$work/haproxy.vg" & pids+=($!)
hp=$!
# Builds from before `--workers` (KEEL_BIN=, to compare) ran one runtime.
workers=()
if "$KEEL_BIN" run --help 2>/dev/null | grep -q -- --workers; then workers=(--workers 1); fi
KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=warn grind keel "$KEEL_BIN" run "${workers[@]}" \
  --config "$work/keel.yaml" --data-dir "$work/keel-data" --admin-addr 127.0.0.1:18199 \
  --cluster-addr 127.0.0.1:18198 2>"$work/keel.vg" & pids+=($!)
kp=$!
for port in 18101 18102 18180 18181 18182 18183 18184; do
  for _ in $(seq 300); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.2
  done
done

# Instructions counted while `h2load ARGS` runs against process PID.
count() {
  local pid=$1 name=$2
  shift 2
  h2load "$@" -n 2000 >/dev/null  # warm up: member connections open
  callgrind_control -i on "$pid" >/dev/null 2>&1
  out=$(h2load "$@" -n "$N") && grep -q "$N succeeded" <<<"$out" || { echo "$name: requests failed" >&2; exit 1; }
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local f dumps=() proto=h2c
  [[ " $* " == *" --h1 "* ]] && proto=h1
  [[ " $* " == *" https:"* ]] && proto=https
  [[ " $* " == *" Connection: close "* ]] && proto=close
  for f in "$work/$name.cg"*; do
    [ -s "$f" ] && dumps+=("$f")
  done
  python3 tests/bench/locked.py "$N" "${dumps[@]}" 2>"$work/$name.top"
  if [ -n "${KEEP_DUMPS:-}" ]; then
    mkdir -p "$KEEP_DUMPS"
    for f in "${dumps[@]}"; do cp "$f" "$KEEP_DUMPS/$name-$proto${f##*.cg}.cg"; done
  fi
  rm -f "${dumps[@]}"
}

# "k h": the ratio k/h.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

echo "## User-space instructions per request ($N requests, callgrind)"
echo
echo "| client | HAProxy | Keel | Keel vs HAProxy | atomic RMWs, HAProxy | atomic RMWs, Keel |"
echo "|---|---|---|---|---|---|"
keel_top=
h=$(count "$hp" haproxy --h1 -c16 http://127.0.0.1:18181/)
k=$(count "$kp" keel --h1 -c16 http://127.0.0.1:18180/)
keel_top+=$'\n'"Keel, HTTP/1.1, locked instructions per request by function:"$'\n'"$(cat "$work/keel.top")"
echo "| HTTP/1.1, 16 connections | ${h% *} | ${k% *} | $(ratio "${k% *}" "${h% *}") | ${h#* } | ${k#* } |"
h=$(count "$hp" haproxy --h1 -c16 -H "Connection: close" http://127.0.0.1:18181/)
k=$(count "$kp" keel --h1 -c16 -H "Connection: close" http://127.0.0.1:18180/)
keel_top+=$'\n'"Keel, HTTP/1.1 with a new connection per request, locked instructions per request by function:"$'\n'"$(cat "$work/keel.top")"
echo "| HTTP/1.1, a new connection per request, 16 at once | ${h% *} | ${k% *} | $(ratio "${k% *}" "${h% *}") | ${h#* } | ${k#* } |"
h=$(count "$hp" haproxy -c4 -m16 http://127.0.0.1:18182/)
k=$(count "$kp" keel -c4 -m16 http://127.0.0.1:18180/)
keel_top+=$'\n'"Keel, HTTP/2 (h2c), locked instructions per request by function:"$'\n'"$(cat "$work/keel.top")"
echo "| HTTP/2 (h2c), 4 connections x 16 streams | ${h% *} | ${k% *} | $(ratio "${k% *}" "${h% *}") | ${h#* } | ${k#* } |"
h=$(count "$hp" haproxy --h1 -c16 https://127.0.0.1:18183/)
k=$(count "$kp" keel --h1 -c16 https://127.0.0.1:18184/)
keel_top+=$'\n'"Keel, HTTPS (HTTP/1.1), locked instructions per request by function:"$'\n'"$(cat "$work/keel.top")"
echo "| HTTPS (HTTP/1.1 in TLS 1.3), 16 connections | ${h% *} | ${k% *} | $(ratio "${k% *}" "${h% *}") | ${h#* } | ${k#* } |"
echo "$keel_top"
