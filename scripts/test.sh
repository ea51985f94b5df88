#!/usr/bin/env bash
# The whole test suite (what `make test` and .ci/run run):
#   1. a virtualenv .venv with the pinned dependencies and the HemaFed packages (editable);
#   2. Docker (installed and started where missing), the base image and the three images;
#   3. pytest over both tiers: the in-process tier and the integration tier on the real stack.
# `scripts/test.sh fast` runs only the in-process tier (no Docker).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}

log() { printf '[test] %s\n' "$*"; }

stamp=.venv/.hemafed-stamp
want=$(cat requirements-dev.txt images/requirements-*.txt shared/pyproject.toml services/*/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  log "creating .venv (pinned dependencies, TensorFlow CPU)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -r requirements-dev.txt
  .venv/bin/pip install -q --no-deps -e shared -e services/hospital -e services/aggregator -e services/metrics
  echo "$want" > $stamp
fi

if [ "$tier" = fast ]; then
  exec .venv/bin/python -m pytest -m "not slow" tests
fi

if ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/bin/chromedriver ]; then
  # headless Chromium for the page tests (tests/integration/browser.py); they skip without it
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium and chromium-driver from Debian (browser tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
  else
    log "chromium/chromedriver missing and cannot be installed here (need root on Debian): browser tests will skip"
  fi
fi

log "preparing Docker and the images"
make --no-print-directory images
exec .venv/bin/python -m pytest tests
