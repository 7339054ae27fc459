#!/usr/bin/env bash
# System calls per request, Keel vs HAProxy vs nginx, counted by the
# kernel's tracepoints (perf stat) while wrk runs against each in turn:
#
#   tests/bench/syscalls.sh [seconds, default 5]
#
# SCENARIO=close (default) opens a new connection per request ("Connection:
# close": the accept path); SCENARIO=keep-alive reuses 64 connections.
# SCHEME=https puts TLS 1.3 (ECDSA P-256) in front. WORKERS workers each
# (default 1: keel --workers, HAProxy nbthread, nginx worker_processes),
# two nginx backends over reused connections, the same forwarding headers.
# Prints a Markdown table: each system call made more than once per 50
# requests, per request, and their sum; then context switches and CPU
# time (perf's task-clock) per request, from a second run of each. A count does not swing with the
# machine's load as a time does, so two builds compare in separate runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
SCENARIO=${SCENARIO:-close}
SCHEME=${SCHEME:-http}
WORKERS=${WORKERS:-1}

. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light wrk=wrk perf=linux-perf
bench_keel
bench_work
bench_backends 1810
bench_cert

tls_listener= haproxy_tls= nginx_tls=
if [ "$SCHEME" = https ]; then
  tls_listener=", certificates: [site]"
  haproxy_tls="ssl crt $work/haproxy.pem alpn http/1.1"
  nginx_tls=ssl
fi
cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: bench
    listeners:
      - { port: 18180, protocol: $SCHEME, bind: 127.0.0.1, default_pool: app$tls_listener }
$(keel_app 127.0.0.1:18101 127.0.0.1:18102)
$(keel_certificates)
CONF
declare -A pid
bench_run_keel keel "$KEEL_BIN" "$WORKERS" 18199 18198
cat > "$work/haproxy.cfg" <<CONF
$(haproxy_global "$WORKERS")
frontend web
  bind 127.0.0.1:18181 $haproxy_tls
$(haproxy_forwarded "$SCHEME")
  default_backend app
$(haproxy_app 127.0.0.1:18101 127.0.0.1:18102)
CONF
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
pid[haproxy]=$!
nginx_proxy "$WORKERS" 8000 1810 "127.0.0.1:18182 $nginx_tls" > "$work/proxy.conf"
nginx -c "$work/proxy.conf" -g 'daemon off;' & pids+=($!)
pid[nginx]=$!

extra=(-H "Connection: close")
[ "$SCENARIO" = close ] || extra=()
bench_wait_ports 18101 18102 18180 18181 18182
for port in 18180 18181 18182; do
  wrk -t1 -c16 -d1s "${extra[@]}" "$SCHEME://127.0.0.1:$port/" >/dev/null
done
bench_settle "${pid[keel]}" $((WORKERS + 3))
# nginx's workers, not its master, do the work.
pid[nginx]=$(pgrep -d, -P "${pid[nginx]}")

# perf stat's counts of events $2 for proxy $1 while wrk runs against it,
# into $work/$1.$3; prints the requests done. The system calls and the
# scheduling figures are separate runs: tracing every call slows each one,
# which changes how often a proxy sleeps.
count() {
  local name=$1 events=$2 into=$3 port out stat
  case $name in keel) port=18180;; haproxy) port=18181;; nginx) port=18182;; esac
  perf stat -e "$events" -p "${pid[$name]}" -o "$work/$name.$into" -- sleep "$SECS" &
  stat=$!
  out=$(wrk -t1 -c64 -d"$((SECS - 1))s" "${extra[@]}" "$SCHEME://127.0.0.1:$port/")
  wait "$stat"
  awk '/requests in/ {print $1}' <<<"$out"
}

names="keel haproxy nginx"
for name in $names; do
  # Each call's count, per request.
  n=$(count "$name" 'syscalls:sys_enter_*' perf)
  awk -v n="$n" '
    $1 ~ /^[0-9,]+$/ && $2 ~ /^syscalls:sys_enter_/ {
      gsub(",", "", $1); sub("syscalls:sys_enter_", "", $2)
      if ($1 > n / 50) printf "%s %.2f\n", $2, $1 / n
    }' "$work/$name.perf" > "$work/$name.calls"
  # Context switches and CPU time (task-clock, in ms) per request.
  n=$(count "$name" context-switches,task-clock sched-perf)
  awk -v n="$n" '
    $2 == "context-switches" { gsub(",", "", $1); printf "switches %.2f\n", $1 / n }
    $3 == "task-clock" { gsub(",", "", $1); printf "cpu %.1f\n", $1 * 1000 / n }
    ' "$work/$name.sched-perf" > "$work/$name.sched"
done

echo "## System calls per request, $SCHEME, $SCENARIO, 64 connections (wrk), $WORKERS worker(s) each"
echo
echo "| call | Keel | HAProxy | nginx |"
echo "|---|---|---|---|"
calls=$(cat "$work"/{keel,haproxy,nginx}.calls | awk '{print $1}' | sort -u)
for call in $calls; do
  row="| $call"
  for name in $names; do
    row+=" | $(awk -v c="$call" '$1 == c {print $2}' "$work/$name.calls")"
  done
  echo "$row |"
done
row="| **all** "
for name in $names; do
  row+=" | **$(awk '{s += $2} END {printf "%.1f", s}' "$work/$name.calls")**"
done
echo "$row |"
for what in "switches context switches" "cpu CPU µs (task-clock)"; do
  row="| ${what#* }"
  for name in $names; do
    row+=" | $(awk -v w="${what%% *}" '$1 == w {print $2}' "$work/$name.sched")"
  done
  echo "$row |"
done
