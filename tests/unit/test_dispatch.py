"""The router's use case with a fake bus."""

from __future__ import annotations

from datetime import timedelta

import pytest

from koprogo_router.adapters.bus import FakeBus
from koprogo_router.service_layer.dispatch import Dispatcher, TargetsAwayError
from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.co2 import CloudFootprint
from koprogo_shared.events import (
    ChatFailed,
    ChatMessage,
    ChatRequested,
    CloudDeploymentStatus,
    InferenceAttemptFailed,
    RoutingPreference,
    RunInference,
    utc_now,
)
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.routing.policy_book import FakePolicyBook
from tests.unit.test_node_registry import beat


def requested(
    model: str, seconds_left: float = 30.0, routing: RoutingPreference | None = None
) -> ChatRequested:
    return ChatRequested(
        routing=routing,
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
    await Dispatcher(bus, live_registry(), FakePolicyBook()).on_chat_requested(request)
    [(subject, work)] = bus.published
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID)
    assert isinstance(work, RunInference)
    assert work.request_id == request.id and work.reply_subject == request.reply_subject
    assert bus.replies == []


async def test_redelivered_request_produces_the_same_work_id() -> None:
    bus = FakeBus()
    request = requested(BUNDLED_MODEL_ID)
    dispatcher = Dispatcher(bus, live_registry(), FakePolicyBook())
    await dispatcher.on_chat_requested(request)
    await dispatcher.on_chat_requested(request, redelivered=True)
    first, again = (work for _, work in bus.published)
    assert isinstance(first, RunInference) and isinstance(again, RunInference)
    assert first.id == again.id
    # Only the copy routed again says an answer may exist (the first may have run, and a copy
    # past the work stream's de-dup window is stored): its worker looks before answering.
    assert (first.may_be_answered, again.may_be_answered) == (False, True)


async def test_a_fallback_routed_again_is_the_same_second_attempt() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook())
    await dispatcher.on_chat_requested(requested("auto"))
    [(_, first)] = bus.published
    assert isinstance(first, RunInference)
    await dispatcher.on_attempt_failed(attempt_failed(first, 503, "engine_unavailable"))
    await dispatcher.on_attempt_failed(attempt_failed(first, 503, "engine_unavailable"))
    second, again = (work for _, work in bus.published[1:])
    assert isinstance(second, RunInference) and isinstance(again, RunInference)
    assert second.id == again.id
    # Unflagged: being a second attempt is what makes a cloud worker look for a stored answer
    # (`koprogo_cloud.service_layer.inference.may_be_answered`).
    assert second.routing is not None and second.routing.attempt == 2
    assert (second.may_be_answered, again.may_be_answered) == (False, False)


async def test_an_unknown_model_is_answered_404_durably_and_directly() -> None:
    bus = FakeBus()
    await Dispatcher(bus, live_registry(), FakePolicyBook()).on_chat_requested(requested("nope:1b"))
    [(subject, failed)] = bus.published
    assert subject == subjects.chat_failed("c1")
    assert isinstance(failed, ChatFailed) and failed.status == 404
    assert bus.replies == [("koprogo.reply.gw1", failed)]


async def test_an_expired_request_is_not_routed() -> None:
    bus = FakeBus()
    await Dispatcher(bus, live_registry(), FakePolicyBook()).on_chat_requested(
        requested(BUNDLED_MODEL_ID, seconds_left=-1)
    )
    [(_, failed)] = bus.published
    assert isinstance(failed, ChatFailed) and failed.status == 504


def with_cloud(registry: NodeRegistry) -> NodeRegistry:
    import time

    registry.observe_cloud(
        CloudDeploymentStatus(
            source="test",
            deployment="openai",
            provider="openai",
            models=["gpt-4o-mini"],
            available=True,
            wh_per_1k_tokens=CloudFootprint().wh_per_1k_tokens,
            intensity_g_per_kwh=CloudFootprint().intensity_g_per_kwh,
            interval_s=2.0,
        ),
        time.monotonic(),
    )
    return registry


