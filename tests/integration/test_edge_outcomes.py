"""The edge node's outcome sink on real NATS: one subscription hears every caller's leaving, and
each generation is told only of its own request's (as the cloud worker listens)."""

from __future__ import annotations

import asyncio

import pytest

from koprogo_node.adapters.grid import NatsTaskCancels
from koprogo_node.adapters.outcomes import NatsOutcomeSink
from koprogo_shared import subjects
from koprogo_shared.nats_connection import connect_nats
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("node_id", [None, "pi-1"])
async def test_a_cancel_reaches_the_generation_of_its_own_request_and_no_other(
    clean_jetstream: str, node_id: str | None
) -> None:
    # A keyed node hears the cancels addressed to it (`node_cancel`), an unkeyed one every
    # request's (`chat_cancel`). The subscription is made once, at start, not per generation.
    nc, js = await connect_nats(clean_jetstream, "edge-outcomes-tests")
    sender, _ = await connect_nats(clean_jetstream, "edge-outcomes-gateway")
    sink = NatsOutcomeSink(nc, js, node_id)

    def cancel_subject(request_id: str) -> str:
        return (
            subjects.chat_cancel(request_id) if node_id is None else subjects.node_cancel(node_id, request_id)
        )

    try:
        with pytest.raises(RuntimeError):
            async with sink.caller_gone("r-0"):
                pass
        await sink.start()
        await nc.flush()
        async with sink.caller_gone("r-1") as first, sink.caller_gone("r-2") as second:
            async with sink.caller_gone("r-1") as again:  # the same request run twice at once
                await sender.publish(cancel_subject("r-1"), b"")
                await wait_until(lambda: first.is_set() and again.is_set(), timeout=5)
            await sender.publish(cancel_subject("r-9"), b"")  # nobody's
            await sender.flush()
            await asyncio.sleep(0.2)
            left = second.is_set()
    finally:
        await sink.close()
        await sender.close()
        await nc.close()
    assert not left


async def test_a_keyed_node_hears_its_tasks_cancels_on_its_chats_subscription(clean_jetstream: str) -> None:
    # The scheduler cancels a task on the node's cancel subjects (`node_cancel`), where a keyed
    # node's chat cancels come too: one listener for both (`bootstrap`), each flag its own.
    nc, js = await connect_nats(clean_jetstream, "edge-outcomes-tests")
    scheduler, _ = await connect_nats(clean_jetstream, "edge-outcomes-scheduler")
    keyed, unkeyed = NatsOutcomeSink(nc, js, "pi-1"), NatsOutcomeSink(nc, js, None)
    assert unkeyed.node_cancels is None and keyed.node_cancels is not None
    tasks = NatsTaskCancels(keyed.node_cancels, "pi-1")
    try:
        await keyed.start()
        await nc.flush()
        async with (
            tasks.flag("task-1") as task,
            tasks.flag("task-2") as other,
            keyed.caller_gone("r-1") as chat,
        ):
            await scheduler.publish(subjects.node_cancel("pi-1", "task-1"), b"")
            await scheduler.publish(subjects.node_cancel("pi-2", "task-2"), b"")  # another node's
            await wait_until(task.is_set, timeout=5)
            await scheduler.flush()
            await asyncio.sleep(0.2)
            untouched = not other.is_set() and not chat.is_set()
    finally:
        await keyed.close()
        await scheduler.close()
        await nc.close()
    assert untouched
