#!/usr/bin/env bash
# Build the /mcp-chat PWA (web/) into web/dist, only when its sources changed: `npm ci` from the
# committed lockfile when node_modules is missing or older than package-lock.json, then
# `astro build` when a source is newer than the stamp web/dist/.built. `make up` and `make test`
# call this; the gateway serves web/dist. No network at build time beyond `npm ci` itself.
set -euo pipefail
cd "$(dirname "$0")/../web"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "The web app needs Node.js >= 20 and npm: run scripts/check-prerequisites.sh (as root it installs them)." >&2
  exit 1
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "The web app needs Node.js >= 20; this is $(node --version). Install a newer nodejs." >&2
  exit 1
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
