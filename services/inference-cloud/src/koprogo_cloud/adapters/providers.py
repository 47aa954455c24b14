"""Provider SDK adapters behind one port, `ChatProvider`.

Every SDK client is built with `max_retries=0`: the service retries with its own policy
(Retry-After, deadline-bounded, counted in metrics) instead of the SDK retrying out of
sight. SDK exceptions become `ProviderError`; their text (which quotes the raw response
body, possibly an echoed key) is never passed on, only a short sanitized detail.
Token counts come from the provider's `usage` only.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import openai

from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.errors import ProviderError
from koprogo_cloud.domain.failures import anthropic_finish_reason, openai_finish_reason, safe_detail
from koprogo_cloud.domain.retry_policy import parse_retry_after
from koprogo_shared.events import ChatMessage, FinishReason, utc_now

log = logging.getLogger(__name__)

# The OpenAI SDK refuses to start without a key; a keyless local server ignores this one.
NO_KEY_PLACEHOLDER = "no-key"


@dataclass(frozen=True, slots=True)
class ProviderResult:
    content: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ChatProvider(ABC):
    """One provider account: completes a chat or raises ProviderError."""

    @abstractmethod
    async def complete(
        self,
        provider_model: str,
        messages: Sequence[ChatMessage],
        temperature: float | None,
        max_tokens: int,
        timeout_s: float,
    ) -> ProviderResult: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP client."""


def _status_error(
    exc: anthropic.APIStatusError | openai.APIStatusError, secrets: tuple[str, ...]
) -> ProviderError:
    headers = exc.response.headers
    retry_after = parse_retry_after(headers.get("retry-after"), headers.get("retry-after-ms"), now=utc_now())
    detail = ""
    if exc.status_code in (400, 413, 422):
        # Only a rejected request's explanation is useful to the caller ("prompt is too long").
        detail = safe_detail(_body_message(exc.body), secrets)
    return ProviderError("status", detail, status=exc.status_code, retry_after_s=retry_after)


def _body_message(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return None


class AnthropicProvider(ChatProvider):
    """Anthropic's Messages API: system messages go to `system=`, `max_tokens` is required."""

    def __init__(self, deployment: Deployment, api_key: str) -> None:
        self._secrets = (api_key,)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=deployment.effective_base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
        )

    async def complete(
        self,
        provider_model: str,
        messages: Sequence[ChatMessage],
        temperature: float | None,
        max_tokens: int,
        timeout_s: float,
    ) -> ProviderResult:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns: list[Any] = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
        extra: dict[str, Any] = {}
        if system:
            extra["system"] = system
        if temperature is not None:
            extra["temperature"] = min(max(temperature, 0.0), 1.0)  # Anthropic accepts 0..1
        try:
            response = await self._client.messages.create(
                model=provider_model, messages=turns, max_tokens=max_tokens, timeout=timeout_s, **extra
            )
        except anthropic.APITimeoutError:
            raise ProviderError("timeout", "no answer in time") from None
        except anthropic.APIConnectionError:
            raise ProviderError("connection", "unreachable") from None
        except anthropic.APIStatusError as exc:
            raise _status_error(exc, self._secrets) from None
        except anthropic.APIResponseValidationError:
            raise ProviderError("bad_response", "the answer does not match the Messages API") from None
        usage = getattr(response, "usage", None)
        if usage is None:
            raise ProviderError("bad_response", "the answer carries no token usage")
        content = "".join(getattr(block, "text", "") for block in response.content if block.type == "text")
        return ProviderResult(
            content=content,
            finish_reason=anthropic_finish_reason(response.stop_reason),
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
        )

    async def close(self) -> None:
        await self._client.close()


class OpenAIProvider(ChatProvider):
    """OpenAI's Chat Completions API; also Mistral and any OpenAI-compatible server (`base_url`)."""

    def __init__(self, deployment: Deployment, api_key: str | None) -> None:
        self._secrets = (api_key,) if api_key else ()
        self._client = openai.AsyncOpenAI(
            api_key=api_key or NO_KEY_PLACEHOLDER,
            base_url=deployment.effective_base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
        )

    async def complete(
        self,
        provider_model: str,
        messages: Sequence[ChatMessage],
        temperature: float | None,
        max_tokens: int,
        timeout_s: float,
    ) -> ProviderResult:
        turns: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        extra: dict[str, Any] = {}
        if temperature is not None:
            extra["temperature"] = temperature
        try:
            response = await self._client.chat.completions.create(
                model=provider_model, messages=turns, max_tokens=max_tokens, timeout=timeout_s, **extra
            )
        except openai.APITimeoutError:
            raise ProviderError("timeout", "no answer in time") from None
        except openai.APIConnectionError:
            raise ProviderError("connection", "unreachable") from None
        except openai.APIStatusError as exc:
            raise _status_error(exc, self._secrets) from None
        except openai.APIResponseValidationError:
            raise ProviderError(
                "bad_response", "the answer does not match the Chat Completions API"
            ) from None
        if not response.choices:
            raise ProviderError("bad_response", "the answer has no choices")
        if response.usage is None:
            raise ProviderError("bad_response", "the answer carries no token usage")
        choice = response.choices[0]
        return ProviderResult(
            content=choice.message.content or "",
            finish_reason=openai_finish_reason(choice.finish_reason),
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
        )

    async def close(self) -> None:
        await self._client.close()


def build_provider(deployment: Deployment, api_key: str | None) -> ChatProvider:
    if deployment.provider == "anthropic":
        if api_key is None:
            raise ValueError("an Anthropic deployment needs a key")
        return AnthropicProvider(deployment, api_key)
    return OpenAIProvider(deployment, api_key)
