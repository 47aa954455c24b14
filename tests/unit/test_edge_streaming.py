"""A streamed work item on the node: pieces in order before the completion, and the caller leaving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.service_layer.inference import EdgeNode, InferenceService
from koprogo_shared import co2
from koprogo_shared.events import ChatCompleted, ChatDelta
from tests.unit.test_edge_inference_service import MODEL, RecordingSink, work


class StreamingSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[ChatDelta | ChatCompleted] = []
        self.gone = threading.Event()

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:
        self.sent.append(delta)
        if delta.index == 2:
            self.gone.set()  # as the gateway's cancel message would

    async def publish(self, outcome: object, reply_subject: str) -> None:  # type: ignore[override]
        assert isinstance(outcome, ChatCompleted)
        self.sent.append(outcome)

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[threading.Event]:
        yield self.gone


def streaming_service(engine: FakeInferenceEngine) -> tuple[InferenceService, StreamingSink]:
    sink = StreamingSink()
    node = EdgeNode("node-a", MODEL, co2.EdgeFootprint(power_watts=7, intensity_g_per_kwh=150))
    return InferenceService(node, engine, sink), sink


async def test_a_streamed_answer_sends_every_piece_in_order_before_the_completion() -> None:
    engine = FakeInferenceEngine(reply="un deux trois")
    await engine.load()
    svc, sink = streaming_service(engine)
    outcome = await svc.run(work(stream=True))
    assert isinstance(outcome, ChatCompleted)
    deltas = [s for s in sink.sent if isinstance(s, ChatDelta)]
    assert [d.index for d in deltas] == [0, 1, 2]
    assert "".join(d.delta for d in deltas) == outcome.content == "un deux trois"
    assert sink.sent[-1] is outcome
    assert all(d.request_id == outcome.request_id for d in deltas)


async def test_a_caller_who_leaves_ends_the_answer_early_and_it_is_still_recorded() -> None:
    engine = FakeInferenceEngine(reply=" ".join(f"mot{i}" for i in range(50)), delay_per_word_s=0.001)
    await engine.load()
    svc, sink = streaming_service(engine)
    outcome = await asyncio.wait_for(svc.run(work(stream=True, max_tokens=50)), timeout=5)
    assert isinstance(outcome, ChatCompleted)
    assert outcome.finish_reason == "stop"
    assert outcome.usage.completion_tokens < 10
    assert sink.sent[-1] is outcome


async def test_an_unstreamed_item_sends_no_piece() -> None:
    engine = FakeInferenceEngine(reply="un deux trois")
    await engine.load()
    svc, sink = streaming_service(engine)
    outcome = await svc.run(work())
    assert sink.sent == [outcome]
