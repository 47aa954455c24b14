"""Every SQL query of the provisioned Grafana dashboards (deploy/grafana/) runs against the ledger's
real schema (its migrations) in PostgreSQL, filled by projecting real events with the ledger's own
projection (chats from ledger_support, the grid run of test_token_ledger), and the main panels
return what those events add up to. Grafana's macros are expanded here as Grafana expands them for
PostgreSQL; a macro this expander does not know fails the test rather than being left in the SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.service_layer.projection import LedgerEvent, Projected, project
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.events import ChatCompleted, ChatDelivered, ChatRequested
from koprogo_shared.task_events import TaskCompleted
from tests.conftest import TEST_CONTENT_KEYS
from tests.integration.ledger_support import chat_completed, chat_delivered, chat_failed, chat_requested
from tests.integration.test_token_ledger import EXPECTED_BALANCES, FUND, T0
from tests.integration.test_token_ledger import scenario as grid_scenario

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "koprogo-overview.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "koprogo.yaml"

# The dashboard's time range in the test: every event below falls inside it.
FROM = T0 - timedelta(hours=1)
TO = T0 + timedelta(days=1)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def sql_panels(dashboard: dict[str, Any]) -> dict[str, str]:
    """Panel title -> its PostgreSQL target's rawSql (one target per panel)."""
    found: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if (target.get("datasource") or panel["datasource"])["uid"] == "koprogo-postgres":
                assert panel["title"] not in found, f"two SQL targets in {panel['title']!r}"
                found[panel["title"]] = target["rawSql"]
    return found


def _utc(moment: datetime) -> str:
    return "'" + moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


_INTERVALS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def expand(sql: str, copros: list[str], start: datetime = FROM, end: datetime = TO) -> str:
    """`sql` as Grafana's PostgreSQL data source sends it: $__timeFilter(col) -> col BETWEEN from AND to,
    $__timeGroupAlias(col, 'N<unit>') -> floor(extract(epoch from col)/secs)*secs AS "time",
    $__timeFrom()/$__timeTo() -> the quoted bounds, $copro (multi-value) -> 'a','b'."""
    bounds = (_utc(start), _utc(end))

    def group(match: re.Match[str]) -> str:
        column, count, unit = match.group(1).strip(), int(match.group(2)), match.group(3)
        secs = count * _INTERVALS[unit]
        return f'floor(extract(epoch from {column})/{secs})*{secs} AS "time"'

    sql = re.sub(r"\$__timeGroupAlias\(([^,()]+),\s*'(\d+)([smhd])'\)", group, sql)
    sql = re.sub(
        r"\$__timeFilter\(([^()]+)\)",
        lambda m: f"{m.group(1).strip()} BETWEEN {bounds[0]} AND {bounds[1]}",
        sql,
    )
    sql = sql.replace("$__timeFrom()", bounds[0]).replace("$__timeTo()", bounds[1])
    quoted = ",".join("'" + c.replace("'", "''") + "'" for c in copros)
    sql = re.sub(r"\$copro\b", quoted, sql)
    assert "$" not in sql, f"a macro or variable this test does not expand is left in: {sql}"
    return sql


# Chats at the grid run's time: copro-a asks llama3 on the edge and gpt-4o-mini in the cloud (both
# delivered), one more edge answer that never reached its caller (not counted), one that failed;
# copro-b gets a grid answer. `at` spreads them over two hours.
@dataclass
class Chat:
    requested: ChatRequested
    completed: ChatCompleted | None
    delivered: ChatDelivered | None


