#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, unit tests, and the end-to-end tests
# against real NATS JetStream and real PostgreSQL (started here, and installed from Debian's
# packages, when they do not answer at ALLO_TEST_NATS_URL / ALLO_TEST_DATABASE_URL).
set -euo pipefail
source "$(dirname "$0")/services.sh"
cd "$ALLO_ROOT"

export ALLO_TEST_NATS_URL="${ALLO_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export ALLO_TEST_DATABASE_URL="${ALLO_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
trap stop_started_services EXIT

ensure_nats "$ALLO_TEST_NATS_URL"
ensure_postgres "$ALLO_TEST_DATABASE_URL"
ensure_node
(cd tests/js && npm ci --no-audit --no-fund --silent)

{ cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 || rustup component add rustfmt clippy
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets -q -- -D warnings
log "cargo test"
# Each end-to-end test starts its own processes; a few at a time suit a 2-core machine.
results=$(mktemp)
status=0
cargo test --workspace --all-targets -- --test-threads "${ALLO_TEST_THREADS:-4}" 2>&1 | tee "$results" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
grep -E '^test result:' "$results" | awk '{p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}'
rm -f "$results"
exit "$status"
