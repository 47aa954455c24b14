"""Anthropic's Messages API through the `anthropic` SDK: system turns go to `system=`, `max_tokens` is required."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic

from koprogo_cloud.adapters.providers import ChatProvider, OnDelta, ProviderCall, ProviderResult, status_error
from koprogo_cloud.domain.anthropic_mapping import anthropic_chat, anthropic_params, anthropic_tool_calls
from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.errors import ProviderError
from koprogo_cloud.domain.failures import answer_finish_reason, anthropic_finish_reason, stream_error_status

log = logging.getLogger(__name__)
# Where the SDK's HTTP stack raises from (httpx2 in anthropic 2.x, httpx before).
_TRANSPORT_MODULES = ("httpx", "httpcore", "anyio", "h11", "h2")


class AnthropicProvider(ChatProvider):
    """Messages API calls, tools as `tool_use` / `tool_result` blocks (`domain/anthropic_mapping.py`)."""

    def __init__(self, deployment: Deployment, api_key: str) -> None:
        self._secrets = (api_key,)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=deployment.effective_base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
        )

    def _request(self, call: ProviderCall) -> dict[str, Any]:
        chat = anthropic_chat(call.messages)
        request: dict[str, Any] = {
            "model": call.provider_model,
            "messages": chat.messages,
            "max_tokens": call.max_tokens,
            "timeout": call.timeout_s,
        }
        if chat.system:
            request["system"] = chat.system
        request |= anthropic_params(call.controls, call.features)
        sampling: dict[str, float] = {}
        if call.temperature is not None:
            sampling["temperature"] = min(max(call.temperature, 0.0), 1.0)  # Anthropic accepts 0..1
        if "top_p" in request:
            sampling["top_p"] = request.pop("top_p")
        if sampling:
            # The anthropic 2.x SDK no longer lists temperature and top_p (Anthropic's newest models
            # refuse them): they go as body fields all the same, and a model that refuses one
            # answers 400, which the caller gets as provider_rejected_request, never a silent drop.
            request["extra_body"] = sampling
        return request

    async def complete(self, call: ProviderCall) -> ProviderResult:
        request = self._request(call)
        with self._errors():
            response = await self._client.messages.create(**request)
        return _result(response, call.request_id)

    async def stream(self, call: ProviderCall, on_delta: OnDelta) -> ProviderResult:
        request = self._request(call)
        with self._errors():
            # The SDK's stream helper assembles the message (tool_use inputs, the usage of
            # message_start and message_delta); closing it (also on cancel) closes the connection.
            async with self._client.messages.stream(**request) as stream:
                async for event in stream:
                    if event.type == "text" and event.text:
                        await on_delta(event.text)
                message = await stream.get_final_message()
        if message.stop_reason is None:
            # No message_delta: the stream ended early, and its output usage was never reported.
            raise ProviderError("bad_response", "the stream ended before the message did")
        return _result(message, call.request_id)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The SDK's exceptions as ProviderError (never their text: it may quote a key)."""
        try:
            yield
        except ProviderError:
            raise
        except anthropic.APITimeoutError:
            raise ProviderError("timeout", "no answer in time") from None
        except anthropic.APIConnectionError:
            raise ProviderError("connection", "unreachable") from None
        except anthropic.APIStatusError as exc:
            status = exc.status_code
            if status < 400:  # an error event in the middle of a stream (the response was a 200)
                status = stream_error_status(exc.body)
            raise status_error(status, exc.response.headers, exc.body, self._secrets) from None
        except anthropic.APIResponseValidationError:
            raise ProviderError("bad_response", "the answer does not match the Messages API") from None
        except anthropic.APIError:
            raise ProviderError("bad_response", "the answer does not match the Messages API") from None
        except Exception as exc:
            # The SDK passes a stream's transport errors (read timeout, connection cut) through
            # unwrapped, as its HTTP library's own exceptions; anything else is a bug: raised.
            name = type(exc).__name__
            if not type(exc).__module__.startswith(_TRANSPORT_MODULES):
                raise
            log.info("anthropic stream broke off: %s", name)
            if "Timeout" in name:
                raise ProviderError("timeout", "the stream stalled") from None
            raise ProviderError("connection", "the stream broke off") from None

    async def close(self) -> None:
        await self._client.close()


def _result(message: Any, request_id: str) -> ProviderResult:
    usage = getattr(message, "usage", None)
    if usage is None:
        raise ProviderError("bad_response", "the answer carries no token usage")
    blocks = list(message.content)
    calls = anthropic_tool_calls(
        [(b.id, b.name, b.input) for b in blocks if b.type == "tool_use"], request_id
    )
    return ProviderResult(
        content="".join(getattr(b, "text", "") for b in blocks if b.type == "text"),
        finish_reason=answer_finish_reason(anthropic_finish_reason(message.stop_reason), calls),
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        tool_calls=calls,
    )
