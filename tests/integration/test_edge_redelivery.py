"""An edge work item redelivered after its answer was stored is answered from the node's record of
what it stored, not generated again (issue 12, finding 4), also after the node restarts. The
cloud worker's counterpart is test_cloud_redelivery.py; here the bundled model runs and its
generations are counted."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from koprogo_node.adapters.answers import FileAnswerRecord
from koprogo_node.adapters.inference import EngineResult
from koprogo_node.adapters.llama_engine import LlamaEngine
from koprogo_node.domain.controls import Sampling
from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatMessage, ExecutionInfo, RunInference, Usage, utc_now
from koprogo_shared.publishing import event_headers
from tests.integration.edge_support import (
    MODEL,
    listening,
    nats_client,
    node_settings,
    reply_subject,
    run_inference,
    running_node,
)

pytestmark = pytest.mark.integration


class CountingEngine(LlamaEngine):
    """The bundled model, counting the answers it generates."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, n_ctx=2048)
        self.generations = 0

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        max_tokens: int | None,
        *,
        on_delta: Callable[[str], None] | None = None,
        caller_gone: threading.Event | None = None,
    ) -> EngineResult:
        self.generations += 1
        return await super().chat(messages, sampling, max_tokens, on_delta=on_delta, caller_gone=caller_gone)


async def deliver_again(js: JetStreamContext, work: RunInference, delivery: int) -> None:
    """The same work item (same payload, same ids) in the node's queue once more, as the server
    redelivers an item whose ack never came; another message id, or the stream would drop it."""
    headers = event_headers(work) | {"Nats-Msg-Id": f"{work.id}-delivery-{delivery}"}
    await js.publish(subjects.run_inference_edge(MODEL), work.model_dump_json().encode(), headers=headers)


async def completions_stored(js: JetStreamContext, copro_id: str | None) -> int:
    info = await js.stream_info(
        subjects.EVENTS_STREAM, subjects_filter=subjects.chat_completed(copro_id) + ".>"
    )
    plain = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.chat_completed(copro_id))
    return sum((info.state.subjects or {}).values()) + sum((plain.state.subjects or {}).values())


async def test_a_redelivered_item_whose_answer_was_stored_is_answered_again_without_generating(
    clean_jetstream: str, bundled_model_path: Path, tmp_path: Path
) -> None:
    settings = node_settings(clean_jetstream, "edge-redelivery", answers_dir=tmp_path / "answers")
    first_engine = CountingEngine(bundled_model_path)
    restarted_engine = CountingEngine(bundled_model_path)
    reply = reply_subject()
    work = run_inference("Bonjour, qui es-tu ?", reply_subject=reply, max_tokens=24)
    async with nats_client(clean_jetstream) as (nc, js), listening(nc, reply, "outcome") as replies:
        async with running_node(settings, engine=first_engine):
            await js.publish(
                subjects.run_inference_edge(MODEL),
                work.model_dump_json().encode(),
                headers=event_headers(work),
            )
            answered = await replies.next(60)
            # Stored and acknowledged; delivered again (the state a node killed between storing its
            # answer and acking the item, or whose ack was lost, leaves behind).
            await deliver_again(js, work, 2)
            resent = await replies.next(60)
        # The node stopped and started again (a new process would read the same folder).
        async with running_node(settings, engine=restarted_engine):
            await deliver_again(js, work, 3)
            after_restart = await replies.next(60)
        stored = await completions_stored(js, work.copro_id)

    assert isinstance(answered, ChatCompleted) and answered.content.strip()
    assert first_engine.generations == 1, "the redelivered item was not generated again"
    assert restarted_engine.generations == 0, "nor after the node restarted"
    for again in (resent, after_restart):
        assert isinstance(again, ChatCompleted)
        assert (again.id, again.content, again.usage) == (answered.id, answered.content, answered.usage)
    assert stored == 1, "one answer in the event log"
    assert [p.name for p in (tmp_path / "answers").iterdir()] == [f"{work.request_id}.json"]


def completion(request_id: str, age_s: float = 0.0) -> ChatCompleted:
    return ChatCompleted(
        source="koprogo/node/edge-record",
        copro_id="copro-edge",
        request_id=request_id,
        model=MODEL,
        content="Bonjour !",
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id="edge-record", latency_ms=10.0, co2_grams=0.0, co2_saved_grams=0.0
        ),
        time=utc_now() - timedelta(seconds=age_s),
    )


async def test_the_record_keeps_an_answer_for_its_time_and_never_answers_from_a_broken_file(
    tmp_path: Path,
) -> None:
    record = FileAnswerRecord(tmp_path / "answers", keep_s=60)
    kept, old, broken = (str(uuid.uuid4()) for _ in range(3))
    answer = completion(kept)
    await record.keep(answer)
    await record.keep(completion(old, age_s=61))
    await record.keep(completion(broken))
    (tmp_path / "answers" / f"{broken}.json").write_text('{"content": "half a wr')

    assert await record.find(kept) == answer
    assert await record.find(old) is None, "past its time"
    assert await record.find(broken) is None, "an unreadable record means answering again"
    assert await record.find(str(uuid.uuid4())) is None
    assert await record.find("../../etc/passwd") is None, "only request ids name files"
    folder = tmp_path / "answers"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / f"{kept}.json").stat().st_mode & 0o777 == 0o600
