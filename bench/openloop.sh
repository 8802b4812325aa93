#!/usr/bin/env bash
# The honest benchmark of issue 9, one command. In one run, under one load generator:
#   1. open loop at rising fixed rates (bench/js/openloop.mjs: 200 npm socket.io-client sockets
#      in 20 group conversations of 10; each conversation's first member POSTs sendMessage over
#      keep-alive HTTP; latency = POST start -> `message` at every member's socket), against
#        allo     the release build (api, workers, fan-out) on its own ports, database and prefix
#        node     Node + Express + Socket.IO that emits what it receives (bench/node/server.mjs)
#        node-pg  the same, awaiting a Postgres INSERT before emitting
#      with CPU % of every process per step;
#   2. the ingress alone: wrk POSTing sendMessage to allo-api (workers stopped: accepted 202/s)
#      next to a trivial Express handler (parse JSON, check JWT, answer 202);
#   3. the bare ceilings: JetStream pipelined publish, Postgres 100-row-insert transactions;
#   4. a summary with the ratios the targets are judged by.
# Everything it starts it stops; the databases and streams it created are removed.
#
#   bench/openloop.sh [--rates 100,250,500,1000,1500,2000] [--step-secs 10] [--grace-secs 5]
#                     [--systems allo,node,node-pg] [--ingress-secs 5] [--no-ingress] [--no-ceilings]
#   ALLO_ROOT=/path/to/checkout bench/openloop.sh …   # build and measure another checkout's Allo
#   ALLO_BIN=/path/to/target/release bench/openloop.sh …   # use these binaries, no build
# Any ALLO_* variable set by the caller reaches the Allo processes (e.g. ALLO_WORKER__BATCH_SIZE).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
source "$BENCH/../scripts/services.sh"
source "$BENCH/lib.sh"

rates=100,250,500,1000,1500,2000 step_secs=10 grace_secs=5 systems=allo,node,node-pg
ingress_secs=5 do_ingress=1 do_ceilings=1
while [ $# -gt 0 ]; do
  case $1 in
    --rates) rates=$2; shift 2 ;;
    --step-secs) step_secs=$2; shift 2 ;;
    --grace-secs) grace_secs=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --ingress-secs) ingress_secs=$2; shift 2 ;;
    --no-ingress) do_ingress=0; shift ;;
    --no-ceilings) do_ceilings=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

id="$(date +%s)$RANDOM"
out="$ALLO_DATA/bench/openloop-$id"; mkdir -p "$out"
export ALLO_NATS_URL="${ALLO_NATS_URL:-nats://127.0.0.1:4222}"
pg_base="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
allo_db="allo_bench_$id" node_db="allo_bench_node_$id"
prefix="bench$id"; stream_base=$(echo "$prefix" | tr a-z- A-Z_)
secret="bench-secret-$id-0123456789abcdef" # one secret for every system: the same tokens drive each of them
psql_() { psql "$pg_base/postgres" -v ON_ERROR_STOP=1 -qtAc "$1"; }

pids=() made_dbs=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do stop_pid "$p"; done
  [ -n "${BENCH_KEEP_DB:-}" ] || for db in "${made_dbs[@]}"; do psql_ "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || log "could not drop $db"; done
  node "$BENCH/js/nats-tools.mjs" cleanup "$ALLO_NATS_URL" "$stream_base" >/dev/null 2>&1 || log "could not delete streams $stream_base_*"
  stop_started_services
  log "logs and raw results: $out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------------------------
ensure_node
command -v wrk >/dev/null || apt_install wrk
command -v pgbench >/dev/null || apt_install postgresql-client
npm_ready node js
ensure_nats "$ALLO_NATS_URL"
ensure_postgres "$pg_base/postgres"
nats_pid=$(listener_pid "$(url_port "$ALLO_NATS_URL" 4222)")
[ -n "$nats_pid" ] || { log "no pid found for the NATS listener"; exit 1; }
for db in "$allo_db" "$node_db"; do psql_ "CREATE DATABASE \"$db\""; made_dbs+=("$db"); done

