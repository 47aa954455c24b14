"""Every SQL query of the provisioned Grafana dashboards (deploy/grafana/) runs against the ledger's
real schema (its migrations) in PostgreSQL, filled by projecting real events with the ledger's own
projection (chats from ledger_support, the grid run of test_token_ledger), and the main panels
return what those events add up to. Grafana's macros are expanded here as Grafana expands them for
PostgreSQL; a macro this expander does not know fails the test rather than being left in the SQL.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
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
from koprogo_shared.task_events import TaskAssigned, TaskCompleted, TaskSubmitted
from tests.conftest import TEST_CONTENT_KEYS
from tests.integration.ledger_support import chat_completed, chat_delivered, chat_failed, chat_requested
from tests.integration.test_token_ledger import (
    EXPECTED_BALANCES,
    EXPECTED_FUND_INFLOWS,
    FUND,
    T0,
    GridTask,
    replica,
)
from tests.integration.test_token_ledger import scenario as grid_scenario

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "koprogo-overview.json"
OPERATIONS = GRAFANA / "dashboards" / "koprogo-operations.json"
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
    $__timeFrom()/$__timeTo() -> the quoted bounds, $__unixEpochFrom()/$__unixEpochTo() -> the bounds
    in epoch seconds, $copro (multi-value) -> 'a','b'."""
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
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(end.timestamp())))
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


def _at(moment: datetime) -> datetime:
    return moment


