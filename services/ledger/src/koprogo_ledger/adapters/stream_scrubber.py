"""GDPR erasure in the audit log: delete the user's messages from KOPROGO_EVENTS.

PostgreSQL loses the user's contents when the ledger applies `UserDataErasureRequested`;
the same contents also sit in the JetStream file store until the stream's own 30-day limit
(`ChatRequested` holds the messages, `ChatCompleted` the answer, `InferenceAttemptFailed`
the work; a grid task's input and result in its submission, report and decision). After the
erasure is committed, the ledger finds the user's request and task ids in PostgreSQL, reads
the stream's content-bearing subjects once, up to the erasure's own position
(`audit_log.read_messages`), and deletes (`STREAM.MSG.DELETE`, the message is erased from
the store) every message of those requests and tasks. Chats the user sends after the erasure stay.
Deleting an already deleted message is not an error, so a redelivered erasure scrubs again
safely. Events without contents (failures, deliveries) are kept: the audit log still shows
that the requests happened.

A message is deleted only once every durable consumer of it (`OTHER_CONSUMERS`: the router's
two, the grid scheduler's; every cloud deployment's and edge pool's durable of the requests
gateways routed to it, `subjects.is_routed_requests_durable`; and the ledger's own) has acknowledged it, read from
their ack floors (one consumer listing of the stream): a chat in flight still reaches the
router, its worker and the ledger. A routed request past its deadline is not waited for
(its worker would only fail it), so a retired deployment's durable holds nothing back. While some are not, `erase_user` deletes the rest
and raises `ScrubPendingError`; the ledger then keeps the erasure pending and scrubs again
(`koprogo_shared.decisions.Defer`) until nothing is left. A consumer that does not exist
holds nothing back.

Reading the whole window once per erasure is linear in the stream's size; erasures are rare
and a copro's 30-day stream is small. Dead letters (KOPROGO_DEADLETTER, 90 days) are not
scrubbed yet; nor are the grid scheduler's task state (its key-value bucket) and the task
documents in the object store: those are not the ledger's.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from koprogo_ledger.adapters.postgres_chat_rows import USER_REQUESTS
from koprogo_ledger.adapters.postgres_tasks import USER_TASKS
from koprogo_ledger.domain.records import user_key
from koprogo_shared import subjects
from koprogo_shared.audit_log import read_messages

log = logging.getLogger(__name__)

# Subjects whose events carry contents; the request id is `id` (requests) or `request_id`, the
# task id `id` (submissions) or `task_id`. A task's input is in its TaskSubmitted, its result in
# the node's TaskResultReported and the scheduler's TaskCompleted, and a failure's message may
# quote the input; assignments, starts, requeues and the other decisions carry none.
CONTENT_SUBJECTS = (
    subjects.CHAT_REQUESTED_ALL,
    "koprogo.events.chat.completed.>",
    subjects.INFERENCE_ATTEMPT_FAILED_ALL,
    subjects.TASK_SUBMITTED_ALL,
    subjects.TASK_REPORTED_ALL,
    "koprogo.events.task.completed.>",
    "koprogo.events.task.failed.>",
)
# The durable consumers of those subjects besides the ledger's own: a message waits for them.
OTHER_CONSUMERS = (subjects.ROUTER_DURABLE, subjects.ROUTER_FALLBACK_DURABLE, subjects.GRID_SCHEDULER_DURABLE)


class ScrubPendingError(Exception):
    """Some of the user's messages are not yet acknowledged by a consumer: scrub again later."""

    def __init__(self, deleted: int, waiting: int, consumers: Iterable[str]) -> None:
        super().__init__(
            f"{waiting} message(s) not yet acknowledged by {', '.join(sorted(consumers))} ({deleted} deleted)"
        )
        self.deleted = deleted
        self.waiting = waiting


class StreamScrubber(abc.ABC):
    @abc.abstractmethod
    async def erase_user(self, user_id: str, *, before: int) -> int:
        """Delete the user's (any id shape) content-bearing events stored before stream sequence `before`; how many.

        Raises ScrubPendingError when some could not be deleted yet (see the module's docstring).
        """


