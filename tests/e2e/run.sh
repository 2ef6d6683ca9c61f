#!/usr/bin/env bash
# Runs the end-to-end suite against SQLite, then against PostgreSQL when
# JOBSTREAM_TEST_POSTGRES_URL is set (an admin URL such as
# postgres://postgres@127.0.0.1:5432/test). Exits non-zero if any run fails.
# The server binary is JOBSTREAM_BIN, default target/debug/jobstream.
set -uo pipefail
cd "$(dirname "$0")"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund || exit 1
fi

run() {
  echo "== end-to-end tests on $1 =="
  JOBSTREAM_E2E_DB="$1" node --test --test-concurrency=1 --test-timeout=240000 ./*.test.js
}

status=0
run sqlite || status=1
if [ -n "${JOBSTREAM_TEST_POSTGRES_URL:-}" ]; then
  run postgres || status=1
else
  echo "== PostgreSQL run skipped: JOBSTREAM_TEST_POSTGRES_URL is not set =="
fi
exit "$status"
