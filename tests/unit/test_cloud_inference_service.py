"""The cloud use case with a fake provider and sink: ids, deadlines, retries, cooldown, statuses."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from koprogo_cloud.adapters.outcomes import OutcomeSink
from koprogo_cloud.adapters.providers import ChatProvider, OnDelta, ProviderCall, ProviderResult
from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.errors import InvalidCommandError, ProviderError, UnmappableRequestError
from koprogo_cloud.entrypoints.nats_worker import work_item_handler
from koprogo_cloud.service_layer.inference import CloudInferenceService, DeploymentRuntime
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatMessage,
    InferenceAttemptFailed,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    derived_event_id,
)
from koprogo_shared.generation import (
    ALL_FEATURES,
    FunctionCall,
    GenerationControls,
    TokenLogprob,
    ToolCall,
    ToolSpec,
    TopLogprob,
)

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


class FakeProvider(ChatProvider):
    """Answers from a script; a streamed call first hands `pieces` to the caller, then fails or answers."""

    def __init__(self, *answers: ProviderResult | ProviderError, pieces: Sequence[str] = ()) -> None:
        self.answers = list(answers)
        self.pieces = list(pieces)
        self.calls: list[tuple[str, float]] = []
        self.requests: list[ProviderCall] = []
        self.streamed: list[bool] = []

    def _next(self, call: ProviderCall) -> ProviderResult | ProviderError:
        self.calls.append((call.provider_model, call.timeout_s))
        self.requests.append(call)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def complete(self, call: ProviderCall) -> ProviderResult:
        self.streamed.append(False)
        answer = self._next(call)
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    async def stream(self, call: ProviderCall, on_delta: OnDelta) -> ProviderResult:
        self.streamed.append(True)
        answer = self._next(call)
        for piece in self.pieces:
            await on_delta(piece)
        if isinstance(answer, ProviderError):
            raise answer
        return answer


class FakeSink(OutcomeSink):
    def __init__(self) -> None:
        self.published: list[ChatCompleted | ChatFailed] = []
        self.looked_up: list[str] = []  # the requests whose stored answer was looked for
        self.resent: list[ChatCompleted] = []
        self.attempts: list[InferenceAttemptFailed] = []
        self.deltas: list[ChatDelta] = []
        self.gone = asyncio.Event()
        self.listened: list[str] = []

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:
        self.deltas.append(delta)

    async def stored_answer(self, work: RunInference) -> ChatCompleted | None:
        self.looked_up.append(work.request_id)
        return next(
            (o for o in self.published if isinstance(o, ChatCompleted) and o.request_id == work.request_id),
            None,
        )

    async def resend(self, stored: ChatCompleted, reply_subject: str) -> None:
        self.resent.append(stored)

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        self.listened.append(request_id)
        yield self.gone

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        self.published.append(outcome)

    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        self.attempts.append(failed)


OK = ProviderResult("hi", "stop", prompt_tokens=10, completion_tokens=3)


def service(
    provider: ChatProvider | None, **fields: object
) -> tuple[CloudInferenceService, FakeSink, FakeClock]:
    dep = Deployment.model_validate(
        {"id": "dep", "provider": "openai", "models": {"gpt-4o": "gpt-4o-2024"}, "retry_base_s": 0.5} | fields
    )
    clock = FakeClock()
    sink = FakeSink()
    runtime = DeploymentRuntime(dep, provider, None if provider else "OPENAI_API_KEY is not set")
    return (
        CloudInferenceService([runtime], sink, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0),
        sink,
        clock,
    )


def work(
    *, deadline_s: float = 60, model: str = "gpt-4o", plan: bool = True, **fields: object
) -> RunInference:
    """A work item; `fields` (stream, controls, messages) set on top, validated."""
    item = RunInference(
        source="test",
        copro_id="c1",
        request_id=str(uuid.uuid4()),
        model=model,
        messages=[ChatMessage(role="user", content="hello")],
        reply_subject="koprogo.reply.t",
        deadline=START + timedelta(seconds=deadline_s),
        routing=RoutingPlan(
            policy="fastest",
            allow_fallback=True,
            reason="r",
            targets=[RoutingTarget(kind="cloud", model=model, deployment="dep")],
        )
        if plan
        else None,
    )
    return RunInference.model_validate(item.model_dump() | fields)


async def test_a_work_item_run_twice_completes_with_the_same_event_id() -> None:
    svc, sink, _ = service(FakeProvider(OK))
    item = work()
    first = await svc.run("dep", item, redelivered=False)
    again = await svc.run("dep", item, redelivered=False)
    assert isinstance(first, ChatCompleted) and first.id == again.id
    assert first.id == derived_event_id(item.request_id, "completed")
    assert first.model == "gpt-4o" and first.usage.total_tokens == 13
    assert sink.published == [first, again]


async def test_the_stored_answer_is_looked_for_only_when_the_work_may_be_answered() -> None:
    provider = FakeProvider(OK)
    svc, sink, _ = service(provider)
    item = work()
    first = await svc.run("dep", item, redelivered=False)
    assert sink.looked_up == [], "a first delivery of a first copy costs no look-up"
    # Delivered again, or a copy the router marks (routed again): the answer is looked for.
    again = await svc.run("dep", item, redelivered=True)
    marked = await svc.run("dep", item.model_copy(update={"may_be_answered": True}), redelivered=False)
    assert sink.looked_up == [item.request_id] * 2
    assert again == marked == first and sink.resent == [first, first]
    assert len(provider.calls) == 1, "the provider is not paid twice"


def delivered(item: RunInference, times: int) -> Any:
    """A NATS message of the deployment's work, delivered `times` times."""

    async def in_progress() -> None:
        return None

    return SimpleNamespace(
        data=item.model_dump_json().encode(),
        subject=subjects.run_inference_cloud(item.copro_id, "dep"),
        headers=None,
        metadata=SimpleNamespace(num_delivered=times),
        in_progress=in_progress,
    )


