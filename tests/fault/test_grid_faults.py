"""The grid when its processes die: a real edge node (`koprogo-node --grid`, the bundled model)
SIGKILLed mid-task, and the grid scheduler (`koprogo-grid-scheduler`) SIGKILLed mid-burst, each
with tasks submitted through the real gateway, with the default quorum (2 owners: the two nodes)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats

from tests.conftest import wait_until
from tests.fault.conftest import FaultStackFactory
from tests.integration.grid_support import TaskEvents

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
COPRO = "550e8400-e29b-41d4-a716-446655440000"


async def _task(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/mcp/v1/tasks/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_edge_node_killed_mid_task_leaves_the_survivor_s_result_accepted_alone(
    fault_stack: FaultStackFactory,
) -> None:
    """With the default quorum (2 owners), both nodes run a replica; one is SIGKILLed mid-summary.
    No other owner is left to agree with the survivor: its result is taken alone, unchecked
    (docs/grid-trust.md), within heartbeats and GRID_OWNER_WAIT_S, not after a deadline."""
    stack = await fault_stack(edge_nodes=2, grid=True)
    minutes = await asyncio.to_thread((FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_text)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        submitted = await client.post(
            "/mcp/v1/execute",
            json={"task_type": "summarize_meeting", "input_data": {"text": minutes}, "copro_id": COPRO},
        )
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["id"]

        async def running() -> bool:
            attempts = (await _task(client, task_id))["attempts"]
            return bool(attempts) and attempts[-1]["started_at"] is not None

        await wait_until(running, timeout=60, interval=0.1)
        doomed = (await _task(client, task_id))["attempts"][-1]["node_id"]
        await stack[doomed].kill()
        killed_at = time.monotonic()

        deadline = time.monotonic() + 300
        while (task := await _task(client, task_id))["status"] != "completed":
            assert task["status"] in ("pending", "assigned", "running", "verifying"), (task, stack.logs())
            assert time.monotonic() < deadline, (task, stack.logs())
            await asyncio.sleep(0.5)
    survivor = next(n for n in stack.edge_nodes if n != doomed)
    assert {a["node_id"]: a["outcome"] for a in task["attempts"]} == {
        doomed: "node_lost",
        survivor: "completed",
    }, task["attempts"]
    assert task["result"]["decisions"], task["result"]
    verification = task["verification"]
    assert verification["outcome"] == "accepted_unchecked", verification
    assert verification["quorum"] == 1 and "owners_short" in verification["note"], verification
    assert {r["node_id"]: r["verdict"] for r in verification["replicas"]} == {
        doomed: "lost",
        survivor: "unchecked",
    }, verification
    # Three missed heartbeats (0.5 s each), the owner wait and the survivor's run, not a deadline
    # of minutes.
    assert time.monotonic() - killed_at < 300


async def test_the_scheduler_killed_mid_burst_and_restarted_loses_and_repeats_nothing(
    fault_stack: FaultStackFactory,
) -> None:
    stack = await fault_stack(edge_nodes=2, grid=True)
    nc = await nats.connect(stack.nats_url)
    events = await TaskEvents(nc).start()
    history = [
        {"month": f"2024-{m:02d}", "category": "nettoyage", "amount": 400 + 7 * m} for m in range(1, 13)
    ]
    try:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:

            async def submit(i: int) -> str:
                body = {
                    "task_type": "predict_expenses",
                    "input_data": {"history": history, "horizon_months": 1 + i % 12},
                    "copro_id": COPRO,
                }
                response = await client.post("/mcp/v1/execute", json=body)
                assert response.status_code == 202, response.text
                return str(response.json()["id"])

            first = [await submit(i) for i in range(20)]
            await wait_until(lambda: sum(bool(events.of(t, "completed")) for t in first) >= 5, timeout=60)
            await stack["grid-scheduler"].kill()  # mid-burst: some done, some assigned, some queued
            second = [await submit(100 + i) for i in range(10)]  # while no scheduler runs
            await stack["grid-scheduler"].restart()
            for task_id in first + second:
                await wait_until(events.done(task_id), timeout=120)

            async def projected() -> bool:
                # `/tasks` reads the ledger's projection, which follows the events by up to
                # LEDGER_LINGER_S: read until it has settled every task, then check them.
                statuses = [(await _task(client, t))["status"] for t in first + second]
                return not {"pending", "assigned", "running", "verifying"} & set(statuses)

            await wait_until(projected, timeout=30, interval=0.2)
            tasks = [await _task(client, t) for t in first + second]
    finally:
        await nc.close()
    assert all(t["status"] == "completed" for t in tasks), [t for t in tasks if t["status"] != "completed"]
    completed = Counter(e.task_id for _, e in events.events if e.type == "koprogo.task.completed.v1")
    assert set(completed) == set(first + second) and set(completed.values()) == {1}
    # Each result is its own task's: the horizon asked is the horizon forecast.
    for i, task in enumerate(tasks):
        horizon = 1 + (i if i < 20 else 100 + i - 20) % 12
        assert task["result"]["horizon_months"] == horizon
