#!/usr/bin/env bash
# Pool scaling, one command (issue 14): how fast 1, 2 and 4 processes of the messages pool
# drain a backlog, with the work spread over 20 and over 2,000 conversations.
#
# For each conversation count: the API and one allo-workers create the conversations, then the
# workers stop; for each process count a backlog of --count sendMessage commands is POSTed (all
# accepted, nothing applies them), then that many `allo-workers --pool messages` start at once
# and the pool's consumers are watched until nothing waits or is unacked. Printed per run:
# drain time and rate, CPU % of the workers (summed) and of the database's Postgres backends,
# and what Postgres holds afterwards (messages applied, duplicates, seq gaps: must be 0).
#
#   bench/drain.sh [--count 30000] [--procs 1,2,4] [--conversations 20,2000]
#   ALLO_BIN=/path/to/target/release bench/drain.sh …   # these binaries, no build
# Like bench/openloop.sh it runs on its own database, prefix and streams, and removes them.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
source "$BENCH/../scripts/services.sh"
source "$BENCH/lib.sh"

count=30000 procs_list=1,2,4 conv_list=20,2000
while [ $# -gt 0 ]; do
  case $1 in
    --count) count=$2; shift 2 ;;
    --procs) procs_list=$2; shift 2 ;;
    --conversations) conv_list=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

id="$(date +%s)$RANDOM"
out="$ALLO_DATA/bench/drain-$id"; mkdir -p "$out"
export ALLO_NATS_URL="${ALLO_NATS_URL:-nats://127.0.0.1:4222}"
pg_base="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
secret="bench-secret-$id-0123456789abcdef"
psql_() { psql "$1" -v ON_ERROR_STOP=1 -qtAc "$2"; }

pids=() made_dbs=() prefixes=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do stop_pid "$p"; done
  for db in "${made_dbs[@]}"; do psql_ "$pg_base/postgres" "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || log "could not drop $db"; done
  for base in "${prefixes[@]}"; do node "$BENCH/js/nats-tools.mjs" cleanup "$ALLO_NATS_URL" "$base" >/dev/null 2>&1 || log "could not delete streams ${base}_*"; done
  stop_started_services
  log "logs and raw results: $out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

npm_ready js
command -v psql >/dev/null || apt_install postgresql-client
ensure_nats "$ALLO_NATS_URL"
ensure_postgres "$pg_base/postgres"
bin=$(allo_binaries)
nats_pid=$(listener_pid "$(url_port "$ALLO_NATS_URL" 4222)")