def attempt_failed(
    work: RunInference, status: int = 502, error: str = "provider_error"
) -> InferenceAttemptFailed:
    assert work.routing is not None
    return InferenceAttemptFailed(
        source="test",
        copro_id=work.copro_id,
        request_id=work.request_id,
        target=work.routing.targets[work.routing.attempt - 1],
        status=status,
        error=error,
        message="the provider failed",
        work=work,
    )


async def test_auto_runs_on_the_edge_first_and_a_failed_attempt_falls_back_to_the_cloud() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook())
    request = requested("auto")
    await dispatcher.on_chat_requested(request)
    [(subject, first)] = bus.published
    assert isinstance(first, RunInference) and first.routing is not None
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID)
    assert [t.kind for t in first.routing.targets] == ["edge", "cloud"]
    await dispatcher.on_attempt_failed(attempt_failed(first, 503, "engine_unavailable"))
    subject, second = bus.published[1]
    assert subject == subjects.run_inference_cloud("c1", "openai")
    assert isinstance(second, RunInference) and second.routing is not None
    assert second.model == "gpt-4o-mini" and second.routing.attempt == 2
    assert second.id != first.id and second.request_id == request.id
    assert second.routing.failures == [f"edge {BUNDLED_MODEL_ID}: engine_unavailable"]
    # The last target failing too: the request fails with the last error and the history.
    await dispatcher.on_attempt_failed(attempt_failed(second))
    subject, failed = bus.published[2]
    assert subject == subjects.chat_failed("c1")
    assert isinstance(failed, ChatFailed) and failed.status == 502 and "after 2 attempts" in failed.message
    assert bus.replies == [("koprogo.reply.gw1", failed)]


async def test_a_copro_policy_of_edge_only_is_applied_and_cannot_be_loosened_by_a_request() -> None:
    bus = FakeBus()
    book = FakePolicyBook({"c1": RoutingPreference(policy="edge_only")})
    dispatcher = Dispatcher(bus, with_cloud(NodeRegistry()), book)
    await dispatcher.on_chat_requested(requested("auto"))
    [(_, failed)] = bus.published
    assert isinstance(failed, ChatFailed) and failed.status == 503 and "edge_only" in failed.message
    await dispatcher.on_chat_requested(requested("auto", routing=RoutingPreference(policy="lowest_carbon")))
    _, refused = bus.published[1]
    assert isinstance(refused, ChatFailed) and refused.status == 403
    assert refused.error == "routing_policy_violation"


async def test_a_copros_work_goes_to_its_own_pools_subject_and_never_to_another_copros() -> None:
    import time

    registry = NodeRegistry()
    own = beat("own", [BUNDLED_MODEL_ID]).model_copy(update={"pools": [subjects.copro_pool("c1")]})
    theirs = beat("theirs", [BUNDLED_MODEL_ID]).model_copy(update={"pools": [subjects.copro_pool("c2")]})
    registry.observe(theirs, time.monotonic())
    bus = FakeBus()
    await Dispatcher(bus, registry, FakePolicyBook()).on_chat_requested(requested(BUNDLED_MODEL_ID))
    assert [type(e) for _, e in bus.replies] == [ChatFailed]  # c2's node is not c1's to use
    registry.observe(own, time.monotonic())
    bus = FakeBus()
    await Dispatcher(bus, registry, FakePolicyBook()).on_chat_requested(requested(BUNDLED_MODEL_ID))
    [(subject, work)] = bus.published
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID, subjects.copro_pool("c1"))
    assert isinstance(work, RunInference) and work.routing is not None
    assert work.routing.targets[0].pool == subjects.copro_pool("c1")


