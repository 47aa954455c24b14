"""A worker's outcome reaches the caller only when it is the one the event log keeps (issue 12):
two runs of one work item (a redelivery after NATS restarted) both answer; the second's text,
de-duplicated away by the stream, must not be what its caller reads."""

from __future__ import annotations

import uuid

import pytest

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ExecutionInfo, Usage, chat_outcome_adapter
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.publishing import deliver_chat_outcome
from tests.integration.cloud_support import collecting

pytestmark = pytest.mark.integration


def run_of(request_id: str, text: str) -> ChatCompleted:
    """A run's completion: its id comes from the request, so every run has the same one."""
    return ChatCompleted(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request_id}/completed")),
        source="koprogo/node/pi-1",
        copro_id="copro-runs",
        request_id=request_id,
        model="smollm2:135m-instruct-q4",
        content=text,
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id="pi-1", latency_ms=100.0, co2_grams=0.0, co2_saved_grams=0.0
        ),
    )


async def test_a_second_runs_outcome_is_not_sent_when_the_first_runs_is_stored(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "outcome-delivery-test")
    try:
        await ensure_streams(js)
        request_id = str(uuid.uuid4())
        reply = subjects.gateway_reply(f"test-{uuid.uuid4().hex[:8]}")
        async with collecting(nc, reply) as replies:
            await deliver_chat_outcome(nc, js, run_of(request_id, "Première génération."), reply)
            await deliver_chat_outcome(nc, js, run_of(request_id, "Seconde génération."), reply)
            await nc.flush()
            first = chat_outcome_adapter.validate_json(await replies.next(timeout=5))
            with pytest.raises(TimeoutError):
                await replies.next(timeout=0.5)
        stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.chat_completed("copro-runs"))
    finally:
        await nc.close()
    assert first.content == "Première génération."  # type: ignore[union-attr]
    assert ChatCompleted.model_validate_json(stored.data or b"").content == "Première génération."


async def test_an_outcome_its_own_run_stores_is_sent(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "outcome-delivery-test")
    try:
        await ensure_streams(js)
        request_id = str(uuid.uuid4())
        reply = subjects.gateway_reply(f"test-{uuid.uuid4().hex[:8]}")
        outcome = run_of(request_id, "Une seule génération.")
        async with collecting(nc, reply) as replies:
            await deliver_chat_outcome(nc, js, outcome, reply)
            got = chat_outcome_adapter.validate_json(await replies.next(timeout=5))
    finally:
        await nc.close()
    assert got.id == outcome.id
