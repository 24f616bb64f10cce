#!/usr/bin/env bash
# Browser tests (tests/browser/, marked `browser`) and PNG/SVG export (kaleido) need a Chromium
# and the playwright Python package. Install what is missing: Debian's chromium via apt
# (playwright's own browser download is not used), playwright via pip into .venv (or $PYTHON).
# Safe to run again: it does nothing when both are present. With CI set, a browser test that
# skips (no Chromium, no playwright) fails the run (tests/browser/conftest.py): on CI a browser
# test that did not run is not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  echo "browser-setup: chromium present: $(chromium --version 2>/dev/null || chromium-browser --version 2>/dev/null)"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "browser-setup: chromium missing and not root (no sudo): browser tests will skip" >&2; exit 1
    fi
  fi
  echo "browser-setup: installing Debian's chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "browser-setup: $PY not found: playwright comes with 'make setup' (.[dev])"
  exit 0
fi
if "$PY" -c "import playwright" >/dev/null 2>&1; then
  echo "browser-setup: playwright present"
else
  echo "browser-setup: installing playwright (its driver ships in the wheel; no browser download)"
  "$PY" -m pip install --quiet playwright
fi
