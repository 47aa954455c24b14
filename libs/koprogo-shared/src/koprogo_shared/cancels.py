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
from contextlib import asynccontextmanager
from typing import Generic, Protocol, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class Flag(Protocol):
    def set(self) -> None: ...


F = TypeVar("F", bound=Flag)


class CancelListener(Generic[F]):
    """Listens on `listened` (a wildcard over the cancel subjects: every request's, or those
    addressed to one keyed node); `flag(subject)` gives a flag set when a cancel arrives on
    `subject` while its block runs."""

    def __init__(self, nc: NATS, listened: str, new_flag: Callable[[], F]) -> None:
        self._nc = nc
        self._listened = listened
        self._new_flag = new_flag
        # A cancel subject -> the flags of the work running for its request.
        self._waiting: dict[str, list[F]] = {}
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
        for gone in self._waiting.get(msg.subject, ()):
            gone.set()

    @asynccontextmanager
    async def flag(self, subject: str) -> AsyncIterator[F]:
        if self._sub is None:
            raise RuntimeError("the cancel listener was not started: nobody listens for cancels")
        gone = self._new_flag()
        waiting = self._waiting.setdefault(subject, [])
        waiting.append(gone)
        try:
            yield gone
        finally:
            waiting.remove(gone)
            if not waiting:
                del self._waiting[subject]
