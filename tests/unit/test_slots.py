"""`Slots`: a cloud deployment's concurrency, shared by its consumers, with a readable free count."""

from __future__ import annotations

import asyncio

import pytest

from koprogo_shared.slots import Slots


async def test_acquire_waits_for_a_release_once_every_slot_is_taken() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    assert slots.free == 0
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    slots.release()
    await asyncio.wait_for(waiting, timeout=1)
    assert slots.free == 0


async def test_wait_free_takes_nothing_and_every_waiter_sees_the_freed_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    watchers = [asyncio.create_task(slots.wait_free()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in watchers)
    slots.release()
    await asyncio.wait_for(asyncio.gather(*watchers), timeout=1)
    assert slots.free == 1


def test_a_release_beyond_the_size_and_an_empty_size_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
    with pytest.raises(RuntimeError, match="released more than acquired"):
        Slots(1).release()


def test_take_free_takes_what_is_free_up_to_the_most_asked_and_release_gives_back_several() -> None:
    slots = Slots(4)
    assert slots.take_free(3) == 3
    assert slots.take_free(3) == 1
    assert slots.take_free(3) == 0
    slots.release(2)
    assert slots.free == 2
    with pytest.raises(RuntimeError):
        slots.release(3)


async def test_a_waiting_acquire_gets_the_freed_slot_before_a_consumer_about_to_fetch() -> None:
    """A message already fetched goes first: a consumer with a backlog, taking every slot it sees
    free, does not take the freed one from it however quickly it wakes."""
    slots = Slots(1)
    assert slots.take_free(1) == 1
    stop = asyncio.Event()

    async def fetcher() -> None:
        while not stop.is_set():
            await slots.wait_free()
            if slots.take_free(1):
                await asyncio.sleep(0)  # its call, as short as can be
                slots.release()

    greedy = asyncio.create_task(fetcher())
    waiting = asyncio.create_task(slots.acquire_unless(stop))
    await asyncio.sleep(0.01)
    assert slots.free == 0  # the waiting call is counted: nothing for the fetcher
    slots.release()
    assert await asyncio.wait_for(waiting, timeout=1) is True
    stop.set()
    greedy.cancel()
    await asyncio.gather(greedy, return_exceptions=True)


async def test_acquire_unless_returns_false_once_stop_is_set_and_leaves_the_slots_as_they_were() -> None:
    slots = Slots(1)
    await slots.acquire()
    stop = asyncio.Event()
    waiting = asyncio.create_task(slots.acquire_unless(stop))
    await asyncio.sleep(0.01)
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=1) is False
    slots.release()
    assert slots.free == 1


async def test_a_cancelled_acquire_unless_is_cancelled_and_takes_nothing() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire_unless(asyncio.Event()))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slots.release()
    assert slots.free == 1


async def test_acquire_unless_gives_up_after_its_timeout_taking_nothing_and_takes_a_slot_freed_before() -> (
    None
):
    slots = Slots(1)
    await slots.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await slots.acquire_unless(None, timeout=0.05) is False
    assert loop.time() - started >= 0.05
    assert slots.free == 0  # nothing taken, nothing kept for the call that gave up
    slots.release()
    assert slots.free == 1
    waiting = asyncio.create_task(slots.acquire_unless(None, timeout=5))
    await asyncio.sleep(0.01)
    assert waiting.done() and waiting.result() is True
    assert slots.free == 0
    taken_later = asyncio.create_task(slots.acquire_unless(None, timeout=5))
    await asyncio.sleep(0.01)
    slots.release()
    assert await asyncio.wait_for(taken_later, timeout=1) is True
