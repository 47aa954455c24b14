"""Group commit: per key, one write on its way at a time; what arrives meanwhile goes in the next.

A stored write costs the bus about the same whatever it carries (an fsync on nats-server), so
under concurrent load the items that must each be stored before their caller goes on (a
rate-limit count, a delivery record) wait while their key's write is on its way, and the next
write stores them all. Alone, an item is written at once (a group of one): nothing is added at
low load. Each caller still goes on only once the write holding its item is stored, and gets
that write's error when it fails.

`write(key, items)` returns one result per item, in order, or raises: the error is every
item's of that write. An item whose caller left before its turn is not written; one whose
caller left during its write is written all the same.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    outcome: asyncio.Future[R]


@dataclass
class GroupedWrites(Generic[K, T, R]):
    write: Callable[[K, list[T]], Awaitable[list[R]]]
    # At most this many items per write; the others wait for the next.
    max_group: int = 1_000
    name: str = "write"
    # Per key being written: the items waiting for the next write.
    _queues: dict[K, list[_Waiting[T, R]]] = field(default_factory=dict)
    _writers: set[asyncio.Task[None]] = field(default_factory=set)

    async def submit(self, key: K, item: T) -> R:
        """`item`'s result once a write holding it is stored; its key's writer is started when none runs."""
        waiting: _Waiting[T, R] = _Waiting(item, asyncio.get_running_loop().create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
            # In a context of its own: it writes for many callers, not in the first one's (its trace).
            writer = asyncio.create_task(
                self._write_turns(key, queue), name=f"{self.name} {key}", context=contextvars.Context()
            )
            self._writers.add(writer)
            writer.add_done_callback(partial(self._writer_done, key, queue))
        queue.append(waiting)
        return await waiting.outcome

    async def _write_turns(self, key: K, queue: list[_Waiting[T, R]]) -> None:
        """Write the key's waiting items, a group per write, until none waits."""
        batch: list[_Waiting[T, R]] = []
        try:
            while queue:
                # An item whose caller left before its turn is not written.
                live = [w for w in queue if not w.outcome.done()]
                batch, rest = live[: self.max_group], live[self.max_group :]
                queue[:] = rest
                if not batch:
                    continue
                try:
                    results = await self.write(key, [w.item for w in batch])
                except Exception as exc:  # the write's failure is each of its items'
                    for waiting in batch:
                        if not waiting.outcome.done():
                            waiting.outcome.set_exception(exc)
                    continue
                for waiting, result in zip(batch, results, strict=True):
                    if not waiting.outcome.done():  # the caller left during the write: written all the same
                        waiting.outcome.set_result(result)
        finally:
            del self._queues[key]
            for waiting in [*batch, *queue]:  # only when the writer itself was cancelled
                waiting.outcome.cancel()

    def _writer_done(self, key: K, queue: list[_Waiting[T, R]], writer: asyncio.Task[None]) -> None:
        self._writers.discard(writer)
        # A writer cancelled before its first step never ran its `finally`: its waiters too are
        # cancelled, and the key's next item starts a writer of its own.
        if self._queues.get(key) is queue:
            del self._queues[key]
            for waiting in queue:
                waiting.outcome.cancel()
