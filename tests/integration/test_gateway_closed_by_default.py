"""The `koprogo-gateway` program is closed by default: without a verifier it does not start, and one
started with AUTH_DISABLED=true says so in its log and in /health."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx

from koprogo_cli.ports import free_port
from koprogo_shared.local_tokens import mint_token
from tests.conftest import wait_until

GATEWAY = str(Path(sys.executable).parent / "koprogo-gateway")
AUTH_VARIABLES = ("AUTH_DISABLED", "JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL", "ENVIRONMENT")


def gateway_env(**settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES and k != "LOG_FILE"}
    return {**base, **settings}


def refusal(env: dict[str, str]) -> str:
    """The one line a gateway that refuses to start writes on stderr (exit code 1)."""
    started = subprocess.run([GATEWAY], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1, (started.returncode, started.stderr)
    assert "Traceback" not in started.stderr, started.stderr
    # Nothing of what it was given is echoed: pydantic's report printed every setting, password included.
    assert "db-password-canary" not in started.stderr, started.stderr
    (line,) = started.stderr.splitlines()
    assert line.startswith("koprogo-gateway: cannot start: "), line
    return line


def test_a_gateway_without_a_verifier_refuses_to_start_with_one_line() -> None:
    port = free_port()
    # Unreachable servers: the refusal comes before any connection is tried.
    env = gateway_env(
        GATEWAY_PORT=str(port),
        NATS_URL="nats://127.0.0.1:1",
        DATABASE_URL="postgresql://x:db-password-canary@127.0.0.1:1/x",
    )
    line = refusal(env)
    assert "no token verifier" in line and "AUTH_DISABLED=true" in line, line
    line = refusal(env | {"ENVIRONMENT": "production", "AUTH_DISABLED": "true"})
    assert "refused in production" in line, line
    line = refusal(env | {"ENVIRONMENT": "production"})
    assert "ENVIRONMENT=production needs JWT_SECRET_FILE or JWKS_URL" in line, line
    line = refusal(env | {"JWT_SECRET_FILE": "/nonexistent/jwt-secret"})
    assert "JWT_SECRET_FILE /nonexistent/jwt-secret cannot be read" in line, line
    # A malformed variable is named.
    line = refusal(env | {"AUTH_DISABLED": "true", "GATEWAY_PORT": "eighty"})
    assert "GATEWAY_PORT: " in line, line


@contextmanager
def running_gateway(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([GATEWAY], env=env | {"GATEWAY_PORT": str(port), "LOG_FILE": str(log)})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


async def _ready(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            return (await client.get(f"{url}/ready")).status_code == 200
        except httpx.HTTPError:
            return False


async def test_auth_disabled_is_said_loudly_at_start_and_in_health(
    clean_jetstream: str, database_url: str, tmp_path: Path
) -> None:
    env = gateway_env(NATS_URL=clean_jetstream, DATABASE_URL=database_url, AUTH_DISABLED="true")
    log = tmp_path / "gateway.log"
    with running_gateway(env, log) as url:
        await wait_until(lambda: _ready(url), timeout=60)
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            health = await client.get("/health")
            assert health.json() == {"status": "ok", "auth": "disabled"}
            models = await client.get("/mcp/v1/models")  # no token, and served
            assert models.status_code == 200
    warnings = [line for line in log.read_text().splitlines() if "AUTHENTICATION IS DISABLED" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], log.read_text()


async def test_a_gateway_given_a_secret_file_checks_tokens_and_health_says_on(
    clean_jetstream: str, database_url: str, content_keys_env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "jwt-secret"
    secret.write_text("x" * 48 + "\n")
    secret.chmod(0o600)
    env = gateway_env(
        NATS_URL=clean_jetstream, DATABASE_URL=database_url, JWT_SECRET_FILE=str(secret), **content_keys_env
    )
    with running_gateway(env, tmp_path / "gateway.log") as url:
        await wait_until(lambda: _ready(url), timeout=60)
        token = mint_token(
            "x" * 48, user="alice", copros=["c1"], scopes=["mcp:read"], ttl=timedelta(minutes=5)
        )
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            assert (await client.get("/health")).json() == {"status": "ok", "auth": "on"}
            assert (await client.get("/mcp/v1/models")).status_code == 401
            signed = await client.get("/mcp/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert signed.status_code == 200, signed.text
