"""The chats sent with an `Idempotency-Key`: one generation per key, whatever the retries.

With an `Idempotency-Key` (`domain/idempotency.py`), the request runs at most once per key: the
first request stores an entry before publishing, and a keeper task stores the outcome whatever
happens to its caller (who left, or got a 503 because the bus did not confirm the publish: the
request may run all the same). A retry with the key gets that outcome (`Idempotent-Replayed`),
waiting for it while the first runs; if the first publish may not have been stored, the retry
publishes the same event id again, which the stream's de-duplication stores at most once. A
keyed request is not stopped when its caller leaves (its retry gets the answer); a streamed
retry gets the stored answer as one piece. Its user stops it explicitly (`ChatService.cancel`,
the PWA's Stop): the key is settled with the 409 `chat_cancelled` its retries then get, the
worker is told to stop, and the ledger records the caller's error (the tokens already spent kept
as its late answer). The gateway keeping the request watches its key, so a cancel made on
another replica, or before a node started the request, still reaches the node that runs it.

`ChatService` (chat.py) is the entry: `answer` and `stream` hand a keyed request to
`answer_keyed` and `stream_keyed`, and a keyed stream that ends early is handed to `keep`; these
run on the service's bus, keys and waits. The keys' entries are kept by `idempotency_keys.py`;
the cancel, and the keeper's watch of a cancelled key, are in `chat_cancel.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from koprogo_gateway.adapters.idempotency_store import StoredEntry
from koprogo_gateway.adapters.replies import ExpectedReplies
from koprogo_gateway.domain.access import Caller
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    ChatRefusedError,
    ChatTimeoutError,
    GatewayError,
    NodeLostError,
)
from koprogo_gateway.domain.idempotency import (
    IdempotencyEntry,
    StoredError,
    StoredOutcome,
    body_fingerprint,
    store_key,
)
from koprogo_gateway.service_layer.chat_answers import (
    ChatAnswer,
    ChatStream,
    completed,
    error_of,
    replay,
    replayed_pieces,
)
from koprogo_gateway.service_layer.chat_cancel import stop_if_settled
from koprogo_gateway.service_layer.chat_metrics import CHATS, not_answered, unanswered_counted
from koprogo_gateway.service_layer.idempotency_keys import KeyedRequest, same_body
from koprogo_shared.events import ChatRequested

if TYPE_CHECKING:
    from koprogo_gateway.service_layer.chat import ChatService

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FirstRequest:
    """A keyed request that claimed its key: it runs here, admitted with these RateLimit fields."""

    keyed: KeyedRequest
    request: ChatRequested
    headers: dict[str, str]


async def answer_keyed(
    chats: ChatService, caller: Caller, body: ChatRequestIn, copro_id: CoproId | None, idempotency_key: str
) -> ChatAnswer:
    """`ChatService.answer` with a key: the first request's answer, run here or replayed."""
    key, fingerprint = _key(caller, body, idempotency_key)
    found = await _first_or_stored(chats, caller, body, copro_id, key, fingerprint, stream=False)
    if isinstance(found, _FirstRequest):
        return await _first_answer(chats, found.keyed, found.request, found.headers)
    headers = await _replay_counted(chats, caller)
    try:
        outcome = await _replayed(chats, key, found, fingerprint, body, copro_id, caller.user_id)
    except GatewayError as exc:
        exc.headers = headers | exc.headers
        raise
    return replay(outcome, headers)


async def stream_keyed(
    chats: ChatService, caller: Caller, body: ChatRequestIn, copro_id: CoproId | None, idempotency_key: str
) -> ChatStream:
    """`ChatService.stream` with a key: the first request's pieces, or its stored answer as one piece."""
    key, fingerprint = _key(caller, body, idempotency_key)
    found = await _first_or_stored(chats, caller, body, copro_id, key, fingerprint, stream=True)
    if isinstance(found, _FirstRequest):
        return ChatStream(found.headers, chats.pieces(found.request, found.headers, found.keyed))
    headers = await _replay_counted(chats, caller)
    try:
        same_body(found, fingerprint)  # refused before the stream's 200
    except GatewayError as exc:
        not_answered(exc, headers)
        raise
    outcome = partial(_replayed, chats, key, found, fingerprint, body, copro_id, caller.user_id)
    return ChatStream(headers, replayed_pieces(outcome, headers), replayed=True)


async def _first_or_stored(
    chats: ChatService,
    caller: Caller,
    body: ChatRequestIn,
    copro_id: CoproId | None,
    key: str,
    fingerprint: str,
    *,
    stream: bool,
) -> _FirstRequest | StoredEntry:
    """The request admitted and its key claimed, when it is the first with the key; else the
    entry of the one that came first."""
    stored = await _counted(chats.keys.read(key))
    if stored is None:
        headers = await chats.admit(caller, body, copro_id)
        request = chats.new_request(body, copro_id, caller.user_id, stream=stream)
        keyed = await _claim(chats, key, request, fingerprint, headers)
        if keyed is not None:
            return _FirstRequest(keyed, request, headers)
        stored = await _counted(chats.keys.read_again(key))  # another request with it came first
    return stored


async def _replay_counted(chats: ChatService, caller: Caller) -> dict[str, str]:
    """A replay runs nothing: it counts against its user's request quota only, not the copro's
    chats; its RateLimit fields."""
    return await _counted(chats.admission.admit_request(caller.user_id))


