"""deploy/compose: the compose file is valid and what it wires together fits.

Validity: `docker compose config` where the compose plugin exists; where not (the development
machines), the file, interpolated with a test .env as compose interpolates it, against the official
compose-spec JSON schema (tests/deploy/schemas/, its source commit in the README there).
Then what a schema cannot see: every long-running service has a health check and is waited on by
condition; every file mounted or given as a secret is in the repository or written by the
first-time setup commands (run here, in a scratch tree); secrets are files, not environment
values; NATS keeps `sync_interval: always` and its monitoring inside; Prometheus scrapes the
services at their ports (and `promtool check config` passes); Grafana's data source variables are
all set and its read-only role can read what the dashboards read (against a real PostgreSQL);
traces and JSON logs are configured for every service; Traefik serves the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import PIPE
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import jsonschema
import pytest
import yaml

from tests.deploy.write_paths import under, written_paths

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
TRAEFIK_SCHEMA = Path(__file__).parent / "schemas" / "traefik-v3-file-provider.json"
NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
READER_SQL = COMPOSE_DIR / "postgres" / "grafana-reader.sql"
JAEGER = ROOT / "deploy" / "otel" / "jaeger.yaml"
TRAEFIK = COMPOSE_DIR / "traefik" / "dynamic.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"

# What deploy/compose/setup-secrets.sh writes to .env, with made-up values.
TEST_ENV = {
    "KOPROGO_UID": "1000",
    "KOPROGO_GID": "1000",
    "GRID_SCHEDULER_PUBLIC_KEY": "UDP6YEQZZR34GUZJJIHDYMJU6DDUOJ6MHVFLW3JNRG43V2BBKS75OPPB",
}

# The contract's job names (docs/observability.md): dashboards and alert rules use them.
PROMETHEUS_JOBS = {
    "koprogo-gateway": "gateway",
    "koprogo-router": "router",
    "koprogo-node": "edge-node",
    "koprogo-cloud": "cloud",
    "koprogo-ledger": "ledger",
    "koprogo-grid-scheduler": "grid-scheduler",
}

# Services without a health check, and why: the one-shots exit (the others wait for
# service_completed_successfully), the exporter's image is FROM scratch (no shell, no HTTP client;
# Prometheus' up{job="nats"} is its health).
ONE_SHOTS = {"stream-setup", "grafana-db-role"}
NO_HEALTHCHECK = ONE_SHOTS | {"nats-exporter"}

# Environment values that are secrets though not files: the cloud worker reads the providers' keys
# only from its environment (documented in the compose file).
ENV_SECRETS_ALLOWED = {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "MISTRAL_API_KEY"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|CONTENT_KEYS$|SEED$")

# The TLS pair is the operator's (a bought or ACME certificate); dynamic.yml documents a
# self-signed command, which test_documented_self_signed_certificate runs.
PROVIDED_BY_OPERATOR = {"deploy/secrets/tls.crt", "deploy/secrets/tls.key"}

_VAR = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """`value` as compose interpolates it: $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
    ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}; `$$` is a literal `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        if match.group(3):
            return env.get(match.group(3), "")
        expr = match.group(2)
        found = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", expr, re.S)
        assert found, f"interpolation ${{{expr}}} is not compose syntax"
        name, colon, op, arg = found.groups()
        value = env.get(name)
        unset = value is None or (colon == ":" and value == "")
        if op is None:
            return value or ""
        if op == "-":
            return interpolate(arg, env) if unset else value or ""
        if op == "?":
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return value or ""
        return "" if unset else interpolate(arg, env)

    return _VAR.sub(one, value)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(item, env) for key, item in node.items()}
    return node


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return interpolated(raw, dict(TEST_ENV if env is None else env))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def ops_port(name: str, service: dict[str, Any]) -> int | None:
    """The port a KoproGo service serves /health, /ready and /metrics on: OPS_PORT, the node's
    --port, the gateway's GATEWAY_PORT (8080 by default)."""
    command = service.get("command") or []
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    env = environment(service)
    if "OPS_PORT" in env:
        return int(env["OPS_PORT"])
    if command == ["koprogo-gateway"]:
        return int(env.get("GATEWAY_PORT", "8080"))
    return None


def koprogo_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from deploy/compose/Dockerfile."""
    return {name: svc for name, svc in services(compose).items() if "build" in svc}


def secret_names(service: dict[str, Any]) -> set[str]:
    return {item if isinstance(item, str) else item["source"] for item in service.get("secrets") or []}


# --- validity ---------------------------------------------------------------------------------


def compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


def test_compose_file_is_valid(tmp_path: Path) -> None:
    if compose_plugin():
        env_file = tmp_path / ".env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in TEST_ENV.items()))
        done = subprocess.run(
            [
                "docker",
                "compose",
                "-f",
                str(COMPOSE_FILE),
                "--env-file",
                str(env_file),
                "--profile",
                "tls",
                "config",
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_wrong_file() -> None:
    """The schema check is not vacuous: a misspelt key and a wrong type are refused."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = load_compose()
    broken["services"]["router"]["helthcheck"] = broken["services"]["router"].pop("healthcheck")
    broken["services"]["ledger"]["depends_on"]["nats"]["condition"] = "service_ready"
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("helthcheck" in m for m in messages), messages
    assert any("service_ready" in m for m in messages), messages


def test_required_settings_fail_loudly_when_missing() -> None:
    """Without the first-time setup's .env, interpolation stops with what to set (compose does the same)."""
    for name in TEST_ENV:
        env = {k: v for k, v in TEST_ENV.items() if k != name}
        with pytest.raises(MissingVariable, match=name):
            load_compose(env)


# --- health and start order -------------------------------------------------------------------


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        check = service.get("healthcheck") or {}
        if name in NO_HEALTHCHECK:
            assert check.get("disable") is True, f"{name}: say so with `healthcheck: {{disable: true}}`"
            continue
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name}: {check['test']}"


def test_one_shots_are_awaited_until_they_succeed(compose: dict[str, Any]) -> None:
    for name in ONE_SHOTS:
        assert services(compose)[name]["restart"] == "on-failure", name
        waiting = [
            other
            for other, svc in services(compose).items()
            if (svc.get("depends_on") or {}).get(name, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert waiting, f"nothing waits for the one-shot {name}"


def test_depends_on_waits_on_conditions(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on as a list waits only for the start"
        for target, spec in depends.items():
            assert target in services(compose), f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if target in ONE_SHOTS:
                assert condition == "service_completed_successfully", f"{name} -> {target}"
            elif target in NO_HEALTHCHECK:
                assert condition == "service_started", f"{name} -> {target}"
            else:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"


def test_koprogo_health_checks_ask_their_own_ops_port(compose: dict[str, Any]) -> None:
    for name, service in koprogo_services(compose).items():
        if name in ONE_SHOTS:
            continue
        port = ops_port(name, service)
        assert port is not None, f"{name}: no ops port"
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/ready" in test, f"{name}: {test}"
        assert environment(service).get("OPS_HOST") == "0.0.0.0", f"{name}: Prometheus could not reach it"


async def test_the_readiness_check_fails_while_not_ready(compose: dict[str, Any]) -> None:
    """The health check command, run against a real ops server (koprogo_shared.ops_http): it exits 0
    when /ready answers 200 and fails on its 503, which is what `service_healthy` waits on."""
    from koprogo_cli.ports import free_port
    from koprogo_shared.ops_http import ops_server
    from tests.conftest import wait_until

    state = {"nats": False}

    async def ready() -> dict[str, bool]:
        return dict(state)

    port = free_port()
    server = ops_server("127.0.0.1", port, ready)
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started)
        check = services(compose)["router"]["healthcheck"]["test"]
        assert check[:2] == ["CMD", "python"]
        command = [sys.executable, *[arg.replace(":8081/", f":{port}/") for arg in check[2:]]]

        async def exit_code() -> int:
            process = await asyncio.create_subprocess_exec(*command, stdout=PIPE, stderr=PIPE)
            await process.communicate()
            assert process.returncode is not None
            return process.returncode

        assert await exit_code() != 0
        state["nats"] = True
        assert await exit_code() == 0
    finally:
        server.should_exit = True
        await serving


def test_services_that_read_the_database_wait_for_it_and_for_the_migrations(compose: dict[str, Any]) -> None:
    for name, service in koprogo_services(compose).items():
        if "DATABASE_URL" in environment(service):
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert services(compose)["gateway"]["depends_on"]["ledger"]["condition"] == "service_healthy"
    assert services(compose)["grafana-db-role"]["depends_on"]["ledger"]["condition"] == "service_healthy"


# --- files and secrets ------------------------------------------------------------------------


def mounted_files(compose: dict[str, Any]) -> dict[str, set[str]]:
    """Repository-relative path -> the services that mount it (bind mounts and file secrets)."""
    found: dict[str, set[str]] = {}
    for name, service in services(compose).items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                path = (COMPOSE_DIR / source).resolve().relative_to(ROOT).as_posix()
                found.setdefault(path, set()).add(name)
        for secret in secret_names(service):
            source = compose["secrets"][secret]["file"]
            path = (COMPOSE_DIR / source).resolve().relative_to(ROOT).as_posix()
            found.setdefault(path, set()).add(name)
    return found


@pytest.fixture(scope="module")
def setup_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of what the first-time setup needs, after the documented commands ran in it:
    `koprogo nats-config ...` and `sh deploy/compose/setup-secrets.sh`."""
    tree = tmp_path_factory.mktemp("compose-setup")
    (tree / "deploy" / "compose").mkdir(parents=True)
    for name in ("docker-compose.yml", "setup-secrets.sh"):
        shutil.copy(COMPOSE_DIR / name, tree / "deploy" / "compose" / name)
    header = COMPOSE_FILE.read_text(encoding="utf-8")
    nats_config = re.search(r"#\s+(koprogo nats-config .*?)\s+#", header.replace("\\\n#", ""), re.S)
    assert nats_config, "the compose file's header no longer shows the nats-config command"
    args = nats_config.group(1).split()[1:]
    koprogo = Path(sys.executable).with_name("koprogo")
    subprocess.run([str(koprogo), *args], cwd=tree, check=True, capture_output=True, text=True)
    done = subprocess.run(["sh", "deploy/compose/setup-secrets.sh"], cwd=tree, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return tree


def test_every_mounted_file_exists_or_is_written_by_the_setup(
    compose: dict[str, Any], setup_tree: Path
) -> None:
    for path, users in mounted_files(compose).items():
        if path in PROVIDED_BY_OPERATOR:
            continue
        assert (ROOT / path).exists() or (setup_tree / path).exists(), (
            f"{path} (mounted by {sorted(users)}) is neither in the repository nor written by the setup"
        )


def test_setup_writes_secrets_once_and_private(setup_tree: Path) -> None:
    secrets = sorted((setup_tree / "deploy" / "secrets").iterdir())
    assert len(secrets) == 6, secrets
    before = {path.name: path.read_text() for path in secrets}
    for path in secrets:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
        assert path.read_text().strip(), path.name
    password = before["postgres-password"].strip()
    assert before["pgpass"].strip() == f"postgres:5432:koprogo:koprogo:{password}"
    env_file = setup_tree / "deploy" / "compose" / ".env"
    env_before = env_file.read_text()
    assert f"KOPROGO_UID={os.getuid()}" in env_before
    grid_pub = (setup_tree / "deploy" / "nats" / "keys" / "grid.pub").read_text().strip()
    assert f"GRID_SCHEDULER_PUBLIC_KEY={grid_pub}" in env_before
    subprocess.run(["sh", "deploy/compose/setup-secrets.sh"], cwd=setup_tree, check=True, capture_output=True)
    assert {path.name: path.read_text() for path in secrets} == before, "a second run changed a secret"
    assert env_file.read_text() == env_before


def test_secrets_are_files_not_environment_values(compose: dict[str, Any]) -> None:
    for secret, spec in compose["secrets"].items():
        assert set(spec) == {"file"}, f"secret {secret}: {spec}"
    for name, service in services(compose).items():
        env = environment(service)
        for key, value in env.items():
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in secret_names(service), f"{name}: {key}={value}"
            elif SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert key in ENV_SECRETS_ALLOWED, f"{name}: secret {key} in the environment"
        for key in ("DATABASE_URL",):
            if key in env:
                assert urlsplit(env[key]).password is None, f"{name}: a password in {key}"
                assert env.get("PGPASSFILE", "").removeprefix("/run/secrets/") in secret_names(service), name
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            assert not source.endswith((".nk", "secrets", "-password")), (
                f"{name}: secret {source} as a volume"
            )


def test_seed_files_go_to_their_own_service(compose: dict[str, Any]) -> None:
    """Each service connects to NATS with its own nkey; only stream setup has the operator's."""
    seeds = {
        name: environment(service)["NATS_NKEY_SEED_FILE"]
        for name, service in koprogo_services(compose).items()
        if "NATS_NKEY_SEED_FILE" in environment(service)
    }
    assert set(seeds) == set(koprogo_services(compose))
    assert len(set(seeds.values())) == len(seeds), seeds
    assert [name for name, seed in seeds.items() if seed.endswith("/admin.nk")] == ["stream-setup"]


# --- NATS -------------------------------------------------------------------------------------


def test_nats_keeps_sync_always_and_monitoring_inside(compose: dict[str, Any]) -> None:
    conf = NATS_CONF.read_text(encoding="utf-8")
    settings = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    jetstream = re.search(r"jetstream\s*\{(.*?)\}", settings, re.S)
    assert jetstream and re.search(r"^\s*sync_interval:\s*always\s*$", jetstream.group(1), re.M)
    assert re.search(r"store_dir:\s*\"?/data/", jetstream.group(1)), "JetStream's files outside the volume"
    assert re.search(r'^http:\s*"127\.0\.0\.1:8222"\s*$', settings, re.M), "monitoring not on loopback"
    nats = services(compose)["nats"]
    assert "ports" not in nats, "NATS is published on the host"
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert "127.0.0.1:8222/healthz" in " ".join(nats["healthcheck"]["test"])
    exporter = services(compose)["nats-exporter"]
    assert exporter["network_mode"] == "service:nats"
    assert exporter["command"][-1] == "http://127.0.0.1:8222"
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            assert not str(port).endswith((":8222", ":4222", ":7777", ":5432")), f"{name} publishes {port}"


@contextmanager
def shipped_nats_server(setup_tree: Path, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """deploy/nats/nats-server.conf as compose mounts it, with only its ports and store folder moved
    for the test, and the authorization.conf nats-config wrote: (client port, monitoring port)."""
    from koprogo_cli.embedded import wait_for_port
    from koprogo_cli.embedded_nats import nats_server_binary
    from koprogo_cli.ports import free_port

    port, monitor = free_port(), free_port()
    conf = NATS_CONF.read_text(encoding="utf-8")
    for old, new in (
        ("port: 4222", f"port: {port}"),
        ('http: "127.0.0.1:8222"', f'http: "127.0.0.1:{monitor}"'),
        ('store_dir: "/data/jetstream"', f'store_dir: "{tmp_path / "jetstream"}"'),
    ):
        assert conf.count(old) == 1, old
        conf = conf.replace(old, new)
    (tmp_path / "nats-server.conf").write_text(conf)
    shutil.copy(setup_tree / "deploy" / "nats" / "authorization.conf", tmp_path / "authorization.conf")
    log = tmp_path / "nats-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(tmp_path / "nats-server.conf")], stdout=out, stderr=out
        )
    try:
        wait_for_port(port, proc, [log], timeout=20)
        yield port, monitor
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.integration
async def test_the_shipped_nats_config_runs_with_the_setups_keys(setup_tree: Path, tmp_path: Path) -> None:
    """The server starts with the shipped configuration, the health check's URL answers on
    loopback, it fsyncs every write, the stream setup's identity declares the streams and the
    ledger's may connect."""
    from koprogo_shared.durability import Durability, observed
    from koprogo_shared.nats_connection import connect_nats, ensure_streams

    keys = setup_tree / "deploy" / "nats" / "keys"
    health = next(a for a in services(load_compose())["nats"]["healthcheck"]["test"] if a.startswith("http"))
    with shipped_nats_server(setup_tree, tmp_path) as (port, monitor):
        url = health.replace("127.0.0.1:8222", f"127.0.0.1:{monitor}")
        status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).status)
        assert status == 200
        nc, js = await connect_nats(
            f"nats://127.0.0.1:{port}", "compose-test", nkey_seed_file=keys / "admin.nk"
        )
        try:
            await ensure_streams(js)
            finding = await observed(js, f"http://127.0.0.1:{monitor}")
            assert finding.durability is Durability.SYNC_ALWAYS, finding
        finally:
            await nc.close()
        ledger, _ = await connect_nats(
            f"nats://127.0.0.1:{port}", "compose-test", nkey_seed_file=keys / "ledger.nk"
        )
        await ledger.close()


# --- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_each_service_at_its_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert set(targets) == set(PROMETHEUS_JOBS) | {"nats"}
    for job, service_name in PROMETHEUS_JOBS.items():
        service = services(compose)[service_name]
        assert targets[job] == [f"{service_name}:{ops_port(service_name, service)}"], job
    exporter = services(compose)["nats-exporter"]["command"]
    assert targets["nats"] == [f"nats:{exporter[exporter.index('-port') + 1]}"]
    for rules in config["rule_files"]:
        assert (PROMETHEUS.parent / rules).is_file(), f"rule file {rules} missing"
    prometheus = services(compose)["prometheus"]
    assert "../prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_promtool_accepts_the_config() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).exists(), "promtool is missing: apt-get install prometheus (Debian ships it)"
    done = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- Grafana ----------------------------------------------------------------------------------


def dashboard_tables() -> set[str]:
    """The tables and views the provisioned dashboards' SQL reads."""
    tables: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"rawSql", "query"} and isinstance(value, str):
                    tables.update(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_][a-z0-9_]*)", value, re.I))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for dashboard in (GRAFANA / "dashboards").glob("*.json"):
        walk(json.loads(dashboard.read_text(encoding="utf-8")))
    return tables


def granted_tables() -> set[str]:
    sql = READER_SQL.read_text(encoding="utf-8")
    grant = re.search(r"GRANT SELECT ON (.*?) TO grafana_reader", sql, re.S)
    assert grant
    return {name.strip() for name in grant.group(1).split(",")}


def test_grafana_is_provisioned_with_every_variable_set(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    datasources = (GRAFANA / "provisioning" / "datasources" / "koprogo.yaml").read_text(encoding="utf-8")
    # The variables in its values (not its comments), as Grafana expands them.
    wanted = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", json.dumps(yaml.safe_load(datasources))))
    assert wanted, "no variables in the data source file"
    env = environment(grafana)
    entrypoint = " ".join(grafana["entrypoint"])
    for name in wanted:
        assert name in env or f"{name}=" in entrypoint, f"Grafana's {name} is not set"
    assert "KOPROGO_DB_PASSWORD" not in env, "the database password belongs in a secret file"
    assert "cat /run/secrets/grafana-db-password" in entrypoint
    assert env["KOPROGO_DB_HOST"] == f"postgres:{5432}" and "postgres" in services(compose)
    assert env["KOPROGO_DB_USER"] == "grafana_reader"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "koprogo.yaml").read_text(encoding="utf-8")
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"../grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]
    prometheus_url = yaml.safe_load(datasources)["datasources"][1]["url"]
    assert prometheus_url == "http://prometheus:9090" and "prometheus" in services(compose)


def test_grafanas_entrypoint_exports_the_password_from_its_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Its shell line, run with `env` in place of Grafana: the password from the file reaches the
    environment Grafana expands its data source file with; without the file, nothing starts."""
    shell, flag, line = services(compose)["grafana"]["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c")
    secret = tmp_path / "grafana-db-password"
    secret.write_text("reader-password\n")
    line = line.replace("exec /run.sh", "exec env")
    done = subprocess.run(
        ["sh", "-c", line.replace("/run/secrets/grafana-db-password", str(secret))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "KOPROGO_DB_PASSWORD=reader-password\n" in done.stdout, done.stderr
    missing = subprocess.run(
        ["sh", "-c", line.replace("/run/secrets/grafana-db-password", str(tmp_path / "none"))],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "KOPROGO_DB_PASSWORD" not in missing.stdout


def test_the_read_only_role_is_granted_every_table_the_dashboards_read() -> None:
    read = dashboard_tables()
    assert read, "no SQL found in the dashboards"
    assert read <= granted_tables(), f"not granted to grafana_reader: {sorted(read - granted_tables())}"


@pytest.mark.integration
async def test_the_read_only_role_reads_and_cannot_write(database_url: str, tmp_path: Path) -> None:
    """grafana-reader.sql, run with psql as the compose one-shot runs it (twice: idempotent), on a
    database migrated by the ledger: the role logs in with the password from its file, reads every
    granted table, and writes none."""
    from koprogo_ledger.adapters.migrations import apply_migrations

    owner = await asyncpg.connect(database_url)
    try:
        await apply_migrations(owner)
    finally:
        await owner.close()
    password_file = tmp_path / "grafana-db-password"
    password_file.write_text("reader-test-password\n")
    psql = shutil.which("psql")
    assert psql, "psql is missing (apt-get install postgresql-client)"
    args = ["--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-v", f"reader_password_file={password_file}"]
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            psql, *args, "-f", str(READER_SQL), database_url, stdout=PIPE, stderr=PIPE
        )
        _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    parts = urlsplit(database_url)
    reader_url = f"postgresql://grafana_reader:reader-test-password@{parts.hostname}:{parts.port}{parts.path}"
    reader = await asyncpg.connect(reader_url)
    try:
        for table in sorted(granted_tables()):
            await reader.fetch(f"SELECT * FROM {table} LIMIT 1")
        # Two guards: read-only transactions by default, and no write privilege when that is undone.
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await reader.execute("INSERT INTO mcp_requests DEFAULT VALUES")
        await reader.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("INSERT INTO mcp_requests DEFAULT VALUES")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.fetch("SELECT * FROM schema_migrations LIMIT 1")
    finally:
        await reader.close()
        owner = await asyncpg.connect(database_url)
        try:
            await owner.execute("DROP OWNED BY grafana_reader")
        finally:
            await owner.close()


# --- traces, logs, TLS, image -----------------------------------------------------------------


def test_every_service_sends_traces_to_jaeger_and_logs_json(compose: dict[str, Any]) -> None:
    jaeger = yaml.safe_load(JAEGER.read_text(encoding="utf-8"))
    http = jaeger["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    pipeline = jaeger["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(jaeger[kind]), kind
    assert set(jaeger["service"]["extensions"]) <= set(jaeger["extensions"])
    storage = jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"]
    assert storage in jaeger["extensions"]["jaeger_storage"]["backends"]
    assert jaeger["extensions"]["jaeger_query"]["storage"]["traces"] == storage
    for name, service in koprogo_services(compose).items():
        env = environment(service)
        assert env.get("LOG_FORMAT") == "json", name
        endpoint = urlsplit(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
        assert endpoint.hostname == "jaeger" and f":{endpoint.port}" == http[http.rindex(":") :], name
    jaeger_service = services(compose)["jaeger"]
    assert "../otel/jaeger.yaml:/etc/jaeger/jaeger.yaml:ro" in jaeger_service["volumes"]
    health = jaeger["extensions"]["healthcheckv2"]["http"]["endpoint"]
    assert f"127.0.0.1:{health.rsplit(':', 1)[1]}/status" in " ".join(jaeger_service["healthcheck"]["test"])


def test_traefik_serves_the_gateway_over_https(compose: dict[str, Any]) -> None:
    traefik = services(compose)["traefik"]
    assert traefik["profiles"] == ["tls"]
    assert any(str(port).endswith(":443:443") for port in traefik["ports"])
    assert "--entrypoints.websecure.address=:443" in traefik["command"]
    dynamic = yaml.safe_load(TRAEFIK.read_text(encoding="utf-8"))
    schema = json.loads(TRAEFIK_SCHEMA.read_text(encoding="utf-8"))
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(dynamic)
    ]
    assert not errors, errors
    router = dynamic["http"]["routers"]["gateway"]
    assert router["entryPoints"] == ["websecure"] and "tls" in router
    assert "!Path(`/metrics`)" in router["rule"]
    url = dynamic["http"]["services"][router["service"]]["loadBalancer"]["servers"][0]["url"]
    gateway = services(compose)["gateway"]
    assert url == f"http://gateway:{ops_port('gateway', gateway)}"
    certificate = dynamic["tls"]["stores"]["default"]["defaultCertificate"]
    for path in (certificate["certFile"], certificate["keyFile"]):
        assert path.removeprefix("/run/secrets/") in secret_names(traefik), path
    assert (
        f"./traefik/dynamic.yml:{_flag(traefik['command'], '--providers.file.filename')}:ro"
        in traefik["volumes"]
    )


def _flag(command: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith(name + "="))


def test_documented_self_signed_certificate(tmp_path: Path) -> None:
    """The openssl command dynamic.yml documents writes a pair Traefik can load."""
    text = TRAEFIK.read_text(encoding="utf-8")
    block = re.search(r"#\s+(openssl req .*?)\n(?!#\s{3,})", text, re.S)
    assert block, "dynamic.yml no longer documents the self-signed command"
    command = re.sub(r"\\\n#\s*", " ", block.group(1))
    assert shutil.which("openssl"), "openssl is missing"
    (tmp_path / "deploy" / "secrets").mkdir(parents=True)
    subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, capture_output=True)
    cert = subprocess.run(
        ["openssl", "x509", "-in", "deploy/secrets/tls.crt", "-noout", "-ext", "subjectAltName"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "DNS:localhost" in cert.stdout
    assert (tmp_path / "deploy" / "secrets" / "tls.key").stat().st_mode & 0o077 == 0


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    lines = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages and line.strip() and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_image_is_multi_stage_slim_and_unprivileged() -> None:
    web, build, final = dockerfile_stages()
    assert web[0].startswith("FROM --platform=$BUILDPLATFORM node:"), "the PWA is built under emulation"
    assert "web/dist" in " ".join(final)
    assert any("llama-cpp-python" in line for line in build)
    assert any("cmake" in line for line in build)
    final_text = "\n".join(final)
    assert final[0].startswith("FROM python:") and "-slim" in final[0]
    assert build[0].split()[1] == final[0].split()[1], "the virtualenv is built against another base"
    for tool in ("build-essential", "cmake", "gcc", "g++", "pip install", "libgl1"):
        assert tool not in final_text, f"{tool} in the final image"
    assert any("opencv-python-headless" in line for line in build), "OpenCV's GUI build needs libGL"
    assert "import cv2, llama_cpp" in final_text, "no check that the native libraries load"
    assert "COPY --from=build /opt/venv /opt/venv" in final_text
    user = final[-1]
    assert user.startswith("USER ") and not user.split()[1].startswith(("0", "root")), user
    header = DOCKERFILE.read_text(encoding="utf-8")
    assert "docker buildx build --platform linux/amd64,linux/arm64" in header


def world_writable_image_folders() -> set[str]:
    """The folders the final image makes writable by any user (`chmod 1777`): a named volume
    mounted on one starts as a copy of it, mode included, so the KOPROGO_UID compose runs the
    services as may write there; on any other folder of the image only root may."""
    folders = {"/tmp"}  # the base image's
    for line in dockerfile_stages()[-1]:
        for command in re.split(r"&&|;", line.removeprefix("RUN ")):
            words = command.split()
            if words[:2] == ["chmod", "1777"]:
                folders |= set(words[2:])
    return folders


def test_every_path_a_koprogo_service_writes_by_default_is_on_a_volume_it_may_write(
    compose: dict[str, Any],
) -> None:
    """The services run as KOPROGO_UID, not the image's owner of anything: each path its settings
    write to (tests/deploy/write_paths.py: HOME, the node's models folder and answers record, a
    seed it would mint) must be on a named volume over a world-writable folder of the image (kept
    when the container is re-created); HOME, a cache, may also be the container's /tmp."""
    writable_in_image = world_writable_image_folders()
    problems = []
    for name, service in koprogo_services(compose).items():
        volumes = {}
        for volume in service.get("volumes") or []:
            source, target, *mode = volume.split(":")
            volumes[target] = (source, mode)
        kept = [
            target
            for target, (source, mode) in volumes.items()
            if source in compose["volumes"] and mode != ["ro"] and target in writable_in_image
        ]
        scratch = [] if service.get("read_only") else ["/tmp"]
        for what, path in written_paths(service["command"], environment(service)).items():
            allowed = kept + scratch if what == "HOME" else kept
            if not any(under(path, folder) for folder in allowed):
                problems.append(f"{name}: {what} {path} is on no volume it may write ({sorted(allowed)})")
    assert not problems, "\n".join(problems)
    node_paths = written_paths(
        services(compose)["edge-node"]["command"], environment(services(compose)["edge-node"])
    )
    assert "answers record (ANSWERS_DIR)" in node_paths, "the node's own writes are not all read"
