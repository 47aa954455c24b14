"""What each caller got, beside what the ledger recorded and `/mcp/v1/stats` counts.

`Agreement.problems` lists every disagreement, one line each, named after the guarantee it
breaks (issue 12): a caller without an answer or a clear error, an answer lost or stored
otherwise than given, a request projected twice or never settled, an answer counted though
not given, stats that differ from the answers given.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from koprogo_shared.content_crypto import Keyring, decrypt_response_content
from tests.conftest import TEST_CONTENT_KEYS
from tests.fault.chat_load import ChatOutcome

# Errors a caller gets only after its request was stored (ChatRequested published): the gateway's
# own verdicts and the router's or a worker's refusals. The ledger must hold such a request, failed.
ERRORS_AFTER_STORING = frozenset(
    {"timeout", "node_lost", "node_changed", "stream_incomplete", "no_target_available", "deadline_exceeded"}
)
# How much later than the gateway's timeout a caller may get its 504 (scheduling on a busy machine).
TIMEOUT_SLACK_S = 2.0


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
