"""Messages kept ours while they are handled for long: in-progress acknowledgements.

A handler that outlasts its durable's `ack_wait` would see the server deliver its messages again
while it still holds them: a work item run for long (a slow model on a Pi), or a batch the ledger
projects event by event after its set-based pass gave up, or holds while PostgreSQL is away; the
batch fetched ahead, which waits for its turn meanwhile, would expire the same way. So every third
of `ack_wait` (at most every 5 s) the messages held are told "in progress", which restarts their
timers on the server. One mechanism for every consumer: the shared consumer keeps its batches
alive with it, `work_items.WorkItemHandler` its items.

A handler that ends within that interval costs one timer, set and cancelled: no task, nothing sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from nats.aio.msg import Msg

T = TypeVar("T")
log = logging.getLogger(__name__)


def keep_alive_interval(ack_wait_s: float) -> float:
    """Three in-progress acks per ack_wait, at most every 5 s: one lost ack is not a redelivery."""
    return max(0.1, min(ack_wait_s / 3.0, 5.0))


async def kept_alive(work: Awaitable[T], held: Callable[[], Iterable[Msg]], ack_wait_s: float) -> T:
    """`work`'s result; while it runs, every `keep_alive_interval(ack_wait_s)` each message `held()`
    names is acknowledged as in progress (a failed one is left: the message may be delivered again,
    which its handler tolerates). `work` is awaited here, in the caller's task, as if it were
    awaited directly (its cancels, its scheduling: a batch's decoding starts before anything else
    runs); the acks go from a task started only when they are due, which ends with `work`."""
    teller = _Teller(held, keep_alive_interval(ack_wait_s))
    try:
        return await work
    finally:
        await teller.stop()


class _Teller:
    """A timer that, every `interval`, sends the held messages' in-progress acks from a task."""

    def __init__(self, held: Callable[[], Iterable[Msg]], interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._held = held
        self._interval = interval
        self._stopped = False
        self._telling: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(interval, self._due)

    def _due(self) -> None:
        if self._telling is None or self._telling.done():  # a round still under way is not doubled
            self._telling = self._loop.create_task(self._tell())
        self._timer = self._loop.call_later(self._interval, self._due)

    async def _tell(self) -> None:
        try:
            held = list(self._held())
        except Exception as exc:  # no acks this round; the next one tries again
            log.warning("could not list the messages to keep: %r", exc)
            return
        for msg in held:
            # Checked before each ack: the work may have ended, or settled this message, since
            # the list was made ("in progress" after a delayed NAK would stretch the delay).
            if self._stopped:
                return
            if msg.is_acked:
                continue
            with contextlib.suppress(Exception):  # a lost ack only risks a redelivery
                await msg.in_progress()

    async def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        telling = self._telling
        if telling is not None and not telling.done():
            # Told twice: nats-py's publish swallows a cancel while it waits for its flusher
            # (`Client._flush_pending`); a round that missed it ends at its next ack (`_stopped`).
            telling.cancel()
            await asyncio.gather(telling, return_exceptions=True)


def held_with(msgs: list[Msg], ahead: asyncio.Task[list[Msg]] | None) -> list[Msg]:
    """Those of `msgs` not settled yet, and the messages the fetch `ahead` brought once it has
    (none while it runs, or when it failed). A settled message is left alone: "in progress" on a
    message NAKed with a delay would restart its full `ack_wait` instead of the delay."""
    fetched: list[Msg] = []
    if ahead is not None and ahead.done() and not ahead.cancelled() and ahead.exception() is None:
        fetched = ahead.result()
    return [m for m in (*msgs, *fetched) if not m.is_acked]


def held_alone(msg: Msg) -> Callable[[], tuple[Msg, ...]]:
    """`held` for one message handled on its own (a work item)."""
    return lambda: () if msg.is_acked else (msg,)
