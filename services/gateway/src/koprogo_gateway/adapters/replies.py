"""Answers addressed to this gateway arrive on its own reply subject and wake the waiting request.

`ReplyWaiter` sorts the replies (`InferenceStarted`, `ChatDelta`, `ChatCompleted`,
`ChatFailed`) to the request they answer; the NATS subscription only parses them. The fake
chat bus hands it scripted replies the same way (`adapters/chat_bus.py`).

Who sent a reply is known from its subject. An edge node with a NATS key may publish only on
`<reply subject>.node.<its id>` (`subjects.node_reply`; the server refuses it the rest), so a
reply there comes from that node: it is taken only from the node that said it runs the
request (its `InferenceStarted`, the latest one: a work item redelivered after its node died
goes to another), and every node id in it must be the sender's. The gateway's own subject is
for the stack's services (router, cloud worker) and, on a NATS server without keys, nodes.
A refused reply is logged and counted (`koprogo_gateway_replies_refused_total`).

A streamed request takes its pieces in index order, from the target running it only (each
piece's `source` is its emitter): a repeated index is dropped, and after a missing one the rest
is held back (the completion has it all). When the target changes after pieces were taken (the
work item redelivered to another node, or to the same one restarted, or the router falling back
to the cloud), what the new one says cannot follow what the caller has: the pieces end with
`RunnerChanged`, and the caller never gets a mix of two answers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter
from pydantic import ValidationError

from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    InferenceStarted,
    reply_message_adapter,
)
from koprogo_shared.telemetry import consumer_span

log = logging.getLogger(__name__)

REPLIES_REFUSED = Counter(
    "koprogo_gateway_replies_refused_total",
    "Replies from an edge node that does not run the request, or naming another node",
    ["reason"],
)

ReplyEvent = ChatCompleted | ChatFailed | InferenceStarted | ChatDelta


@dataclass(frozen=True, slots=True)
class RunnerChanged:
    """Ends a stream's pieces: the target running it changed after pieces of the first were taken."""

    previous: str
    current: str


@dataclass
class ExpectedReplies:
    """What one request waits for: its outcome, its streamed pieces in order, the node running it."""

    outcome: asyncio.Future[ChatCompleted | ChatFailed]
    # Streamed requests only (pieces of one target, in index order, or its change last); empty otherwise.
    pieces: asyncio.Queue[ChatDelta | RunnerChanged] = field(default_factory=asyncio.Queue)
    streamed: bool = False
    # The node that said it is generating this request's answer, if any.
    node_id: str | None = None
    # The subject token of that node when it said so on its own reply subject (it holds a key);
    # None when it came on the gateway's subject.
    sender: str | None = None
    # A piece went missing (an index skipped): later pieces are held back, the completion has them.
    pieces_lost: bool = False
    # The emitter (`source`) whose pieces are taken, and how many were; emitters replaced since.
    _runner: str | None = None
    _runner_name: str | None = None
    _taken: int = 0
    _replaced: set[str] = field(default_factory=set)
    _changed: bool = False

    def started(self, reply: InferenceStarted, sender: str | None) -> None:
        self.node_id = reply.node_id
        self.sender = sender
        if not self.streamed:
            return
        if reply.source == self._runner and self._taken and not self._changed:
            # The same node started it again (it restarted and got the work item back): a new
            # answer, which cannot follow the first one's pieces either.
            self._changed = True
            self.pieces.put_nowait(RunnerChanged(self._runner_name or reply.source, reply.node_id))
            return
        self._run_by(reply.source, reply.node_id)

    def piece(self, delta: ChatDelta) -> None:
        if not self.streamed or self._changed or delta.source in self._replaced:
            return
        if self._runner != delta.source:
            self._run_by(delta.source, delta.source)  # a target that never said it started
            if self._changed:
                return
        if delta.index < self._taken:
            return  # the same piece again
        if delta.index > self._taken or self.pieces_lost:
            self.pieces_lost = True
            return
        self._taken += 1
        self.pieces.put_nowait(delta)

    def ended(self, reply: ChatCompleted | ChatFailed) -> None:
        if self.outcome.done():
            return
        if self.streamed and isinstance(reply, ChatCompleted):
            if reply.source in self._replaced:
                return  # the answer of a target that no longer runs it
            if self._runner is not None:
                self._run_by(reply.source, reply.source)
        # Kept even after a change (the pieces ended): a retry with an idempotency key gets it.
        self.outcome.set_result(reply)

    @property
    def runner_changed(self) -> bool:
        return self._changed

    def _run_by(self, source: str, name: str) -> None:
        """`source` runs the request from now on; a change after pieces were taken ends them."""
        if self._runner == source:
            return
        if self._runner is not None:
            self._replaced.add(self._runner)
            self._replaced.discard(source)
            if self._taken and not self._changed:
                self._changed = True
                self.pieces.put_nowait(RunnerChanged(self._runner_name or self._runner, name))
        self._runner, self._runner_name = source, name


