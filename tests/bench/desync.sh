#!/usr/bin/env bash
# Request-smuggling and response-desync vectors (tests/desync/desync.py)
# through Keel, HAProxy and nginx side by side, each in front of the same
# scripted member with keep-alive member connections, each adding
# X-Forwarded-For and passing on the Host it routed on, taking HTTP/2 from
# clients (prior knowledge) and, but for nginx (which cannot), speaking it
# to a second, HTTP/2 member; prints how many
# results of each kind every proxy had, and every result that was not ok.
#
#   tests/bench/desync.sh            KEEL_BIN picks the Keel build
#
# Not a timed benchmark: CI runs the same vectors against Keel alone
# (tests/tests/desync.rs) and fails on any unsafe or nonconforming result.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx
bench_keel
bench_work
python=target/pyenv/bin/python
[ -x "$python" ] || { echo "run tests/run once first: it makes target/pyenv (h11, hpack)" >&2; exit 1; }

member=18289 h2member=18288
cat > "$work/keel.yaml" <<CONF
load_balancers:
  - name: desync
    listeners:
      - { port: 18280, protocol: http, bind: 127.0.0.1, default_pool: member }
      - { port: 18283, protocol: http, bind: 127.0.0.1, default_pool: h2member }
pools:
  - name: member
    members: [ { address: "127.0.0.1:$member" } ]
  - name: h2member
    http_version: http2
    members: [ { address: "127.0.0.1:$h2member" } ]
CONF
KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=error "$KEEL_BIN" run --workers 1 --config "$work/keel.yaml" \
  --data-dir "$work/keel-data" --admin-addr 127.0.0.1:18299 --cluster-addr 127.0.0.1:18298 \
  2>"$work/keel.err" & pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  timeout http-request 10s
frontend desync
  bind 127.0.0.1:18281
  bind 127.0.0.1:18284 proto h2
  option forwardfor
  default_backend member
frontend h2member
  bind 127.0.0.1:18285
  option forwardfor
  default_backend h2member
backend member
  http-reuse always
  server m 127.0.0.1:$member
backend h2member
  http-reuse always
  server m 127.0.0.1:$h2member proto h2
CONF
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.err" & pids+=($!)

# shellcheck disable=SC2016 # nginx variables, for nginx to expand
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream member { server 127.0.0.1:$member; keepalive 16; }
  server {
    listen 127.0.0.1:18282;
    listen 127.0.0.1:18286 http2;
    location / {
      proxy_pass http://member;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
CONF
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)

for port in 18280 18281 18282 18283 18284 18285 18286; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done
echo "keel: $("$KEEL_BIN" --version)  haproxy: $(haproxy -v | head -1 | cut -d' ' -f3)  nginx: $(nginx -v 2>&1 | cut -d/ -f2)"
"$python" tests/desync/desync.py --member-port "$member" --h2-member-port "$h2member" \
  --proxy keel=127.0.0.1:18280 --proxy haproxy=127.0.0.1:18281 --proxy nginx=127.0.0.1:18282 \
  --h2 keel=127.0.0.1:18280 --h2 haproxy=127.0.0.1:18284 --h2 nginx=127.0.0.1:18286 \
  --h2-member keel=127.0.0.1:18283 --h2-member haproxy=127.0.0.1:18285 \
  --json "${DESYNC_JSON:-$work/results.json}"
