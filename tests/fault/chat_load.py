"""A stream of chats against a gateway while something dies, and what the ledger made of it.

`ChatLoad` runs a few clients, each sending one chat after another until told to stop; every
chat names a copro of its own (`context: copro:<uuid>`), so each row the ledger writes is
traced back to the one request, and the one client outcome, it came from. `settled` waits
until JetStream has nothing left to deliver or to be acknowledged (the ledger caught up, no
work item waits for a redelivery). `Agreement` sets what each client got beside what the
ledger and `/mcp/v1/stats` say, and lists every disagreement with its evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import nats
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.content_crypto import Keyring, decrypt_response_content
from koprogo_shared.events import InferenceStarted
from tests.conftest import TEST_CONTENT_KEYS

QUESTION = "Quand a lieu la prochaine assemblée générale ?"
# Errors a caller gets only after its request was stored (ChatRequested published): the gateway's
# own verdicts and the router's or a worker's refusals. The ledger must hold such a request, failed.
ERRORS_AFTER_STORING = frozenset(
    {"timeout", "node_lost", "node_changed", "stream_incomplete", "no_target_available", "deadline_exceeded"}
)
# A client's pause after an error (a refused connection, a 503) before its next request.
ERROR_PAUSE_S = 0.1
# How much later than the gateway's timeout a caller may get its 504 (scheduling on a busy machine).
TIMEOUT_SLACK_S = 2.0
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
        self._nc = await nats.connect(self.nats_url)

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


async def settled(nats_url: str, timeout: float = 45.0, quiet_s: float = 1.5) -> None:
    """Until JetStream has nothing to deliver or be acknowledged on any consumer of the event and
    work streams, and nothing new was stored for `quiet_s`: the ledger caught up, no work item
    waits for a redelivery, no late answer is on its way."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        last: tuple[int, ...] = ()
        while True:
            busy, marks = await _busy_consumers(js)
            now = time.monotonic()
            if busy or marks != last:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                return
            last = marks
            if now > deadline:
                raise AssertionError(
                    f"JetStream not settled after {timeout:g}s: {busy or 'streams still growing'}"
                )
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _busy_consumers(js: JetStreamContext) -> tuple[list[str], tuple[int, ...]]:
    busy: list[str] = []
    marks: list[int] = []
    for stream in (subjects.EVENTS_STREAM, subjects.WORK_STREAM):
        marks.append((await js.stream_info(stream)).state.last_seq)
        for info in await js.consumers_info(stream):
            if info.num_pending or info.num_ack_pending:
                busy.append(
                    f"{stream}/{info.name}: {info.num_pending} pending, {info.num_ack_pending} unacknowledged"
                )
    return busy, tuple(marks)


async def when_held(nats_url: str, stream: str, durable: str, timeout: float = 10.0) -> bool:
    """Until `durable` holds a message it has not acknowledged (its worker is busy with it);
    False if that did not happen within `timeout`."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.Error):
                if (await js.consumer_info(stream, durable)).num_ack_pending:
                    return True
            await asyncio.sleep(0.005)
        return False
    finally:
        await nc.close()


async def backlog(nats_url: str, stream: str, durable: str) -> int:
    """The messages `durable` has not had acknowledged yet: not delivered, or delivered and held."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await nc.close()


@dataclass(frozen=True)
class LedgerRow:
    """A request the ledger holds, with its response if it has one (the answer's text opened)."""

    copro_id: str
    request_id: str
    status: str
    error: str | None
    response_id: str | None
    total_tokens: int | None
    co2_grams: float | None
    node_id: str | None
    content: str | None


async def ledger_rows(database_url: str) -> list[LedgerRow]:
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT q.copro_id, q.id::text AS request_id, q.status, q.error::text AS error,"
            " r.id AS response_id, r.total_tokens, r.co2_grams, r.node_id, r.content, r.content_ciphertext,"
            " r.key_id"
            " FROM mcp_requests AS q LEFT JOIN mcp_responses AS r ON r.request_id = q.id"
        )
        orphans = await conn.fetchval(
            "SELECT count(*) FROM mcp_responses AS r WHERE NOT EXISTS"
            " (SELECT 1 FROM mcp_requests AS q WHERE q.id = r.request_id)"
        )
    finally:
        await conn.close()
    assert orphans == 0, f"{orphans} responses without their request"
    return [
        LedgerRow(
            copro_id=r["copro_id"],
            request_id=r["request_id"],
            status=r["status"],
            error=r["error"],
            response_id=str(r["response_id"]) if r["response_id"] else None,
            total_tokens=r["total_tokens"],
            co2_grams=r["co2_grams"],
            node_id=r["node_id"],
            content=(
                decrypt_response_content(keyring, r["key_id"], r["content_ciphertext"], r["response_id"])
                if r["content_ciphertext"] is not None
                else r["content"]
            ),
        )
        for r in rows
    ]