async def test_the_worker_tells_the_service_a_delivery_after_the_first() -> None:
    # The entrypoint as the bootstrap builds it: a second delivery looks for the stored answer.
    provider = FakeProvider(OK)
    svc, sink, _ = service(provider)
    handler = work_item_handler(svc, "dep", ack_wait_s=30, max_deliver=3)
    item = work()
    await handler.handle(delivered(item, 1))
    assert sink.looked_up == []
    await handler.handle(delivered(item, 2))
    assert sink.looked_up == [item.request_id] and len(provider.calls) == 1


async def test_a_fallback_attempt_looks_for_an_answer_its_earlier_attempt_may_have_stored() -> None:
    provider = FakeProvider(OK)
    svc, sink, _ = service(provider)
    item = work()
    assert item.routing is not None
    first = await svc.run("dep", item, redelivered=False)
    # Attempt 1 reported a failure, was redelivered and answered after all: attempt 2 (a first
    # copy, unflagged) must not pay the provider again.
    second = item.model_copy(update={"routing": item.routing.model_copy(update={"attempt": 2})})
    assert second.may_be_answered is False
    assert await svc.run("dep", second, redelivered=False) == first
    assert sink.looked_up == [item.request_id] and len(provider.calls) == 1


async def test_a_reported_attempt_carries_its_work_without_the_routers_mark() -> None:
    svc, sink, _ = service(FakeProvider(ProviderError("status", "", status=429, retry_after_s=10)))
    await svc.run("dep", work(deadline_s=5).model_copy(update={"may_be_answered": True}), redelivered=False)
    [failed] = sink.attempts
    # The next attempt needs no mark (a fallback is looked up); an older router would refuse it.
    assert failed.work.may_be_answered is False
    assert "may_be_answered" not in failed.model_dump_json()


async def test_the_flag_travels_only_when_set_so_older_workers_still_read_first_copies() -> None:
    item = work()
    assert "may_be_answered" not in item.model_dump_json()
    flagged = item.model_copy(update={"may_be_answered": True})
    assert RunInference.model_validate_json(flagged.model_dump_json()).may_be_answered is True


