"""The router routes `ROUTING_CONCURRENCY` chats side by side: as many pull loops on each durable.

One loop alone routed one chat per stored acknowledgement of its work item; the peer benchmark
found it the limit of the whole stack at 16 connections (bench/README.md, issue 17).
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_router.bootstrap import CONSUMER, FALLBACK_CONSUMER, run_router
from koprogo_router.settings import RouterSettings
from koprogo_shared.consumer import ConsumerSpec
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


async def _pulls_waiting(js: JetStreamContext, spec: ConsumerSpec, count: int) -> bool:
    try:
        return (await js.consumer_info(spec.stream, spec.durable)).num_waiting == count
    except NotFoundError:
        return False


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_the_router_waits_on_each_durable_with_as_many_pulls_as_its_concurrency(
    clean_jetstream: str, concurrency: int
) -> None:
    settings = RouterSettings(
        nats_url=clean_jetstream, ops_port=0, warmup_s=0, routing_concurrency=concurrency
    )
    stop = asyncio.Event()
    router = asyncio.create_task(run_router(settings, stop))
    nc = await nats.connect(clean_jetstream)
    try:
        for spec in (CONSUMER, FALLBACK_CONSUMER):
            await wait_until(lambda spec=spec: _pulls_waiting(nc.jetstream(), spec, concurrency), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(router, timeout=10)
        await nc.close()
