#!/usr/bin/env bash
# The fresh-machine path, as CI proves it on every run: starts scripts/run.sh pointed at ports
# where nothing listens (so it must start its own NATS and PostgreSQL), waits until it is
# ready, sends one message end to end through a real socket.io-client, stops it, and checks
# that everything it started is gone.
set -euo pipefail
source "$(dirname "$0")/services.sh"
cd "$ALLO_ROOT"

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    reachable 127.0.0.1 "$p" || { echo "$p"; return; }
  done
}
nats_port=$(free_port); pg_port=$(free_port); api_port=$(free_port); fanout_port=$(free_port)
api_admin_port=$(free_port); fanout_admin_port=$(free_port)
scratch=$(mktemp -d)
export ALLO_DATA="$scratch/data" ALLO_PG_DIR="$scratch/pg"
mkdir -p "$ALLO_PG_DIR"; [ "$(id -u)" -eq 0 ] && chmod 755 "$scratch" && chown postgres "$ALLO_PG_DIR" 2>/dev/null || true
export ALLO_NATS_URL="nats://127.0.0.1:$nats_port"
export ALLO_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/allo"
export ALLO_API_ADDR="127.0.0.1:$api_port" ALLO_FANOUT_ADDR="127.0.0.1:$fanout_port"
export ALLO_API_ADMIN_ADDR="127.0.0.1:$api_admin_port" ALLO_FANOUT_ADMIN_ADDR="127.0.0.1:$fanout_admin_port"
export ALLO_JWT_SECRET="smoke-$(date +%s%N)-secret-0123456789"

ensure_node
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --silent)

log "smoke: starting scripts/run.sh (NATS :$nats_port, Postgres :$pg_port, API :$api_port, fan-out :$fanout_port)"
scripts/run.sh >"$scratch/run.out" 2>&1 &
run_pid=$!
cleanup() { kill -TERM "$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true; rm -rf "$scratch"; }
trap cleanup EXIT

for i in $(seq 1 600); do
  grep -q "Allo is up" "$scratch/run.out" && break
  kill -0 "$run_pid" 2>/dev/null || { cat "$scratch/run.out"; log "smoke: run.sh exited early"; exit 1; }
  sleep 0.5
done
grep -q "Allo is up" "$scratch/run.out" || { cat "$scratch/run.out"; log "smoke: not ready in time"; exit 1; }
reachable 127.0.0.1 "$nats_port" && reachable 127.0.0.1 "$pg_port"

alice=$(grep -E '^  alice: ' "$scratch/run.out" | awk '{print $2}')
bob=$(grep -E '^  bob: ' "$scratch/run.out" | awk '{print $2}')
node tests/js/smoke.mjs "http://$ALLO_API_ADDR" "http://$ALLO_FANOUT_ADDR" "$alice" "$bob"

kill -TERM "$run_pid"; wait "$run_pid" || true
for port in "$nats_port" "$pg_port" "$api_port" "$fanout_port" "$api_admin_port" "$fanout_admin_port"; do
  for _ in $(seq 1 50); do reachable 127.0.0.1 "$port" || break; sleep 0.2; done
  if reachable 127.0.0.1 "$port"; then log "smoke: something still listens on :$port"; exit 1; fi
done
log "smoke: passed; everything run.sh started is stopped"
