# Sourced by run.sh and test.sh: makes sure NATS (with JetStream) and PostgreSQL answer at the
# given URLs, starting project-local ones when nothing listens there. Only what this file
# started is stopped by `stop_started_services`.
#
# Fresh Debian machine: installs nats-server, postgresql and nodejs from Debian's packages when
# they are missing (needs root or sudo).

ALLO_ROOT="${ALLO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
ALLO_DATA="${ALLO_DATA:-$ALLO_ROOT/.data}"
STARTED_PIDS_FILE=""

# Everything these scripts start shares this host's cores, so each service runs one runtime
# thread (they scale by processes; README, "Speed"), and a NATS server started here one Go
# scheduler thread (GOMAXPROCS): on 2 cores both cut the cross-thread wake-ups that cost more
# CPU than the work. Set either to use more.
export ALLO_RUNTIME_THREADS="${ALLO_RUNTIME_THREADS:-1}"
ALLO_NATS_GOMAXPROCS="${ALLO_NATS_GOMAXPROCS:-1}"

log() { printf '[allo] %s\n' "$*" >&2; }

# host and port of a URL like scheme://[user[:pass]@]host:port[/path]
url_host() { local r="${1#*://}"; r="${r##*@}"; r="${r%%/*}"; echo "${r%%:*}"; }
url_port() { local r="${1#*://}"; r="${r##*@}"; r="${r%%/*}"; [[ "$r" == *:* ]] && echo "${r##*:}" || echo "$2"; }
url_path() { local r="${1#*://}"; r="${r#*/}"; [[ "$r" == "${1#*://}" ]] && echo "" || echo "${r%%\?*}"; }
url_user() { local r="${1#*://}"; [[ "$r" == *@* ]] || { echo ""; return; }; r="${r%%@*}"; echo "${r%%:*}"; }

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_reachable() {
  local host=$1 port=$2 what=$3
  for _ in $(seq 1 100); do reachable "$host" "$port" && return 0; sleep 0.2; done
  log "$what did not come up on $host:$port"; return 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

remember_pid() {
  STARTED_PIDS_FILE="${STARTED_PIDS_FILE:-$(mktemp)}"
  echo "$1 $2" >>"$STARTED_PIDS_FILE"
}

# NATS users of nats.conf and their passwords: generated once into .data/nats-secrets.env (mode
# 600) and exported, so the server we start and the services we start agree. A NATS that
# answers without auth ignores them.
NATS_ROLES="api workers fanout subscriber admin"
load_nats_secrets() {
  local file="$ALLO_DATA/nats-secrets.env" role var
  mkdir -p "$ALLO_DATA"
  if [ ! -f "$file" ]; then
    (umask 077; for role in $NATS_ROLES; do
      var="ALLO_NATS_$(echo "$role" | tr a-z A-Z)_PASSWORD"
      # nats-server parses the value as a config value: a leading letter keeps it a string.
      echo "$var=pw$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    done >"$file")
  fi
  set -a; source "$file"; set +a
}

# The NATS user and password a service binary connects with: `nats_env api`.
nats_env() {
  local var="ALLO_NATS_$(echo "$1" | tr a-z A-Z)_PASSWORD"
  echo "ALLO_NATS_USER=allo-$1" "ALLO_NATS_PASSWORD=${!var}"
}

ensure_nats() {
  local url=$1 host port
  host=$(url_host "$url"); port=$(url_port "$url" 4222)
  load_nats_secrets
  if reachable "$host" "$port"; then log "NATS answers at $host:$port"; return 0; fi
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  local bin; bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  local store="$ALLO_DATA/nats-$port"
  mkdir -p "$store" "$ALLO_DATA/logs"
  log "starting nats-server on $host:$port (store $store)"
  # nats.conf's store_dir is relative: run from a per-port folder so each server has its own.
  (cd "$store" && GOMAXPROCS=$ALLO_NATS_GOMAXPROCS exec "$bin" -c "$ALLO_ROOT/nats.conf" -a "$host" -p "$port") >"$ALLO_DATA/logs/nats-$port.log" 2>&1 &
  remember_pid process $!
  wait_reachable "$host" "$port" nats-server
}

pg_bin() {
  local d; d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$d" ] && echo "$d"
}

ensure_postgres() {
  local url=$1 host port user db
  host=$(url_host "$url"); port=$(url_port "$url" 5432); user=$(url_user "$url"); db=$(url_path "$url")
  user=${user:-postgres}
  if ! reachable "$host" "$port"; then
    [ -n "$(pg_bin)" ] || apt_install postgresql
    # Under /tmp, not the checkout: the postgres user must be able to reach it.
    local bin dir; bin=$(pg_bin); dir="${ALLO_PG_DIR:-/tmp/allo-pg-$port}"
    # A throw-away cluster: trust auth on loopback only, owned by the postgres OS user when
    # we are root (the server refuses to run as root).
    local run=()
    if [ "$(id -u)" -eq 0 ]; then run=(runuser -u postgres --); fi
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"; [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
      "${run[@]}" "$bin/initdb" -D "$dir" -U "$user" --auth=trust -E UTF8 >/dev/null
    fi
    log "starting a throw-away PostgreSQL on $host:$port (data $dir)"
    "${run[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=$host -c fsync=on -c max_connections=200" start >/dev/null
    remember_pid pg_ctl "$dir"
  else
    log "PostgreSQL answers at $host:$port"
  fi
  if [ -n "$db" ] && [ "$db" != postgres ]; then
    local psql; psql=$(command -v psql || echo "$(pg_bin)/psql")
    if ! "$psql" -h "$host" -p "$port" -U "$user" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
      "$psql" -h "$host" -p "$port" -U "$user" -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
      log "created database $db"
    fi
  fi
}

ensure_node() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
}

stop_started_services() {
  [ -n "$STARTED_PIDS_FILE" ] && [ -f "$STARTED_PIDS_FILE" ] || return 0
  local kind what
  while read -r kind what; do
    case $kind in
      process) kill "$what" 2>/dev/null || true; wait "$what" 2>/dev/null || true ;;
      pg_ctl)
        local run=(); [ "$(id -u)" -eq 0 ] && run=(runuser -u postgres --)
        "${run[@]}" "$(pg_bin)/pg_ctl" -D "$what" -m fast stop >/dev/null 2>&1 || true ;;
    esac
  done <"$STARTED_PIDS_FILE"
  rm -f "$STARTED_PIDS_FILE"; STARTED_PIDS_FILE=""
}

# Services started in the background by run.sh and cluster.sh: `start_child <name> <command…>`
# logs to $ALLO_DATA/logs/<name>.log; `stop_children` sends SIGTERM (each drains and exits) and
# waits for all of them.
CHILD_PIDS=()
start_child() {
  local name=$1; shift
  mkdir -p "$ALLO_DATA/logs"
  "$@" >"$ALLO_DATA/logs/$name.log" 2>&1 &
  CHILD_PIDS+=($!)
}

stop_children() {
  [ "${#CHILD_PIDS[@]}" -gt 0 ] || return 0
  log "stopping"
  local pid
  for pid in "${CHILD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CHILD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CHILD_PIDS=()
}

# Returns when one of the children exits (the caller then stops the rest).
wait_any_child() { wait -n "${CHILD_PIDS[@]}" || true; }

# Waits up to 30 s for a readiness URL (the services' admin listeners) to answer 2xx.
wait_http_ready() {
  local url=$1 i
  for i in $(seq 1 150); do
    curl -fsS "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "$url never became ready; see $ALLO_DATA/logs"
  return 1
}
