"""OpenAI's Chat Completions API: OpenAI, Mistral, any OpenAI-compatible server.

A whole answer is one POST on the `openai` SDK's own HTTP client (its connection pool and
defaults), with the headers and URL the SDK would send built once, the body in, the JSON out:
the SDK's request building (its per-call transform of the parameters) and its response models
were most of the worker's CPU per chat (issue 17). The semantics stay the SDK's, as this
service uses it (`max_retries=0`): its timeout and connection errors, an error status with
the same error body, the provider's own usage. Streams go through the SDK (its SSE decoder).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
import httpx2
import openai

from koprogo_cloud.adapters.providers import ChatProvider, OnDelta, ProviderCall, ProviderResult, status_error
from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.errors import ProviderError
from koprogo_cloud.domain.failures import answer_finish_reason, openai_finish_reason
from koprogo_cloud.domain.openai_mapping import (
    StreamedToolCalls,
    answer_logprobs,
    answered_tool_calls,
    asked_top_logprobs,
    openai_messages,
    openai_params,
)

# The OpenAI SDK refuses to start without a key; a keyless local server ignores this one.
NO_KEY_PLACEHOLDER = "no-key"


class OpenAIProvider(ChatProvider):
    """Chat Completions, the controls passed in OpenAI's own shape (`domain/openai_mapping.py`)."""

    def __init__(self, deployment: Deployment, api_key: str | None) -> None:
        self._secrets = (api_key,) if api_key else ()
        # Mistral ends every stream with the usage unasked (and has no `stream_options`).
        self._stream_options = deployment.provider != "mistral"
        # The SDK's HTTP client with the SDK's defaults (connection limits, redirects), shared by both paths.
        self._http = openai.DefaultAsyncHttpxClient(timeout=deployment.timeout_s)
        self._client = openai.AsyncOpenAI(
            api_key=api_key or NO_KEY_PLACEHOLDER,
            base_url=deployment.effective_base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=self._http,
        )
        # What the SDK sends with every call, once (its base URL ends with "/"; parsed here, not per call).
        self._url = httpx2.URL(f"{self._client.base_url}chat/completions")
        self._headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": self._client.user_agent,
            "Authorization": f"Bearer {self._client.api_key}",
        }
        if self._client.organization is not None:
            self._headers["OpenAI-Organization"] = self._client.organization
        if self._client.project is not None:
            self._headers["OpenAI-Project"] = self._client.project

    def _request(self, call: ProviderCall) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": call.provider_model,
            "messages": openai_messages(call.messages),
            "max_tokens": call.max_tokens,
            "timeout": call.timeout_s,
        }
        if call.temperature is not None:
            request["temperature"] = call.temperature
        return request | openai_params(call.controls, call.features)

    async def complete(self, call: ProviderCall) -> ProviderResult:
        request = self._request(call)
        timeout = request.pop("timeout")
        body = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await self._http.post(self._url, content=body, headers=self._headers, timeout=timeout)
        except httpx2.TimeoutException:
            raise ProviderError("timeout", "no answer in time") from None
        except _CONNECTION_ERRORS:
            raise ProviderError("connection", "unreachable") from None
        if not response.is_success:
            raise status_error(
                response.status_code, response.headers, _error_body(response.text), self._secrets
            )
        try:
            answer = json.loads(response.content)
        except ValueError:
            raise ProviderError("bad_response", "the answer is not JSON") from None
        try:
            return _whole_answer(answer, call)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderError(
                "bad_response", "the answer does not match the Chat Completions API"
            ) from None

    async def stream(self, call: ProviderCall, on_delta: OnDelta) -> ProviderResult:
        request = self._request(call) | {"stream": True}
        if self._stream_options:
            request["stream_options"] = {"include_usage": True}
        text: list[str] = []
        tool_calls = StreamedToolCalls()
        # Each chunk's tokens, end to end; None until a chunk carries some.
        logprobs: list[dict[str, Any]] | None = None
        finish: str | None = None
        usage = None
        with self._errors():
            stream = await self._client.chat.completions.create(**request)
            async with stream:  # closing it (also on cancel) closes the connection: the server stops
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue
                        if choice.delta.content:
                            text.append(choice.delta.content)
                            await on_delta(choice.delta.content)
                        for tc in choice.delta.tool_calls or ():
                            fn = tc.function
                            tool_calls.add(
                                tc.index, tc.id, fn.name if fn else None, fn.arguments if fn else None
                            )
                        if choice.logprobs is not None and choice.logprobs.content is not None:
                            if logprobs is None:
                                logprobs = []
                            logprobs.extend(lp.model_dump() for lp in choice.logprobs.content)
                        if choice.finish_reason is not None:
                            finish = choice.finish_reason
        if usage is None:
            raise ProviderError(
                "bad_response",
                "the stream carried no token usage (a server without stream_options.include_usage: "
                "set stream = false for this deployment)",
            )
        calls = tool_calls.calls(call.request_id)
        content = "".join(text)
        return ProviderResult(
            content=content,
            finish_reason=answer_finish_reason(openai_finish_reason(finish), calls),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            tool_calls=calls,
            logprobs=answer_logprobs(logprobs, asked_top_logprobs(call.controls), content=content),
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The SDK's exceptions as ProviderError (never their text: it may quote a key)."""
        try:
            yield
        except openai.APITimeoutError:
            raise ProviderError("timeout", "no answer in time") from None
        except openai.APIConnectionError:
            raise ProviderError("connection", "unreachable") from None
        except openai.APIStatusError as exc:
            raise status_error(exc.status_code, exc.response.headers, exc.body, self._secrets) from None
        except openai.APIResponseValidationError:
            raise ProviderError(
                "bad_response", "the answer does not match the Chat Completions API"
            ) from None
        except openai.APIError:
            # An error the server reported in the middle of a stream.
            raise ProviderError("status", "the stream reported an error", status=502) from None

    async def close(self) -> None:
        await self._client.close()  # and its HTTP client


# What the SDK reports as APIConnectionError (`openai._httpx2.request_exceptions`).
_CONNECTION_ERRORS = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)


def _error_body(text: str) -> object:
    """An error answer's body as the SDK gives it (`APIStatusError.body`): its `error` object when
    the JSON has one, the JSON, or the text."""
    text = text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return body.get("error", body) if isinstance(body, Mapping) else body


def _whole_answer(answer: Any, call: ProviderCall) -> ProviderResult:
    """A Chat Completions answer (the JSON, as sent) as ProviderResult; a missing or mistyped
    field raises KeyError, TypeError, ValueError or AttributeError."""
    choices = answer.get("choices")
    if not choices:
        raise ProviderError("bad_response", "the answer has no choices")
    usage = answer.get("usage")
    if usage is None:
        raise ProviderError("bad_response", "the answer carries no token usage")
    prompt_tokens, completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    if not (_is_count(prompt_tokens) and _is_count(completion_tokens)):
        raise ProviderError("bad_response", "the answer's token usage is not a count")
    choice = choices[0]
    message = choice["message"]
    calls = answered_tool_calls(
        [
            (tc.get("id"), tc["function"]["name"], tc["function"]["arguments"])
            for tc in message.get("tool_calls") or ()
            if tc.get("type") == "function"
        ],
        call.request_id,
    )
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise TypeError("content")
    logprobs = choice.get("logprobs")
    return ProviderResult(
        content=content,
        finish_reason=answer_finish_reason(openai_finish_reason(choice.get("finish_reason")), calls),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tool_calls=calls,
        logprobs=answer_logprobs(
            None if logprobs is None else logprobs.get("content"),
            asked_top_logprobs(call.controls),
            content=content,
        ),
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
