#!/usr/bin/env bash
# Fan-out benchmark: starts Allo (release build) with scripts/run.sh on its own ports, database
# and subject prefix (NATS and Postgres as run.sh finds or starts them), then runs
# tests/js/bench-fanout.mjs: 200 sockets in 20 conversations, delivered events/s and
# POST-to-socket latency p50/p99 per round and the median of rounds.
#
#   bench/fanout.sh [rounds=3] [messages-per-conversation=25] [concurrency=16]
set -euo pipefail
source "$(dirname "$0")/../scripts/services.sh"
cd "$ALLO_ROOT"
pick_port() { local p; while :; do p=$((20000 + RANDOM % 20000)); reachable 127.0.0.1 "$p" || { echo "$p"; return; }; done; }
scratch=$(mktemp -d)
export ALLO_PROFILE=release
export ALLO_API_ADDR="127.0.0.1:$(pick_port)" ALLO_FANOUT_ADDR="127.0.0.1:$(pick_port)"
export ALLO_SUBJECT_PREFIX="bench$RANDOM" ALLO_JWT_SECRET="bench-secret-$(date +%s%N)"
export ALLO_DATABASE_URL="${ALLO_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/allo_bench_$RANDOM}"
export ALLO_DATABASE_MAX_CONNECTIONS=16 RUST_LOG=warn
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --silent)
scripts/run.sh >"$scratch/run.out" 2>&1 &
run_pid=$!
trap 'kill -TERM $run_pid 2>/dev/null; wait $run_pid 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 1 900); do grep -q "Allo is up" "$scratch/run.out" && break; kill -0 $run_pid || { cat "$scratch/run.out"; exit 1; }; sleep 1; done
echo "bench: $(nproc) cores; api, workers (all pools, one process), fan-out, NATS and Postgres on this machine"
node tests/js/bench-fanout.mjs "http://$ALLO_API_ADDR" "http://$ALLO_FANOUT_ADDR" "$ALLO_JWT_SECRET" "${1:-3}" "${2:-25}" "${3:-16}"
