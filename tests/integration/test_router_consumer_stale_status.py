"""A stale pull status does not hold the router's next chat for a fetch timeout (issue 17).

At 1 connection ~1 % of chats waited 0.5-1 s in the router (bench/README.md, peer_proxy.py, "The
1-connection tail"). nats-py's `fetch(batch > 1)` sends a no-wait probe first; when the consumer
has idled through a fetch, nats-server expires that fetch's pull request a few ms after the client
gave up, and its 408 lands on the inbox during the next fetch's probe. `_fetch_n` takes it for
the probe's answer and sends a lingering request for the whole batch, which outlives the fetch:
the next message is delivered to it, and the fetch then waits for the rest of the batch until a
request expires. The 408 is injected here as the server sends it, so the race is not left to chance.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from nats.aio.msg import Msg

from koprogo_router.bootstrap import CONSUMER, FALLBACK_CONSUMER
from koprogo_shared.consumer import ConsumerSpec, run_pull_consumer
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SUBJECT = "koprogo.events.tests.stale_status"
# Below the fetch timeout (1 s) that a stalled fetch waits out, far above a chat's hop, and room for a
# busy 2-core machine's scheduling delays.
MAX_DELAY_S = 0.8


@pytest.mark.parametrize("router_spec", [CONSUMER, FALLBACK_CONSUMER], ids=["chats", "fallbacks"])
async def test_a_stale_408_on_the_inbox_does_not_delay_the_next_messages(
    clean_jetstream: str, router_spec: ConsumerSpec
) -> None:
    spec = dataclasses.replace(router_spec, durable="stale-status-tests", filter_subject=SUBJECT)
    nc, js = await connect_nats(clean_jetstream, "stale-status-tests")
    loop = asyncio.get_running_loop()
    handled: dict[bytes, float] = {}
    pull_inboxes: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()

    async def handle(msg: Msg) -> None:
        handled[msg.data] = loop.time()

    async def on_pull_request(msg: Msg) -> None:
        pull_inboxes.put_nowait(msg.reply)

    try:
        await ensure_streams(js)
        # Every pull request of the durable, to learn the inbox its deliveries and statuses go to.
        await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}", cb=on_pull_request)
        task = asyncio.create_task(run_pull_consumer(js, spec, handle, stop))
        inbox = await asyncio.wait_for(pull_inboxes.get(), timeout=10)
        await asyncio.sleep(0.05)  # the fetch is waiting on its request
        # What an expired request's status looks like to nats-py, arriving after its fetch gave up.
        await nc.publish(inbox, b"", headers={"Status": "408", "Description": "Request Timeout"})
        await asyncio.sleep(0.05)
        delays = []
        for i in range(3):  # one at a time, as a single connection sends chats
            body = f"chat {i}".encode()
            sent = loop.time()
            await js.publish(SUBJECT, body)
            await wait_until(lambda body=body: body in handled, timeout=5)
            delays.append(handled[body] - sent)
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    finally:
        stop.set()
        await nc.close()
    assert max(delays) < MAX_DELAY_S, f"handled {[round(d * 1000) for d in delays]} ms after publication"
