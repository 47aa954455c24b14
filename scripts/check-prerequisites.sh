#!/usr/bin/env bash
# What `make install` needs before it starts, with a clear message (and, as root on
# Debian/Ubuntu, the missing system packages installed) instead of a failure deep in a
# build log ten minutes later: Python >= 3.11 with venv, a C/C++ compiler, make,
# Node.js >= 20 with npm (the web app) and Debian's chromium (the web app's browser tests).
set -euo pipefail
PYTHON="${1:-python3}"
missing=()
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "KoproGo needs Python >= 3.11; '$PYTHON' is $("$PYTHON" --version 2>&1). Run: make PYTHON=python3.12 ..." >&2
  exit 1
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v cc >/dev/null && command -v c++ >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
# The /mcp-chat app is built with Node.js (web/, npm ci + astro build) and tested in Debian's
# chromium (Playwright drives /usr/bin/chromium; it never downloads a browser of its own).
command -v node >/dev/null || missing+=(nodejs)
# A nodejs package that bundles npm (NodeSource's) conflicts with Debian's npm: ask for it only when absent.
command -v node >/dev/null && ! command -v npm >/dev/null && missing+=(npm)
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=(chromium)
# The page marks edge answers 🍓 and cloud ones ☁️: without a colour emoji font chromium draws boxes.
if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' fonts-noto-color-emoji 2>/dev/null | grep -q 'ok installed'; then
  missing+=(fonts-noto-color-emoji)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing ${missing[*]} (to build llama.cpp, the virtualenv and the web app, and to test the app) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if ! command -v npm >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    fi
  else
    echo "Missing system packages: ${missing[*]} (a C/C++ compiler builds llama.cpp; python3-venv makes .venv;" \
      "nodejs and npm build the web app; chromium and an emoji font run its browser tests)." >&2
    echo "On Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  echo "The web app needs Node.js >= 20; this machine has $(node --version 2>&1) (Debian 12's nodejs is 18):" \
    "install Node.js 20 or newer (Debian 13's nodejs, or NodeSource's nodejs 20.x), then run make again." >&2
  exit 1
fi
