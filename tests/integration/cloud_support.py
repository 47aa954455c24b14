"""Helpers for cloud-worker integration tests: a scripted Messages API server, work items, the worker in-process."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
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
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from koprogo_cli.embedded import free_port
from koprogo_cloud.bootstrap import run_cloud
from koprogo_cloud.settings import CloudSettings
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatMessage,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    utc_now,
)
from koprogo_shared.nats_connection import connect_nats, ensure_streams

FAKE_ANTHROPIC_KEY = "sk-ant-api03-FAKEfakeFAKE0123456789-test-only"


@dataclass
class Reply:
    """One scripted answer of the fake Messages API."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


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


@dataclass
class Call:
    at: float
    api_key: str | None
    payload: dict[str, Any]


def _api_key(request: Request) -> str | None:
    """The key as sent: `x-api-key`, or `Authorization: Bearer` (what anthropic 2.x sends)."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


class FakeMessagesApi:
    """`POST /v1/messages` answering from a script; the last reply repeats once the script runs out."""

    def __init__(self) -> None:
        self.script: list[Reply] = [Reply(body=message_body())]
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def reset(self, *replies: Reply) -> None:
        with self._lock:
            self.script = list(replies)
            self.calls = []

    async def _messages(self, request: Request) -> Response:
        payload = await request.json()
        with self._lock:
            self.calls.append(Call(time.monotonic(), _api_key(request), payload))
            reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return JSONResponse(reply.body or {}, status_code=reply.status, headers=reply.headers)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])


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
) -> RunInference:
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
        max_tokens=32,
        reply_subject=reply_subject,
        deadline=utc_now() + timedelta(seconds=deadline_s),
        routing=plan if with_plan else None,
    )


async def submit(js: JetStreamContext, deployment: str, work: RunInference) -> None:
    await js.publish(
        subjects.run_inference_cloud(deployment),
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
