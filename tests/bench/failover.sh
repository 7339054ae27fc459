#!/usr/bin/env bash
# VIP failover: Keel (default and fast timing) against keepalived (VRRPv3,
# advert_int 1 and 0.1), same run, same namespace topology. Prints a
# Markdown table for BENCHMARKS.md. Needs root; RUNS=N runs per cell (5).
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v keepalived >/dev/null || missing+=(keepalived)
command -v python3 >/dev/null || missing+=(python3)
command -v nft >/dev/null || missing+=(nftables)
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cargo build --release -p keel -p keel-tests --bins
KEEL_BIN="$PWD/target/release/keel" exec "$PWD/target/release/failover_bench"
