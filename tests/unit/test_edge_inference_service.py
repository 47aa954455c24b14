"""The node's use case with a fake engine and a recording sink: what it publishes, and when."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_node.adapters.outcomes import OutcomeSink
from koprogo_node.entrypoints.nats_worker import work_item_handler
from koprogo_node.service_layer.inference import EdgeNode, InferenceService
from koprogo_shared import co2
from koprogo_shared.decisions import PoisonMessageError
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    ChatMessage,
    InferenceStarted,
    RunInference,
    derived_event_id,
    utc_now,
)

MODEL = "smollm2:135m-instruct-q4"


class RecordingSink(OutcomeSink):
    def __init__(self) -> None:
        self.published: list[tuple[ChatCompleted | ChatFailed, str]] = []

        self.started_events: list[InferenceStarted] = []

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        self.published.append((outcome, reply_subject))

    async def started(self, started: InferenceStarted, reply_subject: str) -> None:
        self.started_events.append(started)


def work(
    *, deadline_s: float = 60.0, model: str = MODEL, content: str = "Bonjour", **extra: Any
) -> RunInference:
    return RunInference(
        source="test",
        copro_id="copro-42",
        request_id=str(uuid.uuid4()),
        model=model,
        messages=[ChatMessage(role="user", content=content)],
        reply_subject="koprogo.reply.test",
        deadline=utc_now() + timedelta(seconds=deadline_s),
        **extra,
    )


def service(
    engine: FakeInferenceEngine, footprint: co2.EdgeFootprint | None = None
) -> tuple[InferenceService, RecordingSink]:
    sink = RecordingSink()
    node = EdgeNode("node-a", MODEL, footprint or co2.EdgeFootprint(power_watts=7, intensity_g_per_kwh=150))
    return InferenceService(node, engine, sink), sink


async def test_a_completed_answer_is_published_with_a_redelivery_stable_id_and_edge_execution_info() -> None:
    engine = FakeInferenceEngine(reply="Une copropriété est un immeuble partagé.")
    await engine.load()
    svc, sink = service(engine)
    cmd = work()

    outcome = await svc.run(cmd)

    assert isinstance(outcome, ChatCompleted)
    assert sink.published == [(outcome, "koprogo.reply.test")]
    assert outcome.id == derived_event_id(cmd.request_id, "completed")
    assert (outcome.copro_id, outcome.request_id, outcome.model) == ("copro-42", cmd.request_id, MODEL)
    assert outcome.content == "Une copropriété est un immeuble partagé."
    assert outcome.usage.completion_tokens == 6
    assert outcome.usage.total_tokens == outcome.usage.prompt_tokens + 6
    info = outcome.execution_info
    assert (info.execution_type, info.node_id) == ("edge", "node-a")
    assert info.co2_grams > 0
    assert info.co2_saved_grams == pytest.approx(co2.saved_grams(outcome.usage.total_tokens, info.co2_grams))
    assert (await svc.run(cmd)).id == outcome.id  # a redelivered command yields the same event id


async def test_an_expired_deadline_fails_with_504_without_running_the_model() -> None:
    engine = FakeInferenceEngine()
    svc, sink = service(engine)

    outcome = await svc.run(work(deadline_s=-1))

    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (504, "deadline_exceeded")
    assert engine.calls == []
    assert sink.published == [(outcome, "koprogo.reply.test")]


async def test_a_prompt_longer_than_the_context_fails_with_a_clear_400() -> None:
    svc, sink = service(FakeInferenceEngine(n_ctx=8))

    outcome = await svc.run(work(content="un deux trois quatre cinq six sept huit neuf"))

    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (400, "context_length_exceeded")
    assert "context" in outcome.message
    assert sink.published[0][0] is outcome


async def test_work_for_another_model_fails_with_404() -> None:
    svc, _ = service(FakeInferenceEngine())
    outcome = await svc.run(work(model="llama3:8b"))
    assert isinstance(outcome, ChatFailed) and outcome.status == 404


async def test_a_renewable_node_reports_zero_grams_and_saves_the_cloud_emissions() -> None:
    svc, _ = service(FakeInferenceEngine(), co2.EdgeFootprint(renewable_attested=True))
    outcome = await svc.run(work())
    assert isinstance(outcome, ChatCompleted)
    assert outcome.execution_info.co2_grams == 0.0
    assert outcome.execution_info.co2_saved_grams == pytest.approx(
        co2.cloud_grams(outcome.usage.total_tokens)
    )


async def test_the_heartbeat_reports_work_in_hand_and_measured_speed() -> None:
    engine = FakeInferenceEngine(delay_s=0.2)
    svc, _ = service(engine)
    assert svc.heartbeat(2.0).tokens_per_second == 0.0

    running = asyncio.create_task(svc.run(work()))
    await asyncio.sleep(0.05)
    busy = svc.heartbeat(2.0)
    await running
    idle = svc.heartbeat(2.0)

    assert (busy.in_flight, idle.in_flight, idle.capacity) == (1, 0, 1)
    assert idle.models == [MODEL] and idle.node_id == "node-a"
    assert 0 < idle.tokens_per_second < 100  # ~8 tokens in ~0.2 s
    assert (idle.power_watts, idle.intensity_g_per_kwh, idle.renewable_attested) == (7, 150, False)


def fake_msg(cmd: RunInference, delivered: int) -> Any:
    async def in_progress() -> None:
        return None

    return SimpleNamespace(
        data=cmd.model_dump_json().encode(),
        metadata=SimpleNamespace(num_delivered=delivered),
        in_progress=in_progress,
    )


class BrokenEngine(FakeInferenceEngine):
    async def chat(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("llama exploded")


async def test_an_unexpected_failure_is_retried_silently_before_the_last_delivery() -> None:
    svc, sink = service(BrokenEngine())
    worker = work_item_handler(svc, ack_wait_s=3, max_deliver=3)
    with pytest.raises(RuntimeError):
        await worker.handle(fake_msg(work(), delivered=2))
    assert sink.published == []


async def test_the_caller_learns_of_a_failure_on_the_last_delivery() -> None:
    svc, sink = service(BrokenEngine())
    worker = work_item_handler(svc, ack_wait_s=3, max_deliver=3)
    cmd = work()
    with pytest.raises(RuntimeError):  # the shared consumer then dead-letters the item
        await worker.handle(fake_msg(cmd, delivered=3))
    [(failed, reply)] = sink.published
    assert isinstance(failed, ChatFailed)
    assert (failed.status, failed.error, failed.request_id, reply) == (
        500,
        "inference_failed",
        cmd.request_id,
        cmd.reply_subject,
    )


async def test_a_work_item_with_unusable_ids_is_poison() -> None:
    svc, sink = service(FakeInferenceEngine())
    cmd = work().model_copy(update={"request_id": "not-a-uuid"})
    with pytest.raises(PoisonMessageError):
        await work_item_handler(svc, ack_wait_s=3, max_deliver=3).handle(fake_msg(cmd, 1))
    assert sink.published == []


async def test_the_waiting_gateway_learns_which_node_is_generating_before_the_answer() -> None:
    svc, sink = service(FakeInferenceEngine())
    cmd = work()
    await svc.run(cmd)
    [started] = sink.started_events
    assert (started.request_id, started.node_id) == (cmd.request_id, "node-a")


async def test_the_controls_reach_the_engine_and_a_call_comes_back_as_tool_calls() -> None:
    from koprogo_shared.generation import GenerationControls, tool_call_id

    engine = FakeInferenceEngine(reply='{"name": "get_charges", "arguments": {"lot": 12}}')
    await engine.load()
    svc, _ = service(engine)
    controls = GenerationControls.model_validate(
        {
            "stop": ["\n\n"],
            "seed": 5,
            "tools": [{"type": "function", "function": {"name": "get_charges"}}],
            "tool_choice": "required",
        }
    )
    # Streamed, but an answer that may be a call travels whole: no pieces are sent.
    cmd = work(controls=controls, stream=True)

    outcome = await svc.run(cmd)

    assert isinstance(outcome, ChatCompleted)
    assert (outcome.content, outcome.finish_reason) == ("", "tool_calls")
    assert outcome.tool_calls is not None
    assert outcome.tool_calls[0].id == tool_call_id(cmd.request_id, 0)
    assert (outcome.tool_calls[0].function.name, outcome.tool_calls[0].function.arguments) == (
        "get_charges",
        '{"lot": 12}',
    )
    sampling = engine.samplings[-1]
    assert (sampling.stop, sampling.seed) == (("\n\n",), 5)
    assert sampling.constraint is not None and not sampling.constraint.or_text
    # The model read which functions exist.
    prompt = engine.calls[-1][0]
    assert prompt[0].role == "system" and "get_charges" in prompt[0].content


async def test_a_json_answer_that_does_not_parse_is_a_502_not_passed_on() -> None:
    from koprogo_shared.generation import GenerationControls

    engine = FakeInferenceEngine(reply='{"supplier": "Dubois",')  # as if the grammar had let it out
    await engine.load()
    svc, sink = service(engine)
    controls = GenerationControls.model_validate({"response_format": {"type": "json_object"}})

    outcome = await svc.run(work(controls=controls))

    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (502, "invalid_model_output")
    assert sink.published == [(outcome, "koprogo.reply.test")]
    # Cut short by max_tokens it is the caller's "length" answer, as OpenAI gives it.
    cut = await svc.run(work(controls=controls, max_tokens=1))
    assert isinstance(cut, ChatCompleted) and cut.finish_reason == "length"


def test_the_heartbeat_announces_every_control_the_node_honours() -> None:
    from koprogo_shared.generation import ALL_FEATURES

    svc, _ = service(FakeInferenceEngine())
    assert set(svc.heartbeat(5.0).features) == {*ALL_FEATURES, "logprobs"}


class ScriptedEngine(FakeInferenceEngine):
    """Answers each call with the next of `replies` (one token per word, as the fake counts)."""

    def __init__(self, *replies: str) -> None:
        super().__init__()
        self.replies = list(replies)

    async def chat(self, messages: Any, sampling: Any, max_tokens: int | None, **kw: Any) -> Any:
        self.reply = self.replies.pop(0)
        return await super().chat(messages, sampling, max_tokens, **kw)


async def test_a_call_that_breaks_its_functions_schema_is_generated_again_and_every_token_counted() -> None:
    from koprogo_shared.generation import GenerationControls

    tool = {
        "type": "function",
        "function": {
            "name": "get_charges",
            "parameters": {
                "type": "object",
                "properties": {"lot": {"type": "integer", "maximum": 999}},
                "required": ["lot"],
            },
        },
    }
    controls = GenerationControls.model_validate({"tools": [tool], "tool_choice": "required", "seed": 40})
    engine = ScriptedEngine(
        '{"name": "get_charges", "arguments": {"lot": 2024}}',  # the grammar cannot say "at most 999"
        '{"name": "get_charges", "arguments": {"lot": 12}}',
    )
    await engine.load()
    svc, _ = service(engine)

    outcome = await svc.run(work(controls=controls, temperature=0.0))

    assert isinstance(outcome, ChatCompleted) and outcome.tool_calls is not None
    assert outcome.tool_calls[0].function.arguments == '{"lot": 12}'
    # Two answers generated, both counted; the second with a derived seed, not greedy.
    assert outcome.usage.completion_tokens == 2 * 5  # five words each, as the fake counts
    assert [(s.seed, s.temperature) for s in engine.samplings] == [(40, 0.0), (41, 0.7)]

    # Broken on every try: a 502 naming the violation, never the broken call.
    stubborn = ScriptedEngine(*['{"name": "get_charges", "arguments": {"lot": 2024}}'] * 3)
    await stubborn.load()
    svc, _ = service(stubborn)
    failed = await svc.run(work(controls=controls))
    assert isinstance(failed, ChatFailed) and failed.status == 502
    assert "2024 is greater than the maximum of 999" in failed.message
    assert len(stubborn.samplings) == 3


async def test_a_schema_that_is_not_a_schema_is_the_callers_400() -> None:
    from koprogo_shared.generation import GenerationControls

    controls = GenerationControls.model_validate(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nombre"}},
            }
        }
    )
    engine = FakeInferenceEngine(reply="12")
    await engine.load()
    svc, _ = service(engine)
    failed = await svc.run(work(controls=controls))
    assert isinstance(failed, ChatFailed) and (failed.status, failed.error) == (400, "invalid_schema")
