"""The router's series: decisions by target and reason, fallbacks, and the nodes' health read at scrape."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from koprogo_router.adapters.bus import FakeBus
from koprogo_router.adapters.metrics import DECISIONS, FALLBACKS, NodeHealth
from koprogo_router.service_layer.dispatch import Dispatcher
from koprogo_shared.events import Event, RunInference
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.routing.policy_book import FakePolicyBook
from tests.unit.test_dispatch import attempt_failed, live_registry, requested, with_cloud
from tests.unit.test_node_registry import beat


def _count(counter_name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(counter_name, labels) or 0.0


async def test_a_routed_chat_a_refusal_and_a_fallback_are_counted_by_target_and_reason() -> None:
    assert DECISIONS and FALLBACKS  # declared once, in the default registry
    edge = _count("koprogo_router_decisions_total", target="edge", reason="prefer_edge")
    refused = _count("koprogo_router_decisions_total", target="none", reason="model_not_found")
    fell_back = _count("koprogo_router_fallbacks_total", from_target="edge", to_target="cloud")
    bus = FakeBus()
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook())

    await dispatcher.on_chat_requested(requested("auto"))
    await dispatcher.on_chat_requested(requested("nope:1b"))
    first = bus.published[0][1]
    assert isinstance(first, RunInference)
    await dispatcher.on_attempt_failed(attempt_failed(first, 503, "engine_unavailable"))

    assert _count("koprogo_router_decisions_total", target="edge", reason="prefer_edge") == edge + 1
    assert _count("koprogo_router_decisions_total", target="none", reason="model_not_found") == refused + 1
    assert _count("koprogo_router_fallbacks_total", from_target="edge", to_target="cloud") == fell_back + 1


def test_a_node_that_stops_beating_is_shown_down_and_one_that_leaves_is_gone() -> None:
    now = [100.0]
    health = NodeHealth(clock=lambda: now[0])
    registry = NodeRegistry()
    health.watch(registry)
    scraped = CollectorRegistry()
    scraped.register(health)
    registry.observe(beat("a", ["m1"]), now=100.0)
    registry.observe(beat("b", ["m1"]), now=100.0)
    registry.observe(beat("c", ["m1"]), now=100.0)

    def up(node: str) -> float | None:
        return scraped.get_sample_value("koprogo_router_node_up", {"node": node})

    def nodes(state: str) -> float | None:
        return scraped.get_sample_value("koprogo_router_nodes", {"state": state})

    assert (up("a"), up("b"), nodes("healthy"), nodes("stale")) == (1.0, 1.0, 3.0, 0.0)
    now[0] = 107.0  # three 2 s heartbeats missed by all; `b` beats again, `c` said it leaves
    registry.observe(beat("b", ["m1"]), now=106.5)
    registry.forget("c")
    registry.alive(now[0])  # routing drops the dead node from its candidates: still shown down

    assert (up("a"), up("b"), up("c")) == (0.0, 1.0, None)
    assert (nodes("healthy"), nodes("stale")) == (1.0, 1.0)


class _FailsOnce(FakeBus):
    """A bus whose first publish fails, as NATS does when it is away: the request is retried."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def publish(self, subject: str, event: Event) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("NATS away")
        await super().publish(subject, event)


async def test_a_decision_whose_work_could_not_be_sent_is_counted_once_its_retry_sends_it() -> None:
    edge = _count("koprogo_router_decisions_total", target="edge", reason="prefer_edge")
    refused = _count("koprogo_router_decisions_total", target="none", reason="model_not_found")
    dispatcher = Dispatcher(_FailsOnce(), live_registry(), FakePolicyBook())
    request = requested("auto")
    with pytest.raises(ConnectionError):
        await dispatcher.on_chat_requested(request)
    await dispatcher.on_chat_requested(request, redelivered=True)
    assert _count("koprogo_router_decisions_total", target="edge", reason="prefer_edge") == edge + 1

    dispatcher.bus = _FailsOnce()
    unknown = requested("nope:1b")
    with pytest.raises(ConnectionError):
        await dispatcher.on_chat_requested(unknown)
    await dispatcher.on_chat_requested(unknown, redelivered=True)
    assert _count("koprogo_router_decisions_total", target="none", reason="model_not_found") == refused + 1


async def test_a_fallback_whose_work_could_not_be_sent_is_counted_once_its_retry_sends_it() -> None:
    fell_back = _count("koprogo_router_fallbacks_total", from_target="edge", to_target="cloud")
    bus = FakeBus()
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook())
    await dispatcher.on_chat_requested(requested("auto"))
    first = bus.published[0][1]
    assert isinstance(first, RunInference)
    dispatcher.bus = _FailsOnce()
    failed = attempt_failed(first, 503, "engine_unavailable")
    with pytest.raises(ConnectionError):
        await dispatcher.on_attempt_failed(failed)
    await dispatcher.on_attempt_failed(failed)
    assert _count("koprogo_router_fallbacks_total", from_target="edge", to_target="cloud") == fell_back + 1
