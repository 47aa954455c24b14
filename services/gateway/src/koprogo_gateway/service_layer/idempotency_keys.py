"""The idempotency keys of chats and tasks: claim a key's entry, store its outcome, wait for it.

`ChatService` (service_layer/chat.py) and `TaskService` (service_layer/tasks.py) run the
request; this keeps its entry (the port is
`adapters/idempotency_store.py`, the rules `domain/idempotency.py`). A retry that finds the
entry still running waits for its outcome by reading it again every `poll_s`; it first takes the
request up again (`resume`): publishing it under the same event id while the stream would still
de-duplicate it (the first publish may never have been stored), and waiting for its replies
itself when they come to this gateway and nothing here waits for them any more (it restarted,
or the stream was never read); when no outcome came well past the deadline (the gateway
running it stopped), it stores the 504 every retry then gets.

A running chat's entry may be settled by its user's cancel (`settle_if_running`) while its
gateway still waits for the worker: that gateway's own `settle` then finds the entry changed
and leaves the cancel's outcome standing (it returns the outcome that stands).

A task's entry is a lease instead (`claim_task`): the gateway submitting it holds the key until
its `deadline`, and gives it back at once when the submission fails (`release`); a retry waits
for the outcome while the lease runs (`outcome_or_lapse`), then takes the submission over under
the same task id (`take_over`, of two retries exactly one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from koprogo_gateway.adapters.idempotency_store import (
    IdempotencyConflictError,
    IdempotencyStore,
    IdempotencyStoreError,
    StoredEntry,
)
from koprogo_gateway.domain.errors import (
    ChatTimeoutError,
    GatewayError,
    IdempotencyKeyReusedError,
    IdempotencyUnavailableError,
)
from koprogo_gateway.domain.idempotency import (
    IdempotencyEntry,
    StoredError,
    StoredOutcome,
    abandoned,
    lapsed,
    may_publish_again,
    user_keys,
)
from koprogo_shared.events import ChatRequested, utc_now
from koprogo_shared.subjects import EVENTS_STREAM, STREAMS

log = logging.getLogger(__name__)

# How long the chat requests' stream remembers an event id (a publish again within it is dropped).
DUPLICATE_WINDOW_S = next(spec.duplicate_window_s for spec in STREAMS if spec.name == EVENTS_STREAM)
# How long past a keyed request's deadline its retries wait for its gateway to store the outcome.
SETTLE_GRACE_S = 5.0

# Take a running entry's request up again, publishing it (same id) when the flag says it may be;
# record that a request got no answer.
Resume = Callable[[StoredEntry, bool], Awaitable[None]]
RecordFailure = Callable[[IdempotencyEntry, GatewayError], Awaitable[None]]


@dataclass(frozen=True)
class KeyedRequest:
    """A request running under an idempotency key: where its entry is, and the entry as created."""

    key: str
    stored: StoredEntry


@dataclass
class IdempotencyKeys:
    # None: this gateway keeps no keys, and a request with one is refused (503).
    store: IdempotencyStore | None
    poll_s: float = 0.2
    settle_grace_s: float = SETTLE_GRACE_S

    async def read(self, key: str) -> StoredEntry | None:
        """The key's entry, or None; IdempotencyUnavailableError when the store cannot say."""
        if self.store is None:
            raise IdempotencyUnavailableError("this gateway keeps no idempotency keys")
        try:
            return await self.store.read(key)
        except IdempotencyStoreError as exc:
            raise IdempotencyUnavailableError(f"the idempotency keys cannot be read: {exc}") from None

    async def read_again(self, key: str) -> StoredEntry:
        stored = await self.read(key)
        if stored is None:
            raise IdempotencyUnavailableError("the idempotency key's entry expired: send the request again")
        return stored

    async def claim(self, key: str, request: ChatRequested, fingerprint: str) -> KeyedRequest | None:
        """Store the key's entry before `request` is published; None when another request with
        the key came first."""
        entry = IdempotencyEntry(
            request_id=request.id,
            fingerprint=fingerprint,
            created_at=utc_now(),
            deadline=request.deadline,
            reply_subject=request.reply_subject,
            copro_id=request.copro_id,
        )
        return await self._create(key, entry)

    async def claim_task(
        self, key: str, task_id: str, fingerprint: str, lease_s: float
    ) -> KeyedRequest | None:
        """Store the key's entry for task `task_id`, leased for `lease_s`, before the task is
        submitted; None when another request with the key came first."""
        now = utc_now()
        entry = IdempotencyEntry(
            request_id=task_id,
            fingerprint=fingerprint,
            created_at=now,
            deadline=now + timedelta(seconds=lease_s),
        )
        return await self._create(key, entry)

    async def _create(self, key: str, entry: IdempotencyEntry) -> KeyedRequest | None:
        if self.store is None:
            raise IdempotencyUnavailableError("this gateway keeps no idempotency keys")
        try:
            return KeyedRequest(key, await self.store.create(key, entry))
        except IdempotencyConflictError:
            return None
        except IdempotencyStoreError as exc:
            raise IdempotencyUnavailableError(f"the idempotency key cannot be stored: {exc}") from None

    async def outcome_or_lapse(self, key: str, stored: StoredEntry) -> StoredEntry:
        """The entry once it has an outcome or its lease is over (a task's: see the module)."""
        while not (stored.entry.outcome is not None or lapsed(stored.entry, utc_now())):
            await asyncio.sleep(self.poll_s)
            stored = await self.read_again(key)
        return stored

    async def take_over(self, key: str, stored: StoredEntry, lease_s: float) -> KeyedRequest | None:
        """Lease a lapsed entry to this retry for `lease_s`; None when the entry changed since
        it was read (another retry took it over, or its outcome was stored just now)."""
        assert self.store is not None
        leased = stored.entry.leased_until(utc_now() + timedelta(seconds=lease_s))
        try:
            return KeyedRequest(key, await self.store.replace(key, leased, stored.revision))
        except IdempotencyConflictError:
            return None
        except IdempotencyStoreError as exc:
            raise IdempotencyUnavailableError(f"the idempotency key cannot be stored: {exc}") from None

    async def release(self, keyed: KeyedRequest) -> None:
        """End a lease early (the submission failed): a retry takes the request over at once. A
        failure is logged: the retry then waits for the lease to end."""
        assert self.store is not None
        stored = keyed.stored
        try:
            await self.store.replace(keyed.key, stored.entry.leased_until(utc_now()), stored.revision)
        except IdempotencyStoreError as exc:
            log.warning("could not release the idempotency key of %s: %r", stored.entry.request_id, exc)

    async def forget_user(self, user_id: str) -> None:
        """Remove every entry of `user_id` (their erasure: the entries hold answers); a retry with
        one of their keys then runs as a new request. IdempotencyUnavailableError when the store
        cannot do it."""
        if self.store is None:
            return
        try:
            forgotten = await self.store.forget(user_keys(user_id))
        except IdempotencyStoreError as exc:
            raise IdempotencyUnavailableError(f"the idempotency keys cannot be erased: {exc}") from None
        log.info("forgot %d idempotency keys of an erased user", forgotten)

    async def settled(self, key: str) -> StoredOutcome | None:
        """The outcome stored under `key`, if any (None as well when the store cannot say)."""
        try:
            stored = await self.read(key)
        except IdempotencyUnavailableError:
            return None
        return stored.entry.outcome if stored is not None else None

    async def settle(self, keyed: KeyedRequest, outcome: StoredOutcome) -> StoredOutcome:
        """Store a keyed request's outcome for its retries; the outcome that stands: `outcome`, or
        the one stored first (its user cancelled it). A store that fails is logged: the retries
        then wait for the deadline and get a 504."""
        assert self.store is not None
        stored = keyed.stored
        try:
            await self.store.replace(keyed.key, stored.entry.settled(outcome), stored.revision)
        except IdempotencyConflictError:
            standing = await self.settled(keyed.key)
            if standing is not None:
                return standing
            log.warning("could not store the outcome of %s: its entry changed", stored.entry.request_id)
        except IdempotencyStoreError as exc:
            log.warning("could not store the outcome of %s: %r", stored.entry.request_id, exc)
        return outcome

    async def settle_if_running(self, key: str, outcome: StoredOutcome) -> tuple[StoredEntry, bool] | None:
        """Store `outcome` under a chat's key unless it has one: the entry as it now stands, and
        whether this call settled it; None when the key holds no chat. IdempotencyUnavailableError
        when the store cannot do it."""
        while True:
            stored = await self.read(key)
            if stored is None or not stored.entry.is_chat:
                return None
            if stored.entry.outcome is not None:
                return stored, False
            assert self.store is not None
            try:
                return await self.store.replace(key, stored.entry.settled(outcome), stored.revision), True
            except IdempotencyConflictError:
                continue  # settled (or its lease moved) since it was read: read it again
            except IdempotencyStoreError as exc:
                raise IdempotencyUnavailableError(f"the idempotency key cannot be stored: {exc}") from None

    async def outcome(
        self,
        key: str,
        stored: StoredEntry,
        fingerprint: str,
        resume: Resume,
        record_failure: RecordFailure,
    ) -> StoredOutcome:
        """The outcome of the first request with this key, waited for while it runs; never a new request."""
        same_body(stored, fingerprint)
        resumed = False
        while stored.entry.outcome is None:
            now = utc_now()
            if abandoned(stored.entry, now, self.settle_grace_s):
                return await self._abandon(key, stored, record_failure)
            if not resumed:
                # If the first publish was not stored, publishing it again runs it; if it was,
                # the stream's de-duplication drops this one.
                await resume(stored, may_publish_again(stored.entry, now, DUPLICATE_WINDOW_S))
                resumed = True
            await asyncio.sleep(self.poll_s)
            stored = await self.read_again(key)
        return stored.entry.outcome

    async def _abandon(self, key: str, stored: StoredEntry, record_failure: RecordFailure) -> StoredOutcome:
        """The first request's gateway stopped before storing an outcome: store the 504 its retries get."""
        assert self.store is not None
        error = ChatTimeoutError(
            "the first request with this Idempotency-Key got no outcome by its deadline "
            "(the gateway running it stopped); its answer, if any, was not kept"
        )
        outcome = StoredOutcome(error=StoredError.of(error))
        try:
            await self.store.replace(key, stored.entry.settled(outcome), stored.revision)
        except IdempotencyConflictError:
            return (await self.read_again(key)).entry.outcome or outcome  # stored just now by its gateway
        except IdempotencyStoreError as exc:
            log.warning("could not store the outcome of %s: %r", stored.entry.request_id, exc)
        # Stored (or not storable): the request got no answer, and the ledger is told so.
        await record_failure(stored.entry, error)
        return outcome


def same_body(stored: StoredEntry, fingerprint: str) -> None:
    """IdempotencyKeyReusedError when the key came first with another body."""
    if stored.entry.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was used with another request body: send a new key for a new request"
        )
