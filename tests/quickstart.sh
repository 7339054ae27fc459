#!/usr/bin/env bash
# The README's quick start, run as written: its first command (read from
# README.md, so the two cannot drift apart) must start the demo, and the
# curl lines after it must get answers from several demo backends (each
# node balances round robin on its own, and connections land on any node).
set -euo pipefail
cd "$(dirname "$0")/.."
first=$(awk '/^## Quick start/{q=1} q && /^```sh/{getline; print; exit}' README.md)
[[ "$first" == "cargo run -- demo" ]] || { echo "README's first command changed: $first" >&2; exit 1; }
log=$(mktemp)
$first >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  curl -fs -m 2 http://127.0.0.1:8080/ >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; echo "the demo exited" >&2; exit 1; }
  sleep 0.5
done
answers=$(for i in $(seq 1 12); do curl -fs -m 2 http://127.0.0.1:8080/; echo; done | sort -u | grep -c . || true)
[[ "$answers" -ge 2 ]] || { cat "$log" >&2; echo "expected several backends, got $answers" >&2; exit 1; }
# Read the page whole before searching it: `curl | grep -q` fails under
# pipefail whenever grep stops reading before curl has written everything.
metrics=$(curl -fs -m 2 http://127.0.0.1:9090/metrics) || { echo "no metrics page on :9090" >&2; exit 1; }
grep -q keel_member_requests_total <<<"$metrics" || { echo "the metrics page has no keel_member_requests_total" >&2; exit 1; }
echo "quick start: ok"