def chats() -> list[Chat]:
    def chat(copro: str, minutes: int, *, model: str, kind: str, latency: float, co2: float, saved: float,
             delivered: bool = True, failed: bool = False) -> Chat:  # fmt: skip
        request = chat_requested(copro, at=T0 + timedelta(minutes=minutes), model=model)
        if failed:
            return Chat(request, None, None)
        done = chat_completed(request, execution_type=kind, prompt_tokens=20 + minutes, completion_tokens=40,  # type: ignore[arg-type]
                              latency_ms=latency - 30, co2_grams=co2, co2_saved_grams=saved)  # fmt: skip
        return Chat(request, done, chat_delivered(request, latency) if delivered else None)

    return [
        chat("copro-a", 5, model="llama3:8b", kind="edge", latency=900.0, co2=0.002, saved=0.25),
        chat("copro-a", 20, model="gpt-4o-mini", kind="cloud", latency=2000.0, co2=0.3, saved=0.0),
        chat(
            "copro-a",
            30,
            model="llama3:8b",
            kind="edge",
            latency=700.0,
            co2=0.004,
            saved=0.2,
            delivered=False,
        ),
        chat("copro-a", 40, model="llama3:8b", kind="edge", latency=0, co2=0, saved=0, failed=True),
        chat("copro-b", 70, model="phi-2:2.7b-q4", kind="grid", latency=1500.0, co2=0.01, saved=0.1),
    ]


def chat_events(chat: Chat) -> list[LedgerEvent]:
    if chat.completed is None:
        return [chat.requested, chat_failed(chat.requested)]
    return [e for e in (chat.requested, chat.completed, chat.delivered) if e is not None]


