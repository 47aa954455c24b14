"""An edge node's items one at a time across its consumers (`OneAtATime`): its loops fetch only
while it is free, and the hand-off from one item to the next waiting one is not a free moment."""

from __future__ import annotations

import asyncio

from koprogo_node.entrypoints.nats_worker import OneAtATime


async def _is_free(turns: OneAtATime) -> bool:
    try:
        await asyncio.wait_for(turns.free(), timeout=0.05)
    except TimeoutError:
        return False
    return True


async def test_a_node_is_free_only_while_no_item_runs_or_waits_for_its_turn() -> None:
    turns = OneAtATime()
    assert await _is_free(turns)
    release_first, release_second = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def item(name: str, release: asyncio.Event) -> None:
        async with turns.turn():
            order.append(f"{name} runs")
            await release.wait()
        order.append(f"{name} done")

    first = asyncio.create_task(item("first", release_first))
    await asyncio.sleep(0)
    second = asyncio.create_task(item("second", release_second))  # fetched at the same instant
    await asyncio.sleep(0.01)
    assert order == ["first runs"] and not await _is_free(turns)
    fetcher = asyncio.create_task(turns.free())  # a consumer loop waiting to fetch
    release_first.set()
    await asyncio.sleep(0.01)
    # The first is done, the second runs: the hand-off woke no loop to fetch more.
    assert order == ["first runs", "first done", "second runs"]
    assert not fetcher.done() and not await _is_free(turns)
    release_second.set()
    await asyncio.gather(first, second)
    await asyncio.wait_for(fetcher, timeout=1)
    assert await _is_free(turns)


async def test_an_item_cancelled_while_it_waits_for_its_turn_leaves_the_node_free_afterwards() -> None:
    turns = OneAtATime()
    release = asyncio.Event()

    async def running() -> None:
        async with turns.turn():
            await release.wait()

    async def waiting() -> None:
        async with turns.turn():
            raise AssertionError("never runs")

    first = asyncio.create_task(running())
    await asyncio.sleep(0)
    second = asyncio.create_task(waiting())
    await asyncio.sleep(0.01)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert not await _is_free(turns)
    release.set()
    await first
    assert await _is_free(turns)
