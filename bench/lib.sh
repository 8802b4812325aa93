# Shell helpers shared by the benchmarks (sourced after scripts/services.sh).

# A free TCP port below the ephemeral range (32768+), where an outgoing connection may hold a
# port we test as free.
pick_port() { local p; while :; do p=$((10000 + RANDOM % 20000)); reachable 127.0.0.1 "$p" || { echo "$p"; return; }; done; }

# SIGTERM, then SIGKILL after 10 s: a stuck server must not hang the bench.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
}

# Waits for GET $1 to answer 2xx; fails loudly with the tail of log $2 when process $3 dies or
# it never does.
wait_ready() {
  for _ in $(seq 1 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; kill -0 "$3" 2>/dev/null || break; sleep 0.2; done
  log "$1 never became ready; last lines of $2:"; tail -n 30 "$2" >&2; exit 1
}

# pid of the process listening on a TCP port (the NATS server the stack uses).
listener_pid() { ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2; }

# Installs a bench/<dir>'s npm packages when its lock file is newer than what is installed.
npm_ready() {
  local d
  for d in "$@"; do
    [ "$BENCH/$d/package-lock.json" -ot "$BENCH/$d/node_modules/.package-lock.json" ] ||
      (cd "$BENCH/$d" && npm ci --no-audit --no-fund --silent)
  done
}

# The Allo release binaries: $ALLO_BIN when set, else a release build of $ALLO_ROOT.
allo_binaries() {
  if [ -n "${ALLO_BIN:-}" ]; then echo "$ALLO_BIN"; return; fi
  log "building allo (release) in $ALLO_ROOT"
  (cd "$ALLO_ROOT" && cargo build --release --bins -q) >&2
  echo "$ALLO_ROOT/target/release"
}
