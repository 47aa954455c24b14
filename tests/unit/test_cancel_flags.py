"""`CancelFlags`: the registry behind every worker's cancels (chats' and grid tasks')."""

from __future__ import annotations

import asyncio
import threading

from koprogo_shared.cancels import CancelFlags


async def test_a_cancel_sets_every_flag_held_for_its_key_and_no_other() -> None:
    flags = CancelFlags(asyncio.Event)
    async with flags.flag("a") as first, flags.flag("a") as second, flags.flag("b") as other:
        flags.cancel("a")
        assert first.is_set() and second.is_set()
        assert not other.is_set()


async def test_a_cancel_after_its_block_ended_reaches_neither_that_flag_nor_a_later_one() -> None:
    flags = CancelFlags(threading.Event)
    async with flags.flag("task") as ended:
        pass
    flags.cancel("task")
    assert not ended.is_set()
    async with flags.flag("task") as fresh:
        assert not fresh.is_set()
        flags.cancel("task")
        assert fresh.is_set()


async def test_a_flag_is_released_when_its_block_raises() -> None:
    flags = CancelFlags(threading.Event)
    try:
        async with flags.flag("task") as failed:
            raise ValueError("the work failed")
    except ValueError:
        pass
    flags.cancel("task")
    assert not failed.is_set()
