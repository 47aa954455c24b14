"""A building's gateway tells whether its building is cut from the hub (issue 18): `GET /mcp/v1/site`
reads the building nats-server's leaf link from its `/leafz` monitoring.

Real servers: the hub and the building's nats-server (a leaf node, its HTTP monitoring on loopback)
with a TCP proxy between them as the building's line (tests/integration/leaf_support.py), and a
gateway with SITE=building, authentication on, started as the other end-to-end tests start it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from koprogo_cli.nats_auth import render_authorization
from koprogo_cli.nats_keys import mint_seed
from koprogo_cli.nats_permissions import NatsUser, Permissions
from koprogo_cli.ports import free_port
from koprogo_shared import leaf_site
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.integration.leaf_support import NatsProcess, TcpProxy, hub_server
from tests.token_support import AUTH_SETTINGS

pytestmark = pytest.mark.integration

COPRO = "c1"
# The leaf notices the cut at once (the proxy closes its connections) and redials every second;
# the gateway reads /leafz every 2 s. Room for a loaded 2-core box.
NOTICED_S = 15.0


@dataclass
class Building:
    hub: NatsProcess
    server: NatsProcess
    line: TcpProxy
    monitor_url: str


@pytest.fixture
async def building(tmp_path: Path) -> AsyncIterator[Building]:
    seed_file = tmp_path / "keys" / f"leaf-{COPRO}.nk"
    rules = leaf_site.leaf_link_permissions(COPRO)
    leaf_user = NatsUser(
        f"building of {COPRO}", mint_seed(seed_file), Permissions(rules.publish, rules.subscribe)
    )
    hub, hub_leaf_port = hub_server(tmp_path / "hub", render_authorization([leaf_user]))
    hub.start()
    line = TcpProxy(hub_leaf_port)
    await line.restore()
    base = tmp_path / "building"
    base.mkdir()
    site = leaf_site.LeafSite(
        copro_id=COPRO,
        store_dir=base / "jetstream",
        hub_urls=[f"nats-leaf://127.0.0.1:{line.port}"],
        hub_nkey_seed=seed_file.read_text().strip(),
        port=free_port(),
        log_file=base / "nats-server.log",
    )
    monitor_port = free_port()
    conf = base / "nats-server.conf"
    # The monitoring endpoint on loopback, as a building's server has it for its gateway.
    conf.write_text(f'{leaf_site.render_leaf_config(site)}\nhttp: "127.0.0.1:{monitor_port}"\n')
    conf.chmod(0o600)
    server = NatsProcess(conf, site.port, base / "nats-server.log").start()
    try:
        yield Building(hub, server, line, f"http://127.0.0.1:{monitor_port}")
    finally:
        await line.cut()
        server.stop()
        hub.stop()


async def _link(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/mcp/v1/site")  # no token: the route is public
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


async def _gauge(client: httpx.AsyncClient) -> float | None:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "koprogo_gateway_hub_link_up":
                return sample.value
    return None


async def _wait_for_link(client: httpx.AsyncClient, expected: str) -> float:
    started = time.monotonic()

    async def shown() -> bool:
        return (await _link(client))["hub_link"] == expected

    await wait_until(shown, timeout=NOTICED_S, interval=0.1)
    return time.monotonic() - started


async def test_the_building_gateway_says_down_while_the_line_is_cut_and_up_when_it_returns(
    building: Building, stack_factory: Callable[..., Awaitable[RunningStack]]
) -> None:
    stack = await stack_factory(
        edge_nodes=0,
        site="building",
        building_copro="c1",
        nats_monitor_url=building.monitor_url,
        **AUTH_SETTINGS,
    )
    client = stack.client
    await _wait_for_link(client, "up")
    up = await _link(client)
    assert up["site"] == "building" and up["since"] is not None
    assert await _gauge(client) == 1.0

    await building.line.cut()
    noticed_down = await _wait_for_link(client, "down")
    down = await _link(client)
    assert _time(down["since"]) > _time(up["since"])
    assert await _gauge(client) == 0.0

    await building.line.restore()
    noticed_up = await _wait_for_link(client, "up")
    assert _time((await _link(client))["since"]) > _time(down["since"])
    assert await _gauge(client) == 1.0
    print(f"cut noticed after {noticed_down:.1f} s, the line's return after {noticed_up:.1f} s")


async def test_a_building_gateway_whose_monitoring_does_not_answer_says_unknown(
    stack_factory: Callable[..., Awaitable[RunningStack]],
) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    stack = await stack_factory(
        edge_nodes=0, site="building", building_copro="c1", nats_monitor_url=nothing_listens
    )
    assert await _link(stack.client) == {"site": "building", "hub_link": "unknown", "since": None}


async def test_a_hub_gateway_is_always_up(stack_factory: Callable[..., Awaitable[RunningStack]]) -> None:
    stack = await stack_factory(edge_nodes=0)
    assert await _link(stack.client) == {"site": "hub", "hub_link": "up", "since": None}
    spec = (await stack.client.get("/openapi.json")).json()
    operation = spec["paths"]["/mcp/v1/site"]["get"]
    assert "security" not in operation, operation
