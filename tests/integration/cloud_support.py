"""Helpers for cloud-worker integration tests: scripted Messages and Chat Completions servers (whole
answers and SSE streams, every payload recorded), work items, the worker in-process, answers read back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from koprogo_cli.ports import free_port
from koprogo_cloud.bootstrap import run_cloud
from koprogo_cloud.settings import CloudSettings
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatMessage,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    chat_outcome_adapter,
    utc_now,
)
from koprogo_shared.generation import GenerationControls
from koprogo_shared.nats_connection import connect_nats, ensure_streams

FAKE_ANTHROPIC_KEY = "sk-ant-api03-FAKEfakeFAKE0123456789-test-only"


@dataclass
class Reply:
    """One scripted answer: a JSON body, or (`events`) a stream of server-sent events."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    events: list[dict[str, Any]] | None = None
    # Between two events of a stream, so that a test can leave in the middle of it.
    event_delay_s: float = 0.0
    # A body sent as it is (not JSON), with this content type.
    raw: str | None = None
    raw_type: str = "text/html"


def message_body(
    text: str = "Bonjour", stop_reason: str = "end_turn", input_tokens: int = 12, output_tokens: int = 5
) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "model": "claude-haiku-4-5",
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def message_events(
    pieces: Sequence[str] = ("Bon", "jour"),
    tool_uses: Sequence[tuple[str, str, dict[str, Any]]] = (),
    *,
    stop_reason: str | None = None,
    input_tokens: int = 12,
    output_tokens: int = 5,
) -> list[dict[str, Any]]:
    """A Messages API stream: message_start (input usage), text deltas, tool_use blocks whose input
    comes in partial JSON pieces, then message_delta (stop reason, final output usage) and message_stop."""
    start = message_body("", input_tokens=input_tokens, output_tokens=1)
    start |= {"content": [], "stop_reason": None}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    index = 0
    if pieces:
        events.append(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        )
        events += [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            for piece in pieces
        ]
        events.append({"type": "content_block_stop", "index": 0})
        index = 1
    for use_id, name, arguments in tool_uses:
        block = {"type": "tool_use", "id": use_id, "name": name, "input": {}}
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        text = json.dumps(arguments)
        for part in (text[: len(text) // 2], text[len(text) // 2 :]):
            delta = {"type": "input_json_delta", "partial_json": part}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
        index += 1
    stop = stop_reason or ("tool_use" if tool_uses else "end_turn")
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
    )
    events.append({"type": "message_stop"})
    return events


def tool_use_body(
    use_id: str,
    name: str,
    arguments: dict[str, Any],
    *,
    text: str = "",
    input_tokens: int = 40,
    output_tokens: int = 12,
) -> dict[str, Any]:
    """A whole Messages API answer that calls a tool (stop_reason tool_use)."""
    body = message_body(text, stop_reason="tool_use", input_tokens=input_tokens, output_tokens=output_tokens)
    blocks = [{"type": "text", "text": text}] if text else []
    body["content"] = [*blocks, {"type": "tool_use", "id": use_id, "name": name, "input": arguments}]
    return body


_CHUNK = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o"}


def completion_body(
    content: str | None = "Bonjour",
    tool_calls: Sequence[tuple[str, str, str]] = (),
    *,
    finish_reason: str | None = None,
    prompt_tokens: int = 12,
    completion_tokens: int = 5,
    logprobs: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A whole Chat Completions answer; `tool_calls` as (id, name, arguments JSON text), `logprobs`
    as the entries of `choices[0].logprobs.content`."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in tool_calls
        ]
    return _CHUNK | {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
                "logprobs": _logprobs(logprobs),
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def completion_chunks(
    pieces: Sequence[str] = ("Bon", "jour"),
    tool_calls: Sequence[tuple[str, str, str]] = (),
    *,
    finish_reason: str | None = None,
    prompt_tokens: int = 12,
    completion_tokens: int = 5,
    usage: bool = True,
    logprobs: Sequence[Sequence[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """A Chat Completions stream: a role chunk, text pieces, each tool call in two chunks (its
    arguments split), the finish chunk and, with `usage`, the include_usage chunk (no choices).
    `logprobs`: the `logprobs.content` entries of each piece's chunk, in order."""

    def chunk(
        delta: dict[str, Any], finish: str | None = None, entries: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": _logprobs(entries)}
        return _CHUNK | {"choices": [choice]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    per_piece = list(logprobs) if logprobs is not None else [None] * len(pieces)
    chunks += [
        chunk({"content": piece}, entries=entries) for piece, entries in zip(pieces, per_piece, strict=True)
    ]
    for n, (call_id, name, arguments) in enumerate(tool_calls):
        half = len(arguments) // 2
        first = {
            "index": n,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments[:half]},
        }
        chunks.append(chunk({"tool_calls": [first]}))
        chunks.append(chunk({"tool_calls": [{"index": n, "function": {"arguments": arguments[half:]}}]}))
    chunks.append(chunk({}, finish_reason or ("tool_calls" if tool_calls else "stop")))
    if usage:
        chunks.append(_CHUNK | {"choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
    return chunks


def _logprobs(entries: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": list(entries), "refusal": None}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Call:
    at: float
    api_key: str | None
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _api_key(request: Request) -> str | None:
    """The key as sent: `x-api-key`, or `Authorization: Bearer` (what anthropic 2.x sends)."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


class ScriptedApi:
    """`POST <path>` answering from a script; the last reply repeats once the script runs out.

    Every payload is recorded (`calls`); every stream served is recorded as "complete" or
    "cut" (the client closed it before its end) in `streams`.
    """

    path = "/"
    end_of_stream = ""

    def __init__(self, first: Reply) -> None:
        self.script: list[Reply] = [first]
        self.calls: list[Call] = []
        self.streams: list[str] = []
        self._lock = threading.Lock()

    def reset(self, *replies: Reply) -> None:
        with self._lock:
            self.script = list(replies)
            self.calls = []
            self.streams = []

    def frame(self, event: dict[str, Any]) -> str:
        raise NotImplementedError

    async def _answer(self, request: Request) -> Response:
        payload = await request.json()
        with self._lock:
            self.calls.append(Call(time.monotonic(), _api_key(request), payload, dict(request.headers)))
            reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.events is not None:
            return StreamingResponse(self._sse(reply), media_type="text/event-stream", headers=reply.headers)
        if reply.raw is not None:
            return Response(
                reply.raw, status_code=reply.status, headers=reply.headers, media_type=reply.raw_type
            )
        return JSONResponse(reply.body or {}, status_code=reply.status, headers=reply.headers)

    async def _sse(self, reply: Reply) -> AsyncIterator[str]:
        try:
            for event in reply.events or ():
                if reply.event_delay_s:
                    await asyncio.sleep(reply.event_delay_s)
                yield self.frame(event)
            if self.end_of_stream:
                yield self.end_of_stream
        except BaseException:
            self.streams.append("cut")
            raise
        self.streams.append("complete")

    def app(self) -> Starlette:
        return Starlette(routes=[Route(self.path, self._answer, methods=["POST"])])


class FakeMessagesApi(ScriptedApi):
    """Anthropic's `POST /v1/messages`: JSON answers, or `event: <type>` SSE streams."""

    path = "/v1/messages"

    def __init__(self) -> None:
        super().__init__(Reply(body=message_body()))

    def frame(self, event: dict[str, Any]) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


class FakeChatCompletionsApi(ScriptedApi):
    """OpenAI's `POST /v1/chat/completions`: JSON answers, or `data:` SSE streams ending with [DONE]."""

    path = "/v1/chat/completions"
    end_of_stream = "data: [DONE]\n\n"

    def __init__(self) -> None:
        super().__init__(Reply(body=completion_body()))

    def frame(self, event: dict[str, Any]) -> str:
        return f"data: {json.dumps(event)}\n\n"


@contextlib.contextmanager
def serving_in_thread(app: Starlette) -> Iterator[int]:
    """Serve `app` with uvicorn on a free port in a thread; yields the port."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise AssertionError("the fake provider did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def deployments_file(tmp_path: Path, *tables: str) -> Path:
    path = tmp_path / "deployments.toml"
    path.write_text("\n".join(tables))
    return path


def cloud_settings(nats_url: str, file: Path, **overrides: Any) -> CloudSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "ops_port": 0,
        "cloud_deployments_file": file,
        "status_interval_s": 0.5,
        "ack_wait_s": 5.0,
    }
    return CloudSettings(**(values | overrides))


@asynccontextmanager
async def running_cloud(
    settings: CloudSettings, environ: Mapping[str, str]
) -> AsyncIterator[asyncio.Task[None]]:
    """The cloud worker in this process, with `environ` as its environment; stopped (and checked) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_cloud(settings, stop, environ=environ))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A test client with KoproGo's streams declared."""
    nc, js = await connect_nats(url, "cloud-test")
    try:
        await ensure_streams(js)
        yield nc, js
    finally:
        await nc.drain()


def work_item(
    deployment: str,
    model: str,
    content: str = "Dis bonjour.",
    *,
    reply_subject: str,
    with_plan: bool = True,
    deadline_s: float = 60.0,
    system: str | None = None,
    messages: list[ChatMessage] | None = None,
    controls: GenerationControls | None = None,
    stream: bool = False,
    max_tokens: int = 32,
    temperature: float | None = None,
) -> RunInference:
    """A work item for `deployment`: `messages` as given, else an optional system turn and `content`."""
    if messages is None:
        messages = [ChatMessage(role="system", content=system)] if system else []
        messages.append(ChatMessage(role="user", content=content))
    plan = RoutingPlan(
        policy="prefer_edge",
        allow_fallback=True,
        reason="no edge node serves the model",
        targets=[RoutingTarget(kind="cloud", model=model, deployment=deployment)],
    )
    return RunInference(
        source="test/cloud",
        copro_id="copro-cloud",
        request_id=str(uuid.uuid4()),
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        reply_subject=reply_subject,
        deadline=utc_now() + timedelta(seconds=deadline_s),
        routing=plan if with_plan else None,
        controls=controls,
        stream=stream,
    )


async def submit(js: JetStreamContext, deployment: str, work: RunInference) -> None:
    await js.publish(
        subjects.run_inference_cloud(work.copro_id, deployment),
        work.model_dump_json().encode(),
        headers={"Nats-Msg-Id": work.id},
    )


class Collector:
    """What arrives on one core subject, as raw JSON bytes."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[bytes] = asyncio.Queue()

    async def next(self, timeout: float = 20.0) -> bytes:
        return await asyncio.wait_for(self.items.get(), timeout)


@asynccontextmanager
async def collecting(nc: NATS, subject: str) -> AsyncIterator[Collector]:
    collector = Collector()

    async def on_msg(msg: Any) -> None:
        collector.items.put_nowait(msg.data)

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    try:
        yield collector
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def read_answer(
    collector: Collector, timeout: float = 20.0
) -> tuple[list[ChatDelta], ChatCompleted | ChatFailed]:
    """The pieces that came on a reply subject, in order, then the outcome that ended them."""
    deltas: list[ChatDelta] = []
    while True:
        raw = await collector.next(timeout)
        if json.loads(raw).get("type") == ChatDelta.model_fields["type"].default:
            deltas.append(ChatDelta.model_validate_json(raw))
            continue
        return deltas, chat_outcome_adapter.validate_json(raw)


def reply_subject() -> str:
    return subjects.gateway_reply(f"test-{uuid.uuid4().hex[:8]}")


@contextmanager
def openai_compatible_server(model_path: Path, alias: str, log_dir: Path) -> Iterator[int]:
    """`python -m llama_cpp.server` serving `model_path` as `alias` (a cloud model's name); yields its port.

    A real OpenAI-compatible server for the cloud path, as a co-op's own llama.cpp server is.
    """
    port = free_port()
    log = log_dir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model_path),
                "--model_alias",
                alias,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llama_cpp.server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def openai_deployment(port: int, provider: str = "openai", model: str = "gpt-4o-mini") -> tuple[str, str]:
    """A deployment of `provider` at the fake's port, under a fresh id: its id and its TOML table."""
    dep_id = f"{provider}-{uuid.uuid4().hex[:6]}"
    table = f"""
[[deployments]]
id = "{dep_id}"
provider = "{provider}"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "OPENAI_API_KEY"
models = {{ "{model}" = "gpt-4o-mini-2024-07-18" }}
max_retries = 0
"""
    return dep_id, table
