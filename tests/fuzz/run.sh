#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted bytes with libFuzzer,
# on the pinned stable toolchain (the instrumentation cargo-fuzz adds, passed
# as flags stable rustc takes):
#
#   tests/fuzz/run.sh [seconds per target, default 30] [target ...]
#
# Each target starts from its committed corpus (tests/fuzz/corpus/NAME) and
# the crash inputs found so far (tests/fuzz/crashes/NAME); new inputs that
# reach new code go to target/fuzz/corpus/NAME (copy the useful ones into
# the committed corpus), and a crash is written to tests/fuzz/crashes/NAME,
# reported, and fails the run. Prints executions and coverage per target.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-30}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(request_head response member_http2 proxy_header client_hello config sigv4 api_token join_token)
fi
command -v c++ >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; }
export CARGO_TARGET_DIR=../../target/fuzz
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
# An explicit target keeps the flags off build scripts and proc macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release -q --bins --target "$triple"
bin=$CARGO_TARGET_DIR/$triple/release
failed=0
printf '| target | executions | exec/s | coverage (edges) | features | crashes |\n|---|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
  mkdir -p "crashes/$t" "$CARGO_TARGET_DIR/corpus/$t"
  log=$CARGO_TARGET_DIR/$t.log
  rc=0
  "$bin/$t" -max_total_time="$SECS" -print_final_stats=1 \
    -artifact_prefix="crashes/$t/" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    "$CARGO_TARGET_DIR/corpus/$t" "corpus/$t" "crashes/$t" >"$log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  crashes=0
  if ((rc != 0)); then
    crashes=1
    failed=1
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -5 >&2 || true
  fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$runs" "$speed" "$cov" "$ft" "$crashes"
done
exit $failed