async def test_an_expired_work_item_fails_without_calling_the_provider() -> None:
    provider = FakeProvider(OK)
    svc, sink, _ = service(provider)
    item = work(deadline_s=-1)
    outcome = await svc.run("dep", item, redelivered=False)
    assert isinstance(outcome, ChatFailed) and (outcome.status, outcome.error) == (504, "deadline_exceeded")
    assert outcome.id == derived_event_id(item.id, "failed")
    assert provider.calls == [] and sink.published == [outcome]


async def test_the_call_timeout_never_runs_past_the_deadline() -> None:
    provider = FakeProvider(OK)
    svc, _, _ = service(provider, timeout_s=60)
    await svc.run("dep", work(deadline_s=5), redelivered=False)
    assert provider.calls == [("gpt-4o-2024", 5.0)]


async def test_a_retry_after_longer_than_the_time_left_is_not_waited_for() -> None:
    provider = FakeProvider(ProviderError("status", "", status=429, retry_after_s=10))
    svc, sink, clock = service(provider)
    item = work(deadline_s=5)
    outcome = await svc.run("dep", item, redelivered=False)
    assert isinstance(outcome, InferenceAttemptFailed)
    assert (outcome.status, outcome.error) == (503, "provider_rate_limited")
    assert outcome.id == derived_event_id(item.id, "attempt_failed")
    assert len(provider.calls) == 1 and clock.slept == []
    assert sink.attempts == [outcome] and sink.published == []


async def test_backoff_is_used_without_retry_after() -> None:
    provider = FakeProvider(
        ProviderError("status", "", status=503), ProviderError("status", "", status=503), OK
    )
    svc, _, clock = service(provider)
    outcome = await svc.run("dep", work(), redelivered=False)
    assert isinstance(outcome, ChatCompleted)
    assert clock.slept == [0.25, 0.5]


async def test_an_answer_without_usage_is_a_bad_response_not_an_estimate() -> None:
    provider = FakeProvider(ProviderError("bad_response", "the answer carries no token usage"))
    svc, _, _ = service(provider)
    outcome = await svc.run("dep", work(), redelivered=False)
    assert isinstance(outcome, InferenceAttemptFailed) and outcome.error == "provider_bad_response"


async def test_a_model_the_deployment_does_not_map_goes_back_to_the_router() -> None:
    svc, _, _ = service(FakeProvider(OK))
    outcome = await svc.run("dep", work(model="gpt-9"), redelivered=False)
    assert isinstance(outcome, InferenceAttemptFailed) and outcome.error == "model_not_served"


async def test_cooldown_shows_in_the_status_and_a_success_after_it_ends_clears_it() -> None:
    provider = FakeProvider(ProviderError("timeout", "t"), OK)
    svc, _, clock = service(provider, max_retries=0, cooldown_after_failures=1, cooldown_s=30)
    await svc.run("dep", work(), redelivered=False)
    status = svc.status("dep", 2.0)
    assert not status.available and status.cooldown_until == START + timedelta(seconds=30)
    clock.now += timedelta(seconds=31)
    assert isinstance(await svc.run("dep", work(deadline_s=120), redelivered=False), ChatCompleted)
    assert svc.status("dep", 2.0).available


async def test_a_keyless_deployment_reports_why_and_the_router_falls_back() -> None:
    svc, _, _ = service(None)
    outcome = await svc.run("dep", work(), redelivered=False)
    assert isinstance(outcome, InferenceAttemptFailed) and outcome.error == "deployment_unavailable"
    status = svc.status("dep", 2.0)
    assert not status.available and status.unavailable_reason == "OPENAI_API_KEY is not set"


async def test_work_without_uuid_ids_is_poison() -> None:
    svc, _, _ = service(FakeProvider(OK))
    bad = work().model_copy(update={"id": "not-a-uuid"})
    with pytest.raises(InvalidCommandError):
        await svc.run("dep", bad, redelivered=False)


