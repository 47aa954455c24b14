"""The gateway's site link (issue 18): a building reads its leaf link to the hub from its nats-server's
`/leafz` in the background and answers `GET /mcp/v1/site` from what it last saw; a hub is always up."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import ValidationError

from koprogo_gateway.adapters.leaf_monitor import (
    FakeLeafMonitor,
    LeafMonitorUnavailableError,
    NatsLeafzMonitor,
)
from koprogo_gateway.domain.hub_link import HubLink
from koprogo_gateway.entrypoints.http import routes_site
from koprogo_gateway.entrypoints.main import settings_problems
from koprogo_gateway.service_layer.site_link import SiteLink
from koprogo_gateway.settings import GatewaySettings
from tests.conftest import wait_until

START = datetime(2026, 12, 2, 22, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def gauge() -> float | None:
    return REGISTRY.get_sample_value("koprogo_gateway_hub_link_up")


async def test_a_hub_is_always_up_and_reads_nothing() -> None:
    link = SiteLink("hub")
    await link.check()
    link.start()
    assert link.current().model_dump() == {"site": "hub", "hub_link": "up", "since": None}
    assert gauge() == 1.0
    await link.close()


async def test_a_building_is_unknown_until_it_has_read_its_leaf_link() -> None:
    link = SiteLink("building", FakeLeafMonitor(1), clock=Clock())
    assert link.current().model_dump() == {"site": "building", "hub_link": "unknown", "since": None}
    assert math.isnan(gauge() or 0.0)


async def test_a_building_says_down_when_its_leaf_link_is_gone_and_since_when() -> None:
    monitor, clock = FakeLeafMonitor(1), Clock()
    link = SiteLink("building", monitor, clock=clock)

    await link.check()
    assert (link.current().hub_link, link.current().since) == (HubLink.UP, START)
    assert gauge() == 1.0

    clock.advance(2)
    await link.check()  # still up: `since` stays at the change
    assert link.current().since == START

    monitor.connections = 0
    clock.advance(2)
    await link.check()
    assert (link.current().hub_link, link.current().since) == (HubLink.DOWN, START + timedelta(seconds=4))
    assert gauge() == 0.0

    monitor.connections = 1
    clock.advance(3)
    await link.check()
    assert (link.current().hub_link, link.current().since) == (HubLink.UP, START + timedelta(seconds=7))


async def test_an_unreadable_monitoring_endpoint_makes_the_link_unknown() -> None:
    monitor, clock = FakeLeafMonitor(1), Clock()
    link = SiteLink("building", monitor, clock=clock)
    await link.check()
    monitor.connections = None
    clock.advance(1)
    await link.check()
    assert (link.current().hub_link, link.current().since) == (HubLink.UNKNOWN, START + timedelta(seconds=1))
    assert math.isnan(gauge() or 0.0)


async def test_the_building_polls_in_the_background_until_closed() -> None:
    monitor = FakeLeafMonitor(1)
    link = SiteLink("building", monitor, poll_interval_s=0.01)
    link.start()
    try:
        await wait_until(lambda: _is(link, HubLink.UP), timeout=5)
        monitor.connections = 0
        await wait_until(lambda: _is(link, HubLink.DOWN), timeout=5)
    finally:
        await link.close()
    reads = monitor.reads
    await asyncio.sleep(0.05)
    assert monitor.reads == reads, "the polling goes on after close()"
    assert monitor.closed


def _is(link: SiteLink, expected: HubLink) -> bool:
    return link.current().hub_link is expected


def test_a_building_without_a_monitor_is_refused() -> None:
    with pytest.raises(ValueError, match="NATS_MONITOR_URL"):
        SiteLink("building")


# The monitoring adapter, against nats-server's /leafz answers (2.15: `leafs` is null when empty).


def _leafz(handler: httpx.MockTransport) -> NatsLeafzMonitor:
    return NatsLeafzMonitor(httpx.AsyncClient(transport=handler), "http://127.0.0.1:8222/")


async def test_the_leafz_monitor_counts_the_leaf_connections() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        body = {"leafnodes": 1, "leafs": [{"account": "$G", "ip": "127.0.0.1", "port": 7422}]}
        return httpx.Response(200, json=body)

    assert await _leafz(httpx.MockTransport(answer)).leaf_connections() == 1
    assert seen == ["http://127.0.0.1:8222/leafz"]
    none = httpx.MockTransport(lambda _: httpx.Response(200, json={"leafnodes": 0, "leafs": None}))
    assert await _leafz(none).leaf_connections() == 0


@pytest.mark.parametrize(
    "answer",
    [
        lambda _: httpx.Response(500, text="oops"),
        lambda _: httpx.Response(200, text="<html>a proxy's page</html>"),
        lambda _: httpx.Response(200, content=json.dumps({"leafs": []})),
        lambda _: httpx.Response(200, json=["not", "leafz"]),
    ],
    ids=["server-error", "not-json", "no-count", "not-an-object"],
)
async def test_the_leafz_monitor_is_unavailable_when_the_answer_is_not_leafz(
    answer: Callable[[httpx.Request], httpx.Response],
) -> None:
    with pytest.raises(LeafMonitorUnavailableError):
        await _leafz(httpx.MockTransport(answer)).leaf_connections()


async def test_the_leafz_monitor_is_unavailable_when_nothing_listens() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(LeafMonitorUnavailableError, match="leafz"):
        await _leafz(httpx.MockTransport(refuse)).leaf_connections()


# The route and the settings.


async def test_the_site_route_answers_without_a_token() -> None:
    app = FastAPI()
    app.include_router(routes_site.router)
    link = SiteLink("building", FakeLeafMonitor(0), clock=Clock())
    await link.check()
    app.state.gateway = SimpleNamespace(site_link=link)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        answer = await client.get("/mcp/v1/site")
    assert answer.status_code == 200
    assert answer.json() == {"site": "building", "hub_link": "down", "since": "2026-12-02T22:00:00Z"}


def test_a_building_gateway_needs_the_monitoring_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DISABLED", "true")
    monkeypatch.delenv("NATS_MONITOR_URL", raising=False)
    assert GatewaySettings().site == "hub"
    monkeypatch.setenv("SITE", "building")
    with pytest.raises(ValidationError) as refused:
        GatewaySettings()
    assert "SITE=building needs BUILDING_COPRO" in settings_problems(refused.value)
    monkeypatch.setenv("BUILDING_COPRO", "c1")
    with pytest.raises(ValidationError) as refused:
        GatewaySettings()
    assert "SITE=building needs NATS_MONITOR_URL" in settings_problems(refused.value)
    monkeypatch.setenv("NATS_MONITOR_URL", "")
    with pytest.raises(ValidationError):
        GatewaySettings()
    monkeypatch.setenv("NATS_MONITOR_URL", "http://127.0.0.1:8222")
    assert GatewaySettings().nats_monitor_url == "http://127.0.0.1:8222"
    monkeypatch.setenv("SITE", "basement")
    with pytest.raises(ValidationError):
        GatewaySettings()
