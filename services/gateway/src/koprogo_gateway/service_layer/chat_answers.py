"""What the chat use case hands its callers: the answer, the stream, and the pieces' rules.

`ChatAnswer` and `ChatStream` are what `ChatService` returns; the functions turn a worker's
outcome, a stored outcome (a retry with an idempotency key) or the next queued piece into
them, or into the GatewayError the caller gets.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from koprogo_gateway.adapters.replies import RunnerChanged
from koprogo_gateway.domain.chat_request import ChatResponseOut
from koprogo_gateway.domain.errors import (
    ChatRefusedError,
    GatewayError,
    NodeChangedError,
    StreamIncompleteError,
)
from koprogo_gateway.domain.idempotency import REPLAYED_HEADER, StoredError, StoredOutcome
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed


@dataclass(frozen=True)
class ChatAnswer:
    """A completed chat: the worker's completion, the latency the caller saw, the rate-limit fields.

    `replayed`: the stored answer of an earlier request with the same idempotency key.
    """

    completion: ChatCompleted
    latency_ms: float
    rate_limit_headers: dict[str, str]
    replayed: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """The response's header fields: the rate-limit ones, and `Idempotent-Replayed` on a replay."""
        return self.rate_limit_headers | replayed_headers(self.replayed)

    def response(self) -> ChatResponseOut:
        """The seed's response shape, with the latency the caller saw instead of the node's."""
        completion = self.completion
        return ChatResponseOut(
            id=completion.id,
            model=completion.model,
            content=completion.content,
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            execution_info=completion.execution_info.model_copy(
                update={"latency_ms": round(self.latency_ms, 3)}
            ),
            tool_calls=completion.tool_calls,
            logprobs=completion.logprobs,
        )


@dataclass(frozen=True)
class ChatStream:
    """An admitted streamed chat: its rate-limit fields, then its pieces in order and its answer last.

    Iterating `pieces` may raise a GatewayError (refused, timed out, node lost or changed);
    closing it before the answer (the caller left) stops the generation, unless the request has
    an idempotency key. `replayed`: the pieces are an earlier request's stored answer.
    """

    rate_limit_headers: dict[str, str]
    pieces: AsyncGenerator[ChatDelta | ChatAnswer, None]
    replayed: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return self.rate_limit_headers | replayed_headers(self.replayed)


def replayed_headers(replayed: bool) -> dict[str, str]:
    return {REPLAYED_HEADER: "true"} if replayed else {}


def completed(outcome: ChatCompleted | ChatFailed) -> ChatCompleted:
    """The completion, or the refusal the worker or router reported as a GatewayError."""
    if isinstance(outcome, ChatFailed):
        extra: dict[str, object] = {"known_models": outcome.known_models} if outcome.known_models else {}
        raise ChatRefusedError(outcome.status, outcome.error, outcome.message, extra)
    return outcome


def error_of(stored: StoredError, *, replayed: bool = False) -> GatewayError:
    error = ChatRefusedError(stored.status, stored.error, stored.message, dict(stored.extra))
    error.headers = replayed_headers(replayed)
    return error


def replay(outcome: StoredOutcome, rate_limit_headers: dict[str, str]) -> ChatAnswer:
    """The stored outcome as this retry's answer, or its error (both say they are replayed)."""
    if outcome.error is not None:
        error = error_of(outcome.error, replayed=True)
        error.headers = rate_limit_headers | error.headers
        raise error
    assert outcome.completion is not None
    return ChatAnswer(outcome.completion, outcome.latency_ms, rate_limit_headers, replayed=True)


async def replayed_pieces(
    outcome: Callable[[], Awaitable[StoredOutcome]], rate_limit_headers: dict[str, str]
) -> AsyncGenerator[ChatDelta | ChatAnswer, None]:
    """A stored (or awaited) answer as a stream: its whole content as one piece, then the answer."""
    answer = replay(await outcome(), rate_limit_headers)
    completion = answer.completion
    if completion.content:
        yield ChatDelta(
            source=completion.source,
            copro_id=completion.copro_id,
            request_id=completion.request_id,
            index=0,
            delta=completion.content,
        )
    yield answer


def next_delta(item: ChatDelta | RunnerChanged) -> ChatDelta:
    """The next piece, or NodeChangedError when another run of the request took it over."""
    if isinstance(item, RunnerChanged):
        moved = (
            f"started over on {item.current}"
            if item.previous == item.current
            else f"moved from {item.previous} to {item.current}"
        )
        raise NodeChangedError(
            f"the request {moved} after part of the answer was sent, and the new answer cannot "
            "follow the first one's pieces: send it again (with an Idempotency-Key, the retry gets "
            "the whole new answer)"
        )
    return item


def rest_of(completion: ChatCompleted, sent: list[str], pieces_lost: bool) -> str:
    """What the caller has not been sent of the completion: all of it when no piece came, the
    end after a lost piece (the pieces it got are the content's beginning)."""
    if not sent:
        return completion.content
    if not pieces_lost:
        return ""
    so_far = "".join(sent)
    if not completion.content.startswith(so_far):
        raise StreamIncompleteError(
            "a piece of the streamed answer was lost on the way and the answer does not continue "
            "the pieces sent: send the request again"
        )
    return completion.content[len(so_far) :]