async def test_a_redelivered_request_finding_no_target_waits_rather_than_failing_work_it_may_have_sent() -> (
    None
):
    # The fault suite's NATS kill: the router's ack of a dispatched request was lost with NATS;
    # redelivered while every node still looked dead, it was refused (503) although its work was
    # running. A redelivered request finding no live target is retried later, never refused.
    bus = FakeBus()
    dispatcher = Dispatcher(bus, NodeRegistry(), FakePolicyBook())
    with pytest.raises(TargetsAwayError, match="no_target_available"):
        await dispatcher.on_chat_requested(requested(BUNDLED_MODEL_ID), redelivered=True)
    assert bus.published == [] and bus.replies == []
    # A first delivery with no target is refused at once, as before: its caller must not wait.
    await dispatcher.on_chat_requested(requested(BUNDLED_MODEL_ID))
    [(_, failed)] = bus.published
    assert isinstance(failed, ChatFailed) and failed.status == 503
    # And a redelivered request with a target is routed again (its work id de-duplicated).
    await Dispatcher(bus, live_registry(), FakePolicyBook()).on_chat_requested(
        requested(BUNDLED_MODEL_ID), redelivered=True
    )
    assert isinstance(bus.published[-1][1], RunInference)


# A building's router (docs/building-offline.md): cloud work goes to the hub's stream over the
# leaf link; the line cut, the caller gets 503 `offline` at once, or the building's own edge.


async def test_a_buildings_cloud_chat_goes_to_the_hub_while_the_line_is_up() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook(), cloud_at_hub=True)
    await dispatcher.on_chat_requested(requested("gpt-4o-mini"))
    [(subject, work)] = bus.published
    assert subject == subjects.run_inference_cloud("c1", "openai") and isinstance(work, RunInference)


async def test_a_buildings_cloud_chat_with_the_line_cut_is_answered_offline_at_once() -> None:
    bus = FakeBus()
    bus.hub_reachable = False
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook(), cloud_at_hub=True)
    await dispatcher.on_chat_requested(requested("gpt-4o-mini"))
    [(subject, failed)] = bus.published
    assert subject == subjects.chat_failed("c1")
    assert isinstance(failed, ChatFailed) and (failed.status, failed.error) == (503, "offline")
    assert bus.replies == [("koprogo.reply.gw1", failed)]


async def test_a_buildings_auto_chat_falls_back_to_its_own_edge_when_the_hub_is_unreachable() -> None:
    bus = FakeBus()
    bus.hub_reachable = False
    dispatcher = Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook(), cloud_at_hub=True)
    # `fastest` puts the cloud first, then the edge
    await dispatcher.on_chat_requested(
        requested("auto", routing=RoutingPreference(policy="fastest", allow_fallback=True))
    )
    [(subject, work)] = bus.published
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID)
    assert isinstance(work, RunInference) and work.routing is not None
    assert work.routing.failures == ["cloud openai: offline"]


async def test_a_buildings_cloud_chat_once_the_hubs_heartbeats_stopped_is_refused_offline() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, live_registry(), FakePolicyBook(), cloud_at_hub=True)
    await dispatcher.on_chat_requested(requested("gpt-4o-mini"))
    [(_, failed)] = bus.published
    assert isinstance(failed, ChatFailed) and (failed.status, failed.error) == (503, "offline")
    # The same at the hub (no cloud heartbeat either) keeps its own refusal.
    hub_bus = FakeBus()
    await Dispatcher(hub_bus, live_registry(), FakePolicyBook()).on_chat_requested(requested("gpt-4o-mini"))
    [(_, refused)] = hub_bus.published
    assert isinstance(refused, ChatFailed) and refused.error != "offline"


async def test_a_request_a_gateway_routed_is_never_routed_again() -> None:
    """Its worker takes it from the audit log; a router whose durable kept an earlier release's
    filter (`…requested.>`) would otherwise send the same chat to a second run."""
    from koprogo_shared.events import RoutingPlan, RoutingTarget

    bus = FakeBus()
    plan = RoutingPlan(
        policy="prefer_edge",
        allow_fallback=True,
        reason="no edge node serves the model",
        targets=[RoutingTarget(kind="cloud", model="gpt-4o-mini", deployment="openai")],
    )
    routed = requested("gpt-4o-mini").model_copy(update={"routed": plan})
    await Dispatcher(bus, with_cloud(live_registry()), FakePolicyBook()).on_chat_requested(routed)
    assert bus.published == [] and bus.replies == []
