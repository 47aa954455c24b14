"""Calls a worker may run at once, shared by the consumers that feed them.

A cloud deployment's `concurrency` bounds its provider calls across its two durables (the router's
work items and the requests gateways routed to it). A consumer dispatching into `Slots`
(`consumer.start_dispatching_consumer`) takes free slots before it asks the server for that many
messages (`take_free`), so items are not fetched only to wait here for a call to end, held from
the other replicas of the worker that could run them now (at most the one its lingering request
brings, `acquire_unless`). Unlike `asyncio.Semaphore`, the free count is readable.
"""

from __future__ import annotations

import asyncio
import contextlib


class Slots:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"slots: the size must be at least 1, not {size}")
        self.size = size
        self._free = size
        self._freed = asyncio.Event()
        self._freed.set()

    @property
    def free(self) -> int:
        return self._free

    async def wait_free(self) -> None:
        """Return once a slot is free (without taking it)."""
        while self._free == 0:
            self._freed.clear()
            await self._freed.wait()

    async def acquire(self) -> None:
        await self.wait_free()
        self._free -= 1  # no await since the check: no other task took it

    async def acquire_unless(self, stop: asyncio.Event | None) -> bool:
        """Take a slot once one is free, and True; False, taking none, once `stop` is set."""
        while stop is None or not stop.is_set():
            if self._free > 0:
                self._free -= 1
                return True
            self._freed.clear()
            waits = [asyncio.ensure_future(self._freed.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await wait
        return False

    def take_free(self, most: int) -> int:
        """Take up to `most` of the free slots at once; how many were taken (0 if none is free)."""
        taken = min(most, self._free)
        self._free -= taken
        return taken

    def release(self, count: int = 1) -> None:
        if count < 0 or self._free + count > self.size:
            raise RuntimeError("slots: released more than acquired")
        self._free += count
        if count:
            self._freed.set()
