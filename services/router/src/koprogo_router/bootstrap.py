"""Composition root: the router's adapters are built here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from koprogo_router.adapters.bus import NatsBus
from koprogo_router.adapters.metrics import NODE_HEALTH
from koprogo_router.service_layer.dispatch import Dispatcher
from koprogo_router.settings import RouterSettings
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec, start_pull_consumers
from koprogo_shared.events import ChatRequested, InferenceAttemptFailed
from koprogo_shared.heartbeats import follow_heartbeats
from koprogo_shared.leaf_site import is_building_domain, made_at_another_site
from koprogo_shared.nats_connection import (
    STREAMS_WAIT_S,
    buckets_for_service,
    connect_nats,
    server_domain,
    streams_for_service,
)
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.node_roster import RosterFile
from koprogo_shared.ops_http import ops_server
from koprogo_shared.routing.grid import GridRule
from koprogo_shared.routing.policy_book import RouterDefaults, WatchedPolicyBook, publish_router_defaults
from koprogo_shared.service_runtime import until_stopped_or_failed

log = logging.getLogger(__name__)

CONSUMER = ConsumerSpec(
    stream=subjects.EVENTS_STREAM,
    durable=subjects.ROUTER_DURABLE,
    # Not the requests a gateway routed itself (`subjects.routed_chat_requested`): their workers
    # take them. A durable made by an earlier release (`…requested.>`) is brought to this filter.
    filter_subject=subjects.UNROUTED_CHAT_REQUESTED,
    ack_wait_s=10.0,
    max_deliver=5,
    # One message per fetch: the handler decides each chat on its own, and a fetch of more
    # waits on the server for its batch to fill (until its 1 s expiry) once it holds a chat
    # (`pull_batches.BatchPuller`, as nats-py's fetch did; with nats-py a stale 408 could also
    # end its no-wait probe: tests/integration/test_router_consumer_stale_status.py).
    batch=1,
)
FALLBACK_CONSUMER = ConsumerSpec(
    stream=subjects.EVENTS_STREAM,
    durable=subjects.ROUTER_FALLBACK_DURABLE,
    filter_subject=subjects.INFERENCE_ATTEMPT_FAILED_ALL,
    ack_wait_s=10.0,
    max_deliver=5,
    batch=1,  # as CONSUMER's: a fallback is on its chat's path too
)


async def run_router(settings: RouterSettings, stop: asyncio.Event) -> None:
    """Run the router until `stop` is set."""
    nc, js = await connect_nats(
        settings.nats_url,
        "koprogo-router",
        nkey_seed_file=settings.nats_nkey_seed_file,
        inbox_root=settings.nats_inbox_root,
    )
    try:
        await streams_for_service(js, settings.nats_nkey_seed_file, timeout_s=STREAMS_WAIT_S)
        await buckets_for_service(
            js, settings.nats_nkey_seed_file, rate_limit_window_s=None, timeout_s=STREAMS_WAIT_S
        )
        registry = (
            NodeRegistry(RosterFile(settings.node_roster_file))
            if settings.node_roster_file
            else NodeRegistry()
        )
        await follow_heartbeats(nc, registry)
        NODE_HEALTH.watch(registry)
        policies = WatchedPolicyBook()
        await policies.follow(js)  # every copro's policy known before the first request
        # For the gateways, which route cloud chats themselves by these (`routing.policy_book`).
        await publish_router_defaults(
            js,
            RouterDefaults(
                policy=settings.default_routing_policy,
                grid_min_prompt_chars=settings.grid_min_prompt_chars,
                grid_min_max_tokens=settings.grid_min_max_tokens,
            ),
        )
        await asyncio.sleep(settings.warmup_s)
        dispatcher = Dispatcher(
            NatsBus(nc, js),
            registry,
            policies,
            default_policy=settings.default_routing_policy,
            grid_rule=GridRule(settings.grid_min_prompt_chars, settings.grid_min_max_tokens),
            cloud_at_hub=is_building_domain(server_domain(nc)),
        )

        async def handle(msg: Msg) -> None:
            if made_at_another_site(msg.headers):
                return  # a building's chat, routed by the building's router (docs/building-offline.md)
            await dispatcher.on_chat_requested(
                ChatRequested.model_validate_json(msg.data), redelivered=msg.metadata.num_delivered > 1
            )

        async def handle_attempt_failed(msg: Msg) -> None:
            if made_at_another_site(msg.headers):
                return  # the building's router falls back for its own chats
            await dispatcher.on_attempt_failed(InferenceAttemptFailed.model_validate_json(msg.data))

        async def ready() -> dict[str, bool]:
            return {"nats": nc.is_connected}

        # Each chat is decided on its own, so `routing_concurrency` loops share each durable
        # (as the cloud worker's per deployment): chats are routed side by side, each loop
        # waiting for its own work item's stored acknowledgement.
        loops: list[asyncio.Task[None]] = []
        server = None
        ops_task = None
        try:
            loops += await start_pull_consumers(
                js, CONSUMER, handle, stop, loops=settings.routing_concurrency, name="router-consumer"
            )
            loops += await start_pull_consumers(
                js,
                FALLBACK_CONSUMER,
                handle_attempt_failed,
                stop,
                loops=settings.routing_concurrency,
                name="router-fallback",
            )
            if settings.ops_port:
                server = ops_server(settings.ops_host, settings.ops_port, ready)
                ops_task = asyncio.create_task(server.serve(), name="router-ops")
            log.info("router ready")
            await until_stopped_or_failed(stop, loops)
        finally:
            stop.set()
            if server:
                server.should_exit = True
            await asyncio.gather(*loops, *([ops_task] if ops_task else []), return_exceptions=True)
            await policies.close()
            NODE_HEALTH.forget(registry)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
