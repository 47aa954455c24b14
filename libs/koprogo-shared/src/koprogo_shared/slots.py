"""Calls a worker may run at once, shared by the consumers that feed them.

A cloud deployment's `concurrency` bounds its provider calls across its two durables (the router's
work items and the requests gateways routed to it). A consumer dispatching into `Slots`
(`dispatching.start_dispatching_consumer`) takes free slots before it asks the server for that many
messages (`take_free`), so items are not fetched only to wait here for a call to end, held from
the other replicas of the worker that could run them now (at most the one its lingering request
brings, `acquire_unless`). Unlike `asyncio.Semaphore`, the free count is readable.
"""

from __future__ import annotations

import asyncio


class Slots:
    """`acquire_unless` (a message already fetched, waiting to run) goes before `take_free` (a
    consumer about to fetch more): while one waits, a freed slot is kept for it (`free` counts
    the slots nobody waits for), so it cannot lose every freed slot to a consumer with a backlog."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"slots: the size must be at least 1, not {size}")
        self.size = size
        self._free = size
        self._acquiring = 0  # `acquire_unless` calls waiting for a slot
        self._freed = asyncio.Event()
        self._freed.set()

    @property
    def free(self) -> int:
        """The free slots a consumer may take for messages it has yet to fetch."""
        return max(0, self._free - self._acquiring)

    async def wait_free(self) -> None:
        """Return once `free` is above 0 (without taking a slot)."""
        while self.free == 0:
            self._freed.clear()
            await self._freed.wait()

    async def acquire(self) -> None:
        await self.acquire_unless(None)

    async def acquire_unless(self, stop: asyncio.Event | None, timeout: float | None = None) -> bool:
        """Take a slot once one is free, and True; False, taking none, once `stop` is set or
        `timeout` seconds (when given) have passed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self._acquiring += 1
        try:
            while stop is None or not stop.is_set():
                if self._free > 0:
                    self._free -= 1
                    return True
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return False
                self._freed.clear()
                waits = [asyncio.ensure_future(self._freed.wait())]
                if stop is not None:
                    waits.append(asyncio.ensure_future(stop.wait()))
                try:
                    await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()  # not awaited: a cancel of this call must not be swallowed
            return False
        finally:
            self._acquiring -= 1
            if self.free > 0:
                self._freed.set()  # a slot kept for this call is free for the others again

    def take_free(self, most: int) -> int:
        """Take up to `most` of the `free` slots at once; how many were taken (0 if none is)."""
        taken = min(most, self.free)
        self._free -= taken
        return taken

    def release(self, count: int = 1) -> None:
        if count < 0 or self._free + count > self.size:
            raise RuntimeError("slots: released more than acquired")
        self._free += count
        if count:
            self._freed.set()
