"""Where the gateway stores a chat request (`chat_routing.py`): routed itself to a cloud deployment
or an edge pool, or for the router; with a fake policy book and a registry fed as the heartbeats
feed it."""

from __future__ import annotations

import time
from datetime import timedelta

from koprogo_gateway.service_layer.chat_routing import ChatRouting
from koprogo_router.adapters.bus import FakeBus
from koprogo_router.service_layer.dispatch import Dispatcher
from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.co2 import CloudFootprint
from koprogo_shared.events import (
    ChatMessage,
    ChatRequested,
    CloudDeploymentStatus,
    NodeHeartbeat,
    RoutingPreference,
    RunInference,
    utc_now,
)
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.routing.decision import work_of
from koprogo_shared.routing.policy_book import FakePolicyBook, RouterDefaults
from tests.unit.test_node_registry import beat

CLOUD_MODEL = "gpt-4o-mini"
DEFAULTS = RouterDefaults(policy="prefer_edge", grid_min_prompt_chars=6000, grid_min_max_tokens=1024)


def book(
    policies: dict[str, RoutingPreference] | None = None, defaults: RouterDefaults | None = DEFAULTS
) -> FakePolicyBook:
    """The policies and the routers' stored defaults, as a gateway's watch holds them."""
    return FakePolicyBook(policies, defaults)


def requested(model: str = CLOUD_MODEL, routing: RoutingPreference | None = None) -> ChatRequested:
    return ChatRequested(
        source="koprogo/gateway",
        copro_id="c1",
        model=model,
        messages=[ChatMessage(role="user", content="Résume le procès-verbal.")],
        reply_subject="koprogo.reply.gw1",
        deadline=utc_now() + timedelta(seconds=30),
        routing=routing,
    )


def registry(
    *,
    takes_routed: bool = True,
    edge: bool = False,
    edge_takes_routed: bool = False,
    pools: tuple[str, ...] = (subjects.SHARED_POOL,),
    cloud: bool = True,
    available: bool = True,
) -> NodeRegistry:
    reg = NodeRegistry()
    now = time.monotonic()
    if edge:
        node = beat("n1", [BUNDLED_MODEL_ID])
        reg.observe(
            node.model_copy(update={"takes_routed_requests": edge_takes_routed, "pools": list(pools)}), now
        )
    if cloud:
        reg.observe_cloud(
            CloudDeploymentStatus(
                source="test",
                deployment="openai-eu",
                provider="openai",
                models=[CLOUD_MODEL],
                available=available,
                wh_per_1k_tokens=CloudFootprint().wh_per_1k_tokens,
                intensity_g_per_kwh=CloudFootprint().intensity_g_per_kwh,
                interval_s=2.0,
                takes_routed_requests=takes_routed,
            ),
            now,
        )
    return reg


def test_a_chat_for_a_cloud_model_is_stored_once_routed_to_its_deployment() -> None:
    request = requested()
    subject, stored = ChatRouting(registry(), book()).place(request)
    assert subject == subjects.routed_chat_requested("c1", "openai-eu")
    assert stored.id == request.id and stored.routed is not None
    assert [(t.kind, t.deployment, t.model) for t in stored.routed.targets] == [
        ("cloud", "openai-eu", CLOUD_MODEL)
    ]
    assert subjects.cloud_work_copro(subject) == "c1"


async def test_the_gateways_plan_makes_the_work_item_the_router_would_have_made() -> None:
    request = requested()
    reg = registry()
    _, stored = ChatRouting(reg, book()).place(request)
    bus = FakeBus()
    await Dispatcher(bus, reg, FakePolicyBook()).on_chat_requested(request)
    [(subject, routers)] = bus.published
    assert subject == subjects.run_inference_cloud("c1", "openai-eu")
    assert isinstance(routers, RunInference) and stored.routed is not None
    gateways = work_of(stored, stored.routed, source=routers.source, may_be_answered=False)
    assert gateways == routers


