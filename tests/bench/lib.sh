# What the benchmark scripts share; sourced, not run.
#
#   bench_need CMD=PACKAGE ...   install the packages whose command (or,
#                                for a /path, whose file) is missing
#   bench_keel                   KEEL_BIN (default: a fresh release build)
#   bench_work                   $work, a scratch folder removed on exit with
#                                every process whose pid is in $pids
#   bench_backends PORT_BASE [NGINX_LINES]
#                                two nginx backends, one worker each, on
#                                127.0.0.1:${PORT_BASE}1 and ...2, answering
#                                "hello world" at / (plus NGINX_LINES)
#   bench_run_keel NAME BIN WORKERS ADMIN_PORT CLUSTER_PORT
#                                start BIN with $work/NAME.yaml (data in
#                                $work/NAME-data, log $work/NAME.err); its
#                                pid in pids and pid[NAME]
#   bench_wait_ports PORT ...    wait (10 s at most each) until each
#                                loopback port accepts connections
#   bench_settle PID [THREADS]   wait (at most 15 s) until Keel's start-up
#                                work is over: it opens its Raft storage
#                                through tokio's blocking pool, whose idle
#                                threads exit after 10 s; until then every
#                                socket call pays for a file table shared
#                                by threads. THREADS: what it runs on once
#                                settled (default 1; a node with W workers
#                                has W + 3: main, two control, W workers)
#   bench_cert                   an ECDSA P-256 certificate for bench.example:
#                                $work/cert.pem, key.pem, and haproxy.pem
#                                (both); indent (for YAML block scalars)
#   keel_certificates            Keel's `certificates:` block with that
#                                certificate, named `site`
#   keel_app MEMBER ...          Keel's `pools:` block: pool "app", round
#                                robin over the members given
#   ticks PID                    CPU ticks (user + system; $HZ a second) the
#                                process, its threads and its child processes
#                                (nginx's workers) have used so far
#   to_ms LATENCY                wrk's latency (850.00us, 3.10ms, 1.20s) in ms
#   median LINES COLUMN          the median of the numbers in column COLUMN
#                                of LINES (rounds' ratios), to two places
#   haproxy_forwarded SCHEME     HAProxy frontend lines, and $nginx_forwarded
#                                nginx location directives, that add the
#                                request headers Keel adds for its members
#                                (X-Forwarded-For, -Proto, -Port and
#                                Forwarded): every proxy sends the members
#                                the same request, so does the same work

bench_need() {
  local need=() pair
  for pair in "$@"; do
    case $pair in
      /*) [ -e "${pair%%=*}" ] || need+=("${pair#*=}") ;;
      *) command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}") ;;
    esac
  done
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

bench_keel() {
  # KEEL_BIN picks another build (to compare two versions of Keel).
  KEEL_BIN=${KEEL_BIN:-target/release/keel}
  if [ "$KEEL_BIN" = target/release/keel ]; then
    cargo build --release -p keel -q
  fi
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

bench_work() {
  work=$(mktemp -d)
  chmod 755 "$work"  # nginx workers (www-data) read the files in it
  pids=()
  trap bench_cleanup EXIT
}

bench_backends() {
  local base=$1 extra=${2:-} b
  for b in 1 2; do
    cat > "$work/backend$b.conf" <<CONF
worker_processes 1;
pid $work/backend$b.pid;
error_log $work/backend$b.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$base$b reuseport;
    location = / { return 200 "hello world\n"; }
    $extra
  }
}
CONF
    nginx -c "$work/backend$b.conf" -g 'daemon off;' & pids+=($!)
  done
}

bench_run_keel() {
  local name=$1 bin=$2 workers=$3 admin=$4 cluster=$5
  KEEL_ADMIN_PASSWORD=bench-password RUST_LOG=warn "$bin" run --workers "$workers" \
    --config "$work/$name.yaml" --data-dir "$work/$name-data" \
    --admin-addr "127.0.0.1:$admin" --cluster-addr "127.0.0.1:$cluster" \
    2>"$work/$name.err" & pids+=($!)
  pid[$name]=$!
}

bench_wait_ports() {
  local port _
  for port in "$@"; do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.1
    done
  done
}

bench_settle() {
  local _
  for _ in $(seq 150); do
    [ "$(ls "/proc/$1/task" | wc -l)" -le "${2:-1}" ] && return
    sleep 0.1
  done
}

# HAProxy's global and defaults sections (HTTP mode): $1 threads, $2 the
# connection limit (default 8000).
haproxy_global() {
  cat <<CONF
global
  nbthread $1
  maxconn ${2:-8000}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
CONF
}

# HAProxy's backend "app": round robin over the members given, with their
# connections reused.
haproxy_app() {
  local member i=0
  printf 'backend app\n  balance roundrobin\n  http-reuse always\n'
  for member in "$@"; do
    printf '  server m%d %s\n' "$i" "$member"
    i=$((i + 1))
  done
}

haproxy_forwarded() {
  cat <<CONF
  option forwardfor
  http-request set-header X-Forwarded-Proto $1
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request set-header Forwarded "for=%[src];proto=$1;host=\\"%[req.hdr(host)]\\""
CONF
}

# shellcheck disable=SC2016 # nginx variables, for nginx to expand
nginx_forwarded='proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$http_host\"";'

# An nginx proxy's config, on stdout: $1 workers, $2 connections each,
# $3 the members' port base (members on 127.0.0.1:${3}1 and ${3}2, their
# connections reused), then one argument per listening socket ("ADDR" or
# "ADDR ssl", with the certificate of bench_cert); the forwarding headers
# Keel adds.
nginx_proxy() {
  local workers=$1 conns=$2 base=$3 listen
  shift 3
  cat <<CONF
worker_processes $workers;
pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections $conns; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:${base}1; server 127.0.0.1:${base}2; keepalive 256; }
  server {
$(for listen in "$@"; do echo "    listen $listen reuseport backlog=4096;"; done)
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      $nginx_forwarded
    }
  }
}
CONF
}

bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
}

indent() { sed 's/^/      /'; }

keel_app() {
  local member sep=
  printf 'pools:\n  - name: app\n    algorithm: round_robin\n    members: ['
  for member in "$@"; do
    printf '%s { address: "%s" }' "$sep" "$member"
    sep=,
  done
  printf ' ]\n'
}

keel_certificates() {
  printf 'certificates:\n  - name: site\n    cert_pem: |\n'
  indent < "$work/cert.pem"
  printf '    key_pem: |\n'
  indent < "$work/key.pem"
}

HZ=$(getconf CLK_TCK)
ticks() {
  local p t=0
  for p in "$1" $(pgrep -P "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n
  }'
}

median() {
  awk -v c="$2" 'NF { print $c }' <<<"$1" | sort -g | awk '
    { v[NR] = $1 }
    END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