class FakeStreamScrubber(StreamScrubber):
    def __init__(self) -> None:
        self.erased: list[tuple[str, int]] = []

    async def erase_user(self, user_id: str, *, before: int) -> int:
        self.erased.append((user_id, before))
        return 0


@dataclass(frozen=True, slots=True)
class _AckFloor:
    consumer: str
    filters: tuple[str, ...]
    stream_seq: int  # every message of `filters` up to this sequence is acknowledged


class NatsStreamScrubber(StreamScrubber):
    def __init__(
        self, js: JetStreamContext, db: asyncpg.Pool, *, ledger_durable: str = subjects.LEDGER_DURABLE
    ) -> None:
        self._js = js
        self._db = db
        self._consumers = (*OTHER_CONSUMERS, ledger_durable)

    async def erase_user(self, user_id: str, *, before: int) -> int:
        user = user_key(str(user_id))
        rows = await self._db.fetch(
            f"SELECT q.id FROM mcp_requests AS q WHERE {USER_REQUESTS}"
            f" UNION ALL SELECT t.id FROM mcp_tasks AS t WHERE {USER_TASKS}",
            user.ref,
            user.as_uuid,
        )
        # Request and task ids are UUIDs: one set serves both.
        request_ids = {str(r["id"]) for r in rows}
        if not request_ids:
            return 0
        floors = await self._ack_floors()
        deleted = waiting = 0
        waiting_for: set[str] = set()
        for subject in CONTENT_SUBJECTS:
            async for message in read_messages(self._js, subject, before=before):
                if _owner_id(message.event) not in request_ids:
                    continue
                expired = _past_deadline(message.event)
                behind = [
                    f.consumer
                    for f in floors
                    if message.seq > f.stream_seq
                    and any(_matches(message.subject, p) for p in f.filters)
                    # A worker (cloud or edge) would only fail a request past its deadline: never waited for
                    # (a retired deployment's durable would otherwise hold the erasure 30 days).
                    and not (expired and subjects.is_routed_requests_durable(f.consumer))
                ]
                if behind:
                    waiting += 1
                    waiting_for.update(behind)
                    continue
                try:
                    await self._js.delete_msg(subjects.EVENTS_STREAM, message.seq)
                    deleted += 1
                except NotFoundError:
                    pass  # already gone (an earlier delivery of this erasure, or the age limit)
        log.info("erasure: %d audit-log messages of %d request(s) deleted", deleted, len(request_ids))
        if waiting:
            raise ScrubPendingError(deleted, waiting, waiting_for)
        return deleted

    async def _ack_floors(self) -> list[_AckFloor]:
        floors = []
        # A consumer that does not exist is not listed: nothing of it is in flight.
        for info in await self._all_consumers():
            if info.name not in self._consumers and not subjects.is_routed_requests_durable(info.name):
                continue  # an ephemeral reader (an ordered consumer), which holds nothing back
            config = info.config
            filters = tuple(config.filter_subjects or ()) or (config.filter_subject or ">",)
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            floors.append(_AckFloor(info.name, filters, floor))
        return floors

    async def _all_consumers(self) -> list[ConsumerInfo]:
        """Every consumer of the audit log, page after page (JetStream lists up to 256 at a time)."""
        consumers: list[ConsumerInfo] = []
        while page := await self._js.consumers_info(subjects.EVENTS_STREAM, offset=len(consumers) or None):
            consumers += page
        return consumers


def _matches(subject: str, pattern: str) -> bool:
    """Whether a NATS subject matches a filter (`*` one token, `>` one or more at the end)."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def _past_deadline(event: dict[str, Any]) -> bool:
    """Whether the event is a request whose deadline has passed (False when it names none)."""
    deadline = event.get("deadline")
    if not isinstance(deadline, str):
        return False
    try:
        return datetime.fromisoformat(deadline) <= datetime.now(UTC)
    except ValueError:
        return False


def _owner_id(event: dict[str, Any]) -> str | None:
    """The request or task an event belongs to."""
    value = event.get("request_id") or event.get("task_id") or event.get("id")
    return value if isinstance(value, str) else None
