#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, unit tests, and the end-to-end tests
# against real NATS JetStream and real PostgreSQL (started here, and installed from Debian's
# packages, when they do not answer at ALLO_TEST_NATS_URL / ALLO_TEST_DATABASE_URL).
set -euo pipefail
source "$(dirname "$0")/services.sh"
cd "$ALLO_ROOT"

# By default the suite runs on a NATS of its own started from the shipped nats.conf (auth and
# per-service permissions; passwords generated into .data/nats-secrets.env and exported): every
# service of every test connects as its own NATS user, the harness as `allo-admin`. On a free
# port from 4322 up: a server already there (another checkout's) has other passwords.
if [ -z "${ALLO_TEST_NATS_URL:-}" ]; then
  nats_port=4322
  while reachable 127.0.0.1 "$nats_port"; do nats_port=$((nats_port + 1)); done
  export ALLO_TEST_NATS_URL="nats://127.0.0.1:$nats_port"
fi
export ALLO_TEST_DATABASE_URL="${ALLO_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
trap stop_started_services EXIT

# schemathesis (PyPI; the version pinned in tests/fuzz/requirements.txt) for tests/tests/fuzz.rs,
# in a project-local venv; the suite finds it through ALLO_TEST_SCHEMATHESIS.
ensure_schemathesis() {
  local venv="$ALLO_DATA/venv" pin
  pin=$(grep -m1 '^schemathesis==' tests/fuzz/requirements.txt)
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "version ${pin#schemathesis==}"; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv
    log "installing $pin into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/fuzz/requirements.txt
  fi
  export ALLO_TEST_SCHEMATHESIS="$venv/bin/schemathesis"
}

ensure_nats "$ALLO_TEST_NATS_URL"
ensure_postgres "$ALLO_TEST_DATABASE_URL"
ensure_node
(cd tests/js && npm ci --no-audit --no-fund --silent)
# The Python examples' requirements (nats-py from PyPI) in a venv of their own; the examples
# suite also creates it when missing.
if ! .data/venv-examples/bin/python -c 'import nats' 2>/dev/null; then
  log "python venv for examples/"
  # Debian's python3 needs python3-venv for `-m venv` (ensurepip).
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3 python3-venv
  python3 -m venv .data/venv-examples
  .data/venv-examples/bin/pip install -q -r examples/subscriber/requirements.txt
fi
ensure_schemathesis
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
# The vendored engineioxide carries Allo's heartbeat patch and its tests (vendor/engineioxide/ALLO-PATCH.md).
cargo test -p engineioxide --lib 2>&1 | tee -a "$results" || status=$?
# So does the vendored async-nats, with its subscription queue (vendor/async-nats/ALLO-PATCH.md).
cargo test -p async-nats --lib 2>&1 | tee -a "$results" || status=$?
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