async def stats(gateway_url: str, copro_id: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
    """`/mcp/v1/stats` (of one copro, or all), asked again while it answers 503 (the gateway still
    reconnecting to PostgreSQL)."""
    params = {"context": f"copro:{copro_id}"} if copro_id else {}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        while True:
            response = await client.get("/mcp/v1/stats", params=params)
            if response.status_code == 200:
                return dict(response.json())
            if response.status_code != 503 or time.monotonic() > deadline:
                raise AssertionError(f"/mcp/v1/stats answered {response.status_code}: {response.text}")
            await asyncio.sleep(0.5)


async def counted_per_request(gateway_url: str, outcomes: list[ChatOutcome]) -> dict[str, tuple[int, int]]:
    """What `/mcp/v1/stats` counts for each request (its copro's answers and tokens): the
    stats' own idea of an answer, whatever the ledger stores beside it."""
    counted = {}
    for o in outcomes:
        figures = await stats(gateway_url, o.copro_id)
        counted[o.copro_id] = (int(figures["total_requests"]), int(figures["total_tokens"]))
    return counted


@dataclass
class Agreement:
    """What the clients got, beside what the ledger recorded and the stats count."""

    outcomes: list[ChatOutcome]
    rows: list[LedgerRow]
    stats: dict[str, Any]
    # Per request (its copro): the answers and tokens /mcp/v1/stats counts (`counted_per_request`).
    counted: dict[str, tuple[int, int]]
    # The gateway's timeout: no caller waits longer (plus `TIMEOUT_SLACK_S`) for its outcome.
    chat_timeout_s: float
    # The gateway's own death ends its requests without an HTTP answer: that is their clear error.
    transport_errors_allowed: bool = False

    def problems(self) -> list[str]:
        """Every disagreement, one line each, prefixed with the guarantee it breaks."""
        rows_of: dict[str, list[LedgerRow]] = {}
        for row in self.rows:
            rows_of.setdefault(row.copro_id, []).append(row)
        return [
            *self._each_caller_got_an_answer_or_a_clear_error(),
            *self._no_answer_lost(rows_of),
            *self._no_request_projected_twice_or_left_pending(rows_of),
            *self._each_answer_counted_once_and_nothing_else(),
            *self._stats_equal_the_answers_given(),
        ]

    def _each_caller_got_an_answer_or_a_clear_error(self) -> list[str]:
        found = []
        for o in self.outcomes:
            if (why := o.unclear()) is not None:
                found.append(f"neither a sound answer nor a clear error: {why}")
            elif o.transport_error is not None and not self.transport_errors_allowed:
                found.append(
                    f"neither an answer nor a clear error: the gateway dropped a request: {o.transport_error}"
                )
            if o.elapsed_s > self.chat_timeout_s + TIMEOUT_SLACK_S:
                found.append(
                    f"waited past the gateway's {self.chat_timeout_s:g}s timeout: {o.elapsed_s:.1f}s for {o.seen()}"
                )
        return found

    def _no_answer_lost(self, rows_of: dict[str, list[LedgerRow]]) -> list[str]:
        """Every answer given is in the ledger as given; every error given after the request was
        stored is recorded as the request's failure."""
        found = []
        for o in self.outcomes:
            rows = rows_of.get(o.copro_id, [])
            if o.answer is not None:
                mine = [r for r in rows if r.response_id == o.answer["id"]]
                if not mine:
                    found.append(f"answer lost: {o.seen()} is not in mcp_responses (ledger: {_rows(rows)})")
                elif not _same_answer(o, mine[0]):
                    found.append(
                        f"answer recorded otherwise: client got {o.seen()}, {o.co2_grams!r} g, "
                        f"{o.answer['content']!r}; ledger has {_rows(mine)}, {mine[0].co2_grams!r} g, "
                        f"{mine[0].content!r}"
                    )
            code = o.error.get("error") if isinstance(o.error, dict) else None
            if code in ERRORS_AFTER_STORING and not any(r.status == "failed" for r in rows):
                found.append(f"error not recorded: client got {o.seen()}; ledger: {_rows(rows)}")
        return found

    def _no_request_projected_twice_or_left_pending(self, rows_of: dict[str, list[LedgerRow]]) -> list[str]:
        by_copro = {o.copro_id: o for o in self.outcomes}
        found = []
        for copro_id, rows in rows_of.items():
            outcome = by_copro.get(copro_id)
            if outcome is None:
                found.append(f"row of no request sent here: {_rows(rows)}")
                continue
            if len(rows) > 1:
                found.append(f"projected twice: one request, {len(rows)} rows: {_rows(rows)}")
            if any(r.status == "pending" for r in rows):
                found.append(
                    f"never settled: client got {outcome.seen()}, ledger still pending: {_rows(rows)}"
                )
        return found

    def _each_answer_counted_once_and_nothing_else(self) -> list[str]:
        rows_of: dict[str, list[LedgerRow]] = {}
        for row in self.rows:
            rows_of.setdefault(row.copro_id, []).append(row)
        found = []
        for o in self.outcomes:
            requests, tokens = self.counted[o.copro_id]
            ledger = _rows(rows_of.get(o.copro_id, []))
            if o.answered and (requests, tokens) != (1, o.tokens):
                found.append(
                    f"answer not counted as given: client got {o.seen()}; /mcp/v1/stats counts "
                    f"{requests} answer(s), {tokens} tokens; ledger: {ledger}"
                )
            elif not o.answered and requests:
                found.append(
                    f"counted though not given: client got {o.seen()}; /mcp/v1/stats counts "
                    f"{requests} answer(s), {tokens} tokens; ledger: {ledger}"
                )
        return found

    def undelivered(self) -> int:
        """Answers the ledger stores though their caller got an error, and does not count."""
        got = {o.copro_id: o.answered for o in self.outcomes}
        return sum(
            1
            for r in self.rows
            if r.response_id is not None
            and not got.get(r.copro_id, False)
            and not self.counted.get(r.copro_id, (0, 0))[0]
        )

    def _stats_equal_the_answers_given(self) -> list[str]:
        answered = [o for o in self.outcomes if o.answered]
        tokens = sum(o.tokens for o in answered)
        co2 = sum(o.co2_grams for o in answered)
        counted = (self.stats["total_requests"], self.stats["total_tokens"])
        found = []
        if counted != (len(answered), tokens):
            found.append(
                f"stats differ from the answers given: /mcp/v1/stats counts {counted[0]} requests and "
                f"{counted[1]} tokens, the clients got {len(answered)} answers and {tokens} tokens"
            )
        if not math.isclose(self.stats["total_co2_grams"], co2, rel_tol=1e-9, abs_tol=1e-12):
            found.append(
                f"stats differ from the answers given: {self.stats['total_co2_grams']!r} g CO2 counted, "
                f"{co2!r} g in the answers"
            )
        return found

    def late_answers(self) -> int:
        """Answers the ledger kept aside because their caller got an error instead (`error.late_answer`)."""
        return sum(1 for r in self.rows if r.error is not None and "late_answer" in r.error)

    def report(self) -> str:
        """Every disagreement, one per line."""
        problems = self.problems()
        return "\n".join([f"{len(problems)} disagreement(s):", *(f"  - {p}" for p in problems)])


def _same_answer(given: ChatOutcome, row: LedgerRow) -> bool:
    """The ledger holds, completed, the very answer the caller got: its text, tokens and grams."""
    assert given.answer is not None
    return (
        row.status == "completed"
        and row.content == given.answer["content"]
        and row.total_tokens == given.tokens
        and row.co2_grams is not None
        and math.isclose(row.co2_grams, given.co2_grams, rel_tol=1e-9, abs_tol=1e-15)
    )


def _rows(rows: list[LedgerRow]) -> str:
    if not rows:
        return "no row"
    return "; ".join(
        f"request {r.request_id} {r.status}"
        + (f" ({r.error[:120]})" if r.error else "")
        + (f", response {r.response_id} {r.total_tokens} tokens from {r.node_id}" if r.response_id else "")
        for r in rows
    )
