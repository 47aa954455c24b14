"""The whole path in one process: ledger, router, an edge node with the bundled model, and the
gateway on a real HTTP port, all on the real NATS and PostgreSQL fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
import uvicorn

from koprogo_cli.ports import free_port
from koprogo_cloud.bootstrap import run_cloud
from koprogo_cloud.settings import CloudSettings
from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.settings import GatewaySettings
from koprogo_grid.bootstrap import run_scheduler
from koprogo_grid.settings import SchedulerSettings
from koprogo_ledger.bootstrap import run_ledger
from koprogo_ledger.settings import LedgerSettings
from koprogo_node.bootstrap import run_node
from koprogo_node.settings import NodeSettings
from koprogo_router.bootstrap import run_router
from koprogo_router.settings import RouterSettings
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import available_models, settings_fields, wait_until


@dataclass
class RunningStack:
    nats_url: str
    database_url: str
    gateway_url: str
    client: httpx.AsyncClient
    # One client per gateway replica, all on the same NATS; `client` is the first.
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    # Each edge node's stop: setting one stops that node alone (as its operator would).
    node_stops: dict[str, asyncio.Event] = field(default_factory=dict)
    _stops: list[asyncio.Event] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, run: Callable[[asyncio.Event], Awaitable[None]]) -> asyncio.Event:
        stop = asyncio.Event()
        self._stops.append(stop)
        self._tasks.append(asyncio.create_task(run(stop)))
        return stop

    async def projected_responses(self, *, delivered_only: bool = False) -> int:
        """The responses the ledger stored; `delivered_only`: those /stats counts (their
        ChatDelivered projected: a caller got them)."""
        where = " WHERE delivered_at IS NOT NULL" if delivered_only else ""
        conn = await asyncpg.connect(self.database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM mcp_responses" + where))
        finally:
            await conn.close()

    async def stop_all(self) -> None:
        for stop in self._stops:
            stop.set()
        results = await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), timeout=30)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, "\n".join("".join(traceback.format_exception(e)) for e in errors)


async def _schema_ready(database_url: str) -> bool:
    try:
        conn = await asyncpg.connect(database_url)
    except OSError:
        return False
    try:
        return bool(await conn.fetchval("SELECT to_regclass('mcp_responses') IS NOT NULL"))
    finally:
        await conn.close()


async def _serve_gateway(settings: GatewaySettings, stop: asyncio.Event) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.gateway_port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task


@pytest.fixture
async def stack_factory(
    clean_jetstream: str, database_url: str, content_keys_env: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[RunningStack]]]:
    stacks: list[RunningStack] = []

    async def make(
        *,
        edge_nodes: int = 1,
        chat_timeout_s: float = 60.0,
        gateways: int = 1,
        probe_token: str | None = None,
        cloud_deployments_file: Path | None = None,
        grid: bool = False,
        router_settings: dict[str, Any] | None = None,
        **gateway_settings: Any,
    ) -> RunningStack:
        """`gateways` replicas, each its own uvicorn on a free port; `gateway_settings` go to every one.

        With authentication on, `probe_token` (mcp:read) lets start-up see the models' availability.
        With `cloud_deployments_file`, a cloud worker serves those deployments.
        With `grid`, the grid scheduler runs and the edge nodes join the grid.
        `router_settings` go to the router (e.g. its grid thresholds).
        """
        gateway_ports = [free_port() for _ in range(gateways)]
        clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=90) for p in gateway_ports]
        client = clients[0]
        stack = RunningStack(
            clean_jetstream, database_url, f"http://127.0.0.1:{gateway_ports[0]}", client, clients
        )
        stacks.append(stack)
        await stack.start(
            lambda stop: run_ledger(
                LedgerSettings(
                    nats_url=clean_jetstream,
                    database_url=database_url,
                    ops_port=0,
                    **settings_fields(content_keys_env),
                ),
                stop,
            )
        )
        await wait_until(lambda: _schema_ready(database_url), timeout=30)
        router = RouterSettings(nats_url=clean_jetstream, ops_port=0, **(router_settings or {}))
        await stack.start(lambda stop: run_router(router, stop))
        if grid:
            await stack.start(
                lambda stop: run_scheduler(SchedulerSettings(nats_url=clean_jetstream, ops_port=0), stop)
            )
        node_ports = []
        for i in range(edge_nodes):
            node_settings = NodeSettings(
                nats_url=clean_jetstream, ops_port=free_port(), node_id=f"edge-test-{i}", grid_enabled=grid
            )
            node_ports.append(node_settings.ops_port)
            stack.node_stops[node_settings.node_id] = await stack.start(
                lambda stop, s=node_settings: run_node(s, stop)
            )
        if cloud_deployments_file is not None:
            cloud = CloudSettings(
                nats_url=clean_jetstream,
                ops_port=0,
                cloud_deployments_file=cloud_deployments_file,
                status_interval_s=0.5,
            )
            await stack.start(lambda stop: run_cloud(cloud, stop))
        for port in node_ports:
            await wait_until(lambda port=port: _http_ok(f"http://127.0.0.1:{port}/ready"), timeout=60)
        for gateway_port in gateway_ports:
            await stack.start(
                lambda stop, gateway_port=gateway_port: _serve_gateway(
                    GatewaySettings(
                        nats_url=clean_jetstream,
                        database_url=database_url,
                        gateway_port=gateway_port,
                        chat_timeout_s=chat_timeout_s,
                        # As `koprogo up` on one machine, its shared pool's nodes its own (a test may say otherwise).
                        **{
                            "gateway_routes_edge_pools": "all",
                            **settings_fields(content_keys_env),
                            **gateway_settings,
                        },
                    ),
                    stop,
                )
            )

        async def bundled_model_available(client: httpx.AsyncClient) -> bool:
            headers = {"Authorization": f"Bearer {probe_token}"} if probe_token else {}
            return (await available_models(client, headers)).get(BUNDLED_MODEL_ID, False)

        for each in clients:
            if edge_nodes:
                await wait_until(lambda each=each: bundled_model_available(each), timeout=60)
            else:
                await wait_until(lambda each=each: _gateway_up(each), timeout=30)
        return stack

    yield make
    for stack in stacks:
        for each in stack.clients:
            with contextlib.suppress(Exception):
                await each.aclose()
        await stack.stop_all()


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False


async def _gateway_up(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/health")).status_code == 200
    except httpx.HTTPError:
        return False


@asynccontextmanager
async def published_subjects(stack: RunningStack) -> AsyncIterator[list[str]]:
    """Every subject published under koprogo.events and koprogo.work while the block runs."""
    nc = await nats.connect(stack.nats_url)
    seen: list[str] = []

    async def record(msg: Any) -> None:
        seen.append(msg.subject)

    await nc.subscribe("koprogo.events.>", cb=record)
    await nc.subscribe("koprogo.work.>", cb=record)
    try:
        yield seen
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
