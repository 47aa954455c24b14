"""`kept_alive`: in-progress acks while a batch or a work item is handled for long, nothing at all
while it is quick, and cancellation as an awaited handler would see it."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest

from koprogo_shared.kept_alive import held_alone, held_with, kept_alive


def fake_msg(fails: bool = False) -> Any:
    told: list[float] = []

    async def in_progress() -> None:
        told.append(asyncio.get_running_loop().time())
        if fails:
            raise ConnectionError("nats gone")

    return SimpleNamespace(in_progress=in_progress, told=told, is_acked=False)


async def test_a_quick_batch_sends_nothing_and_returns_its_result() -> None:
    msg = fake_msg()

    async def work() -> str:
        return "done"

    assert await kept_alive(work(), lambda: [msg], ack_wait_s=30.0) == "done"
    assert msg.told == []


async def test_a_quick_work_starts_no_task_of_its_own() -> None:
    # Every work item and batch goes through kept_alive: a quick one costs a timer, not a task.
    before = asyncio.all_tasks()

    async def work() -> set[asyncio.Task[Any]]:
        await asyncio.sleep(0.01)
        return asyncio.all_tasks() - before

    assert await kept_alive(work(), lambda: [fake_msg()], ack_wait_s=30.0) == set()
    assert asyncio.all_tasks() == before


async def test_a_long_batch_tells_every_held_message_each_interval_even_when_one_fails() -> None:
    held, failing = fake_msg(), fake_msg(fails=True)

    async def work() -> int:
        await asyncio.sleep(0.35)
        return 7

    # ack_wait 0.3 s: every 0.1 s.
    assert await kept_alive(work(), lambda: [failing, held], ack_wait_s=0.3) == 7
    assert len(held.told) >= 2 and len(failing.told) == len(held.told)


async def test_its_error_is_raised_once() -> None:
    async def work() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        await kept_alive(work(), lambda: [], ack_wait_s=30.0)


async def test_cancelled_twice_it_returns_only_once_the_work_has_ended() -> None:
    # The work NAKs its batch when cancelled (`consumer._decide_batch`), which takes a moment; a
    # second cancel then reaches the work too (as it would an awaited one), and kept_alive raises
    # only once the work has ended: nothing of it runs on after the consumer moved on.
    ended: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            try:
                await asyncio.sleep(0.2)
                ended.append("cleaned up")
            finally:
                ended.append("ended")
            raise

    outer = asyncio.create_task(kept_alive(work(), lambda: [], ack_wait_s=30.0))
    await asyncio.sleep(0.05)
    outer.cancel()
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert ended == ["ended"]


async def test_settled_messages_are_no_longer_held_nor_a_failed_fetch_ahead() -> None:
    # "In progress" on a message NAKed with a delay would restart its whole ack_wait on the server.
    settled, waiting, ahead_msg = (
        SimpleNamespace(is_acked=True),
        SimpleNamespace(is_acked=False),
        SimpleNamespace(is_acked=False),
    )

    async def fetch(msgs: list[Any]) -> list[Any]:
        return msgs

    async def fails() -> list[Any]:
        raise TimeoutError

    ahead = asyncio.ensure_future(fetch([ahead_msg]))
    running = asyncio.ensure_future(asyncio.sleep(10))
    failed = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    assert held_with([settled, waiting], ahead) == [waiting, ahead_msg]
    assert held_with([waiting], running) == [waiting]
    assert held_with([waiting], failed) == [waiting]
    assert held_with([settled], None) == []
    assert held_alone(waiting)() == (waiting,) and held_alone(settled)() == ()
    running.cancel()


async def test_the_watchdog_ends_with_the_work_even_when_a_publish_swallowed_its_cancel() -> None:
    # nats-py's publish swallows a cancel while it waits for its flusher (more than 2 MiB pending):
    # caught there, a lone cancel left the watchdog telling forever and kept_alive never returned.
    told: list[int] = []

    async def in_progress() -> None:
        told.append(1)
        if len(told) > 1:  # once only: a watchdog that missed the cancel can still be torn down
            await asyncio.sleep(0.3)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.3)

    msg = SimpleNamespace(in_progress=in_progress, is_acked=False)

    async def work() -> str:
        await asyncio.sleep(0.15)  # ends while the watchdog is inside its first in_progress (0.1-0.4)
        return "done"

    before = asyncio.all_tasks()
    assert await asyncio.wait_for(kept_alive(work(), lambda: [msg], ack_wait_s=0.3), timeout=2) == "done"
    await asyncio.sleep(0.5)
    assert told == [1]
    assert asyncio.all_tasks() == before


async def test_a_round_whose_list_of_held_messages_fails_is_skipped_and_the_next_one_tells() -> None:
    msg = fake_msg()
    calls: list[int] = []

    def held() -> list[Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the fetch ahead is in a bad state")
        return [msg]

    async def work() -> None:
        await asyncio.sleep(0.25)

    await kept_alive(work(), held, ack_wait_s=0.3)  # rounds at 0.1 s (fails) and 0.2 s (tells)
    assert len(calls) >= 2 and len(msg.told) >= 1