if [[ ",$systems," == *,allo,* ]]; then
  bin=$(allo_binaries)
fi

cat <<EOF
Allo open-loop benchmark $id on $(nproc) cores ($(uname -r)); everything, load generator included, on this machine.
rates: $rates msgs/s, $step_secs s per step, grace $grace_secs s; systems: $systems
Columns: sent/s achieved POST rate; 2xx/429/503/err POST answers; deliv/s socket deliveries/s;
complete = distinct (message, member) deliveries within the grace / (accepted POSTs x 10);
dup = repeated deliveries; p50/p99/max ms POST start -> socket; http99 POST answer p99;
lag99 = load generator's own send lag p99; drainms = step's send end -> its last delivery
('>' = not all delivered); ok = p99 < 50 ms, 100 % delivered, no refusal, rate achieved.
EOF

loadgen() { # label, then extra args
  local label=$1; shift
  # In the background and waited for, so that SIGTERM/SIGINT to this script stops it at once.
  node "$BENCH/js/openloop.mjs" --label "$label" --secret "$secret" --rates "$rates" --step-secs "$step_secs" \
    --grace-secs "$grace_secs" --out "$out/$label.json" --wrk-pairs "$out/pairs-$label.txt" "$@" 2>"$out/loadgen-$label.err" &
  local lp=$!; pids+=($lp)
  wait $lp || { log "load generator failed on $label:"; cat "$out/loadgen-$label.err" >&2; exit 1; }
}
ingress_wrk() { # label, url
  [ -f "$WRK_PAIRS" ] || { log "no senders for wrk"; return 1; }
  wrk -t2 -c64 -d"${ingress_secs}s" -s "$BENCH/wrk/sendmessage.lua" "$2" >"$out/wrk-$1.txt" 2>&1 ||
    { log "wrk failed:"; cat "$out/wrk-$1.txt" >&2; exit 1; }
  grep '^WRK_JSON ' "$out/wrk-$1.txt" | cut -d' ' -f2- >"$out/ingress-$1.json"
}

# --- Allo -----------------------------------------------------------------------------------
if [[ ",$systems," == *,allo,* ]]; then
  api_addr="127.0.0.1:$(pick_port)" fanout_addr="127.0.0.1:$(pick_port)"
  api_admin="127.0.0.1:$(pick_port)" fanout_admin="127.0.0.1:$(pick_port)"
  export ALLO_API_ADDR=$api_addr ALLO_FANOUT_ADDR=$fanout_addr ALLO_SUBJECT_PREFIX=$prefix
  export ALLO_API_ADMIN_ADDR=$api_admin ALLO_FANOUT_ADMIN_ADDR=$fanout_admin
  export ALLO_JWT_SECRET=$secret ALLO_DATABASE_URL="$pg_base/$allo_db" RUST_LOG=${RUST_LOG:-warn}
  # The bench's 20 senders post far past the per-user budget meant for people.
  export ALLO_LIMITS__RATE_MAX_PER_WINDOW=${ALLO_LIMITS__RATE_MAX_PER_WINDOW:-1000000000}
  env | grep '^ALLO_\|^RUST_LOG' | sort >"$out/allo-env.txt" # what this run used
  "$bin/allo-workers" migrate >"$out/allo-migrate.log" 2>&1 ||
    { log "allo-workers migrate failed:"; cat "$out/allo-migrate.log" >&2; exit 1; }
  env $(nats_env workers) "$bin/allo-workers" >"$out/workers.log" 2>&1 & workers_pid=$!; pids+=($!)
  env $(nats_env api) "$bin/allo-api" >"$out/api.log" 2>&1 & api_pid=$!; pids+=($!)
  env $(nats_env fanout) "$bin/allo-fanout" >"$out/fanout.log" 2>&1 & fanout_pid=$!; pids+=($!)
  wait_ready "http://$api_admin/readyz" "$out/api.log" "$api_pid"
  wait_ready "http://$fanout_admin/readyz" "$out/fanout.log" "$fanout_pid"
  loadgen allo --api "http://$api_addr" --fanout "http://$fanout_addr" \
    --procs "api=$api_pid,workers=$workers_pid,fanout=$fanout_pid,nats=$nats_pid" \
    --pg-dbs "$allo_db" --system api,workers,fanout,nats,pg
  if [ $do_ingress = 1 ]; then
    stop_pid "$workers_pid" # the ingress alone: commands pile up in the stream, nothing applies them
    # ... past the overload bound (5,000 waiting commands by default), so lift it for this run.
    stop_pid "$api_pid"
    env $(nats_env api) ALLO_JETSTREAM__COMMAND_MAX_MESSAGES=10000000 "$bin/allo-api" >"$out/api-ingress.log" 2>&1 & api_pid=$!; pids+=($!)
    wait_ready "http://$api_admin/readyz" "$out/api-ingress.log" "$api_pid"
    WRK_PAIRS="$out/pairs-allo.txt" ingress_wrk allo "http://$api_addr"
  fi
  for p in "$api_pid" "$fanout_pid" "$workers_pid"; do stop_pid "$p"; done