@asynccontextmanager
async def projected(database_url: str, events: list[LedgerEvent]) -> AsyncIterator[asyncpg.Pool]:
    """The ledger's migrated schema with `events` projected by the ledger's own unit of work, each
    recorded at its own time (the token ledger's `recorded_at` too)."""
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        for event in events:
            outcome = await project(
                event, PostgresProjectionUnitOfWork(pool, keyring), now=partial(_at, event.time)
            )
            assert outcome is Projected.APPLIED, (event.type, outcome)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def ledger_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The chats and the grid run, projected."""
    grid_events, _ = grid_scenario()
    async with projected(database_url, [e for c in chats() for e in chat_events(c)] + grid_events) as pool:
        yield pool


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


async def rows(
    pool: asyncpg.Pool, panel: str, copros: list[str], start: datetime = FROM, end: datetime = TO
) -> list[asyncpg.Record]:
    return list(await pool.fetch(expand(sql_panels(load_dashboard())[panel], copros, start, end)))


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
    assert len(sql_panels(dashboard)) == 15


def test_the_operations_dashboard_reads_prometheus_through_its_datasource_variable() -> None:
    """koprogo-operations: every panel on the `$datasource` variable (a Prometheus data source,
    the provisioned one by default), ids unique, panels inside Grafana's 24 columns without
    overlapping. Its PromQL is checked by tests/deploy/test_prometheus_rules.py."""
    provisioned = {ds["uid"] for ds in yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]}
    dashboard = json.loads(OPERATIONS.read_text(encoding="utf-8"))
    assert (dashboard["uid"], dashboard["schemaVersion"]) == (
        "koprogo-operations",
        load_dashboard()["schemaVersion"],
    )
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"], source["current"]["value"]) == (
        "datasource",
        "prometheus",
        "koprogo-prometheus",
    )
    assert source["current"]["value"] in provisioned
    for name in ("route", "model", "deployment"):
        assert variables[name]["datasource"]["uid"] == "${datasource}" and variables[name]["includeAll"], name
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for cell in (
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        ):
            assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r}"
            cells[cell] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(
            t["datasource"] == panel["datasource"] and t["expr"] for t in panel["targets"]
        )
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Latency p50 / p95 / p99 by route", "Refusals/s by reason", "Decisions/s by target", "Queue depth",
            "Deployments cooling down", "Tasks by state", "Ledger lag (messages)", "Client connections"} <= titles  # fmt: skip


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


async def test_the_grid_panels_add_up_to_the_grid_run(ledger_db: asyncpg.Pool) -> None:
    events, _ = grid_scenario()
    submitted = {e.id: e for e in events if isinstance(e, TaskSubmitted)}
    completed = [e for e in events if isinstance(e, TaskCompleted)]
    assigned = [e for e in events if isinstance(e, TaskAssigned)]

    # Every task of the run completed: per type, the tasks, their attempts and the accepted tokens.
    expected: dict[tuple[str, str], tuple[int, int, int]] = {}
    for task in submitted.values():
        tries = sum(1 for a in assigned if a.task_id == task.id)
        done = next(c for c in completed if c.task_id == task.id)
        tokens = done.usage.prompt_tokens + done.usage.completion_tokens
        count, attempts, total = expected.get((task.task_type, "completed"), (0, 0, 0))
        expected[(task.task_type, "completed")] = (count + 1, attempts + tries, total + tokens)
    by_type = {
        (r["task_type"], r["status"]): (r["tasks"], r["attempts"], r["tokens"])
        for r in await rows(ledger_db, "Grid tasks by type and status", ["copro-a", "copro-b"])
    }
    assert by_type == expected
    assert by_type[("summarize_meeting", "completed")] == (1, 3, 200_000)
    (ocr,) = await rows(ledger_db, "Grid tasks by type and status", ["copro-a"])
    assert ocr["co2_grams"] == pytest.approx(sum(c.co2_grams for c in completed if c.copro_id == "copro-a"))

    # copro-a's replicas as their verification judged them (a flagged one is still "valid").
    verdicts: Counter[str] = Counter()
    for r in await rows(ledger_db, "Grid verification verdicts", ["copro-a"]):
        verdicts[r["metric"]] += r["value"]
    judged = Counter(r.verdict for c in completed if c.copro_id == "copro-a" for r in c.verification.replicas)  # type: ignore[union-attr]
    assert verdicts == judged and judged == {"valid": 6, "unchecked": 1, "invalid": 1}

    # The fund: its balance after the last hour is the view's, the inflows those of the run.
    fund = await rows(ledger_db, "Solidarity fund over time (tokens)", [])
    assert float(fund[-1]["balance"]) == pytest.approx(EXPECTED_BALANCES[FUND] / 1000)
    for kind, amount_mt in EXPECTED_FUND_INFLOWS.items():
        assert float(sum(r[kind] for r in fund)) == pytest.approx(amount_mt / 1000), kind
    later = T0 + timedelta(hours=2)
    assert await rows(ledger_db, "Solidarity fund over time (tokens)", [], start=later) == []
    # Up to a moment inside the run: only what the fund had received by then.
    early = T0 + timedelta(seconds=150)
    (until_early,) = await rows(ledger_db, "Solidarity fund over time (tokens)", [], end=early)
    received = await ledger_db.fetchval(
        "SELECT sum(amount_mt) FROM grid_ledger_entries WHERE credit = $1 AND recorded_at <= $2", FUND, early
    )
    assert 0 < received < EXPECTED_BALANCES[FUND]
    assert float(until_early["balance"]) == pytest.approx(float(received) / 1000)

    # Nodes: pi-a earned trust (everything paid out), pi-b was caught (its escrow forfeited), pi-c
    # is still untrusted (held in escrow); the flagged pi-d and the lazy node earned nothing.
    earnings = {r["node_id"]: r for r in await rows(ledger_db, "Grid nodes: earnings (tokens)", [])}
    assert set(earnings) == {"pi-a", "pi-b", "pi-c"}
    a, b, c = earnings["pi-a"], earnings["pi-b"], earnings["pi-c"]
    assert (
        float(a["earned"]) == float(a["balance_now"]) == pytest.approx(EXPECTED_BALANCES["node:pi-a"] / 1000)
    )
    assert float(a["in_escrow_now"]) == 0
    forfeited = EXPECTED_FUND_INFLOWS["escrow_forfeit"] / 1000
    assert float(b["earned"]) == float(b["forfeited"]) == pytest.approx(forfeited)
    assert float(b["balance_now"]) == float(b["in_escrow_now"]) == 0
    assert (
        float(c["earned"])
        == float(c["in_escrow_now"])
        == pytest.approx(EXPECTED_BALANCES["escrow:pi-c"] / 1000)
    )
    assert float(sum(r["fund_share"] for r in earnings.values())) == pytest.approx(
        EXPECTED_FUND_INFLOWS["fund_share"] / 1000
    )


async def test_the_node_and_failure_panels_count_what_the_nodes_did(ledger_db: asyncpg.Pool) -> None:
    events, _ = grid_scenario()
    completed = [e for e in events if isinstance(e, TaskCompleted)]
    attempts = Counter(e.node_id for e in events if isinstance(e, TaskAssigned))
    # An accepted replica's attempt completed, a flagged one too (its work agreed); an invalid one did not.
    accepted = Counter(
        r.node_id
        for c in completed
        for r in c.verification.replicas  # type: ignore[union-attr]
        if r.verdict in ("valid", "unchecked")
    )
    answered = Counter(
        c.completed.execution_info.node_id
        for c in chats()
        if c.completed and c.completed.execution_info.node_id
    )

    work = {r["node_id"]: r for r in await rows(ledger_db, "Nodes: recent work", [])}
    assert set(work) == set(attempts) | set(answered)
    for node, row in work.items():
        assert (row["chats"], row["grid_attempts"], row["grid_completed"]) == (
            answered[node], attempts[node], accepted[node],
        ), node  # fmt: skip
    assert work["pi-1"]["chats"] == 2, "an answer stored but not delivered is still work the node did"
    assert work["pi-lazy"]["grid_completed"] == 0 and work["pi-d"]["grid_completed"] == 1

    failed = [c for c in chats() if c.completed is None]
    by_error = {
        r["error"]: r["requests"] for r in await rows(ledger_db, "Failed chats by error", ["copro-a"])
    }
    assert by_error == {"timeout": len(failed)}
    assert await rows(ledger_db, "Failed chats by error", ["copro-b"]) == []


async def test_the_fund_balance_counts_the_history_before_the_range(database_url: str) -> None:
    """Three hours after the run, a trusted node's unchecked OCR task pays the fund its 10 % share
    (62 mt of 620): a range holding only that hour still shows the whole balance."""
    later = GridTask("copro-c", "ocr_invoice", at=3 * 3600)
    lone = [replica(1, "pi-a", "unchecked", trusted=True)]
    grid_events, _ = grid_scenario()
    extra: list[LedgerEvent] = [
        later.submitted(),
        later.assigned(1, "pi-a"),
        later.completed("trusted", lone),
    ]
    async with projected(database_url, grid_events + extra) as pool:
        (hour,) = await rows(pool, "Solidarity fund over time (tokens)", [], start=T0 + timedelta(hours=2))
        assert float(hour["fund_share"]) == pytest.approx(0.062)
        assert float(hour["balance"]) == pytest.approx((EXPECTED_BALANCES[FUND] + 62) / 1000)
        assert hour["time"] == (T0 + timedelta(hours=3)).timestamp()