cat <<EOF
Allo pool-scaling benchmark $id on $(nproc) cores: a backlog of $count sendMessage commands,
drained by 1..n processes of the messages pool (each with the default lanes and batch size).
cmds/s = from the first command applied to the last; steady/s = from 80 % of the backlog left
to 20 % left (leaves out the processes' start and the tail); cpu = % of one core.
EOF
printf '%-6s %-6s %8s %9s %9s %10s %8s %8s %8s %6s %5s\n' convs procs drain_s cmds/s steady/s workers% pg% nats% applied dup gaps

for convs in ${conv_list//,/ }; do
  db="allo_bench_drain_${id}_$convs" prefix="drain${id}c$convs"
  base=$(echo "$prefix" | tr a-z- A-Z_)
  psql_ "$pg_base/postgres" "CREATE DATABASE \"$db\""; made_dbs+=("$db"); prefixes+=("$base")
  api_addr="127.0.0.1:$(pick_port)" api_admin="127.0.0.1:$(pick_port)"
  export ALLO_API_ADDR=$api_addr ALLO_API_ADMIN_ADDR=$api_admin ALLO_FANOUT_ADMIN_ADDR="127.0.0.1:$(pick_port)"
  export ALLO_SUBJECT_PREFIX=$prefix ALLO_JWT_SECRET=$secret ALLO_DATABASE_URL="$pg_base/$db" RUST_LOG=${RUST_LOG:-warn}
  # The backlog is the point here: lift the ingress's overload bound and the per-user budget.
  export ALLO_JETSTREAM__COMMAND_MAX_MESSAGES=10000000 ALLO_LIMITS__RATE_MAX_PER_WINDOW=1000000000
  "$bin/allo-workers" migrate >"$out/migrate-$convs.log" 2>&1 || { log "migrate failed:"; cat "$out/migrate-$convs.log" >&2; exit 1; }
  env $(nats_env api) "$bin/allo-api" >"$out/api-$convs.log" 2>&1 & api_pid=$!; pids+=($!)
  wait_ready "http://$api_admin/readyz" "$out/api-$convs.log" "$api_pid"
  env $(nats_env workers) "$bin/allo-workers" >"$out/setup-workers-$convs.log" 2>&1 & setup_pid=$!; pids+=($!)
  node "$BENCH/js/drain.mjs" setup --api "http://$api_addr" --secret "$secret" --conversations "$convs" --out "$out/convs-$convs.json"
  stop_pid "$setup_pid"
  applied_before=0
  for n in ${procs_list//,/ }; do
    node "$BENCH/js/drain.mjs" fill --api "http://$api_addr" --secret "$secret" --convs "$out/convs-$convs.json" --count "$count"
    # The watcher reads the backlog first; then the workers start, all at once.
    ready="$out/ready-$convs-$n" procs_file="$out/procs-$convs-$n"
    node "$BENCH/js/drain.mjs" watch --nats "$ALLO_NATS_URL" --stream "${base}_CMD" --pool messages --expect "$count" \
      --ready "$ready" --procs-file "$procs_file" --pg-dbs "$db" >"$out/drain-$convs-$n.json" & watch_pid=$!; pids+=($!)
    while [ ! -f "$ready" ]; do kill -0 $watch_pid 2>/dev/null || { log "the watcher failed"; exit 1; }; sleep 0.05; done
    worker_pids=() procs_arg=""
    for k in $(seq 1 "$n"); do
      env $(nats_env workers) "$bin/allo-workers" --pool messages >"$out/workers-$convs-$n-$k.log" 2>&1 & worker_pids+=($!); pids+=($!)
      procs_arg+="w$k=$!,"
    done
    echo "${procs_arg}nats=${nats_pid:-0}" >"$procs_file"
    wait $watch_pid || { log "the watcher failed"; exit 1; }
    for p in "${worker_pids[@]}"; do stop_pid "$p"; done
    read -r applied dup gaps < <(psql_ "$pg_base/$db" "
      SELECT (SELECT count(*) FROM messages),
             (SELECT count(*) - count(DISTINCT body) FROM messages),
             (SELECT count(*) FROM (SELECT seq - lag(seq) OVER (PARTITION BY conversation_id ORDER BY seq) AS step
                                    FROM events) s WHERE step <> 1)" | tr '|' ' ')
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const w = Object.entries(r.cpuPct).filter(([k]) => /^w\d+$/.test(k)).reduce((a, [, v]) => a + v, 0);
      const [convs, n, applied, dup, gaps] = process.argv.slice(2);
      console.log([convs.padEnd(6), n.padEnd(6), r.secs.toFixed(2).padStart(8), Math.round(r.rate).toString().padStart(9),
        (r.steadyRate ? Math.round(r.steadyRate).toString() : "-").padStart(9),
        w.toFixed(0).padStart(10), (r.cpuPct.pg ?? 0).toFixed(0).padStart(8), (r.cpuPct.nats ?? 0).toFixed(0).padStart(8), applied.padStart(8), dup.padStart(6), gaps.padStart(5)].join(" ") +
        (r.left ? `  (${r.left} still waiting at the timeout)` : ""));
    ' "$out/drain-$convs-$n.json" "$convs" "$n" "$((applied - applied_before))" "$dup" "$gaps"
    applied_before=$applied
  done
  stop_pid "$api_pid"
done