fi

# --- Node baselines -------------------------------------------------------------------------
start_node() { # mode
  node_port=$(pick_port)
  MODE=$1 PORT=$node_port JWT_SECRET=$secret DATABASE_URL="$pg_base/$node_db" \
    node "$BENCH/node/server.mjs" >"$out/node-$1.log" 2>&1 & node_pid=$!; pids+=($node_pid)
  wait_ready "http://127.0.0.1:$node_port/readyz" "$out/node-$1.log" "$node_pid"
}
for sys in node node-pg; do
  [[ ",$systems," == *,$sys,* ]] || continue
  if [ $sys = node ]; then start_node nostore; extra=(--system node)
  else start_node pg; extra=(--pg-dbs "$node_db" --system node,pg); fi
  loadgen $sys --api "http://127.0.0.1:$node_port" --fanout "http://127.0.0.1:$node_port" \
    --procs "node=$node_pid,nats=$nats_pid" "${extra[@]}"
  stop_pid "$node_pid"
done

if [ $do_ingress = 1 ]; then
  start_node trivial
  WRK_PAIRS=$(ls "$out"/pairs-*.txt | head -n1) ingress_wrk express "http://127.0.0.1:$node_port"
  stop_pid "$node_pid"
fi

# --- bare ceilings --------------------------------------------------------------------------
if [ $do_ceilings = 1 ]; then
  log "ceilings: JetStream pipelined publish, Postgres multi-row insert"
  node "$BENCH/js/nats-tools.mjs" ceiling "$ALLO_NATS_URL" "$stream_base" 3 >"$out/ceiling-nats.json"
  psql "$pg_base/$node_db" -qc "CREATE TABLE ceiling_rows (id bigserial PRIMARY KEY, conversation_id bigint, seq bigint, body text)"
  echo "INSERT INTO ceiling_rows (conversation_id, seq, body) SELECT 1, g, 'a benchmark message of some sixty characters, like the load' FROM generate_series(1, 100) g;" >"$out/pg-100.sql"
  echo "INSERT INTO ceiling_rows (conversation_id, seq, body) VALUES (1, 1, 'a benchmark message of some sixty characters, like the load');" >"$out/pg-1.sql"
  for n in 100 1; do # 4 clients, like a worker's concurrent batches; each transaction one statement
    pgbench -n -c 4 -j 2 -T 3 -f "$out/pg-$n.sql" "$pg_base/$node_db" >"$out/pgbench-$n.txt" 2>&1 ||
      { log "pgbench failed:"; cat "$out/pgbench-$n.txt" >&2; exit 1; }
  done
  tps() { grep -o 'tps = [0-9.]*' "$1" | head -n1 | cut -d' ' -f3; }
  echo "{\"rows100Tps\": $(tps "$out/pgbench-100.txt"), \"rows1Tps\": $(tps "$out/pgbench-1.txt")}" >"$out/ceiling-pg.json"
fi

node "$BENCH/js/summary.mjs" "$out"
