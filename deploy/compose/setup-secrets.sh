#!/bin/sh
# First-time setup of deploy/compose, from the repository root, after `koprogo nats-config`
# (docs/deploy.md, "One host: Docker Compose"). Writes each secret file once, mode 0600, and never
# overwrites one: run it again after adding a secret to the compose file, nothing else changes.
#   deploy/secrets/content-keys             the key sealing stored messages (back it up: lost, the
#                                           stored contents cannot be read again)
#   deploy/secrets/jwt-secret               the gateway's HS256 token secret
#   deploy/secrets/postgres-password        PostgreSQL's password, for the server (POSTGRES_PASSWORD_FILE)
#   deploy/secrets/pgpass                   the same as a pgpass line, for the ledger and the gateway
#   deploy/secrets/grafana-admin-password   Grafana's `admin` user
#   deploy/secrets/grafana-db-password      Grafana's read-only database role (grafana_reader)
#   deploy/compose/.env                     KOPROGO_UID/KOPROGO_GID (the secrets' owner, whom the
#                                           services run as) and GRID_SCHEDULER_PUBLIC_KEY
# The TLS certificate (profile `tls`) is yours to provide: deploy/secrets/tls.crt and tls.key.
set -eu
umask 077
secrets=deploy/secrets
env_file=deploy/compose/.env
[ -f deploy/compose/docker-compose.yml ] || { echo "run from the repository root" >&2; exit 1; }
[ -f deploy/nats/keys/grid.pub ] || {
  echo "deploy/nats/keys/grid.pub is missing: run koprogo nats-config first (see deploy/compose/docker-compose.yml)" >&2
  exit 1
}
mkdir -p "$secrets"

random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }

write_once() {  # write_once FILE CONTENT
  if [ -e "$1" ]; then echo "kept    $1"; else printf '%s\n' "$2" > "$1"; echo "written $1"; fi
}

write_once "$secrets/content-keys" \
  "k1:$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
write_once "$secrets/jwt-secret" "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
write_once "$secrets/postgres-password" "$(random)"
# host:port:database:user:password, as libpq and asyncpg read PGPASSFILE; the password is
# URL-safe base64 (no ':' or '\' to escape).
write_once "$secrets/pgpass" "postgres:5432:koprogo:koprogo:$(cat "$secrets/postgres-password")"
write_once "$secrets/grafana-admin-password" "$(random)"
write_once "$secrets/grafana-db-password" "$(random)"

add_env() {  # add_env NAME VALUE: only when .env does not set NAME yet
  if [ -f "$env_file" ] && grep -q "^$1=" "$env_file"; then echo "kept    $1 in $env_file"
  else printf '%s=%s\n' "$1" "$2" >> "$env_file"; echo "written $1 in $env_file"; fi
}
add_env KOPROGO_UID "$(id -u)"
add_env KOPROGO_GID "$(id -g)"
add_env GRID_SCHEDULER_PUBLIC_KEY "$(cat deploy/nats/keys/grid.pub)"
