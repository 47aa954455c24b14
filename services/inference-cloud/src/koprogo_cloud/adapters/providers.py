"""The port behind which every provider SDK sits: `ChatProvider` (one call, whole or streamed).

Every SDK client is built with `max_retries=0`: the service retries with its own policy
(Retry-After, deadline-bounded, counted in metrics) instead of the SDK retrying out of
sight. SDK exceptions become `ProviderError`; their text (which quotes the raw response
body, possibly an echoed key) is never passed on, only a short sanitized detail.
Token counts come from the provider's `usage` only. The adapters: `anthropic_provider`,
`openai_provider` (OpenAI, Mistral, OpenAI-compatible servers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from koprogo_cloud.domain.errors import ProviderError
from koprogo_cloud.domain.failures import safe_detail
from koprogo_cloud.domain.retry_policy import parse_retry_after
from koprogo_shared.events import ChatMessage, FinishReason, utc_now
from koprogo_shared.generation import GenerationControls, TokenLogprob, ToolCall

# Receives each piece of text of a streamed answer, in order.
OnDelta = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One call: the provider's model, the chat, its limits, and the controls to pass on."""

    provider_model: str
    messages: Sequence[ChatMessage]
    temperature: float | None
    max_tokens: int
    timeout_s: float
    # Tool calls the provider leaves without an id get one derived from the request.
    request_id: str
    controls: GenerationControls | None = None
    # The deployment's features (the controls already fit them; see the mapping modules).
    features: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ProviderResult:
    content: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[ToolCall] | None = None
    # Per generated token, when the controls asked for `logprobs` (None otherwise).
    logprobs: list[TokenLogprob] | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ChatProvider(ABC):
    """One provider account: completes a chat or raises ProviderError (or UnmappableRequestError)."""

    @abstractmethod
    async def complete(self, call: ProviderCall) -> ProviderResult: ...

    @abstractmethod
    async def stream(self, call: ProviderCall, on_delta: OnDelta) -> ProviderResult:
        """The same answer, its text handed to `on_delta` piece by piece as the provider sends it.

        Tool calls and log probabilities are not pieces: they come whole in the result. The
        usage is the one the provider reports at the end of the stream; a stream that ends
        without it is a `bad_response`. Cancelling the call closes the stream (the provider
        stops generating).
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP client."""


def status_error(status: int, headers: object, body: object, secrets: tuple[str, ...]) -> ProviderError:
    """A provider's HTTP error status as ProviderError, with its Retry-After and, for a rejected request, why."""
    get = getattr(headers, "get", lambda _name: None)
    retry_after = parse_retry_after(get("retry-after"), get("retry-after-ms"), now=utc_now())
    detail = ""
    if status in (400, 413, 422):
        # Only a rejected request's explanation is useful to the caller ("prompt is too long").
        detail = safe_detail(_body_message(body), secrets)
    return ProviderError("status", detail, status=status, retry_after_s=retry_after)


def _body_message(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return None
