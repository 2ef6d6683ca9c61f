#!/usr/bin/env bash
# Runs the real-browser tests: the dashboard in headless Chromium against a
# spawned jobstream server, and the stock socket.io-client browser bundle
# across origins. Installs Debian's Chromium if it is missing and the npm
# packages from the lockfile. The server binary is JOBSTREAM_BIN, default
# target/debug/jobstream. Screenshots go to tests/browser/artifacts/.
# JOBSTREAM_ASSETS_DIR=crates/server/assets serves the page from those files
# (through a local proxy to the server) instead of the copy in the binary.
set -uo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package) =="
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null || exit 1
fi
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund || exit 1
fi

echo "== browser tests =="
node --test --test-concurrency=1 --test-timeout=240000 ./*.test.js
