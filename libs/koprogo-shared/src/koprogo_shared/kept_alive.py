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
    which its handler tolerates). Cancelled, `work` is cancelled and awaited to its end (however
    often the cancel comes) before this raises, as an awaited `work` would have been."""
    task = asyncio.ensure_future(work)
    interval = keep_alive_interval(ack_wait_s)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            for msg in held():
                with contextlib.suppress(Exception):
                    await msg.in_progress()
    except asyncio.CancelledError:
        task.cancel()
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
        if not task.cancelled():
            task.exception()  # ended as the cancel came: its outcome is dropped, as it would have been
        raise


def held_with(msgs: list[Msg], ahead: asyncio.Task[list[Msg]] | None) -> list[Msg]:
    """Those of `msgs` not settled yet, and the messages the fetch `ahead` brought once it has
    (none while it runs, or when it failed). A settled message is left alone: "in progress" on a
    message NAKed with a delay would restart its full `ack_wait` instead of the delay."""
    fetched: list[Msg] = []
    if ahead is not None and ahead.done() and not ahead.cancelled() and ahead.exception() is None:
        fetched = ahead.result()
    return [m for m in (*msgs, *fetched) if not m.is_acked]
