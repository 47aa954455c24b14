"""Callers leaving, heard by a worker through one subscription (`subjects.chat_cancel`).

The gateway publishes on a request's cancel subject when its caller goes away; a worker running
that request (the cloud worker's provider call, the edge node's generation) stops. One
subscription for every request, made before any work runs (`CancelListener.start`), not a SUB
and an UNSUB per chat; each running request waits on a flag of its own (`CancelListener.flag`).
The flag's kind is the worker's: an `asyncio.Event` for the cloud worker's calls, a
`threading.Event` for llama.cpp's generation thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, Protocol, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class Flag(Protocol):
    def set(self) -> None: ...


F = TypeVar("F", bound=Flag)


class CancelFlags(Generic[F]):
    """The flags of the work running for each key: `flag(key)` gives a flag for the length of a
    block, `cancel(key)` sets every flag held for that key. No I/O: what feeds `cancel` is the
    caller's (`CancelListener` for a subscription, a test or a worker with no bus directly)."""

    def __init__(self, new_flag: Callable[[], F]) -> None:
        self._new_flag = new_flag
        self._waiting: dict[str, list[F]] = {}

    def cancel(self, key: str) -> None:
        for gone in self._waiting.get(key, ()):
            gone.set()

    @asynccontextmanager
    async def flag(self, key: str) -> AsyncIterator[F]:
        gone = self._new_flag()
        waiting = self._waiting.setdefault(key, [])
        waiting.append(gone)
        try:
            yield gone
        finally:
            waiting.remove(gone)
            if not waiting:
                del self._waiting[key]


class CancelListener(Generic[F]):
    """Listens on `listened` (a wildcard over the cancel subjects: every request's, or those
    addressed to one keyed node); `flag(subject)` gives a flag set when a cancel arrives on
    `subject` while its block runs."""

    def __init__(self, nc: NATS, listened: str, new_flag: Callable[[], F]) -> None:
        self._nc = nc
        self._listened = listened
        # Keyed by cancel subject.
        self._flags = CancelFlags(new_flag)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._listened, cb=self._on_cancel)

    async def close(self) -> None:
        if self._sub is not None:
            # At shutdown, after the work: a failed unsubscribe changes nothing (the connection drains).
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_cancel(self, msg: Msg) -> None:
        self._flags.cancel(msg.subject)

    def flag(self, subject: str) -> AbstractAsyncContextManager[F]:
        if self._sub is None:
            raise RuntimeError("the cancel listener was not started: nobody listens for cancels")
        return self._flags.flag(subject)
