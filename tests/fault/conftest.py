"""Fault injection: the chat path as separate processes, on the real NATS and PostgreSQL fixtures.

`fault_stack` starts the services `koprogo up` runs, each its own OS process
(`stack_processes.py`), so a test can SIGKILL one of them under load and start it again with
the same environment. `cloud_server` is a real OpenAI-compatible server (llama.cpp's, with the
bundled model under a cloud model's name) for the cloud worker. `restartable_postgres` and
`restartable_nats` are servers of the test's own, which it may stop and start again (the
session's servers are shared with every other test); `nats_cluster` is three nats-server
processes clustered on loopback, of the test's own too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_cli.ports import free_port
from tests.conftest import postgres_dir
from tests.fault.stack_processes import StackFactory, process_stacks
from tests.integration.cloud_support import openai_compatible_server
from tests.integration.nats_cluster_support import NatsCluster

CLOUD_MODEL = "gpt-4o-mini"
CLOUD_DEPLOYMENT = "local-openai"

FaultStackFactory = StackFactory


@pytest.fixture
async def fault_stack(
    clean_jetstream: str, database_url: str, tmp_path: Path
) -> AsyncIterator[FaultStackFactory]:
    """Start a stack of processes (`process_stack`'s options) on the session's NATS and a fresh
    database, or on the `nats` and `database` URLs given, with `env` added to every service's
    environment; every process is stopped afterwards (`process_stacks`)."""
    async with process_stacks(clean_jetstream, database_url, tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def cloud_server(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """llama.cpp's OpenAI-compatible server, the bundled model served as `gpt-4o-mini`; its port."""
    with openai_compatible_server(bundled_model_path, CLOUD_MODEL, tmp_path_factory.mktemp("cloud")) as port:
        yield port


def cloud_deployments(tmp_path: Path, port: int) -> Path:
    """A deployments file naming the OpenAI-compatible server at `port`."""
    path = tmp_path / "deployments.toml"
    path.write_text(
        f"""
[[deployments]]
id = "{CLOUD_DEPLOYMENT}"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = ""
models = {{ "{CLOUD_MODEL}" = "{CLOUD_MODEL}" }}
timeout_s = 30
max_retries = 0
"""
    )
    return path


@pytest.fixture
def restartable_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own (its `koprogo` database), stopped afterwards."""
    with postgres_dir() as folder:
        server = EmbeddedPostgres(folder, port=free_port(), database="koprogo").start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def restartable_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own (JetStream on file, fsync always, as `koprogo up` runs it)."""
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsCluster]:
    """Three clustered nats-server processes of this test's own (JetStream on file, fsync always);
    streams declared on it get three replicas (`NATS_REPLICAS` unset: they follow the cluster)."""
    monkeypatch.delenv("NATS_REPLICAS", raising=False)
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()
