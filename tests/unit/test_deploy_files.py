"""The shipped compose file runs the gateway closed: ENVIRONMENT=production, a token verifier from a
secret mounted as a file, ports published on loopback unless told otherwise, no NATS monitoring.
The same properties of deploy/k8s, rendered by kustomize, are checked in
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
    published = [(name, p) for name, svc in compose()["services"].items() for p in svc.get("ports", [])]
    assert published, "the gateway at least is published"
    for name, port in published:
        assert interpolate(port, {}).startswith("127.0.0.1:"), (name, port)
        assert interpolate(port, {"KOPROGO_BIND": "0.0.0.0"}).startswith("0.0.0.0:"), (name, port)


def test_compose_runs_the_gateway_in_production_with_its_secret_from_a_file() -> None:
    spec = compose()
    gateway = spec["services"]["gateway"]
    env = {k: interpolate(str(v), {}) for k, v in gateway["environment"].items()}
    assert env["ENVIRONMENT"] == "production"
    assert "JWT_SECRET" not in env
    assert env["JWT_SECRET_FILE"] == "/run/secrets/jwt-secret"
    assert "jwt-secret" in gateway["secrets"] and "file" in spec["secrets"]["jwt-secret"]
    # No password anyone can read in the file: PostgreSQL's comes from the operator's .env.
    assert ":koprogo@" not in env["DATABASE_URL"]
    assert spec["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )


def test_the_shipped_nats_configuration_serves_no_monitoring_port() -> None:
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    assert not re.search(r"^\s*(http|http_port|https|https_port|monitor_port)\s*[:=]", conf, re.MULTILINE)


def test_the_router_the_gateway_and_the_ledger_read_the_node_roster_in_both_deploy_files() -> None:
    services = compose()["services"]
    for name in ("router", "gateway", "ledger"):
        svc = services[name]
        assert svc["environment"]["NODE_ROSTER_FILE"] == "/run/koprogo/nats/roster.json", name
        assert "../nats/keys/roster.json:/run/koprogo/nats/roster.json:ro" in svc["volumes"], name


def test_the_edge_node_is_told_the_grid_schedulers_public_key_from_the_keys_and_never_its_seed() -> None:
    text = (DEPLOY / "compose" / "docker-compose.yml").read_text()
    services = compose()["services"]
    node_env = services["edge-node"]["environment"]
    key = "UGRIDSCHEDULERPUBLICKEY"
    assert interpolate(str(node_env["GRID_SCHEDULER_PUBLIC_KEY"]), {"GRID_SCHEDULER_PUBLIC_KEY": key}) == key
    # Unset, compose refuses to start (the :? form) rather than run a node that believes any signer;
    # the file's header says how to set it from the key `koprogo nats-config` writes.
    assert str(node_env["GRID_SCHEDULER_PUBLIC_KEY"]).startswith("${GRID_SCHEDULER_PUBLIC_KEY:?")
    assert 'GRID_SCHEDULER_PUBLIC_KEY=$(cat deploy/nats/keys/grid.pub)" >> deploy/compose/.env' in text
    assert not any("grid.nk" in v for v in services["edge-node"]["volumes"])
    scheduler = services["grid-scheduler"]["environment"]
    assert (
        scheduler["GRID_SIGNING_SEED_FILE"] == scheduler["NATS_NKEY_SEED_FILE"] == "/run/koprogo/nats/grid.nk"
    )


# Who may hold what. Every other service is refused it: a secret given to a service that never
# reads it is one more process, image and log it can leak from.
DATABASE_HOLDERS = {"ledger", "gateway"}
SECRET_ENV_HOLDERS = {
    "DATABASE_URL": DATABASE_HOLDERS,
    "POSTGRES_PASSWORD": {"postgres"},
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
    # Nor under another name: the password is interpolated into the database holders' URL only.
    for name, svc in compose()["services"].items():
        values = " ".join(str(v) for v in (svc.get("environment") or {}).values())
        if "${POSTGRES_PASSWORD" in values and name not in DATABASE_HOLDERS | {"postgres"}:
            problems.append(f"compose: {name} gets the PostgreSQL password")
    assert not problems, "\n".join(problems)


def test_seeds_content_keys_and_the_jwt_secret_are_mounted_only_where_they_are_read() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.endswith(".nk"):
                assert name in SEED_HOLDERS[Path(source).name], (name, source)
            if source.startswith("../secrets/"):
                assert source == "../secrets/content-keys" and name in CONTENT_KEY_HOLDERS, (name, source)
        assert not svc.get("secrets") or (name == "gateway" and svc["secrets"] == ["jwt-secret"]), name