class ReplyWaiter:
    def __init__(self) -> None:
        self._expected: dict[str, ExpectedReplies] = {}
        self._subs: list[Subscription] = []
        self._subject = ""

    async def start(self, nc: NATS, subject: str) -> None:
        self._subject = subject
        self._subs = [
            await nc.subscribe(subject, cb=self._on_reply),
            await nc.subscribe(subjects.node_replies(subject), cb=self._on_reply),
        ]

    def expect(self, request_id: str, *, streamed: bool = False) -> ExpectedReplies:
        expected = ExpectedReplies(asyncio.get_running_loop().create_future(), streamed=streamed)
        self._expected[request_id] = expected
        return expected

    def forget(self, request_id: str) -> None:
        self._expected.pop(request_id, None)

    @property
    def pending(self) -> int:
        return len(self._expected)

    def sender_of(self, request_id: str) -> str | None:
        """The node (subject token) running `request_id` that holds a key, if that is known."""
        expected = self._expected.get(request_id)
        return expected.sender if expected is not None else None

    def deliver(self, reply: ReplyEvent, sender: str | None = None) -> None:
        """Hand `reply` to the request it answers; nobody waiting (timed out, a duplicate): dropped.

        `sender`: the node whose own reply subject it came on (None: the gateway's subject).
        """
        expected = self._expected.get(reply.request_id)
        # A reply for a request that already timed out (or a redelivered duplicate) has
        # nobody waiting; the durable copy of an outcome is in KOPROGO_EVENTS for the ledger.
        if expected is None:
            return
        if sender is not None:
            refusal = _refusal(reply, sender, expected)
            if refusal is not None:
                REPLIES_REFUSED.labels(refusal).inc()
                log.warning(
                    "refused a %s for %s from node %s: %s", reply.type, reply.request_id, sender, refusal
                )
                return
        if isinstance(reply, InferenceStarted):
            expected.started(reply, sender)
        elif isinstance(reply, ChatDelta):
            expected.piece(reply)
        else:
            expected.ended(reply)

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = reply_message_adapter.validate_json(msg.data)
        except ValidationError as exc:
            log.error("malformed reply on %s: %d errors", msg.subject, exc.error_count())
            return
        sender = None if msg.subject == self._subject else msg.subject.rsplit(".", 1)[1]
        if isinstance(reply, ChatDelta):
            self.deliver(reply, sender)  # streamed pieces carry no trace: one span per token would drown it
            return
        # In the worker's trace (its reply carries it): the chat's trace shows the answer arriving.
        with consumer_span(msg):
            self.deliver(reply, sender)


def _refusal(reply: ReplyEvent, sender: str, expected: ExpectedReplies) -> str | None:
    """Why a reply from node `sender` (on its own subject) is not taken, or None."""
    if isinstance(reply, InferenceStarted):
        return None if subjects.subject_token(reply.node_id) == sender else "node_id_not_its_subject"
    if isinstance(reply, ChatFailed) and expected.node_id is None:
        # A node may fail a request before generating (it cannot run it): that ends the
        # request with an error, it never answers it.
        return None
    if expected.sender != sender:
        return "not_the_node_running_it"
    if isinstance(reply, ChatCompleted) and subjects.subject_token(reply.execution_info.node_id) != sender:
        return "node_id_not_its_subject"
    return None
