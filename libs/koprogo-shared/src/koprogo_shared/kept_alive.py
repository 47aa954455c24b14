"""A batch kept ours while it is handled for long: in-progress acknowledgements.

A batch handler that outlasts its durable's `ack_wait` (the ledger projecting a whole batch
event by event after its set-based pass gave up, on a Pi; PostgreSQL slow to commit) would see
the server deliver its messages again, to the same loop, while it still holds them; the batch
fetched ahead, which waits for its turn meanwhile, would expire the same way. So every third of
`ack_wait` the messages held are told "in progress" (at most every 5 s), which restarts their timers on
the server. A batch handled and settled within that interval sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from nats.aio.msg import Msg

T = TypeVar("T")


def keep_alive_interval(ack_wait_s: float) -> float:
    """Three in-progress acks per ack_wait, at most every 5 s: one lost ack is not a redelivery."""
    return max(0.1, min(ack_wait_s / 3.0, 5.0))


async def kept_alive(work: Awaitable[T], held: Callable[[], Iterable[Msg]], ack_wait_s: float) -> T:
    """`work`'s result; while it runs, every `keep_alive_interval(ack_wait_s)` each message `held()`
    names is acknowledged as in progress (a failed one is left: the message may be delivered again,
    which its handler tolerates). `work` is awaited here, in the caller's task, as if it were
    awaited directly (its cancels, its scheduling: a batch's decoding starts before anything else
    runs); a task of its own only tells the server, and stops when `work` ends."""
    done = asyncio.Event()
    watchdog = asyncio.create_task(_tell_in_progress(held, keep_alive_interval(ack_wait_s), done))
    try:
        return await work
    finally:
        # Told twice: nats-py's publish swallows a cancel while it waits for its flusher
        # (`Client._flush_pending`), and a watchdog that missed it must still end.
        done.set()
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)


async def _tell_in_progress(held: Callable[[], Iterable[Msg]], interval: float, done: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval)
            return
        for msg in held():
            if done.is_set():
                return
            if msg.is_acked:  # settled since the list was made
                continue
            with contextlib.suppress(Exception):
                await msg.in_progress()


def held_with(msgs: list[Msg], ahead: asyncio.Task[list[Msg]] | None) -> list[Msg]:
    """Those of `msgs` not settled yet, and the messages the fetch `ahead` brought once it has
    (none while it runs, or when it failed). A settled message is left alone: "in progress" on a
    message NAKed with a delay would restart its full `ack_wait` instead of the delay."""
    fetched: list[Msg] = []
    if ahead is not None and ahead.done() and not ahead.cancelled() and ahead.exception() is None:
        fetched = ahead.result()
    return [m for m in (*msgs, *fetched) if not m.is_acked]
