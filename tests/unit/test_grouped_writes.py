"""Group commit (`grouped_writes.py`): one write per key at a time, what arrives meanwhile in the next."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from koprogo_gateway.service_layer.grouped_writes import GroupedWrites


class Store:
    """Writes each group after `delay_s`, remembering it; `fail` makes the next write raise it."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.groups: list[tuple[str, list[int]]] = []
        self.fail: Exception | None = None

    async def write(self, key: str, items: list[int]) -> list[int]:
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            failure, self.fail = self.fail, None
            raise failure
        self.groups.append((key, items))
        return [item * 10 for item in items]


async def test_alone_an_item_is_written_at_once_in_a_group_of_one() -> None:
    store = Store()
    writes = GroupedWrites(store.write)
    assert await writes.submit("a", 1) == 10
    assert await writes.submit("a", 2) == 20
    assert store.groups == [("a", [1]), ("a", [2])]


async def test_items_arriving_during_a_write_share_the_next_and_each_gets_its_result() -> None:
    store = Store()
    writes = GroupedWrites(store.write)
    first = asyncio.create_task(writes.submit("a", 1))
    await asyncio.sleep(0.005)
    later = [asyncio.create_task(writes.submit("a", i)) for i in (2, 3, 4)]
    other_key = asyncio.create_task(writes.submit("b", 9))
    assert await asyncio.gather(first, *later, other_key) == [10, 20, 30, 40, 90]
    assert sorted(store.groups) == [("a", [1]), ("a", [2, 3, 4]), ("b", [9])]


async def test_a_group_never_exceeds_max_group() -> None:
    store = Store()
    writes = GroupedWrites(store.write, max_group=2)
    first = asyncio.create_task(writes.submit("a", 0))
    await asyncio.sleep(0.005)
    results = await asyncio.gather(first, *(writes.submit("a", i) for i in range(1, 6)))
    assert results == [0, 10, 20, 30, 40, 50]
    assert [items for _, items in store.groups] == [[0], [1, 2], [3, 4], [5]]


async def test_a_failed_write_fails_each_of_its_items_and_the_next_group_is_written() -> None:
    store = Store()
    writes = GroupedWrites(store.write)
    store.fail = ConnectionError("the store went away")
    failed = [asyncio.create_task(writes.submit("a", i)) for i in (1, 2)]
    await asyncio.sleep(0.005)
    after = asyncio.create_task(writes.submit("a", 3))
    for task in failed:
        with pytest.raises(ConnectionError):
            await task
    assert await after == 30
    assert store.groups == [("a", [3])]


async def test_an_item_whose_caller_left_before_its_turn_is_not_written() -> None:
    store = Store()
    writes = GroupedWrites(store.write)
    first = asyncio.create_task(writes.submit("a", 1))
    await asyncio.sleep(0.005)
    left = asyncio.create_task(writes.submit("a", 2))
    stays = asyncio.create_task(writes.submit("a", 3))
    await asyncio.sleep(0)
    left.cancel()
    assert await asyncio.gather(first, stays) == [10, 30]
    assert store.groups == [("a", [1]), ("a", [3])]


async def test_a_writer_cancelled_before_its_first_step_does_not_hang_its_key() -> None:
    store = Store()
    writes = GroupedWrites(store.write)
    first = asyncio.ensure_future(writes.submit("a", 1))
    await asyncio.sleep(0)  # the item waits in the key's queue; its writer has not run yet
    for writer in list(writes._writers):
        writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, timeout=1)
    assert await asyncio.wait_for(writes.submit("a", 2), timeout=1) == 20


async def test_a_write_runs_in_a_context_of_its_own_not_its_first_callers() -> None:
    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")
    seen: list[str] = []

    async def write(key: str, items: list[int]) -> list[int]:
        seen.append(caller.get())
        return items

    writes = GroupedWrites(write)

    async def submit_as(name: str) -> int:
        caller.set(name)
        return await writes.submit("a", 1)

    await asyncio.gather(submit_as("first"), submit_as("second"))
    assert seen == ["none"]
