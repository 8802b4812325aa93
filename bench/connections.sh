#!/usr/bin/env bash
# The connection-scale benchmark of issue 15, one command. Idle Socket.IO sockets, each with a
# JWT of its own user and joined to one conversation, held by bench/conn-client (Engine.IO v4
# spoken over tokio-tungstenite, source addresses spread over 127.0.0.0/8, several processes:
# this machine caps a process at 20,000 open files). For each socket count, on a freshly
# started server, it reports the server's RSS before and after, RSS per joined socket, the
# connect rate (handshake + auth + join), CPU while idle (Engine.IO pings) and, with --rate,
# p50/p99 delivery latency with messages posted through the whole pipeline. Same client, same
# run, against
#   allo  allo-fanout replica(s) (release build) with allo-api and allo-workers behind them,
#         on the bench's own database, subject prefix and streams
#   node  bench/node/server.mjs (Express + Socket.IO, conversations in memory)
#
#   bench/connections.sh [--sockets 1000,18000] [--conversations 10000] [--replicas 1]
#                        [--idle-secs 30] [--systems allo,node] [--rate 0] [--rate-secs 20]
#                        [--drain-secs 10]
#   bench/connections.sh --sockets 100000 --replicas 6 --rate 1000 --systems allo
#   ALLO_BIN=/path/to/target/release bench/connections.sh …   # these binaries, no build
# Any ALLO_* variable set by the caller reaches the Allo processes (e.g. ALLO_FANOUT__SOCKET_BUFFER).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
source "$BENCH/../scripts/services.sh"

sockets=1000,18000 conversations=10000 replicas=1 idle_secs=30 systems=allo,node rate=0 rate_secs=20 drain_secs=10
while [ $# -gt 0 ]; do
  case $1 in
    --sockets) sockets=$2; shift 2 ;;
    --conversations) conversations=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --idle-secs) idle_secs=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --rate-secs) rate_secs=$2; shift 2 ;;
    --drain-secs) drain_secs=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# Sockets per client process: well under the 20,000 open files of a process.
PER_CLIENT=9000

id="$(date +%s)$RANDOM"
out="$ALLO_DATA/bench/connections-$id"; mkdir -p "$out"
pick_port() { local p; while :; do p=$((10000 + RANDOM % 20000)); reachable 127.0.0.1 "$p" || { echo "$p"; return; }; done; }
export ALLO_NATS_URL="${ALLO_NATS_URL:-nats://127.0.0.1:4222}"
pg_base="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
allo_db="allo_conn_$id" prefix="conn$id"; stream_base=$(echo "$prefix" | tr a-z- A-Z_)
secret="conn-secret-$id-0123456789abcdef"
run="c$id" # user ids: $run-u<i>
max_sockets=$(echo "$sockets" | tr , '\n' | sort -n | tail -n1)
[ "$conversations" -le "$max_sockets" ] || conversations=$max_sockets
psql_() { psql "$pg_base/postgres" -v ON_ERROR_STOP=1 -qtAc "$1"; }

