#!/usr/bin/env bash
# Installs what the tests need and runs them all: the Rust unit and integration
# tests (cargo nextest), the dashboard's module unit tests (node --test), then the end-to-end suite with the stock socket.io-client
# against the built server, on SQLite and, when JOBSTREAM_TEST_POSTGRES_URL is
# set, on PostgreSQL; then the browser tests (Debian's chromium, installed with
# apt-get if missing, driven by playwright-core); then the clients/js package
# (its TypeScript types checked against crates/protocol, its build, and its
# tests against the built server). Exits non-zero if anything fails.
#
#   scripts/test.sh
#   JOBSTREAM_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is required ($2)" >&2; exit 1; }; }
need cargo "install Rust from https://rustup.rs"
need node "install Node.js 20 or newer"
need npm "it comes with Node.js"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest =="
  cargo install cargo-nextest --locked
fi

if [ -z "${JOBSTREAM_TEST_POSTGRES_URL:-}" ]; then
  echo "note: JOBSTREAM_TEST_POSTGRES_URL is not set: PostgreSQL tests are skipped (SQLite runs)."
fi

echo "== installing end-to-end test dependencies (npm ci) =="
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error)

echo "== building =="
cargo build --workspace --all-targets --locked

echo "== Rust tests =="
cargo nextest run --workspace --locked --no-fail-fast
# nextest runs no doctests: the server's (the README's Rust snippet, `testing`) run here.
cargo test --doc -p jobstream-server --locked
echo "== TypeScript types of clients/js are those crates/protocol generates =="
cargo nextest run -p jobstream-protocol --features ts --locked --test typescript

status=0
echo "== dashboard unit tests (node --test: ANSI parser, sections, log window, event reducer) =="
node --test tests/dashboard/ || status=1

bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/jobstream"
echo "== end-to-end tests =="
JOBSTREAM_BIN="$bin" tests/e2e/run.sh || status=1

echo "== deployment files (static checks: compose, nginx, Dockerfile) =="
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 tests/deploy/check.py || status=1

echo "== browser tests (Debian chromium, playwright-core) =="
JOBSTREAM_BIN="$bin" tests/browser/run.sh || status=1

echo "== clients/js (build, type checks, tests against the server) =="
(cd clients/js && JOBSTREAM_BIN="$bin" npm test) || status=1
exit "$status"
