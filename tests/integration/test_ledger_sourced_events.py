"""The ledger on real NATS JetStream and PostgreSQL: an event that reached KOPROGO_EVENTS by sourcing
(a building's, through its leaf connection and its inbox) is believed only when a building makes
its kind.

JetStream refuses a publish that carries `Nats-Stream-Source` itself (error 10227), so the events
here come the way a building's do, by sourcing: KOPROGO_EVENTS is given a source that takes every
event kind, as a hub whose filters were edited by hand would (docs/building-offline.md, "Known
gap"), and JetStream writes the header on each message it takes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared import subjects
from koprogo_shared.events import Event, UserDataErasureRequested
from koprogo_shared.leaf_site import SOURCE_HEADER
from koprogo_shared.task_events import NodeTrustChanged
from tests.conftest import wait_until
from tests.integration.ledger_support import LedgerUnderTest, chat_failed, chat_requested, running_ledger
from tests.integration.test_ledger_tasks import Task, publish, task_row
from tests.integration.test_ledger_tasks import subject_of as task_subject

pytestmark = pytest.mark.integration

# Stands for a building's stream: what is published on `building.<subject>` is sourced into
# KOPROGO_EVENTS as `<subject>`, whatever its kind.
BUILDING = "KOPROGO_TEST_SOURCED_BUILDING"
ON_BUILDING = "building"


@asynccontextmanager
async def sourced_from_a_building(js: JetStreamContext) -> AsyncIterator[None]:
    await js.add_stream(
        js_api.StreamConfig(name=BUILDING, subjects=[f"{ON_BUILDING}.>"], storage=js_api.StorageType.FILE)
    )
    try:
        events = (await js.stream_info(subjects.EVENTS_STREAM)).config
        every_kind = js_api.SubjectTransform(src=f"{ON_BUILDING}.koprogo.events.>", dest="koprogo.events.>")
        source = js_api.StreamSource(name=BUILDING, subject_transforms=[every_kind])
        await js.update_stream(replace(events, sources=[*(events.sources or []), source]))
        yield
    finally:
        await js.delete_stream(BUILDING)


async def publish_in_building(ledger: LedgerUnderTest, subject: str, event: Event) -> None:
    headers = {"Nats-Msg-Id": event.id}
    await ledger.js.publish(f"{ON_BUILDING}.{subject}", event.model_dump_json().encode(), headers=headers)


def node_trust_earned(node_id: str) -> NodeTrustChanged:
    return NodeTrustChanged(
        source="tests/grid-scheduler", node_id=node_id, owner=node_id, trusted=True, reason="earned",
        task_id=str(uuid.uuid4()), valid_streak=5, validated=5, invalid=0,
    )  # fmt: skip


async def test_a_sourced_task_trust_or_erasure_event_is_dead_lettered_and_a_sourced_chat_is_projected(
    database_url: str, clean_jetstream: str
) -> None:
    sourced_task = Task("copro-a")
    local_task = Task("copro-a")
    request = chat_requested("copro-a")
    failed_request = chat_requested("copro-a")
    failure = chat_failed(failed_request)
    completed = sourced_task.completed(1, "pi-a", 10, {"total": "312,40"})
    trust = node_trust_earned("copro-a")  # a node id equal to the copro id matches `*.*.copro-a`
    erasure = UserDataErasureRequested(source="tests/gateway", user_id="copro-a", requested_by="copro-a")
    refused: list[tuple[str, Event]] = [
        (task_subject(sourced_task.submitted()), sourced_task.submitted()),
        (task_subject(completed), completed),
        (subjects.grid_node_trust(trust.node_id), trust),
        (subjects.user_erasure_requested(erasure.user_id), erasure),
    ]
    believed: list[tuple[str, Event]] = [
        (subjects.chat_requested("copro-a"), request),  # the set-based path
        (subjects.chat_requested("copro-a"), failed_request),
        (subjects.chat_failed("copro-a"), failure),  # the per-event path
    ]
    async with running_ledger(database_url, clean_jetstream) as ledger, sourced_from_a_building(ledger.js):
        for subject, event in [*refused, *believed]:
            await publish_in_building(ledger, subject, event)
        await publish(ledger, local_task.submitted())  # on the hub itself, as the gateway does: no header
        sourced = [e.id for _, e in believed] + [local_task.id]
        await wait_until(lambda: ledger.applied(*sourced), timeout=20)
        await wait_until(ledger.settled, timeout=20)
        stored = await ledger.js.get_last_msg(subjects.EVENTS_STREAM, subjects.grid_node_trust(trust.node_id))
        letters = await ledger.dead_letters()
        projected = {event.id: await ledger.applied(event.id) for _, event in [*refused, *believed]}
        task_rows = (await task_row(ledger.db, sourced_task.id), await task_row(ledger.db, local_task.id))
        statuses = [
            await ledger.db.fetchval("SELECT status FROM mcp_requests WHERE id = $1", uuid.UUID(r.id))
            for r in (request, failed_request)
        ]
    assert (stored.headers or {}).get(SOURCE_HEADER, "").startswith(BUILDING), stored.headers
    assert projected == {e.id: False for _, e in refused} | {e.id: True for _, e in believed}
    assert task_rows[0] is None
    assert task_rows[1] is not None and task_rows[1]["status"] == "pending"
    assert statuses == ["pending", "failed"]
    assert sorted(m.headers["KoproGo-Original-Subject"] for m in letters) == sorted(s for s, _ in refused)
    for letter in letters:
        reason = letter.headers["KoproGo-Dead-Reason"]
        assert "sourced_kind_refused" in reason and BUILDING in reason, reason
        assert letter.headers["KoproGo-Stream-Source"].startswith(BUILDING)
