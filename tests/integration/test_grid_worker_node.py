"""A real node on the grid (run_node, real NATS) against a stand-in scheduler that signs what it hands out.

What the node does with what it is handed: an assignment signed by another key than the
scheduler's it was told is neither started nor reported, and is counted in its metrics; one the
scheduler signed is run and reported with the node's own signature and an energy attestation.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nkeys
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_shared import grid_signing as g
from koprogo_shared import subjects
from koprogo_shared.grid_stores import ensure_documents_store
from koprogo_shared.nats_connection import subscribed
from koprogo_shared.task_events import GridPollReply, TaskAssignment, TaskResultReported, TaskStarted
from tests.integration.edge_support import nats_client, node_settings, running_node

pytestmark = pytest.mark.integration

NODE_ID = "edge-grid-trust"
HISTORY = [
    {"month": f"{2022 + i // 12}-{i % 12 + 1:02d}", "category": "chauffage", "amount": 900 + 40 * (i % 12)}
    for i in range(30)
]


def _signer() -> g.Signer:
    return g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def _assignment(signer: g.Signer) -> TaskAssignment:
    unsigned = TaskAssignment(
        task_id=str(uuid.uuid4()),
        copro_id="c1",
        task_type="predict_expenses",
        attempt=1,
        parameters={"history": HISTORY, "horizon_months": 3},
        document=None,
        deadline=datetime.now(UTC) + timedelta(minutes=2),
    )
    return g.sign_assignment(signer, unsigned, NODE_ID)


def _refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("koprogo_node_grid_assignments_refused_total", {"reason": reason})
    return value or 0.0


@asynccontextmanager
async def stand_in_scheduler(nc: NATS, handed: list[TaskAssignment]) -> AsyncIterator[asyncio.Queue[Any]]:
    """Answers the node's polls with `handed`, in order, then "no_work"; yields what the node published."""
    events: asyncio.Queue[Any] = asyncio.Queue()
    pending = list(handed)

    async def on_poll(msg: Msg) -> None:
        if pending:
            reply = GridPollReply(assignment=pending.pop(0))
        else:
            await asyncio.sleep(1)
            reply = GridPollReply(reason="no_work")
        await msg.respond(reply.model_dump_json().encode())

    async def on_started(msg: Msg) -> None:
        await events.put(TaskStarted.model_validate_json(msg.data))

    async def on_report(msg: Msg) -> None:
        await events.put(TaskResultReported.model_validate_json(msg.data))

    subs = [
        await nc.subscribe(subjects.grid_poll(NODE_ID), cb=on_poll),
        await nc.subscribe(subjects.node_task_event("started", "c1", NODE_ID), cb=on_started),
        await nc.subscribe(subjects.node_task_event("result_reported", "c1", NODE_ID), cb=on_report),
    ]
    await subscribed(nc)
    try:
        yield events
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def test_the_node_runs_only_what_its_scheduler_signed_and_signs_what_it_reports(
    clean_jetstream: str, tmp_path: Path
) -> None:
    scheduler, rogue = _signer(), _signer()
    forged, genuine = _assignment(rogue), _assignment(scheduler)
    seed_file = tmp_path / "grid-node.nk"
    settings = node_settings(
        clean_jetstream,
        NODE_ID,
        grid_enabled=True,
        grid_task_types=["predict_expenses"],
        grid_signing_seed_file=seed_file,
        grid_scheduler_public_key=scheduler.public_key,
        power_watts=9.0,
        intensity_g_per_kwh=120.0,
        device_class="x86",
    )
    refused_before = _refused("assignment_not_from_the_scheduler")
    async with nats_client(clean_jetstream) as (nc, js):
        await ensure_documents_store(js)
        async with (
            stand_in_scheduler(nc, [forged, genuine]) as events,
            running_node(settings, FakeInferenceEngine()),
        ):
            started = await asyncio.wait_for(events.get(), 60)
            report = await asyncio.wait_for(events.get(), 60)
    # The forged assignment came first: it was never started, only the genuine one was.
    assert isinstance(started, TaskStarted) and started.task_id == genuine.task_id
    assert isinstance(report, TaskResultReported) and report.task_id == genuine.task_id
    assert _refused("assignment_not_from_the_scheduler") == refused_before + 1
    node_key = g.load_or_create_signer(seed_file).public_key
    assert report.outcome == "completed" and report.signer == node_key
    assert g.report_refusal(report, node_key, g.assignment_digest(genuine)) is None
    assert g.report_refusal(report, node_key, g.assignment_digest(forged)) == "not_the_assignment_given"
    att = report.attestation
    assert att is not None
    assert (att.source, att.measured_by, att.power_watts, att.intensity_g_per_kwh, att.device_class) == (
        "grid",
        "declared",
        9.0,
        120.0,
        "x86",
    )
    assert att.wh == pytest.approx(9.0 * att.duration_s / 3600, rel=0.01, abs=1e-6)
