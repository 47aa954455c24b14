"""A cloud work item redelivered after its answer was stored is answered from the stored answer,
not by paying the provider again (issue 12, finding 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_shared import subjects
from koprogo_shared.chat_outcomes import completed_id
from koprogo_shared.events import ChatCompleted, ExecutionInfo, Usage, chat_outcome_adapter
from koprogo_shared.publishing import publish_event
from tests.integration.cloud_support import (
    FakeChatCompletionsApi,
    Reply,
    cloud_settings,
    collecting,
    completion_body,
    deployments_file,
    nats_client,
    openai_deployment,
    reply_subject,
    running_cloud,
    submit,
    work_item,
)

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


async def test_a_redelivered_item_whose_answer_was_stored_is_answered_again_without_a_provider_call(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(body=completion_body("Bonjour !", prompt_tokens=9, completion_tokens=3)))
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    environ = {"OPENAI_API_KEY": "sk-test"}
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, environ):
        # First, an item answered normally: the provider is called once, its answer stored.
        reply = reply_subject()
        first = work_item(dep, MODEL, reply_subject=reply)
        async with collecting(nc, reply) as answers:
            await submit(js, dep, first)
            answered = chat_outcome_adapter.validate_json(await answers.next(timeout=30))
        stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.cloud_chat_completed(first.copro_id))
        # Then the state a worker killed between storing its answer and acking leaves behind:
        # the answer is in the event log, the work item is still pending. Its next delivery (or
        # the router's copy for a redelivered request) may be answered: the work-item handler
        # tells the worker of a delivery after the first (tests/unit/test_cloud_inference_service.py,
        # through the worker's own handler), the router marks a copy (this one).
        reply = reply_subject()
        again = work_item(dep, MODEL, reply_subject=reply).model_copy(update={"may_be_answered": True})
        earlier = ChatCompleted(
            id=completed_id(again),
            source=f"koprogo/cloud/{dep}",
            copro_id=again.copro_id,
            request_id=again.request_id,
            model=MODEL,
            content="La réponse déjà payée.",
            finish_reason="stop",
            usage=Usage(prompt_tokens=9, completion_tokens=5, total_tokens=14),
            execution_info=ExecutionInfo(
                execution_type="cloud", node_id=dep, latency_ms=300.0, co2_grams=0.004, co2_saved_grams=0.0
            ),
        )
        # Stored among the copro's other cloud answers (the first one above, on the same subject).
        assert again.copro_id == first.copro_id
        await publish_event(js, subjects.cloud_chat_completed(again.copro_id), earlier)
        async with collecting(nc, reply) as answers:
            await submit(js, dep, again)
            resent = chat_outcome_adapter.validate_json(await answers.next(timeout=30))
    assert isinstance(answered, ChatCompleted) and stored.data is not None
    assert ChatCompleted.model_validate_json(stored.data).id == answered.id
    assert isinstance(resent, ChatCompleted) and resent.id == earlier.id
    assert resent.content == "La réponse déjà payée."
    assert len(api.calls) == 1, "the stored answer is sent again, the provider is not paid twice"
