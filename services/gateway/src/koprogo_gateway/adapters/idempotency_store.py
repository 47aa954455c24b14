"""The idempotency keys' port to their store: read, create and compare-and-set, nothing else.

IdempotencyStoreError
 ├── IdempotencyConflictError         the key changed since it was read (or exists, for create)
 └── IdempotencyStoreUnavailableError the store did not answer or refused the write

The real store is the JetStream key-value bucket `KOPROGO_IDEMPOTENCY` (history 1, file
storage, entries expire after 24 h; `koprogo_shared.kv_buckets`): `create` and `update` with
the last revision are checked on the bucket's leader, so of two gateways creating the same key
exactly one wins, and of two settling it exactly one writes.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from koprogo_gateway.domain.idempotency import IdempotencyEntry
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET, bucket_stream


class IdempotencyStoreError(Exception):
    pass


class IdempotencyConflictError(IdempotencyStoreError):
    pass


class IdempotencyStoreUnavailableError(IdempotencyStoreError):
    pass


@dataclass(frozen=True, slots=True)
class StoredEntry:
    entry: IdempotencyEntry
    revision: int


class IdempotencyStore(abc.ABC):
    @abc.abstractmethod
    async def read(self, key: str) -> StoredEntry | None:
        """The entry under `key`, or None when there is none (never used, or expired)."""

    @abc.abstractmethod
    async def create(self, key: str, entry: IdempotencyEntry) -> StoredEntry:
        """Store `entry` only if `key` holds nothing; IdempotencyConflictError otherwise."""

    @abc.abstractmethod
    async def replace(self, key: str, entry: IdempotencyEntry, revision: int) -> StoredEntry:
        """Store `entry` only if `key` is still at `revision`; IdempotencyConflictError otherwise."""

    @abc.abstractmethod
    async def forget(self, keys: str) -> int:
        """Remove every entry whose key matches `keys` (`<prefix>.>`, a user's); how many there were."""


_UNAVAILABLE = (nats.errors.Error, TimeoutError, OSError)


class NatsKvIdempotencyStore(IdempotencyStore):
    """Entries as JSON in a JetStream key-value bucket (`js` reads its messages to find a user's keys)."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, bucket: str = IDEMPOTENCY_BUCKET) -> None:
        self.kv = kv
        self.js = js
        self.bucket = bucket

    async def read(self, key: str) -> StoredEntry | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except _UNAVAILABLE as exc:
            raise IdempotencyStoreUnavailableError(f"reading a key failed: {type(exc).__name__}") from exc
        if entry.revision is None or entry.value is None:
            return None
        try:
            return StoredEntry(IdempotencyEntry.model_validate_json(entry.value), entry.revision)
        except ValidationError:
            raise IdempotencyStoreUnavailableError(f"key {key} holds no idempotency entry") from None

    async def create(self, key: str, entry: IdempotencyEntry) -> StoredEntry:
        try:
            revision = await self.kv.create(key, entry.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            raise IdempotencyConflictError(key) from None
        except _UNAVAILABLE as exc:
            raise IdempotencyStoreUnavailableError(f"creating a key failed: {type(exc).__name__}") from exc
        return StoredEntry(entry, revision)

    async def replace(self, key: str, entry: IdempotencyEntry, revision: int) -> StoredEntry:
        try:
            new_revision = await self.kv.update(key, entry.model_dump_json().encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise IdempotencyConflictError(key) from None
        except _UNAVAILABLE as exc:
            raise IdempotencyStoreUnavailableError(f"updating a key failed: {type(exc).__name__}") from exc
        return StoredEntry(entry, new_revision)

    async def forget(self, keys: str) -> int:
        # The bucket's latest message per key, found by subject from the first sequence on (a
        # message read, not a consumer: the gateway may read the bucket's messages); each
        # found key is purged (its history and content removed) once the reading is done.
        prefix = f"$KV.{self.bucket}."
        stream = bucket_stream(self.bucket)
        found: set[str] = set()
        seq = 1
        try:
            while True:
                try:
                    msg = await self.js.get_msg(stream, seq=seq, subject=prefix + keys, next=True)
                except nats.js.errors.NotFoundError:
                    break
                operation = (msg.headers or {}).get("KV-Operation")
                key = (msg.subject or "").removeprefix(prefix)
                if operation in ("DEL", "PURGE"):
                    found.discard(key)
                else:
                    found.add(key)
                seq = (msg.seq or seq) + 1
            for key in found:
                await self.kv.purge(key)
        except _UNAVAILABLE as exc:
            raise IdempotencyStoreUnavailableError(f"forgetting keys failed: {type(exc).__name__}") from exc
        return len(found)


class FakeIdempotencyStore(IdempotencyStore):
    """In memory, with the same compare-and-set rules; every call first yields to the event loop.

    `unavailable` makes every call fail, as an unreachable bucket does.
    """

    def __init__(self) -> None:
        self.entries: dict[str, StoredEntry] = {}
        self.unavailable = False
        self._revision = 0

    async def _enter(self) -> None:
        await asyncio.sleep(0)
        if self.unavailable:
            raise IdempotencyStoreUnavailableError("fake store is down")

    def _store(self, key: str, entry: IdempotencyEntry) -> StoredEntry:
        self._revision += 1
        self.entries[key] = StoredEntry(entry, self._revision)
        return self.entries[key]

    async def read(self, key: str) -> StoredEntry | None:
        await self._enter()
        return self.entries.get(key)

    async def create(self, key: str, entry: IdempotencyEntry) -> StoredEntry:
        await self._enter()
        if key in self.entries:
            raise IdempotencyConflictError(key)
        return self._store(key, entry)

    async def replace(self, key: str, entry: IdempotencyEntry, revision: int) -> StoredEntry:
        await self._enter()
        current = self.entries.get(key)
        if current is None or current.revision != revision:
            raise IdempotencyConflictError(key)
        return self._store(key, entry)

    async def forget(self, keys: str) -> int:
        await self._enter()
        prefix = keys.removesuffix(">")
        found = [key for key in self.entries if key.startswith(prefix)]
        for key in found:
            del self.entries[key]
        return len(found)
