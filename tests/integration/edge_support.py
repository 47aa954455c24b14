"""Helpers for edge-node integration tests: work items, in-process nodes, listeners."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_node.adapters.inference import InferenceEngine
from koprogo_node.bootstrap import run_node
from koprogo_node.settings import NodeSettings
from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import (
    ChatMessage,
    ChatRequested,
    InferenceStarted,
    NodeHeartbeat,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    reply_message_adapter,
    utc_now,
)
from koprogo_shared.nats_connection import connect_nats, ensure_streams, subscribed

MODEL = BUNDLED_MODEL_ID


def routed_edge_request(
    content: str, reply: str, *, copro: str, pool: str = subjects.SHARED_POOL, max_tokens: int = 32
) -> ChatRequested:
    """A request as the gateway's `ChatRouting.place` stores it for an edge first target
    (`subjects.routed_edge_chat_requested`)."""
    return ChatRequested(
        source="koprogo/gateway",
        copro_id=copro,
        model=MODEL,
        messages=[ChatMessage(role="user", content=content)],
        max_tokens=max_tokens,
        reply_subject=reply,
        deadline=utc_now() + timedelta(seconds=120),
        routed=RoutingPlan(
            policy="prefer_edge",
            allow_fallback=True,
            reason="an edge node serves the model",
            targets=[RoutingTarget(kind="edge", model=MODEL, pool=pool)],
        ),
    )


def node_settings(nats_url: str, node_id: str, **overrides: Any) -> NodeSettings:
    values: dict[str, Any] = {"nats_url": nats_url, "node_id": node_id, "ops_port": 0, "ack_wait_s": 5.0}
    return NodeSettings(**(values | overrides))


def run_inference(
    content: str,
    *,
    reply_subject: str,
    max_tokens: int | None = None,
    deadline_s: float = 120.0,
    copro_id: str = "copro-edge",
) -> RunInference:
    return RunInference(
        source="test/edge",
        copro_id=copro_id,
        request_id=str(uuid.uuid4()),
        model=MODEL,
        messages=[ChatMessage(role="user", content=content)],
        max_tokens=max_tokens,
        reply_subject=reply_subject,
        deadline=utc_now() + timedelta(seconds=deadline_s),
    )


@asynccontextmanager
async def running_node(settings: NodeSettings, engine: InferenceEngine | None = None) -> AsyncIterator[None]:
    """A node in this process, stopped (and checked for errors) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_node(settings, stop, engine=engine))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


class Listener:
    """Collects what arrives on one core subject, decoded."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()

    async def next(self, timeout: float = 30.0) -> Any:
        return await asyncio.wait_for(self.items.get(), timeout)


@asynccontextmanager
async def listening(nc: NATS, subject: str, kind: str) -> AsyncIterator[Listener]:
    """`kind` is "outcome" (ChatCompleted | ChatFailed), "started" (InferenceStarted) or "heartbeat"."""
    listener = Listener()

    async def on_msg(msg: Any) -> None:
        if kind in ("outcome", "started"):
            message = reply_message_adapter.validate_json(msg.data)
            if isinstance(message, InferenceStarted) == (kind == "started"):
                listener.items.put_nowait(message)
        else:
            listener.items.put_nowait(NodeHeartbeat.model_validate_json(msg.data))

    sub = await nc.subscribe(subject, cb=on_msg)
    await subscribed(nc)  # not flush() alone: the server may not hold the subscription yet
    try:
        yield listener
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """A test client with KoproGo's streams declared."""
    nc, js = await connect_nats(url, "edge-test")
    try:
        await ensure_streams(js)
        yield nc, js
    finally:
        await nc.drain()


async def pulling_nodes(js: JetStreamContext) -> int:
    """How many nodes are idle and waiting for work on the shared consumer of MODEL."""
    try:
        info = await js.consumer_info(subjects.WORK_STREAM, subjects.durable_name("edge", MODEL))
    except NotFoundError:
        return 0
    return info.num_waiting or 0


async def work_left(js: JetStreamContext) -> int:
    return (await js.stream_info(subjects.WORK_STREAM)).state.messages


def reply_subject() -> str:
    return subjects.gateway_reply(f"test-{uuid.uuid4().hex[:8]}")


@asynccontextmanager
async def node_process(
    nats_url: str, node_id: str, logs: Path, port: int = 0, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`koprogo-node` as its own process (the console script), killed on exit if still alive."""
    script = Path(sys.executable).parent / "koprogo-node"
    log = (logs / f"{node_id}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(script),
        "--node-id",
        node_id,
        "-p",
        str(port),
        "--nats-url",
        nats_url,
        env=os.environ | {"LOG_LEVEL": "WARNING"} | env,
        stdout=log,
        stderr=log,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
