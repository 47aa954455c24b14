"""A batch kept ours while it is handled for long: in-progress acknowledgements.

A batch handler that outlasts its durable's `ack_wait` (the ledger projecting a whole batch
event by event after its set-based pass gave up, on a Pi; PostgreSQL slow to commit) would see
the server deliver its messages again, to the same loop, while it still holds them; the batch
fetched ahead, which waits for its turn meanwhile, would expire the same way. So every third of
`ack_wait` the messages held are told "in progress", which restarts their timers on the server.
A handler that ends within a third of `ack_wait` sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from nats.aio.msg import Msg

T = TypeVar("T")


async def kept_alive(work: Awaitable[T], held: Callable[[], Iterable[Msg]], ack_wait_s: float) -> T:
    """`work`'s result; while it runs, every `ack_wait_s / 3` each message `held()` names is
    acknowledged as in progress (a failed one is left: the message may be delivered again, which
    its handler tolerates). Cancelled, `work` is cancelled and awaited before this raises."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=ack_wait_s / 3)
            if done:
                return task.result()
            for msg in held():
                with contextlib.suppress(Exception):
                    await msg.in_progress()
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})
        raise


def held_with(msgs: list[Msg], ahead: asyncio.Task[list[Msg]] | None) -> list[Msg]:
    """`msgs`, and the messages the fetch `ahead` brought once it has (none while it runs, or
    when it failed)."""
    if ahead is None or not ahead.done() or ahead.cancelled() or ahead.exception() is not None:
        return msgs
    return [*msgs, *ahead.result()]
