#!/usr/bin/env bash
# What `make install` needs before it starts, with a clear message (and, as root on
# Debian/Ubuntu, the missing system packages installed) instead of a failure deep in a
# build log ten minutes later.
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
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing ${missing[*]} (needed to build llama.cpp and the virtualenv) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Missing system packages: ${missing[*]} (a C/C++ compiler builds llama.cpp; python3-venv makes .venv)." >&2
    echo "On Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
