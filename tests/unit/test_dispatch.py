"""The router's use case with a fake bus."""

from __future__ import annotations

from datetime import timedelta

from koprogo_router.adapters.bus import FakeBus
from koprogo_router.service_layer.dispatch import Dispatcher
from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import ChatFailed, ChatMessage, ChatRequested, RunInference, utc_now
from koprogo_shared.node_registry import NodeRegistry
from tests.unit.test_node_registry import beat


def requested(model: str, seconds_left: float = 30.0) -> ChatRequested:
    return ChatRequested(
        source="test",
        copro_id="c1",
        model=model,
        messages=[ChatMessage(role="user", content="Bonjour")],
        context="copro:c1",
        reply_subject="koprogo.reply.gw1",
        deadline=utc_now() + timedelta(seconds=seconds_left),
    )


def live_registry() -> NodeRegistry:
    import time

    registry = NodeRegistry()
    registry.observe(beat("n1", [BUNDLED_MODEL_ID]), time.monotonic())
    return registry


async def test_a_servable_request_becomes_work_for_the_models_edge_pool() -> None:
    bus = FakeBus()
    request = requested(BUNDLED_MODEL_ID)
    await Dispatcher(bus, live_registry()).on_chat_requested(request)
    [(subject, work)] = bus.published
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID)
    assert isinstance(work, RunInference)
    assert work.request_id == request.id and work.reply_subject == request.reply_subject
    assert bus.replies == []


async def test_redelivered_request_produces_the_same_work_id() -> None:
    bus = FakeBus()
    request = requested(BUNDLED_MODEL_ID)
    dispatcher = Dispatcher(bus, live_registry())
    await dispatcher.on_chat_requested(request)
    await dispatcher.on_chat_requested(request)
    assert bus.published[0][1].id == bus.published[1][1].id


async def test_an_unknown_model_is_answered_404_durably_and_directly() -> None:
    bus = FakeBus()
    await Dispatcher(bus, live_registry()).on_chat_requested(requested("nope:1b"))
    [(subject, failed)] = bus.published
    assert subject == subjects.chat_failed("c1")
    assert isinstance(failed, ChatFailed) and failed.status == 404
    assert bus.replies == [("koprogo.reply.gw1", failed)]


async def test_an_expired_request_is_not_routed() -> None:
    bus = FakeBus()
    await Dispatcher(bus, live_registry()).on_chat_requested(requested(BUNDLED_MODEL_ID, seconds_left=-1))
    [(_, failed)] = bus.published
    assert isinstance(failed, ChatFailed) and failed.status == 504
