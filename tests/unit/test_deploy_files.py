"""The shipped compose file runs the gateway closed: ENVIRONMENT=production, a token verifier from a
secret mounted as a file, ports published on loopback unless told otherwise (HTTPS, a profile, on
every interface), NATS monitoring on loopback only, each secret to the services that read it.
The rest of the compose file's checks are in tests/deploy/test_compose.py. The same properties of deploy/k8s, rendered by kustomize, are checked in
tests/deploy/test_k8s_manifests.py (which takes the holders below from here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `${VAR:?error}` against `env`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        if op == ":?":
            return env.get(name) or "<required>"
        return env.get(name, "")

    return re.sub(r"\$\{(\w+)(:-|-|:\?)?([^}]*)\}", one, value)


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())


def test_compose_publishes_every_port_on_loopback_unless_told_otherwise() -> None:
    services = compose()["services"]
    published = [
        (name, p) for name, svc in services.items() if name != "traefik" for p in svc.get("ports", [])
    ]
    assert published, "the gateway at least is published"
    for name, port in published:
        assert interpolate(port, {}).startswith("127.0.0.1:"), (name, port)
        assert interpolate(port, {"KOPROGO_BIND": "0.0.0.0"}).startswith("0.0.0.0:"), (name, port)
    # HTTPS is for the network: Traefik (profile tls) on every interface unless KOPROGO_TLS_BIND narrows it.
    assert services["traefik"]["profiles"] == ["tls"]
    for port in services["traefik"]["ports"]:
        assert interpolate(port, {}).startswith("0.0.0.0:"), port
        assert interpolate(port, {"KOPROGO_TLS_BIND": "192.168.1.10"}).startswith("192.168.1.10:"), port


def test_compose_runs_the_gateway_in_production_with_its_secret_from_a_file() -> None:
    spec = compose()
    gateway = spec["services"]["gateway"]
    env = {k: interpolate(str(v), {}) for k, v in gateway["environment"].items()}
    assert env["ENVIRONMENT"] == "production"
    assert "JWT_SECRET" not in env
    assert env["JWT_SECRET_FILE"] == "/run/secrets/jwt-secret"
    assert "jwt-secret" in gateway["secrets"] and "file" in spec["secrets"]["jwt-secret"]
    # No password in the URL: the driver reads it from PGPASSFILE, a secret file; the server
    # takes the same from its own.
    assert env["DATABASE_URL"] == "postgresql://koprogo@postgres:5432/koprogo"
    assert env["PGPASSFILE"] == "/run/secrets/pgpass" and "pgpass" in gateway["secrets"]
    postgres = spec["services"]["postgres"]
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"


def test_the_shipped_nats_configuration_serves_monitoring_on_loopback_only() -> None:
    """/varz and /connz answer anyone who reaches them: only the NATS container's own loopback
    (where the exporter sharing its network namespace reads it), and compose publishes no NATS port."""
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    monitors = re.findall(
        r"^\s*(http|http_port|https|https_port|monitor_port)\s*[:=]\s*(.*)$", conf, re.MULTILINE
    )
    assert monitors == [("http", '"127.0.0.1:8222"')], monitors
    assert "ports" not in compose()["services"]["nats"]


def test_the_router_the_gateway_and_the_ledger_read_the_node_roster_in_both_deploy_files() -> None:
    services = compose()["services"]
    for name in ("router", "gateway", "ledger"):
        svc = services[name]
        assert svc["environment"]["NODE_ROSTER_FILE"] == "/run/koprogo/roster.json", name
        assert "../nats/keys/roster.json:/run/koprogo/roster.json:ro" in svc["volumes"], name


def test_the_edge_node_is_told_the_grid_schedulers_public_key_from_the_keys_and_never_its_seed() -> None:
    setup = (DEPLOY / "compose" / "setup-secrets.sh").read_text()
    services = compose()["services"]
    node_env = services["edge-node"]["environment"]
    key = "UGRIDSCHEDULERPUBLICKEY"
    assert interpolate(str(node_env["GRID_SCHEDULER_PUBLIC_KEY"]), {"GRID_SCHEDULER_PUBLIC_KEY": key}) == key
    # Unset, compose refuses to start (the :? form) rather than run a node that believes any signer;
    # the setup script writes it to .env from the key `koprogo nats-config` writes.
    assert str(node_env["GRID_SCHEDULER_PUBLIC_KEY"]).startswith("${GRID_SCHEDULER_PUBLIC_KEY:?")
    assert 'add_env GRID_SCHEDULER_PUBLIC_KEY "$(cat deploy/nats/keys/grid.pub)"' in setup
    assert "grid.nk" not in services["edge-node"]["secrets"]
    assert not any("grid.nk" in v for v in services["edge-node"]["volumes"])
    scheduler = services["grid-scheduler"]["environment"]
    assert scheduler["GRID_SIGNING_SEED_FILE"] == scheduler["NATS_NKEY_SEED_FILE"] == "/run/secrets/grid.nk"


# Who may hold what. Every other service is refused it: a secret given to a service that never
# reads it is one more process, image and log it can leak from.
DATABASE_HOLDERS = {"ledger", "gateway"}
SECRET_ENV_HOLDERS = {
    "DATABASE_URL": DATABASE_HOLDERS,
    "PGPASSFILE": DATABASE_HOLDERS | {"grafana-db-role"},
    "POSTGRES_PASSWORD": {"postgres"},
    "POSTGRES_PASSWORD_FILE": {"postgres"},
    "ANTHROPIC_API_KEY": {"cloud"},
    "OPENAI_API_KEY": {"cloud"},
    "MISTRAL_API_KEY": {"cloud"},
}
CONTENT_KEY_HOLDERS = {"ledger", "gateway"}
SEED_HOLDERS = {
    "admin.nk": {"stream-setup"},
    "ledger.nk": {"ledger"},
    "router.nk": {"router"},
    "cloud.nk": {"cloud"},
    "grid.nk": {"grid-scheduler"},
    "gateway.nk": {"gateway"},
    "compose-node.nk": {"edge-node"},
}


def compose_env_names() -> dict[str, set[str]]:
    """Each compose service's environment variable names (anchors and merges resolved by the parser)."""
    return {name: set(svc.get("environment") or {}) for name, svc in compose()["services"].items()}


