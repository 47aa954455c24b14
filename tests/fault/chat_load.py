"""A stream of chats against a gateway while something dies, and what each caller saw.

`ChatLoad` runs a few clients, each sending one chat after another until told to stop, and
callers arriving on their own; every chat names a copro of its own (`context: copro:<uuid>`),
so each row the ledger writes, and each figure the stats count, is traced back to the one
request, and the one client outcome (`ChatOutcome`), it came from. `NodesAtWork` tells which
edge node is generating a given request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats

from koprogo_shared import subjects
from koprogo_shared.events import InferenceStarted
from koprogo_shared.nats_connection import nats_servers

QUESTION = "Quand a lieu la prochaine assemblée générale ?"
# A client's pause after an error (a refused connection, a 503) before its next request.
ERROR_PAUSE_S = 0.1
# What may end a request without an HTTP answer: the gateway's process is gone (connection
# refused, reset or closed mid-request). A timeout is never one of them: it is a hang.
TRANSPORT_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class ChatOutcome:
    """What one client saw for one request: an answer, an error (HTTP, or the stream's `error`
    event), a transport error, or nothing in time (hung). A streamed request keeps its pieces."""

    copro_id: str
    started: float
    streamed: bool = False
    elapsed_s: float = 0.0
    status: int | None = None
    answer: dict[str, Any] | None = None
    error: Any = None
    transport_error: str | None = None
    hung: bool = False
    pieces: list[tuple[int, str]] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        return self.answer is not None

    @property
    def tokens(self) -> int:
        assert self.answer is not None
        return int(self.answer["usage"]["total_tokens"])

    @property
    def co2_grams(self) -> float:
        assert self.answer is not None
        return float(self.answer["execution_info"]["co2_grams"])

    @property
    def kind(self) -> str:
        if self.hung:
            return "hung"
        if self.transport_error is not None:
            return self.transport_error.split(":", 1)[0]
        how = "stream " if self.streamed else ""
        if self.answer is not None:
            return f"{how}answer"
        error = self.error.get("error") if isinstance(self.error, dict) else None
        if self.streamed and self.status == 200:
            return f"stream error {error}"  # the `error` event, after the 200 that began the stream
        return f"{how}{self.status} {error}"

    def seen(self) -> str:
        """One line: what the client got."""
        if self.hung:
            return f"no answer within {self.elapsed_s:.1f}s (hung)"
        if self.transport_error is not None:
            return f"transport error {self.transport_error}"
        if self.answer is not None:
            return f"{self.kind} {self.answer['id']} ({self.tokens} tokens)"
        pieces = f" after {len(self.pieces)} piece(s)" if self.pieces else ""
        return f"{self.kind}{pieces}"

    def unclear(self) -> str | None:
        """Why this outcome is neither an answer in the seed's shape (whose pieces, streamed,
        make its content) nor a clear error, or None."""
        if self.hung:
            return self.seen()
        if self.transport_error is not None:
            return None
        if self.answer is not None:
            if not {"id", "model", "content", "usage", "execution_info"} <= set(self.answer):
                return f"an answer without the seed's fields: {self.answer!r}"[:300]
            indexes = [i for i, _ in self.pieces]
            text = "".join(piece for _, piece in self.pieces)
            if self.streamed and (indexes != list(range(len(indexes))) or text != self.answer["content"]):
                return (
                    f"streamed pieces {indexes} make {text!r}, the answer {self.answer['id']} says "
                    f"{self.answer['content']!r}"
                )[:400]
            return None
        error = self.error
        if isinstance(error, dict) and isinstance(error.get("error"), str) and error.get("message"):
            return None
        if self.streamed and error is None:
            return f"the stream ended after {len(self.pieces)} piece(s) without `done` or `error`"
        return f"{self.status} without a JSON error and message: {error!r}"[:300]


@dataclass
class ChatLoad:
    """`clients` callers sending chats one after another to `gateway_url` until `stop()` (the
    first `streamed_clients` of them ask for Server-Sent Events), and callers arriving on their
    own, `arrivals_per_s`, whatever the others wait for: while every client waits for a slow
    answer, requests still come, as they do from many independent users."""

    gateway_url: str
    model: str
    # The gateway's own timeout; a client gives up `margin_s` later (then it hung).
    chat_timeout_s: float
    clients: int = 3
    streamed_clients: int = 1
    max_tokens: int = 8
    margin_s: float = 5.0
    pause_s: float = 0.02
    arrivals_per_s: float = 2.0
    outcomes: list[ChatOutcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    in_flight: int = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._client(streamed=n < self.streamed_clients)) for n in range(self.clients)
        ]
        self._tasks.append(asyncio.create_task(self._arrivals()))

    async def stop(self) -> None:
        """No new request; wait for those in flight (each ends within its client timeout)."""
        self._stop.set()
        while not all(task.done() for task in self._tasks):
            await asyncio.gather(*self._tasks)  # arrivals may have added theirs meanwhile

    async def _arrivals(self) -> None:
        while not self._stop.is_set():
            self.probe(self.max_tokens)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0 / self.arrivals_per_s)

    async def answers(self, at_least: int, timeout: float = 30.0) -> None:
        """Wait until `at_least` answers came (in total)."""
        deadline = time.monotonic() + timeout
        while sum(o.answered for o in self.outcomes) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {at_least} answers in {timeout}s: {self.summary()}")
            await asyncio.sleep(0.05)

    def probe(self, max_tokens: int, *, streamed: bool = False) -> tuple[ChatOutcome, asyncio.Task[None]]:
        """One more request, beside the clients' (a test's probe may ask for a longer answer, so
        that it is surely still being generated when something dies); its outcome (filled in as
        it comes: `pieces` grow while it streams) and its task."""
        outcome = ChatOutcome(copro_id=str(uuid.uuid4()), started=time.monotonic(), streamed=streamed)

        async def send() -> None:
            async with self._http() as client:
                await self._one(client, max_tokens, outcome)
            self.outcomes.append(outcome)

        task = asyncio.create_task(send())
        self._tasks.append(task)
        return outcome, task

    def _http(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(self.chat_timeout_s + self.margin_s, connect=5.0)
        # One connection per request: a request never lands on a connection the killed gateway
        # left half-open in the pool, so a transport error is always about that request.
        limits = httpx.Limits(max_keepalive_connections=0)
        return httpx.AsyncClient(base_url=self.gateway_url, timeout=timeout, limits=limits)

    async def _client(self, *, streamed: bool) -> None:
        async with self._http() as client:
            while not self._stop.is_set():
                outcome = ChatOutcome(copro_id=str(uuid.uuid4()), started=time.monotonic(), streamed=streamed)
                await self._one(client, self.max_tokens, outcome)
                self.outcomes.append(outcome)
                # An error comes back at once: do not spin on it. A 503's Retry-After is not
                # waited for: the few clients here stand for many independent callers, whose
                # requests keep arriving whatever one of them was told.
                await asyncio.sleep(self.pause_s if outcome.answered else ERROR_PAUSE_S)

    async def _one(self, client: httpx.AsyncClient, max_tokens: int, outcome: ChatOutcome) -> None:
        """Send one chat and fill in `outcome` with what came back."""
        streamed = outcome.streamed
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": QUESTION}],
            "context": f"copro:{outcome.copro_id}",
            "max_tokens": max_tokens,
            "stream": streamed,
        }
        self.in_flight += 1
        try:
            async with client.stream("POST", "/mcp/v1/chat", json=body) as response:
                outcome.status = response.status_code
                if streamed and response.status_code == 200:
                    await _read_events(response, outcome)
                else:
                    await response.aread()
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = response.text[:300]
                    if response.status_code == 200:
                        outcome.answer = payload
                    else:
                        outcome.error = payload
        except httpx.TimeoutException:
            outcome.hung = True
        except TRANSPORT_ERRORS as exc:
            outcome.transport_error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.in_flight -= 1
            outcome.elapsed_s = time.monotonic() - outcome.started

    def summary(self) -> str:
        kinds = Counter(o.kind for o in self.outcomes)
        slowest = max((o.elapsed_s for o in self.outcomes), default=0.0)
        listed = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
        return f"{len(self.outcomes)} requests: {listed}; the slowest took {slowest:.1f}s"

    def outcome_of(self, copro_id: str) -> ChatOutcome:
        return next(o for o in self.outcomes if o.copro_id == copro_id)


async def _read_events(response: httpx.Response, outcome: ChatOutcome) -> None:
    """`event: delta` pieces, then `event: done` (the answer) or `event: error` (stream_format.py)."""
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = json.loads(line.removeprefix("data:"))
            if event == "delta":
                outcome.pieces.append((data["index"], data["delta"]))
            elif event == "done":
                outcome.answer = data
            elif event == "error":
                outcome.error = data


class NodesAtWork:
    """Which edge node said it started generating the answer to a copro's request
    (`InferenceStarted`, heard on every gateway's reply subject): `async with`, then `node_running`."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.started: dict[str, str] = {}
        self._nc: Any = None

    async def __aenter__(self) -> NodesAtWork:
        self._nc = await nats.connect(servers=nats_servers(self.nats_url))

        async def on_reply(msg: Any) -> None:
            data = json.loads(msg.data)
            if data.get("type") == InferenceStarted.model_fields["type"].default:
                self.started.setdefault(data["copro_id"], data["node_id"])

        # Every gateway's reply subject, and the nodes' own subjects under it.
        await self._nc.subscribe(subjects.GATEWAY_REPLY_ANY.removesuffix("*") + ">", cb=on_reply)
        await self._nc.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._nc.close()

    async def node_running(self, copro_id: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while copro_id not in self.started:
            if time.monotonic() > deadline:
                raise AssertionError(f"no node started the request of copro {copro_id} within {timeout:g}s")
            await asyncio.sleep(0.005)
        return self.started[copro_id]
