"""The contents' use cases against a fake store: batches drained, lock respected, cutoff from the window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from koprogo_ledger.service_layer.contents import maintain_contents, reseal_contents, retention_cutoff
from koprogo_ledger.service_layer.ports import ContentStore, ContentTable

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class FakeContentStore(ContentStore):
    """Rows per table as created-at times, each plaintext, sealed under a key id, or purged."""

    def __init__(
        self, rows: dict[ContentTable, list[tuple[datetime, str | None]]], locked: bool = False
    ) -> None:
        self.rows = {table: [list(r) for r in found] for table, found in rows.items()}
        self.purged: dict[ContentTable, int] = {"mcp_requests": 0, "mcp_responses": 0}
        self.locked = locked
        self.calls: list[str] = []

    @asynccontextmanager
    async def exclusively(self, *, wait: bool = False) -> AsyncIterator[bool]:
        yield wait or not self.locked

    async def seal_plaintext(self, table: ContentTable, limit: int) -> int:
        self.calls.append(f"seal {table}")
        todo = [r for r in self.rows[table] if r[1] is None][:limit]
        for row in todo:
            row[1] = "k2"
        return len(todo)

    async def reseal_under_current_key(self, table: ContentTable, limit: int) -> int:
        todo = [r for r in self.rows[table] if r[1] not in (None, "k2")][:limit]
        for row in todo:
            row[1] = "k2"
        return len(todo)

    async def purge_contents(self, table: ContentTable, created_before: datetime, limit: int) -> int:
        self.calls.append(f"purge {table}")
        todo = [r for r in self.rows[table] if r[0] < created_before][:limit]
        for row in todo:
            self.rows[table].remove(row)
        self.purged[table] += len(todo)
        return len(todo)

    async def count_by_key(self) -> dict[ContentTable, dict[str | None, int]]:
        return {t: {} for t in self.rows}


def test_the_cutoff_is_the_window_before_now() -> None:
    assert retention_cutoff(NOW, 30) == NOW - timedelta(days=30)


async def test_a_round_seals_leftover_plaintext_then_purges_what_is_past_the_window_in_batches() -> None:
    old, recent = NOW - timedelta(days=31), NOW - timedelta(days=29)
    store = FakeContentStore(
        {
            "mcp_requests": [(old, None)] * 5 + [(recent, None)] * 2 + [(recent, "k1")],
            "mcp_responses": [(old, "k1")] * 4 + [(recent, None)],
        }
    )
    done = await maintain_contents(store, now=NOW, retention_days=30, batch=2)
    assert done is not None
    assert done.sealed == {"mcp_requests": 7, "mcp_responses": 1}
    assert done.purged == {"mcp_requests": 5, "mcp_responses": 4}
    assert store.calls.index("purge mcp_requests") > max(
        i for i, c in enumerate(store.calls) if c.startswith("seal")
    )
    assert store.calls.count("purge mcp_requests") == 3, "5 rows in batches of 2: 2, 2, 1"
    assert [r[0] for r in store.rows["mcp_requests"]] == [recent] * 3


async def test_a_round_finding_the_lock_held_does_nothing() -> None:
    store = FakeContentStore(
        {"mcp_requests": [(NOW - timedelta(days=99), None)], "mcp_responses": []}, locked=True
    )
    assert await maintain_contents(store, now=NOW, retention_days=30, batch=10) is None
    assert store.calls == []


async def test_resealing_waits_for_the_lock_and_moves_every_row_to_the_current_key() -> None:
    store = FakeContentStore(
        {"mcp_requests": [(NOW, "k1")] * 3 + [(NOW, "k2")], "mcp_responses": [(NOW, "k0")]}, locked=True
    )
    assert await reseal_contents(store, batch=2) == {"mcp_requests": 3, "mcp_responses": 1}
    assert {r[1] for rows in store.rows.values() for r in rows} == {"k2"}
