"""A grid task's verification by redundancy as `GET /mcp/v1/tasks/{id}` shows it: the status
`verifying`, the replicas with their verdicts, the agreement and the outcome (task_use_case over
its fakes; the HTTP shape in tests/integration/test_gateway_tasks.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from koprogo_gateway.domain.task_view import TaskOut, TaskQuery, TaskRecord, parse_task_query
from koprogo_shared.task_events import AttemptRecord, ReplicaRecord, TaskUsage, TaskVerification
from tests.unit.test_task_use_case import RESIDENT, TILLEULS, repo_of, service

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
PENDING_QUORUM = TaskVerification(
    policy="quorum",
    quorum=2,
    max_replicas=4,
    replicas=[
        ReplicaRecord(
            attempt=1,
            node_id="pi-cave",
            owner="olivia",
            verdict="pending",
            result_digest="a" * 64,
            agreement_key="k1",
            usage=TaskUsage(prompt_tokens=10, completion_tokens=5, duration_s=2.0),
            co2_grams=0.01,
        ),
        ReplicaRecord(attempt=2, node_id="pi-grenier", owner="bert"),
    ],
    agreement=1,
)


async def test_a_task_waiting_for_its_replicas_reads_verifying_with_its_verification() -> None:
    tasks = service()
    task_id = str(uuid.uuid4())
    repo_of(tasks).tasks[task_id] = TaskRecord(
        id=task_id,
        task_type="ocr_invoice",
        status="verifying",
        copro_id=TILLEULS,
        created_at=T0,
        updated_at=T0,
        attempts=(
            AttemptRecord(attempt=1, node_id="pi-cave"),
            AttemptRecord(attempt=2, node_id="pi-grenier"),
        ),
        verification=PENDING_QUORUM,
    )

    shown = (await tasks.get(RESIDENT, task_id)).model_dump(mode="json")
    listed = await tasks.list(RESIDENT, parse_task_query(status="verifying"))

    assert shown["status"] == "verifying"
    assert shown["verification"]["policy"] == "quorum" and shown["verification"]["outcome"] == "pending"
    assert [(r["node_id"], r["owner"], r["verdict"]) for r in shown["verification"]["replicas"]] == [
        ("pi-cave", "olivia", "pending"),
        ("pi-grenier", "bert", "pending"),
    ]
    assert [t.id for t in listed] == [task_id]
    assert await tasks.list(RESIDENT, TaskQuery(status="running")) == []


def test_a_task_before_any_result_shows_no_verification() -> None:
    record = TaskRecord(
        id=str(uuid.uuid4()),
        task_type="ocr_invoice",
        status="pending",
        copro_id=TILLEULS,
        created_at=T0,
        updated_at=T0,
    )
    assert TaskOut.of(record).verification is None
    assert TaskOut.of(record).model_dump(mode="json")["verification"] is None
