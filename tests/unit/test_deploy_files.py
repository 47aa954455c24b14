"""The shipped deploy files run the gateway closed: ENVIRONMENT=production, a token verifier from a
secret mounted as a file, ports published on loopback unless told otherwise, no NATS monitoring."""

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


def k8s_gateway() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "koprogo.yaml").read_text()) if d]
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "koprogo-gateway"
    ]
    return dict(deployment["spec"]["template"]["spec"])


def test_k8s_runs_the_gateway_in_production_with_its_secret_mounted_as_a_file() -> None:
    pod = k8s_gateway()
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENVIRONMENT"] == "production"
    assert "JWT_SECRET" not in env
    secret_dir = str(Path(env["JWT_SECRET_FILE"]).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == secret_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] and volume["secret"]["defaultMode"] == 0o400


def test_the_shipped_nats_configuration_serves_no_monitoring_port() -> None:
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    assert not re.search(r"^\s*(http|http_port|https|https_port|monitor_port)\s*[:=]", conf, re.MULTILINE)


def test_the_router_the_gateway_and_the_ledger_read_the_node_roster_in_both_deploy_files() -> None:
    services = compose()["services"]
    for name in ("router", "gateway", "ledger"):
        svc = services[name]
        assert svc["environment"]["NODE_ROSTER_FILE"] == "/run/koprogo/nats/roster.json", name
        assert "../nats/keys/roster.json:/run/koprogo/nats/roster.json:ro" in svc["volumes"], name
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "koprogo.yaml").read_text()) if d]
    for name in ("router", "gateway", "ledger"):
        (deployment,) = [
            d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"koprogo-{name}"
        ]
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["NODE_ROSTER_FILE"] == "/run/koprogo/nats/roster.json", name
        keys = next(v for v in pod["volumes"] if v["name"] == "nats-keys")
        assert {"key": "roster.json", "path": "roster.json"} in keys["secret"]["items"], name


def k8s_pod(kind: str, name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "koprogo.yaml").read_text()) if d]
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return dict(found["spec"]["template"]["spec"])


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

    pod = k8s_pod("DaemonSet", "koprogo-edge-node")
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["GRID_SCHEDULER_PUBLIC_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "koprogo-nats-keys", "key": "grid.pub"}
    }
    k8s_text = (DEPLOY / "k8s" / "koprogo.yaml").read_text()
    assert (
        "--from-file=keys/grid.pub"
        in k8s_text.split("kubectl create secret generic koprogo-nats-keys")[1].split(
            "kubectl create secret"
        )[0]
    )
    pod = k8s_pod("Deployment", "koprogo-grid-scheduler")
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GRID_SIGNING_SEED_FILE"] == env["NATS_NKEY_SEED_FILE"] == "/run/koprogo/nats/grid.nk"
