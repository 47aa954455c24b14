"""OpenAI's Chat Completions API: OpenAI, Mistral, any OpenAI-compatible server.

A call is one POST over aiohttp (the transport the `openai` SDK itself offers for concurrent
use, `openai[aiohttp]`), with the headers and URL the SDK would send built once, the body in,
the JSON (or a stream's server-sent events) out: the SDK's request building (its per-call
transform of the parameters) and its response models were most of the worker's CPU per chat,
then its default HTTP client (httpx2: 0.56 ms of CPU per call against aiohttp's 0.09 ms, issue
17, bench/README.md). The semantics stay the SDK's, as this service uses it (`max_retries=0`,
its connection limits, redirects followed, the timeout applied to connecting and to each
read): its timeout and connection errors (a stream's too), an error status with the same error
body, an error event in a stream, the provider's own usage.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeGuard

import aiohttp
import certifi
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
        # The SDK's client, for what it would send: its base URL, user agent and auth headers. A
        # local: its httpx client never opens a connection, and the SDK closes it when collected.
        client = openai.AsyncOpenAI(
            api_key=api_key or NO_KEY_PLACEHOLDER,
            base_url=deployment.effective_base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
        )
        # Its base URL ends with "/"; parsed here, not per call.
        self._url = f"{client.base_url}chat/completions"
        self._headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": client.user_agent,
            "Authorization": f"Bearer {client.api_key}",
        }
        if client.organization is not None:
            self._headers["OpenAI-Organization"] = client.organization
        if client.project is not None:
            self._headers["OpenAI-Project"] = client.project
        # The proxy from HTTP(S)_PROXY / NO_PROXY, as httpx takes them, looked up once: aiohttp's
        # `trust_env` looks again at every call, reading ~/.netrc in a thread (a fifth of the
        # worker's CPU per chat under load).
        self._proxy = _env_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """One session per provider, made on the running loop at the first call."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # The SDK's default connection limit (`openai.DEFAULT_CONNECTION_LIMITS`).
                connector=aiohttp.TCPConnector(
                    limit=_MAX_CONNECTIONS,
                    # httpx's trust store: certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set.
                    ssl=_ssl_context(),
                ),
                # No `User-Agent: Python/aiohttp` of its own: the SDK's is in the headers.
                skip_auto_headers=("User-Agent",),
            )
        return self._session

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
            async with self._http().post(
                self._url, data=body, headers=self._headers, timeout=_timeout(timeout), proxy=self._proxy
            ) as response:
                content = await response.read()
        except TimeoutError:
            raise ProviderError("timeout", "no answer in time") from None
        except _CONNECTION_ERRORS:
            raise ProviderError("connection", "unreachable") from None
        if not 200 <= response.status < 300:
            raise status_error(response.status, response.headers, _error_body(_text(content)), self._secrets)
        try:
            answer = json.loads(content)
        except ValueError:
            raise ProviderError("bad_response", "the answer is not JSON") from None
        try:
            return _whole_answer(answer, call)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderError(
                "bad_response", "the answer does not match the Chat Completions API"
            ) from None

    async def stream(self, call: ProviderCall, on_delta: OnDelta) -> ProviderResult:
        request = self._request(call)
        timeout = request.pop("timeout")
        request["stream"] = True
        if self._stream_options:
            request["stream_options"] = {"include_usage": True}
        body = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
        answer = _StreamedAnswer()
        try:
            # Leaving the block early (an error, a cancel) closes the connection: the server stops.
            async with self._http().post(
                self._url, data=body, headers=self._headers, timeout=_timeout(timeout), proxy=self._proxy
            ) as response:
                try:
                    if not 200 <= response.status < 300:
                        raise status_error(
                            response.status,
                            response.headers,
                            _error_body(_text(await response.read())),
                            self._secrets,
                        )
                    done = False
                    async for data in _sse_data(_lines(response.content.iter_any())):
                        if done:
                            continue  # read to the end, as the SDK does: the connection is reused
                        if data.startswith("[DONE]"):
                            done = True
                            continue
                        piece = answer.add(data)
                        if piece:
                            await on_delta(piece)
                except BaseException:
                    response.close()
                    raise
        except TimeoutError:
            raise ProviderError("timeout", "no answer in time") from None
        except _CONNECTION_ERRORS:
            raise ProviderError("connection", "unreachable") from None
        return answer.result(call)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# The SDK's (1000 today); None there would mean no limit, which is aiohttp's 0.