def test_what_the_gateway_does_not_route_goes_to_the_router_unchanged() -> None:
    request = requested()
    unrouted = subjects.chat_requested("c1")
    # A deployment whose workers are of an earlier release (no routed consumer).
    assert ChatRouting(registry(takes_routed=False), book()).place(request) == (unrouted, request)
    # An edge first target whose nodes are of an earlier release: the router sends it to the pool.
    edge_first = requested(BUNDLED_MODEL_ID)
    assert ChatRouting(registry(edge=True), book()).place(edge_first) == (unrouted, edge_first)
    # A node takes routed requests, but of another pool than the one chosen: the copro's own pool
    # comes first, its node of an earlier release; the shared pool's node takes them.
    mixed = registry(edge=True, edge_takes_routed=True, cloud=False)
    own = beat("own", [BUNDLED_MODEL_ID]).model_copy(update={"pools": [subjects.copro_pool("c1")]})
    mixed.observe(own, time.monotonic())
    assert ChatRouting(mixed, book(), edge_pools="all").place(edge_first) == (unrouted, edge_first)
    # A refusal (nothing serves the model): the router records and answers it.
    assert ChatRouting(registry(cloud=False), book()).place(request) == (unrouted, request)
    # The copro's policy keeps it on the edge: refused by the rules, so the router's to answer.
    edge_only = book({"c1": RoutingPreference(policy="edge_only")})
    assert ChatRouting(registry(), edge_only).place(request) == (unrouted, request)
    # No router stored its defaults yet: the gateway cannot decide as the routers do.
    assert ChatRouting(registry(), book(defaults=None)).place(request) == (unrouted, request)
    # The routers' own default keeps chats on the edge: never to the cloud by another default.
    routers_edge_only = book(defaults=DEFAULTS.model_copy(update={"policy": "edge_only"}))
    assert ChatRouting(registry(), routers_edge_only).place(request) == (unrouted, request)
    # No available deployment to route to (a provider without its key): left to the router,
    # which decides (and refuses) it, without the gateway deciding first.
    assert ChatRouting(registry(available=False), book()).place(request) == (unrouted, request)
    # Switched off (a building's gateway, GATEWAY_ROUTES_CLOUD=false).
    assert ChatRouting(registry(), None).place(request) == (unrouted, request)


def test_a_chat_for_an_edge_model_is_stored_once_routed_to_its_pool_when_a_node_takes_them() -> None:
    request = requested(BUNDLED_MODEL_ID)
    reg = registry(edge=True, edge_takes_routed=True, cloud=False)
    subject, stored = ChatRouting(reg, book(), edge_pools="all").place(request)
    assert subject == subjects.routed_edge_chat_requested("c1", subjects.SHARED_POOL, BUNDLED_MODEL_ID)
    assert stored.routed is not None
    assert [(t.kind, t.pool, t.model) for t in stored.routed.targets] == [
        ("edge", subjects.SHARED_POOL, BUNDLED_MODEL_ID)
    ]
    assert subjects.routed_request_copro(subject) == "c1"
    # Taken by the consumer filter of that pool and model only.
    filtered = subjects.routed_edge_requests_filter(BUNDLED_MODEL_ID, subjects.SHARED_POOL).split(".")
    assert all(f in ("*", t) for f, t in zip(filtered, subject.split("."), strict=True))


async def test_the_gateways_edge_plan_makes_the_work_item_the_router_would_have_made() -> None:
    request = requested(BUNDLED_MODEL_ID)
    reg = registry(edge=True, edge_takes_routed=True, cloud=False)
    _, stored = ChatRouting(reg, book(), edge_pools="all").place(request)
    bus = FakeBus()
    await Dispatcher(bus, reg, FakePolicyBook(), default_policy=DEFAULTS.policy).on_chat_requested(request)
    [(subject, routers)] = bus.published
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID, subjects.SHARED_POOL)
    assert isinstance(routers, RunInference) and stored.routed is not None
    assert work_of(stored, stored.routed, source=routers.source, may_be_answered=False) == routers


def test_a_copros_own_pool_gets_its_routed_requests_on_its_pools_subject() -> None:
    pool = subjects.copro_pool("c1")
    request = requested(BUNDLED_MODEL_ID)
    reg = registry(edge=True, edge_takes_routed=True, pools=(pool,), cloud=False)
    subject, stored = ChatRouting(reg, book()).place(request)
    assert subject == subjects.routed_edge_chat_requested("c1", pool, BUNDLED_MODEL_ID)
    assert stored.routed is not None and stored.routed.targets[0].pool == pool


def test_a_pool_is_routed_only_while_every_alive_node_of_it_takes_routed_requests() -> None:
    # A node of an earlier release shares the pool's work queue only: routing past it would leave
    # it idle, and strand the requests if the nodes that take them stopped.
    pool = subjects.copro_pool("c1")
    request = requested(BUNDLED_MODEL_ID)
    reg = registry(edge=True, edge_takes_routed=True, pools=(pool,), cloud=False)
    older = beat("older", [BUNDLED_MODEL_ID]).model_copy(update={"pools": [pool]})
    reg.observe(older, time.monotonic())
    assert ChatRouting(reg, book()).place(request) == (subjects.chat_requested("c1"), request)
    reg.observe(older.model_copy(update={"takes_routed_requests": True}), time.monotonic())
    subject, _ = ChatRouting(reg, book()).place(request)
    assert subject == subjects.routed_edge_chat_requested("c1", pool, BUNDLED_MODEL_ID)


