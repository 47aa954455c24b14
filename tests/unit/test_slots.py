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
