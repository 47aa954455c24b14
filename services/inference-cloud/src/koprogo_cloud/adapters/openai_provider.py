"""OpenAI's Chat Completions API through the `openai` SDK: OpenAI, Mistral, any OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
        self._client = openai.AsyncOpenAI(
            api_key=api_key or NO_KEY_PLACEHOLDER,
            base_url=deployment.effective_base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
        )

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
        with self._errors():
            response = await self._client.chat.completions.create(**self._request(call))
        if not response.choices:
            raise ProviderError("bad_response", "the answer has no choices")
        if response.usage is None:
            raise ProviderError("bad_response", "the answer carries no token usage")
        choice = response.choices[0]
        calls = answered_tool_calls(
            [
                (tc.id, tc.function.name, tc.function.arguments)
                for tc in choice.message.tool_calls or ()
                if tc.type == "function"
            ],
            call.request_id,
        )
        content = choice.message.content or ""
        given = choice.logprobs.content if choice.logprobs is not None else None
        return ProviderResult(
            content=content,
            finish_reason=answer_finish_reason(openai_finish_reason(choice.finish_reason), calls),
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
            tool_calls=calls,
            logprobs=answer_logprobs(
                None if given is None else [lp.model_dump() for lp in given],
                asked_top_logprobs(call.controls),
                content=content,
            ),
        )

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
        await self._client.close()