async def _first_answer(
    chats: ChatService, keyed: KeyedRequest, request: ChatRequested, headers: dict[str, str]
) -> ChatAnswer:
    """Run a keyed request: its outcome is stored whatever happens to this caller."""
    started = time.perf_counter()
    expected = chats.expect(request.id)
    with unanswered_counted(headers):
        try:
            await chats.publish_request(request)
        except BusUnavailableError as exc:
            # Perhaps stored all the same (its acknowledgement lost): wait for an outcome in
            # the background, so the retry gets it instead of running the request again.
            keep(chats, keyed, request, expected, started)
            exc.message += "; a retry with the same Idempotency-Key runs it at most once"
            raise
        except GatewayError as exc:
            chats.forget(request.id)  # never stored (too large for the bus)
            await chats.keys.settle(keyed, StoredOutcome(error=StoredError.of(exc)))
            raise
        # Shielded: a caller who leaves does not stop a keyed request; its retry gets the outcome.
        outcome = await asyncio.shield(keep(chats, keyed, request, expected, started))
        if outcome.error is not None:
            raise error_of(outcome.error)
    assert outcome.completion is not None
    return await chats.deliver(outcome.completion, outcome.latency_ms, headers)


def _key(caller: Caller, body: ChatRequestIn, idempotency_key: str) -> tuple[str, str]:
    try:
        return store_key(caller.user_id, idempotency_key), body_fingerprint(body)
    except GatewayError as exc:
        CHATS.labels(outcome=exc.error).inc()
        raise


async def _counted(reading: Awaitable[T]) -> T:
    try:
        return await reading
    except GatewayError as exc:
        CHATS.labels(outcome=exc.error).inc()
        raise


async def _claim(
    chats: ChatService, key: str, request: ChatRequested, fingerprint: str, headers: dict[str, str]
) -> KeyedRequest | None:
    try:
        return await chats.keys.claim(key, request, fingerprint)
    except GatewayError as exc:
        not_answered(exc, headers)
        raise


def keep(
    chats: ChatService, keyed: KeyedRequest, request: ChatRequested, expected: ExpectedReplies, started: float
) -> asyncio.Task[StoredOutcome]:
    """Wait for a keyed request's outcome in a task of its own, whoever still waits for it."""
    keeper = asyncio.create_task(_kept(chats, keyed, request, expected, started))
    chats.keep_running(keeper)
    return keeper


async def _kept(
    chats: ChatService, keyed: KeyedRequest, request: ChatRequested, expected: ExpectedReplies, started: float
) -> StoredOutcome:
    # The nodes told to stop (None: whoever hears the request's own cancel subject).
    told: set[str | None] = set()
    watch = partial(stop_if_settled, chats.keys, chats.bus, keyed.key, request, expected, told)
    try:
        try:
            outcome = completed(await chats.wait_outcome(request, expected, watch))
            result = StoredOutcome(completion=outcome, latency_ms=(time.perf_counter() - started) * 1000.0)
        except (TimeoutError, NodeLostError) as exc:
            # Another waiter of the same request (a retry that took it up at the same time)
            # may have stored its outcome: then nobody went without an answer.
            settled = await chats.keys.settled(keyed.key)
            if settled is not None:
                return settled
            result = StoredOutcome(error=StoredError.of(await _give_up_quietly(chats, request, exc)))
        except GatewayError as exc:
            result = StoredOutcome(error=StoredError.of(exc))
    finally:
        if not expected.outcome.done():
            await asyncio.shield(chats.bus.cancel(request.id))
        chats.forget(request.id)
    return await chats.keys.settle(keyed, result)


async def _replayed(
    chats: ChatService,
    key: str,
    stored: StoredEntry,
    fingerprint: str,
    body: ChatRequestIn,
    copro_id: CoproId | None,
    user_id: str | None,
) -> StoredOutcome:
    """The first request's outcome, waited for while it runs; the retry runs nothing new."""

    async def resume(stored: StoredEntry, publish: bool) -> None:
        entry = stored.entry
        again = chats.new_request(body, copro_id, user_id, stream=False, again=entry)
        # Its replies come here, and nothing here waits for them any more (this gateway
        # restarted, or the stream was never read): wait for them, and store the outcome.
        adopt = entry.reply_subject == chats.bus.reply_subject and not chats.waits_for(entry.request_id)
        expected = chats.expect(again.id) if adopt else None
        try:
            if publish:
                await chats.publish_request(again)
        except GatewayError:
            if expected is not None:
                chats.forget(again.id)
            raise
        if expected is not None:
            keep(chats, KeyedRequest(key, stored), again, expected, time.perf_counter())

    async def record_failure(entry: IdempotencyEntry, error: GatewayError) -> None:
        await chats.record_failure_quietly(
            entry.request_id, copro_id, error.status, error.error, error.message
        )

    outcome = await _counted(chats.keys.outcome(key, stored, fingerprint, resume, record_failure))
    CHATS.labels(outcome="replayed").inc()
    return outcome


async def _give_up_quietly(chats: ChatService, request: ChatRequested, exc: Exception) -> GatewayError:
    """`ChatService.give_up` for a request nobody may be waiting for: a bus that refuses the record is logged."""
    try:
        return await chats.give_up(request, exc)
    except GatewayError as refused:
        log.warning("could not record the failure of %s: %s", request.id, refused.message)
        if isinstance(exc, NodeLostError):
            return ChatRefusedError(503, "node_lost", str(exc))
        return ChatTimeoutError(f"no node answered within {chats.timeout_s:g}s")