def test_koprogo_cloud_refuses_a_bad_deployments_file(tmp_path: Path) -> None:
    bad = tmp_path / "d.toml"
    bad.write_text('[[deployments]]\nid = "x"\nprovider = "cohere"\nmodels = {a = "b"}\n')
    script = Path(sys.executable).parent / "koprogo-cloud"
    done = subprocess.run(
        [str(script)],
        env={"CLOUD_DEPLOYMENTS_FILE": str(bad), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "deployment x: provider" in done.stderr


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Spa"}'))


async def test_the_controls_and_the_deployments_features_reach_the_provider() -> None:
    provider = FakeProvider(OK)
    svc, _, _ = service(provider)
    controls = GenerationControls(stop=["."], seed=3, tools=[ToolSpec.model_validate(WEATHER)])
    await svc.run("dep", work(controls=controls), redelivered=False)
    (request,) = provider.requests
    assert request.controls == controls
    assert request.features == {*ALL_FEATURES, "logprobs"}


async def test_a_control_the_deployment_does_not_pass_on_is_refused_by_name_never_dropped() -> None:
    provider = FakeProvider(OK)
    svc, sink, _ = service(provider, features=["stop", "top_p", "tools"])
    outcome = await svc.run(
        "dep", work(controls=GenerationControls(seed=1, presence_penalty=0.5, stop=["x"])), redelivered=False
    )
    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (400, "unsupported_parameter")
    assert "presence_penalty, seed" in outcome.message and "stop" not in outcome.message
    assert provider.calls == [] and sink.published == [outcome]


async def test_a_history_with_tool_turns_needs_the_tools_feature() -> None:
    svc, _, _ = service(FakeProvider(OK), features=["stop"])
    history = [
        ChatMessage(role="user", content="weather?"),
        ChatMessage(role="assistant", content="", tool_calls=[CALL]),
        ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
    ]
    outcome = await svc.run("dep", work(messages=history), redelivered=False)
    assert isinstance(outcome, ChatFailed) and outcome.error == "unsupported_parameter"
    assert "tools" in outcome.message


async def test_tool_calls_of_the_answer_end_in_the_completion() -> None:
    answer = ProviderResult("", "tool_calls", prompt_tokens=30, completion_tokens=9, tool_calls=[CALL])
    svc, _, _ = service(FakeProvider(answer))
    outcome = await svc.run(
        "dep", work(controls=GenerationControls(tools=[ToolSpec.model_validate(WEATHER)])), redelivered=False
    )
    assert isinstance(outcome, ChatCompleted)
    assert outcome.finish_reason == "tool_calls" and outcome.tool_calls == [CALL]


async def test_a_streamed_request_sends_numbered_pieces_then_the_completion() -> None:
    provider = FakeProvider(ProviderResult("Bonjour !", "stop", 10, 3), pieces=["Bon", "jour", " !"])
    svc, sink, _ = service(provider)
    item = work(stream=True)
    outcome = await svc.run("dep", item, redelivered=False)
    assert provider.streamed == [True]
    assert [(d.index, d.delta) for d in sink.deltas] == [(0, "Bon"), (1, "jour"), (2, " !")]
    assert {d.request_id for d in sink.deltas} == {item.request_id}
    assert isinstance(outcome, ChatCompleted) and outcome.content == "Bonjour !"
    assert outcome.usage.total_tokens == 13


async def test_a_deployment_that_does_not_stream_answers_a_streamed_request_whole() -> None:
    provider = FakeProvider(OK, pieces=["never"])
    svc, sink, _ = service(provider, stream=False)
    assert isinstance(await svc.run("dep", work(stream=True), redelivered=False), ChatCompleted)
    assert provider.streamed == [False] and sink.deltas == []


async def test_a_stream_that_fails_before_its_first_piece_is_retried() -> None:
    provider = FakeProvider(ProviderError("status", "", status=503), OK)
    svc, _, _ = service(provider)
    outcome = await svc.run("dep", work(stream=True), redelivered=False)
    assert isinstance(outcome, ChatCompleted) and provider.streamed == [True, True]


async def test_a_stream_that_fails_after_a_piece_fails_the_chat_without_retry_or_fallback() -> None:
    provider = FakeProvider(ProviderError("status", "", status=503), OK, pieces=["Bon"])
    svc, sink, _ = service(provider)
    outcome = await svc.run("dep", work(stream=True), redelivered=False)
    assert isinstance(outcome, ChatFailed)  # not InferenceAttemptFailed: another target would start over
    assert (outcome.status, outcome.error) == (502, "provider_error")
    assert "after 1 streamed pieces" in outcome.message
    assert len(provider.calls) == 1 and sink.attempts == []


class HangingProvider(ChatProvider):
    """A provider that never answers until cancelled; says whether it was."""

    def __init__(self, pieces: Sequence[str] = ()) -> None:
        self.pieces = pieces
        self.cancelled = False

    async def _hang(self) -> ProviderResult:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")

    async def complete(self, call: ProviderCall) -> ProviderResult:
        return await self._hang()

    async def stream(self, call: ProviderCall, on_delta: OnDelta) -> ProviderResult:
        for piece in self.pieces:
            await on_delta(piece)
        return await self._hang()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_that_leaves_stops_the_provider_call(stream: bool) -> None:
    provider = HangingProvider(pieces=["Bon"])
    svc, sink, _ = service(provider)
    item = work(stream=stream)
    running = asyncio.create_task(svc.run("dep", item, redelivered=False))
    await asyncio.sleep(0.05)
    assert not running.done() and sink.listened == [item.request_id]
    sink.gone.set()
    outcome = await asyncio.wait_for(running, timeout=2)
    assert provider.cancelled
    assert isinstance(outcome, ChatFailed) and (outcome.status, outcome.error) == (499, "caller_gone")
    assert "abandoned before the provider reported its token usage" in outcome.message
    assert sink.published == [outcome] and sink.attempts == []
    assert len(sink.deltas) == (1 if stream else 0)


async def test_a_tool_call_anthropic_cannot_express_is_a_bad_request() -> None:
    class Unmappable(FakeProvider):
        async def complete(self, call: ProviderCall) -> ProviderResult:
            raise UnmappableRequestError("tool call 'c1' (f): its arguments are not a JSON object")

    svc, _, _ = service(Unmappable(OK))
    outcome = await svc.run("dep", work(), redelivered=False)
    assert isinstance(outcome, ChatFailed) and (outcome.status, outcome.error) == (400, "invalid_request")


def test_the_status_names_the_features_the_deployment_passes_on() -> None:
    svc, _, _ = service(FakeProvider(OK), features=["tools", "stop", "top_p"])
    assert svc.status("dep", 2.0).features == ["stop", "tools", "top_p"]
    every, _, _ = service(FakeProvider(OK))
    assert set(every.status("dep", 2.0).features) == {*ALL_FEATURES, "logprobs"}


async def test_the_providers_log_probabilities_come_with_the_answer() -> None:
    given = [
        TokenLogprob(token="h", logprob=-0.2, top_logprobs=[TopLogprob(token="h", logprob=-0.2)]),
        TokenLogprob(token="i", logprob=-1.5, top_logprobs=[TopLogprob(token="o", logprob=-0.4)]),
    ]
    answer = ProviderResult("hi", "stop", prompt_tokens=10, completion_tokens=2, logprobs=given)
    svc, sink, _ = service(FakeProvider(answer))
    outcome = await svc.run(
        "dep", work(controls=GenerationControls(logprobs=True, top_logprobs=1)), redelivered=False
    )
    assert isinstance(outcome, ChatCompleted) and outcome.logprobs == given
    assert sink.published == [outcome]
    refusing, _, _ = service(FakeProvider(answer), features=list(ALL_FEATURES))
    refused = await refusing.run(
        "dep", work(plan=False, controls=GenerationControls(logprobs=True)), redelivered=False
    )
    assert isinstance(refused, ChatFailed) and (refused.status, refused.error) == (
        400,
        "unsupported_parameter",
    )
    assert "logprobs" in refused.message