def test_the_database_url_and_other_secret_variables_reach_only_the_services_that_read_them() -> None:
    problems = []
    for file, env_names in (("compose", compose_env_names()),):
        for service, names in sorted(env_names.items()):
            for variable in sorted(names):
                holders = SECRET_ENV_HOLDERS.get(variable)
                if variable.startswith("<unknown") or (holders is not None and service not in holders):
                    problems.append(f"{file}: {service} gets {variable}")
                # JWT_SECRET, the secret itself, is in no environment: the gateway reads JWT_SECRET_FILE.
                if variable == "JWT_SECRET" or (variable == "JWT_SECRET_FILE" and service != "gateway"):
                    problems.append(f"{file}: {service} gets {variable}")
        for service in sorted(DATABASE_HOLDERS):
            if "DATABASE_URL" not in env_names[service]:
                problems.append(f"{file}: {service} lacks DATABASE_URL")
    assert not problems, "\n".join(problems)


# The compose file's other secrets (files under deploy/secrets, given as compose secrets).
COMPOSE_SECRET_HOLDERS = {
    "content-keys": CONTENT_KEY_HOLDERS,
    "jwt-secret": {"gateway"},
    # The owner's password: the database holders, and the one-shot that creates Grafana's role.
    "pgpass": DATABASE_HOLDERS | {"grafana-db-role"},
    "postgres-password": {"postgres"},
    "grafana-admin-password": {"grafana"},
    "grafana-db-password": {"grafana", "grafana-db-role"},
    "tls.crt": {"traefik"},
    "tls.key": {"traefik"},
}


def test_seeds_content_keys_and_the_jwt_secret_are_mounted_only_where_they_are_read() -> None:
    spec = compose()
    holders = {**{seed: SEED_HOLDERS[seed] for seed in SEED_HOLDERS}, **COMPOSE_SECRET_HOLDERS}
    assert set(spec["secrets"]) == set(holders), "a secret without its holders here"
    for name, svc in spec["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            assert not source.endswith(".nk") and not source.startswith("../secrets/"), (name, source)
        for secret in svc.get("secrets", []):
            assert name in holders[secret], (name, secret)
    for secret, services in holders.items():
        given = {name for name, svc in spec["services"].items() if secret in svc.get("secrets", [])}
        assert given == services, (secret, given)


def test_every_shipped_nats_configuration_takes_the_payload_size_the_services_assume() -> None:
    # The ledger's byte cap must exceed the servers' `max_payload` (`LedgerSettings`) and the
    # publishers refuse what is bigger (`publishing.MAX_PAYLOAD_BYTES`): a server shipped with
    # another size, or with none (nats-server's default, 1 MB), would break one or the other.
    # nats-server's units: "8MB" (or "8mb") is 8 MiB, "8M" 8,000,000 (conf/lex.go).
    from koprogo_shared.publishing import MAX_PAYLOAD_BYTES

    units = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
    setting = re.compile(
        r"""^\s*max_payload\s*[:=]?\s*(?:<<\s*)?["']?(\d+)\s*([kmg]b?)?["']?\s*(?:>>)?\s*$""", re.I | re.M
    )
    configs = sorted(p for p in DEPLOY.rglob("*.conf") if "jetstream" in p.read_text())
    configs.append(DEPLOY / "k8s" / "nats-helm-values.yaml")
    found: dict[str, list[int]] = {}
    for path in configs:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        found[str(path.relative_to(DEPLOY))] = [
            int(m.group(1)) * units[(m.group(2) or "").lower()] for m in setting.finditer(text)
        ]
    assert len(found) >= 5, found  # deploy/nats, three k8s configurations and the Helm values
    assert all(sizes == [MAX_PAYLOAD_BYTES] for sizes in found.values()), found
