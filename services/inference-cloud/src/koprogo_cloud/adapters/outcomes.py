"""Where the cloud worker's results go: the durable event log first, then the waiting gateway.

Streamed answers also go out piece by piece (core NATS, not stored), and the worker listens
for the caller leaving (`subjects.chat_cancel`), so it stops a provider call nobody reads: one
subscription for every request (`koprogo_shared.cancels`), as the edge node listens.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import ValidationError

from koprogo_shared import subjects
from koprogo_shared.audit_log import messages_since
from koprogo_shared.cancels import CancelListener
from koprogo_shared.chat_outcomes import ANSWER_LOOKBACK, UnusableIdsError, completed_id
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, InferenceAttemptFailed, RunInference
from koprogo_shared.publishing import MSG_ID_HEADER, deliver_chat_outcome, publish_event, publish_reply

log = logging.getLogger(__name__)

# At most this many of the copro's cloud answers are read for one look-up (ten minutes at a
# steady 8 cloud chats a second for one copro; ~0.5 ms each); past it the provider is asked again.
ANSWERS_READ_MAX = 5_000


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        """Tell the router this target failed (it falls back or fails the request)."""

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:  # noqa: B027 (optional)
        """Send the next piece of a streamed answer (not stored: core NATS only)."""

    async def stored_answer(self, work: RunInference) -> ChatCompleted | None:
        """The answer already stored for `work`'s request (a redelivered item whose answer was
        stored before the worker could ack it), or None."""
        return None

    async def resend(self, stored: ChatCompleted, reply_subject: str) -> None:
        """Send a stored answer to the waiting gateway again (it is stored already)."""
        await self.publish(stored, reply_subject)

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when the caller of this request leaves, while the block runs."""
        yield asyncio.Event()


class NatsOutcomeSink(OutcomeSink):
    """JetStream (KOPROGO_EVENTS) then core NATS to `reply_subject`, as the edge node does.

    (`deliver_chat_outcome`: the durable copy goes first.)
    """

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._cancels = CancelListener(nc, subjects.CHAT_CANCEL_ALL, asyncio.Event)

    async def start(self) -> None:
        """Listen for every caller's leaving (`subjects.CHAT_CANCEL_ALL`), before any call runs."""
        await self._cancels.start()

    async def close(self) -> None:
        await self._cancels.close()

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        # An answer goes to the cloud worker's own subject, where `stored_answer` finds it again.
        keyed = (
            subjects.cloud_chat_completed(outcome.copro_id) if isinstance(outcome, ChatCompleted) else None
        )
        await deliver_chat_outcome(self._nc, self._js, outcome, reply_subject, durable_subject=keyed)

    async def resend(self, stored: ChatCompleted, reply_subject: str) -> None:
        await publish_reply(self._nc, reply_subject, stored.model_dump_json().encode())

    async def stored_answer(self, work: RunInference) -> ChatCompleted | None:
        """The first answer stored for `work`'s request: its copro's cloud answers stored since
        `ANSWER_LOOKBACK` before the item was made, read one by one (`messages_since`: no consumer
        on the audit log), searched for the answer's `Nats-Msg-Id` (`completed_id`, the same for
        every run of the request). Asked only when a cloud answer may exist (rare)."""
        try:
            answer_id = completed_id(work)
        except UnusableIdsError:
            return None  # no answer can have been stored under an id derived from these ids
        subject = subjects.cloud_chat_completed(work.copro_id)
        since = work.time - ANSWER_LOOKBACK
        async for stored in messages_since(self._nc, self._js, subject, since, limit=ANSWERS_READ_MAX):
            if (stored.headers or {}).get(MSG_ID_HEADER) != answer_id:
                continue
            # Not one: the item is answered as if nothing were stored (and the stream de-duplicates).
            if not stored.data:
                return None
            try:
                answer = ChatCompleted.model_validate_json(stored.data)
            except ValidationError:
                log.error("the stored answer of request %s is unreadable; answering again", work.request_id)
                return None
            if answer.request_id != work.request_id or answer.copro_id != work.copro_id:
                log.error("the answer stored as %s is another request's; answering again", answer_id)
                return None
            return answer
        return None

    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        await publish_event(self._js, subjects.inference_attempt_failed(failed.copro_id), failed)

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:
        await self._nc.publish(reply_subject, delta.model_dump_json().encode())

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        async with self._cancels.flag(subjects.chat_cancel(request_id)) as gone:
            yield gone
