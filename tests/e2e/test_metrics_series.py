"""After chats and a grid task on a stack of real processes, each service's /metrics shows the
series an operator needs (docs/observability.md, "Metrics"), moved where a chat must move them; every exposition
parses; and no label value is a user id, a copro id, a request id or a message's words.

The stack (`tests/fault/stack_processes.py`, as `koprogo up` runs it) is the module's own, on a
NATS server of its own with its monitoring port on loopback (as `NATS_MONITOR_PORT` gives
`koprogo up`), authentication on. A cloud deployment serves the bundled model at a port where
nothing listens, at 0 g CO2: `lowest_carbon` sends a chat there first (routed by the gateway
itself), it fails, and the router
falls back to the edge node.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.task_events import TaskStatus
from tests.conftest import wait_until
from tests.fault.stack_processes import ProcessStack, process_stack
from tests.token_support import AUDIENCE, ISSUER, SECRET, token

pytestmark = pytest.mark.integration

USER = f"metrics-user-{uuid.uuid4().hex[:8]}"
COPRO = str(uuid.uuid4())
DEPLOYMENT = "nowhere-cloud"
QUESTION = "Quand passe le ramoneur pour la cheminée du troisième étage ?"
SERVICES = ("gateway", "router", "edge-0", "ledger", "cloud", "grid-scheduler")


@dataclass
class Scraped:
    """What the chats and the task left: each service's exposition, and the ids they carried."""

    expositions: dict[str, str]
    request_ids: list[str]
    idempotency_key: str
    # `koprogo_ledger_lag_messages` while the ledger could not write (its table locked), a chat's
    # events waiting for it.
    lag_held_back: float


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` whose labels include `labels` (None when there is none)."""
    found = [s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


@pytest.fixture(scope="module")
def monitored_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=free_port(), monitor_port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def fresh_database(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"koprogo_metrics_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{postgres_server_url.rpartition('/')[0]}/{name}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def ops_url(stack: ProcessStack, name: str) -> str:
    return stack[name].ready_url.removesuffix("/ready")


@pytest.fixture(scope="module")
async def scraped(
    monitored_nats: EmbeddedNats, fresh_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scraped]:
    workdir = tmp_path_factory.mktemp("metrics-stack")
    deployments = workdir / "deployments.toml"
    deployments.write_text(
        f"""
[[deployments]]
id = "{DEPLOYMENT}"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key_env = ""
models = {{ "{BUNDLED_MODEL_ID}" = "anything" }}
intensity_g_per_kwh = 0
wh_per_1k_tokens = 0
timeout_s = 5
max_retries = 0
"""
    )
    stack = process_stack(
        monitored_nats.url, fresh_database, workdir, cloud_deployments_file=deployments, grid=True
    )
    gateway = stack["gateway"].env
    del gateway["AUTH_DISABLED"]
    gateway |= {"JWT_SECRET": SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE}
    try:
        await stack.start()
        yield await _chat_and_scrape(stack)
    finally:
        await stack.stop()


async def _chat_and_scrape(stack: ProcessStack) -> Scraped:
    bearer = {"Authorization": f"Bearer {token(user=USER, copros=[COPRO])}"}
    key = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=90) as client:

        async def router_sees_the_node() -> bool:
            text = (await client.get(f"{ops_url(stack, 'router')}/metrics")).text
            return value(text, "koprogo_router_node_up", node="edge-0") == 1.0

        await wait_until(router_sees_the_node, timeout=60)

        def chat(**extra: Any) -> dict[str, Any]:
            return {
                "model": BUNDLED_MODEL_ID,
                "messages": [{"role": "user", "content": QUESTION}],
                "context": f"copro:{COPRO}",
                "max_tokens": 24,
                **extra,
            }

        edge = await client.post("/mcp/v1/chat", json=chat(), headers=bearer | {"Idempotency-Key": key})
        assert edge.status_code == 200, edge.text + stack.logs()
        fallback = await client.post(
            "/mcp/v1/chat", json=chat(routing={"policy": "lowest_carbon"}), headers=bearer
        )
        assert fallback.status_code == 200, fallback.text + stack.logs()
        assert fallback.json()["execution_info"]["routing"]["attempts"] == 2
        streamed = await client.post("/mcp/v1/chat", json=chat(stream=True), headers=bearer)
        assert streamed.status_code == 200 and "event: done" in streamed.text, streamed.text
        refused = await client.post("/mcp/v1/chat", json=chat())  # no token
        assert refused.status_code == 401, refused.text
        done = next(
            line for line in streamed.text.split("event: done", 1)[1].splitlines() if line.startswith("data:")
        )
        request_ids = [edge.json()["id"], fallback.json()["id"], json.loads(done.removeprefix("data:"))["id"]]
        history = [
            {"month": f"2025-{m:02d}", "category": "nettoyage", "amount": 400 + 7 * m} for m in range(1, 13)
        ]
        task = {"task_type": "predict_expenses", "input_data": {"history": history}, "copro_id": COPRO}
        submitted = await client.post("/mcp/v1/execute", json=task, headers=bearer)
        assert submitted.status_code == 202, submitted.text
        task_id = str(submitted.json()["id"])

        async def task_completed() -> bool:
            shown = await client.get(f"/mcp/v1/tasks/{task_id}", headers=bearer)
            return shown.status_code == 200 and shown.json()["status"] == "completed"

        await wait_until(task_completed, timeout=90)

        async def ledger_and_scheduler_caught_up() -> bool:
            # The ledger projects after the answers; the scheduler counts its decisions every tick.
            ledger = (await client.get(f"{ops_url(stack, 'ledger')}/metrics")).text
            grid = (await client.get(f"{ops_url(stack, 'grid-scheduler')}/metrics")).text
            decided = sum(
                s.value for s in samples(grid) if s.name == "koprogo_grid_verification_outcomes_total"
            )
            return (
                (value(ledger, "koprogo_ledger_last_applied_timestamp_seconds") or 0) > 0
                and value(ledger, "koprogo_ledger_lag_messages") == 0
                and (
                    value(ledger, "koprogo_ledger_grid_rewards_tokens_total", account="solidarity_fund") or 0
                )
                > 0
                and decided > 0
            )

        await wait_until(ledger_and_scheduler_caught_up, timeout=30)
        lag_held_back, held_id = await _lag_while_the_ledger_cannot_write(stack, client, chat(), bearer)
        expositions = {
            name: (await client.get(f"{ops_url(stack, name)}/metrics")).text
            for name in SERVICES
            if name != "gateway"
        }
        expositions["gateway"] = (await client.get("/metrics")).text
    return Scraped(expositions, [*request_ids, held_id, task_id], key, lag_held_back)


async def _lag_while_the_ledger_cannot_write(
    stack: ProcessStack, client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> tuple[float, str]:
    """The ledger's lag (and the chat's id) while a lock on `mcp_requests` holds its projection back and a chat's
    events wait for it (it reads its consumer every 5 s); once the lock goes, it catches up to 0."""
    ledger_metrics = f"{ops_url(stack, 'ledger')}/metrics"

    async def lag() -> float:
        return value((await client.get(ledger_metrics)).text, "koprogo_ledger_lag_messages") or 0.0

    conn = await asyncpg.connect(stack.database_url)
    try:
        locked = conn.transaction()
        await locked.start()
        await conn.execute("LOCK TABLE mcp_requests IN ACCESS EXCLUSIVE MODE")
        try:
            answered = await client.post("/mcp/v1/chat", json=body, headers=headers)
            assert answered.status_code == 200, answered.text  # the ledger is not on a chat's path

            async def behind() -> bool:
                return await lag() > 0

            await wait_until(behind, timeout=20)
            held_back = await lag()
        finally:
            await locked.rollback()
    finally:
        await conn.close()

    async def caught_up() -> bool:
        return await lag() == 0

    await wait_until(caught_up, timeout=30)
    return held_back, str(answered.json()["id"])


async def test_after_chats_and_a_task_each_service_exposes_its_series_moved_by_them(scraped: Scraped) -> None:
    ex = scraped.expositions
    gateway, router, node, ledger, cloud, grid = (ex[name] for name in SERVICES)

    chat_route = {"route": "/mcp/v1/chat", "method": "POST"}
    assert (value(gateway, "koprogo_gateway_http_requests_total", status="200", **chat_route) or 0) >= 3
    assert (
        value(gateway, "koprogo_gateway_http_request_duration_seconds_count", status="200", **chat_route) or 0
    ) >= 3
    assert value(gateway, "koprogo_gateway_http_requests_total", status="401", **chat_route) == 1
    assert value(gateway, "koprogo_gateway_refusals_total", reason="unauthorized") == 1
    assert value(gateway, "koprogo_gateway_http_requests_in_flight") is not None

    # The edge chats and the cloud-first chat are routed by the gateway itself (stored once for
    # the node pool's or the deployment's workers); the cloud chat's fallback to the edge by the router.
    assert (
        value(gateway, "koprogo_gateway_routing_decisions_total", target="edge", reason="prefer_edge") or 0
    ) >= 2
    assert not value(router, "koprogo_router_decisions_total", target="edge", reason="prefer_edge")
    assert (
        value(gateway, "koprogo_gateway_routing_decisions_total", target="cloud", reason="lowest_carbon") == 1
    )
    assert not value(router, "koprogo_router_decisions_total", target="cloud", reason="lowest_carbon")
    assert value(router, "koprogo_router_fallbacks_total", from_target="cloud", to_target="edge") == 1
    assert value(router, "koprogo_router_nodes", state="healthy") == 1
    assert value(router, "koprogo_router_node_up", node="edge-0") == 1

    model = {"model": BUNDLED_MODEL_ID}
    assert (value(node, "koprogo_node_time_to_first_token_seconds_count", **model) or 0) >= 3
    assert (value(node, "koprogo_node_generation_tokens_per_second_count", **model) or 0) >= 3
    assert (value(node, "koprogo_node_generation_tokens_per_second_sum", **model) or 0) > 0
    assert value(node, "koprogo_node_queue_depth", **model) == 0
    assert value(node, "koprogo_node_model_resident", **model) == 1
    assert value(node, "koprogo_node_model_load_seconds_count", **model) == 1

    # Caught up after the chats, behind while it could not write (`_lag_while_the_ledger_cannot_write`).
    assert value(ledger, "koprogo_ledger_lag_messages") == 0
    assert scraped.lag_held_back > 0
    assert (value(ledger, "koprogo_ledger_last_applied_timestamp_seconds") or 0) > 0
    applied = sum(
        s.value
        for s in samples(ledger)
        if s.name == "koprogo_ledger_events_total" and s.labels["outcome"] == "applied"
    )
    assert applied >= 6  # each chat's request and answer at least

    deployment = {"deployment": DEPLOYMENT}
    assert value(cloud, "koprogo_cloud_in_cooldown", **deployment) == 0
    failures = [s for s in samples(cloud) if s.name == "koprogo_cloud_failures_total" and s.value >= 1]
    assert [s.labels["deployment"] for s in failures] == [DEPLOYMENT], cloud

    rewards = {
        s.labels["account"]: s.value
        for s in samples(ledger)
        if s.name == "koprogo_ledger_grid_rewards_tokens_total"
    }
    # The one node is not trusted yet: its share waits in escrow, the fund's share is paid.
    assert rewards.keys() == {"escrow", "solidarity_fund"} and all(v > 0 for v in rewards.values()), rewards

    decided = [s for s in samples(grid) if s.name == "koprogo_grid_verification_outcomes_total"]
    assert sum(s.value for s in decided) == 1, decided
    assert value(grid, "koprogo_grid_tasks_dispatched_total") == 1
    states = {s.labels["state"] for s in samples(grid) if s.name == "koprogo_grid_tasks"}
    assert states == set(TaskStatus.__args__)  # type: ignore[attr-defined]
    assert value(grid, "koprogo_grid_waiting_nodes") is not None


async def test_no_label_names_a_user_a_copro_a_request_or_words_of_a_message(scraped: Scraped) -> None:
    forbidden = {USER, COPRO, f"copro:{COPRO}", scraped.idempotency_key, *scraped.request_ids}
    words = {w for w in QUESTION.lower().split() if len(w) > 4}
    for service, text in scraped.expositions.items():
        for sample in samples(text):
            for label, shown in sample.labels.items():
                assert shown not in forbidden, f"{service}: {sample.name}{{{label}={shown!r}}}"
                assert not any(w in shown.lower() for w in words), (
                    f"{service}: {sample.name} {label}={shown!r}"
                )
                assert not any(f in shown for f in forbidden), f"{service}: {sample.name} {label}={shown!r}"


async def test_the_nats_server_serves_varz_on_loopback(
    monitored_nats: EmbeddedNats, scraped: Scraped
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        varz = (await client.get(f"http://127.0.0.1:{monitored_nats.monitor_port}/varz")).json()
    assert varz["jetstream"]["config"]["store_dir"]
    assert varz["in_msgs"] > 0 and varz["connections"] >= len(SERVICES)


def test_the_service_list_covers_every_process_of_the_stack(tmp_path: Path) -> None:
    stack = process_stack(
        "nats://127.0.0.1:1",
        "postgresql://x@127.0.0.1/x",
        tmp_path,
        cloud_deployments_file=tmp_path,
        grid=True,
    )
    assert set(stack.services) == set(SERVICES)