@pytest.fixture
async def ledger_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The ledger's migrated schema with the chats and the grid run projected by the ledger's own unit
    of work; each event recorded at its own time (the token ledger's `recorded_at` too)."""
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        grid_events, _ = grid_scenario()
        events = [e for c in chats() for e in chat_events(c)] + grid_events
        for event in events:
            outcome = await project(
                event, PostgresProjectionUnitOfWork(pool, keyring), now=lambda e=event: e.time
            )
            assert outcome is Projected.APPLIED, (event.type, outcome)
        yield pool
    finally:
        await pool.close()


def completed_tasks(copro: str) -> list[TaskCompleted]:
    events, _ = grid_scenario()
    return [e for e in events if isinstance(e, TaskCompleted) and e.copro_id == copro]


def delivered(copro: str) -> list[ChatCompleted]:
    return [c.completed for c in chats() if c.requested.copro_id == copro and c.delivered and c.completed]


def percentile_cont(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def rows(pool: asyncpg.Pool, panel: str, copros: list[str]) -> list[asyncpg.Record]:
    return list(await pool.fetch(expand(sql_panels(load_dashboard())[panel], copros)))


def test_every_panel_uses_a_provisioned_data_source_and_ids_are_unique() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    by_uid = {ds["uid"]: ds for ds in provisioned}
    assert set(by_uid) == {"koprogo-postgres", "koprogo-prometheus"}
    postgres = by_uid["koprogo-postgres"]
    assert (postgres["url"], postgres["user"], postgres["jsonData"]["database"]) == (
        "$KOPROGO_DB_HOST", "$KOPROGO_DB_USER", "$KOPROGO_DB_NAME",
    )  # fmt: skip
    assert postgres["secureJsonData"]["password"] == "$KOPROGO_DB_PASSWORD"
    assert by_uid["koprogo-prometheus"]["url"] == "http://prometheus:9090"

    dashboard = load_dashboard()
    assert (dashboard["uid"], dashboard["schemaVersion"]) == ("koprogo-overview", 39)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in dashboard["panels"]:
        uids = {panel["datasource"]["uid"]} | {t["datasource"]["uid"] for t in panel["targets"]}
        assert uids <= set(by_uid), f"{panel['title']!r} uses an unprovisioned data source: {uids}"
        for target in panel["targets"]:
            if target["datasource"]["type"] == "grafana-postgresql-datasource":
                assert target["rawSql"].strip(), panel["title"]
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "copro" and variable["datasource"]["uid"] == "koprogo-postgres"
    assert len(sql_panels(dashboard)) == 9


async def test_every_dashboard_query_runs_against_the_ledger_schema(ledger_db: asyncpg.Pool) -> None:
    dashboard = load_dashboard()
    (variable,) = dashboard["templating"]["list"]
    copros = [r[0] for r in await ledger_db.fetch(expand(variable["query"], []))]
    assert copros == ["copro-a", "copro-b"], "the variable lists the copros that asked something"
    for title, sql in sql_panels(dashboard).items():
        for selection in (copros, ["copro-a"], ["copro-nobody"]):  # "All", one, one with no data
            await ledger_db.fetch(expand(sql, selection))  # raises on any SQL error
        assert await ledger_db.fetch(expand(sql, copros)), f"{title!r} returns no rows for the test data"


async def test_the_main_panels_add_up_to_the_projected_events(ledger_db: asyncpg.Pool) -> None:
    a_chats, a_tasks = delivered("copro-a"), completed_tasks("copro-a")
    assert len(a_chats) == 2 and len(a_tasks) == 4

    by_type: dict[str, int] = {}
    for r in await rows(ledger_db, "Requests by execution type", ["copro-a"]):
        by_type[r["metric"]] = by_type.get(r["metric"], 0) + r["value"]
    assert by_type == {"edge": 1, "cloud": 1, "grid task": len(a_tasks)}, (
        "undelivered and failed chats do not count"
    )
    every = await rows(ledger_db, "Requests by execution type", ["copro-a", "copro-b"])
    assert {r["metric"] for r in every} == {"edge", "cloud", "grid", "grid task"}
    assert all(r["time"] % 3600 == 0 for r in every), "hourly buckets, as epoch seconds"

    co2 = await rows(ledger_db, "CO₂ emitted vs saved", ["copro-a"])
    emitted = sum(c.execution_info.co2_grams for c in a_chats) + sum(t.co2_grams for t in a_tasks)
    saved = sum(c.execution_info.co2_saved_grams for c in a_chats)
    assert sum(r["CO₂ emitted"] for r in co2) == pytest.approx(emitted)
    assert sum(r["CO₂ saved"] for r in co2) == pytest.approx(saved)

    tokens = await rows(ledger_db, "Tokens", ["copro-a"])
    expected_tokens = sum(c.usage.total_tokens for c in a_chats) + sum(
        t.usage.prompt_tokens + t.usage.completion_tokens for t in a_tasks
    )
    assert sum(r["tokens"] for r in tokens) == expected_tokens

    # Both of copro-a's delivered chats fall in T0's hour; the latency is the one the caller saw.
    (latency,) = await rows(ledger_db, "Latency percentiles (chats)", ["copro-a"])
    seen = [c.delivered.latency_ms for c in chats() if c.requested.copro_id == "copro-a" and c.delivered]
    assert latency["p50"] == pytest.approx(percentile_cont(seen, 0.5))
    assert latency["p95"] == pytest.approx(percentile_cont(seen, 0.95))

    models = {
        (r["model"], r["execution_type"]): r["requests"]
        for r in await rows(ledger_db, "Models used", ["copro-a"])
    }
    assert models == {("llama3:8b", "edge"): 1, ("gpt-4o-mini", "cloud"): 1}

    statuses = {r["status"]: r["tasks"] for r in await rows(ledger_db, "Grid tasks by status", ["copro-a"])}
    assert statuses == {"completed": len(a_tasks)}

    # What copro-a paid (rewards, fund shares, CO₂ credits) is what its account lost.
    paid = await rows(ledger_db, "Grid rewards and fund inflows (tokens)", ["copro-a"])
    assert {r["metric"] for r in paid} <= {"reward", "fund_share", "co2_credit"}
    assert float(sum(r["value"] for r in paid)) == pytest.approx(-EXPECTED_BALANCES["copro:copro-a"] / 1000)

    (fund,) = await rows(ledger_db, "Solidarity fund balance", [])
    assert float(fund["fund:solidarity"]) == pytest.approx(EXPECTED_BALANCES[FUND] / 1000)

    nodes = {r["node_id"]: r for r in await rows(ledger_db, "Grid nodes: trust", [])}
    assert nodes["pi-a"]["trusted"] is True and nodes["pi-b"]["trusted"] is False
    assert nodes["pi-b"]["last_reason"] == "caught_wrong"
    assert {"pi-a", "pi-b", "pi-c", "pi-lazy"} <= set(nodes)