pids=() made_db=""
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do stop_pid "$p"; done
  [ -z "$made_db" ] || psql_ "DROP DATABASE IF EXISTS \"$made_db\" WITH (FORCE)" >/dev/null 2>&1 || log "could not drop $made_db"
  node "$BENCH/js/nats-tools.mjs" cleanup "$ALLO_NATS_URL" "$stream_base" >/dev/null 2>&1 || log "could not delete streams ${stream_base}_*"
  stop_started_services
  log "logs and raw results: $out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() {
  for _ in $(seq 1 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; kill -0 "$3" 2>/dev/null || break; sleep 0.2; done
  log "$1 never became ready; last lines of $2:"; tail -n 30 "$2" >&2; exit 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Node's RSS is read after a full collection (server.mjs collects on SIGUSR2 under --expose-gc).
settle() { [ "$1" != node ] || { kill -USR2 $server_pids; sleep 2; }; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sum() { local t=0 x; for x in "$@"; do t=$((t + x)); done; echo $t; }

# --- prerequisites ---------------------------------------------------------------------------
ensure_node
for d in node js; do
  [ "$BENCH/$d/package-lock.json" -ot "$BENCH/$d/node_modules/.package-lock.json" ] ||
    (cd "$BENCH/$d" && npm ci --no-audit --no-fund --silent)
done
ensure_nats "$ALLO_NATS_URL"
ensure_postgres "$pg_base/postgres"
if [ -n "${ALLO_BIN:-}" ]; then bin=$ALLO_BIN; else
  log "building (release) in $ALLO_ROOT"
  (cd "$ALLO_ROOT" && nice -n 10 cargo build --release -q -p allo-api -p allo-workers -p allo-fanout -p allo-conn-client)
  bin="$ALLO_ROOT/target/release"
fi
client="$bin/allo-conn-client"

# The per-step measurement against the server processes $server_pids (all replicas) listening at
# the addresses $server_urls (client processes are spread over them in turn).
# Prints one JSON line per step into $out/results.jsonl.
measure() { # system, sockets, ids file, api url
  local sys=$1 n=$2 ids=$3 api=$4 net=$5
  local rss0 rss1 rss2 t0 t1 c0 c1 cpids=() i=0 k=0 per urls=($server_urls)
  sleep 2; settle "$sys"
  rss0=$(sum $(for p in $server_pids; do rss_kb "$p"; done))
  local nclients=$(( (n + PER_CLIENT - 1) / PER_CLIENT ))
  [ "$nclients" -ge "${#urls[@]}" ] || nclients=${#urls[@]}
  per=$(( (n + nclients - 1) / nclients ))
  t0=$(date +%s.%N)
  while [ $i -lt "$n" ]; do
    local count=$(( n - i < per ? n - i : per ))
    nice -n 5 "$client" hold --url "${urls[$((k % ${#urls[@]}))]}" --secret "$secret" --run "$run" --ids "$ids" \
      --first $i --count $count --src-net $((net + k)) --lat-out "$out/lat-$sys-$n-$k.txt" >"$out/client-$sys-$n-$k.out" 2>"$out/client-$sys-$n-$k.err" &
    cpids+=($!); pids+=($!)
    i=$((i + count)); k=$((k + 1))
  done
  local ready=0 deadline=$((SECONDS + 300))
  while [ $ready -lt ${#cpids[@]} ]; do
    ready=$(cat "$out"/client-$sys-$n-*.out 2>/dev/null | grep -c '"event":"ready"' || true)
    for p in "${cpids[@]}"; do kill -0 "$p" 2>/dev/null || { log "client $p exited:"; cat "$out"/client-$sys-$n-*.err >&2; exit 1; }; done
    [ $SECONDS -lt $deadline ] || { log "clients not ready within 300 s"; exit 1; }
    sleep 0.2
  done
  t1=$(date +%s.%N)
  local joined failed
  joined=$(grep -h '"event":"ready"' "$out"/client-$sys-$n-*.out | grep -o '"joined":[0-9]*' | cut -d: -f2 | awk '{t += $1} END {print t + 0}')
  failed=$(grep -h '"event":"ready"' "$out"/client-$sys-$n-*.out | grep -o '"failed":[0-9]*' | cut -d: -f2 | awk '{t += $1} END {print t + 0}')
  sleep 5 # let whatever the joins started settle (feeds, presence announcements)
  settle "$sys"
  rss1=$(sum $(for p in $server_pids; do rss_kb "$p"; done))
  c0=$(sum $(for p in $server_pids; do cpu_ticks "$p"; done))
  sleep "$idle_secs"
  c1=$(sum $(for p in $server_pids; do cpu_ticks "$p"; done))
  settle "$sys"
  rss2=$(sum $(for p in $server_pids; do rss_kb "$p"; done))
  local lat='null'
  if [ "$rate" != 0 ]; then
    "$client" post --api "$api" --secret "$secret" --run "$run" --ids "$ids" --rate "$rate" --secs "$rate_secs" \
      >"$out/post-$sys-$n.out" 2>"$out/post-$sys-$n.err" || { log "post failed:"; cat "$out/post-$sys-$n.err" >&2; }
    # The last deliveries: a message still undelivered this long after the posting ended is
    # missing from `deliveries` (late or lost; expected: accepted × members).
    sleep "$drain_secs"
    for p in "${cpids[@]}"; do kill -USR1 "$p"; done
    sleep 1
    lat=$(node -e '
      const fs = require("fs"); const [posted, ...files] = process.argv.slice(1);
      const reps = files.filter((f) => f.endsWith(".out")).map((f) => fs.readFileSync(f, "utf8").trim().split("\n").map(JSON.parse).filter((l) => l.event === "report").pop() ?? {});
      // Every delivery of every client process, so the percentiles are exact.
      const lat = Float64Array.from(files.filter((f) => f.endsWith(".txt")).flatMap((f) => fs.readFileSync(f, "utf8").split("\n").filter(Boolean).map(Number))).sort();
      const pct = (p) => lat.length ? Math.round(lat[Math.min(lat.length - 1, Math.ceil(lat.length * p) - 1)] / 100) / 10 : null;
      const p = fs.existsSync(posted) ? JSON.parse(fs.readFileSync(posted, "utf8").trim().split("\n").pop()) : {};
      console.log(JSON.stringify({ posted: p, deliveries: lat.length, p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: pct(1),
        disconnected: reps.reduce((a, r) => a + (r.disconnected ?? 0), 0) }));
    ' "$out/post-$sys-$n.out" "$out"/client-$sys-$n-*.out "$out"/lat-$sys-$n-*.txt)
  fi
  for p in "${cpids[@]}"; do stop_pid "$p"; done
  local line
  line=$(node -e '
    const [sys, n, joined, failed, rss0, rss1, rss2, t0, t1, c0, c1, idle, replicas, clk, lat] = process.argv.slice(1);
    const kb = (a, b) => Math.round(10 * (Number(b) - Number(a)) / Number(joined)) / 10;
    console.log(JSON.stringify({ system: sys, sockets: Number(n), replicas: Number(replicas), joined: Number(joined), failed: Number(failed),
      rss_before_mb: Math.round(rss0 / 1024), rss_joined_mb: Math.round(rss1 / 1024), rss_idle_mb: Math.round(rss2 / 1024),
      kb_per_socket: kb(rss0, rss1), kb_per_socket_after_idle: kb(rss0, rss2),
      connect_per_s: Math.round(Number(joined) / (t1 - t0)), connect_secs: Math.round(100 * (t1 - t0)) / 100,
      idle_cpu_pct: Math.round(1000 * (c1 - c0) / Number(clk) / Number(idle)) / 10, latency: JSON.parse(lat) }));
  ' "$sys" "$n" "${joined:-0}" "${failed:-0}" "$rss0" "$rss1" "$rss2" "$t0" "$t1" "$c0" "$c1" "$idle_secs" \
    "$(echo $server_pids | wc -w)" "$(getconf CLK_TCK)" "$lat")
  echo "$line" >>"$out/results.jsonl"
  log "$line"
}

# --- Allo -----------------------------------------------------------------------------------
if [[ ",$systems," == *,allo,* ]]; then
  psql_ "CREATE DATABASE \"$allo_db\""; made_db=$allo_db
  api_addr="127.0.0.1:$(pick_port)" api_admin="127.0.0.1:$(pick_port)"
  export ALLO_API_ADDR=$api_addr ALLO_API_ADMIN_ADDR=$api_admin ALLO_SUBJECT_PREFIX=$prefix
  export ALLO_JWT_SECRET=$secret ALLO_DATABASE_URL="$pg_base/$allo_db" RUST_LOG=${RUST_LOG:-warn}
  # Set-up creates 10,000 conversations as a few users' worth of requests.
  export ALLO_LIMITS__RATE_MAX_PER_WINDOW=${ALLO_LIMITS__RATE_MAX_PER_WINDOW:-1000000000}
  env | grep '^ALLO_\|^RUST_LOG' | sort >"$out/allo-env.txt"
  "$bin/allo-workers" migrate >"$out/allo-migrate.log" 2>&1 ||
    { log "allo-workers migrate failed:"; cat "$out/allo-migrate.log" >&2; exit 1; }
  env $(nats_env workers) "$bin/allo-workers" >"$out/workers.log" 2>&1 & workers_pid=$!; pids+=($!)
  env $(nats_env api) "$bin/allo-api" >"$out/api.log" 2>&1 & api_pid=$!; pids+=($!)
  wait_ready "http://$api_admin/readyz" "$out/api.log" "$api_pid"
  log "allo: creating $conversations conversations for $max_sockets users"
  "$client" create --api "http://$api_addr" --secret "$secret" --run "$run" --users "$max_sockets" \
    --conversations "$conversations" --out "$out/ids-allo.txt" | tee -a "$out/create.jsonl" >&2
  for n in ${sockets//,/ }; do
    server_pids="" server_urls="" fanouts=()
    for r in $(seq 1 "$replicas"); do
      fa="127.0.0.1:$(pick_port)" fadmin="127.0.0.1:$(pick_port)"
      # Each replica's pool: 6 replicas + api + workers stay under Postgres' 100 connections.
      env $(nats_env fanout) ALLO_FANOUT_ADDR=$fa ALLO_FANOUT_ADMIN_ADDR=$fadmin \
        ALLO_DATABASE_MAX_CONNECTIONS=${ALLO_DATABASE_MAX_CONNECTIONS:-8} \
        "$bin/allo-fanout" >"$out/fanout-$n-$r.log" 2>&1 & fp=$!; pids+=($fp); fanouts+=($fp)
      wait_ready "http://$fadmin/readyz" "$out/fanout-$n-$r.log" "$fp"
      server_pids+=" $fp" server_urls+=" http://$fa"
    done
    measure allo "$n" "$out/ids-allo.txt" "http://$api_addr" 10
    for p in "${fanouts[@]}"; do stop_pid "$p"; done
  done
  stop_pid "$api_pid"; stop_pid "$workers_pid"
fi

# --- Node + Socket.IO -----------------------------------------------------------------------
if [[ ",$systems," == *,node,* ]]; then
  for n in ${sockets//,/ }; do
    # One Node process (Socket.IO has no replicas without an adapter); at most what one process holds.
    [ "$n" -le 18000 ] || { log "node: $n sockets do not fit one process; skipped"; continue; }
    node_port=$(pick_port)
    MODE=nostore PORT=$node_port JWT_SECRET=$secret node --expose-gc "$BENCH/node/server.mjs" >"$out/node-$n.log" 2>&1 & node_pid=$!; pids+=($node_pid)
    wait_ready "http://127.0.0.1:$node_port/readyz" "$out/node-$n.log" "$node_pid"
    # Conversations live in the Node process's memory: made again for every fresh server.
    "$client" create --api "http://127.0.0.1:$node_port" --secret "$secret" --run "$run" --users "$max_sockets" \
      --conversations "$conversations" --out "$out/ids-node.txt" >>"$out/create.jsonl"
    server_pids=$node_pid server_urls="http://127.0.0.1:$node_port"
    measure node "$n" "$out/ids-node.txt" "http://127.0.0.1:$node_port" 40
    stop_pid "$node_pid"
  done
fi

node -e '
  const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
  const pad = (s, n) => String(s).padStart(n);
  console.log("system  sockets replicas joined failed  RSS before/joined/idle MB  KB/socket (idle)  connect/s  idle CPU %  latency p50/p99 ms (deliveries, disconnected)");
  for (const r of rows) {
    const lat = r.latency ? `${r.latency.p50_ms?.toFixed(1)}/${r.latency.p99_ms?.toFixed(1)} (${r.latency.deliveries}, ${r.latency.disconnected})` : "-";
    console.log(`${r.system.padEnd(6)} ${pad(r.sockets, 8)} ${pad(r.replicas, 8)} ${pad(r.joined, 6)} ${pad(r.failed, 6)}  ${pad(`${r.rss_before_mb}/${r.rss_joined_mb}/${r.rss_idle_mb}`, 24)}  ${pad(`${r.kb_per_socket} (${r.kb_per_socket_after_idle})`, 16)}  ${pad(r.connect_per_s, 9)}  ${pad(r.idle_cpu_pct, 10)}  ${lat}`);
  }
' "$out/results.jsonl" | tee "$out/summary.txt"
