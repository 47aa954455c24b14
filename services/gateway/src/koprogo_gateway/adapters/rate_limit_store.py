"""The rate limiter's port to its counters: read, create and compare-and-set, nothing else.

CounterStoreError
 ├── CounterConflictError     the key changed since it was read (or exists, for create): read again
 └── CounterStoreUnavailableError the store did not answer or refused the write

The real store is a NATS JetStream key-value bucket: JetStream checks
`Nats-Expected-Last-Subject-Sequence` on the bucket's leader before storing a write, so of
two writers that read the same revision exactly one succeeds, whichever gateway they run in.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue


class CounterStoreError(Exception):
    pass


class CounterConflictError(CounterStoreError):
    pass


class CounterStoreUnavailableError(CounterStoreError):
    pass


@dataclass(frozen=True, slots=True)
class Counter:
    count: int
    revision: int


class CounterStore(abc.ABC):
    @abc.abstractmethod
    async def read(self, key: str) -> Counter | None:
        """The counter under `key`, or None when there is none."""

    @abc.abstractmethod
    async def create(self, key: str, count: int) -> Counter:
        """Store `count` under `key` only if the key holds nothing; CounterConflictError otherwise."""

    @abc.abstractmethod
    async def replace(self, key: str, count: int, revision: int) -> Counter:
        """Store `count` only if `key` is still at `revision`; CounterConflictError otherwise."""


_UNAVAILABLE = (nats.errors.Error, TimeoutError, OSError)


class NatsKvCounterStore(CounterStore):
    """Counters as ASCII integers in a JetStream key-value bucket (history 1, TTL-expired)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, key: str) -> Counter | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except _UNAVAILABLE as exc:
            raise CounterStoreUnavailableError(f"reading a counter failed: {type(exc).__name__}") from exc
        if entry.revision is None or entry.value is None:
            return None
        try:
            return Counter(int(entry.value), entry.revision)
        except ValueError:
            raise CounterStoreUnavailableError(f"counter {key} holds no integer") from None

    async def create(self, key: str, count: int) -> Counter:
        try:
            revision = await self.kv.create(key, str(count).encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            raise CounterConflictError(key) from None
        except _UNAVAILABLE as exc:
            raise CounterStoreUnavailableError(f"creating a counter failed: {type(exc).__name__}") from exc
        return Counter(count, revision)

    async def replace(self, key: str, count: int, revision: int) -> Counter:
        try:
            new_revision = await self.kv.update(key, str(count).encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise CounterConflictError(key) from None
        except _UNAVAILABLE as exc:
            raise CounterStoreUnavailableError(f"updating a counter failed: {type(exc).__name__}") from exc
        return Counter(count, new_revision)


class FakeCounterStore(CounterStore):
    """In memory, with the same compare-and-set rules.

    Every call first yields to the event loop, so limiters sharing one fake interleave
    between their read and their write as gateways do; `unavailable` makes every call fail.
    """

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.unavailable = False
        self.conflicts = 0
        self._revision = 0

    async def _enter(self) -> None:
        await asyncio.sleep(0)
        if self.unavailable:
            raise CounterStoreUnavailableError("fake store is down")

    def _store(self, key: str, count: int) -> Counter:
        self._revision += 1
        self.counters[key] = Counter(count, self._revision)
        return self.counters[key]

    async def read(self, key: str) -> Counter | None:
        await self._enter()
        return self.counters.get(key)

    async def create(self, key: str, count: int) -> Counter:
        await self._enter()
        if key in self.counters:
            self.conflicts += 1
            raise CounterConflictError(key)
        return self._store(key, count)

    async def replace(self, key: str, count: int, revision: int) -> Counter:
        await self._enter()
        current = self.counters.get(key)
        if current is None or current.revision != revision:
            self.conflicts += 1
            raise CounterConflictError(key)
        return self._store(key, count)