def test_the_shared_pool_is_routed_only_when_the_operator_says_its_nodes_are_its_own() -> None:
    # A routed request reaches the nodes with its user id (the router's work item leaves it out):
    # by default only a copro's own pool gets it, never the volunteers serving every copro.
    request = requested(BUNDLED_MODEL_ID).model_copy(update={"user_id": "u-42"})
    reg = registry(edge=True, edge_takes_routed=True, cloud=False)
    unrouted = (subjects.chat_requested("c1"), request)
    assert ChatRouting(reg, book()).place(request) == unrouted
    assert ChatRouting(reg, book(), edge_pools="none").place(request) == unrouted
    subject, stored = ChatRouting(reg, book(), edge_pools="all").place(request)
    assert subject == subjects.routed_edge_chat_requested("c1", subjects.SHARED_POOL, BUNDLED_MODEL_ID)
    assert stored.user_id == "u-42"  # what the nodes then read
    own = registry(edge=True, edge_takes_routed=True, pools=(subjects.copro_pool("c1"),), cloud=False)
    assert ChatRouting(own, book(), edge_pools="none").place(request) == unrouted


def test_a_routed_subject_is_a_chat_request_for_the_ledger_and_never_for_the_router() -> None:
    subject = subjects.routed_chat_requested("c1", "openai-eu")
    assert subject.startswith(subjects.CHAT_REQUESTED_ALL.removesuffix(">"))  # ledger, GDPR scrubber
    # `*` matches exactly one token: the router's filter takes `chat_requested` subjects only.
    assert len(subjects.chat_requested("c1").split(".")) == len(subjects.UNROUTED_CHAT_REQUESTED.split("."))
    assert len(subject.split(".")) > len(subjects.UNROUTED_CHAT_REQUESTED.split("."))
    assert subjects.cloud_work_copro(subjects.chat_requested("c1")) is None
    edge = subjects.routed_edge_chat_requested("c1", subjects.SHARED_POOL, BUNDLED_MODEL_ID)
    assert edge.startswith(subjects.CHAT_REQUESTED_ALL.removesuffix(">"))
    assert len(edge.split(".")) > len(subjects.UNROUTED_CHAT_REQUESTED.split("."))
    # Neither kind is the other's: a deployment's filter never takes an edge pool's requests.
    assert subjects.cloud_work_copro(edge) is None
    assert subjects.routed_request_copro(subjects.chat_requested("c1")) is None
    assert subjects.routed_edge_requests_durable(BUNDLED_MODEL_ID) != subjects.routed_requests_durable(
        f"edge.{subjects.SHARED_POOL}.{BUNDLED_MODEL_ID}".replace(".", "_d")
    )
    assert subjects.is_routed_requests_durable(subjects.routed_edge_requests_durable(BUNDLED_MODEL_ID))


def test_an_unrouted_request_serialises_as_before_and_a_status_without_the_flag_takes_none() -> None:
    assert "routed" not in requested().model_dump_json()
    # A deployment's worker of an earlier release sends no flag: the gateway leaves it to the router.
    assert CloudDeploymentStatus.model_validate_json(_old_status_json()).takes_routed_requests is False
    # Nor does a node of an earlier release; and a node that takes none says nothing of it.
    node = beat("n1", [BUNDLED_MODEL_ID])
    assert "takes_routed_requests" not in node.model_dump_json()
    assert NodeHeartbeat.model_validate_json(node.model_dump_json()).takes_routed_requests is False
    said = node.model_copy(update={"takes_routed_requests": True}).model_dump_json()
    assert NodeHeartbeat.model_validate_json(said).takes_routed_requests is True


def _old_status_json() -> str:
    return (
        '{"id":"00000000-0000-4000-8000-000000000001","source":"old","time":"2026-12-01T00:00:00Z",'
        '"type":"koprogo.cloud.status.v1","deployment":"d","provider":"openai","models":["m"],'
        '"available":true,"wh_per_1k_tokens":0.3,"intensity_g_per_kwh":300,"interval_s":2}'
    )
