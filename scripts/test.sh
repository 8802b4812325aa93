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
# The console's browser test (tests/tests/console.rs) drives Debian's chromium; the emoji font
# only makes its screenshots readable.
command -v chromium >/dev/null || apt_install chromium fonts-noto-color-emoji

{ cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 || rustup component add rustfmt clippy
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets -q -- -D warnings
log "cargo test"
# Each end-to-end test starts its own processes; a few at a time suit a 2-core machine.
# --no-fail-fast: every test binary runs and every failure is reported, not just the first.
results=$(mktemp)
trap 'rm -f "$results"; stop_started_services' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast -- --test-threads "${ALLO_TEST_THREADS:-4}" 2>&1 | tee "$results" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
read -r passed failed < <(grep -E '^test result:' "$results" | awk '{p += $4; f += $6} END {print p + 0, f + 0}')
echo "tests: $passed passed, $failed failed"
# A run that executed nothing, or skipped a suite (it did not build, or cargo stopped early),
# is a failure even when cargo's own status is 0.
if [ "$passed" -eq 0 ]; then
  echo "FAIL: no test passed (did any run?)" >&2
  status=1
fi
for suite in tests/tests/*.rs; do
  name=$(basename "$suite")
  if ! grep -qE "Running tests/${name} " "$results"; then
    echo "FAIL: end-to-end suite ${name} did not run" >&2
    status=1
  fi
done
exit "$status"
