#!/usr/bin/env bash
# Starts the whole of Allo for a newcomer: NATS and PostgreSQL (started here when none answers
# at ALLO_NATS_URL / ALLO_DATABASE_URL), migrations, the API, every worker pool and the fan-out.
# Prints the URLs and dev tokens, then runs until Ctrl-C / SIGTERM, when it stops everything
# it started.
#
#   scripts/run.sh                    # defaults: NATS 127.0.0.1:4222, Postgres 127.0.0.1:5432
#   ALLO_PROFILE=release scripts/run.sh
set -euo pipefail
source "$(dirname "$0")/services.sh"
cd "$ALLO_ROOT"

# A newcomer's stack: dev mode, chosen explicitly (the built-in dev secret unless
# ALLO_JWT_SECRET is set, `allo-api token`, loopback only). Services default to production.
export ALLO_ENVIRONMENT="${ALLO_ENVIRONMENT:-dev}"
export ALLO_NATS_URL="${ALLO_NATS_URL:-nats://127.0.0.1:4222}"
export ALLO_DATABASE_URL="${ALLO_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/allo}"
export ALLO_API_ADDR="${ALLO_API_ADDR:-127.0.0.1:5000}"
export ALLO_FANOUT_ADDR="${ALLO_FANOUT_ADDR:-127.0.0.1:5001}"
export ALLO_API_ADMIN_ADDR="${ALLO_API_ADMIN_ADDR:-127.0.0.1:5100}"
export ALLO_FANOUT_ADMIN_ADDR="${ALLO_FANOUT_ADMIN_ADDR:-127.0.0.1:5101}"
profile="${ALLO_PROFILE:-debug}"

trap 'stop_children; stop_started_services' EXIT
trap 'exit 0' INT TERM

ensure_nats "$ALLO_NATS_URL"
ensure_postgres "$ALLO_DATABASE_URL"

log "building ($profile)"
if [ "$profile" = release ]; then cargo build --release --bins -q; else cargo build --bins -q; fi
bin="$ALLO_ROOT/target/$profile"

"$bin/allo-workers" migrate >/dev/null
logs="$ALLO_DATA/logs"
# Each service connects as its own NATS user (nats.conf), allowed only its subjects.
start_child workers env $(nats_env workers) "$bin/allo-workers"
start_child api env $(nats_env api) "$bin/allo-api"
start_child fanout env $(nats_env fanout) "$bin/allo-fanout"

# Readiness is on the operators' listeners, not the client-facing ports.
for addr in "$ALLO_API_ADMIN_ADDR" "$ALLO_FANOUT_ADMIN_ADDR"; do
  wait_http_ready "http://$addr/readyz" || exit 1
done

cat <<INFO
Allo is up.
  API:      http://$ALLO_API_ADDR   (POST /api/chat/<operation>, GET /api/conversations, ...)
  Sockets:  http://$ALLO_FANOUT_ADDR (Socket.IO v4; handshake auth: {token})
  Console:  http://$ALLO_API_ADDR/console/  (sign in as any user id, e.g. alice and bob in two windows)
  Metrics:  http://$ALLO_API_ADMIN_ADDR/metrics, http://$ALLO_FANOUT_ADMIN_ADDR/metrics (operators only)
  NATS:     users and passwords of nats.conf in $ALLO_DATA/nats-secrets.env
  Logs:     $logs
Dev tokens (24 h):
  alice: $("$bin/allo-api" token alice)
  bob:   $("$bin/allo-api" token bob)
Press Ctrl-C to stop.
INFO
wait_any_child
log "a service exited; see $logs"