_MAX_CONNECTIONS = openai.DEFAULT_CONNECTION_LIMITS.max_connections or 0


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """The SDK's timeout (httpx's: on connecting, on each read), not a bound on a whole stream."""
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)


def _text(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


_LINE_END = re.compile("\r\n|\n|\r")


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The body's lines without their ends: split at \\r\\n, \\n or \\r only (the SSE spec,
    httpx's `aiter_lines`), never inside a JSON string's U+2028; UTF-8 decoded across chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    rest = ""
    async for chunk in chunks:
        text = rest + decoder.decode(chunk)
        # A final "\r" may be the first half of a "\r\n" whose "\n" is in the next chunk.
        held = "\r" if text.endswith("\r") else ""
        lines = _LINE_END.split(text[: len(text) - len(held)])
        rest = lines.pop() + held
        for line in lines:
            yield line
    rest += decoder.decode(b"", final=True)
    if rest:  # the last line, without an end (or with the "\r" held above)
        yield rest.removesuffix("\r")


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; none when
    NO_PROXY covers its host)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    # On Linux `proxy_bypass` is `proxy_bypass_environment`: NO_PROXY's rules.
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def _ssl_context() -> ssl.SSLContext:
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


# What the SDK reports as APIConnectionError (a request that failed on the way, not in time).
_CONNECTION_ERRORS = (aiohttp.ClientError, ssl.SSLError, ConnectionError)


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
            # A call without a type is a function call, as the SDK reads it; another type is dropped.
            if tc.get("type") in (None, "function")
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


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event (its `data:` lines joined), as the SDK's SSE decoder reads them."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
        # Comments (":..."), `event:`, `id:` and `retry:` carry nothing a chat completion uses.
    # An event the stream's end cut before its blank line is dropped (the SSE spec, the SDK).


class _StreamedAnswer:
    """A Chat Completions stream's chunks (each event's JSON) gathered into one answer."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tool_calls = StreamedToolCalls()
        # Each chunk's tokens, end to end; None until a chunk carries some.
        self._logprobs: list[Any] | None = None
        self._finish: str | None = None
        self._usage: Any = None

    def add(self, data: str) -> str:
        """Take one chunk; the text it adds to the answer ("" when none)."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderError("bad_response", "a stream's event is not JSON") from None
        if isinstance(chunk, Mapping) and chunk.get("error"):
            # An error the server reported in the middle of a stream (the SDK's APIError).
            raise ProviderError("status", "the stream reported an error", status=502)
        try:
            return self._take(chunk)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderError(
                "bad_response", "the stream does not match the Chat Completions API"
            ) from None

    def _take(self, chunk: Any) -> str:
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        pieces: list[str] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                if not isinstance(content, str):
                    raise TypeError("content")
                pieces.append(content)
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") or {}
                self._tool_calls.add(tc["index"], tc.get("id"), fn.get("name"), fn.get("arguments"))
            given = choice.get("logprobs")
            if given is not None and given.get("content") is not None:
                if self._logprobs is None:
                    self._logprobs = []
                self._logprobs.extend(given["content"])
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        piece = "".join(pieces)
        if piece:
            self._text.append(piece)
        return piece

    def result(self, call: ProviderCall) -> ProviderResult:
        usage = self._usage
        if usage is None:
            raise ProviderError(
                "bad_response",
                "the stream carried no token usage (a server without stream_options.include_usage: "
                "set stream = false for this deployment)",
            )
        if not isinstance(usage, Mapping):
            raise ProviderError("bad_response", "the stream's token usage is not a count")
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (_is_count(prompt_tokens) and _is_count(completion_tokens)):
            raise ProviderError("bad_response", "the stream's token usage is not a count")
        calls = self._tool_calls.calls(call.request_id)
        content = "".join(self._text)
        return ProviderResult(
            content=content,
            finish_reason=answer_finish_reason(openai_finish_reason(self._finish), calls),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tool_calls=calls,
            logprobs=answer_logprobs(self._logprobs, asked_top_logprobs(call.controls), content=content),
        )
