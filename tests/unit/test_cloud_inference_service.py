"""The cloud use case with a fake provider and sink: ids, deadlines, retries, cooldown, statuses."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from koprogo_cloud.adapters.outcomes import OutcomeSink
from koprogo_cloud.adapters.providers import ChatProvider, ProviderResult
from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.errors import InvalidCommandError, ProviderError
from koprogo_cloud.service_layer.inference import CloudInferenceService, DeploymentRuntime
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    ChatMessage,
    InferenceAttemptFailed,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    derived_event_id,
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
    def __init__(self, *answers: ProviderResult | ProviderError) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, float]] = []

    async def complete(
        self,
        provider_model: str,
        messages: Sequence[ChatMessage],
        temperature: float | None,
        max_tokens: int,
        timeout_s: float,
    ) -> ProviderResult:
        self.calls.append((provider_model, timeout_s))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, ProviderError):
            raise answer
        return answer


class FakeSink(OutcomeSink):
    def __init__(self) -> None:
        self.published: list[ChatCompleted | ChatFailed] = []
        self.attempts: list[InferenceAttemptFailed] = []

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        self.published.append(outcome)

    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        self.attempts.append(failed)


OK = ProviderResult("hi", "stop", prompt_tokens=10, completion_tokens=3)


def service(
    provider: FakeProvider | None, **fields: object
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


def work(*, deadline_s: float = 60, model: str = "gpt-4o", plan: bool = True) -> RunInference:
    return RunInference(
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


async def test_a_redelivered_work_item_completes_with_the_same_event_id() -> None:
    svc, sink, _ = service(FakeProvider(OK))
    item = work()
    first = await svc.run("dep", item)
    again = await svc.run("dep", item)
    assert isinstance(first, ChatCompleted) and first.id == again.id
    assert first.id == derived_event_id(item.request_id, "completed")
    assert first.model == "gpt-4o" and first.usage.total_tokens == 13
    assert sink.published == [first, again]


async def test_an_expired_work_item_fails_without_calling_the_provider() -> None:
    provider = FakeProvider(OK)
    svc, sink, _ = service(provider)
    item = work(deadline_s=-1)
    outcome = await svc.run("dep", item)
    assert isinstance(outcome, ChatFailed) and (outcome.status, outcome.error) == (504, "deadline_exceeded")
    assert outcome.id == derived_event_id(item.id, "failed")
    assert provider.calls == [] and sink.published == [outcome]


async def test_the_call_timeout_never_runs_past_the_deadline() -> None:
    provider = FakeProvider(OK)
    svc, _, _ = service(provider, timeout_s=60)
    await svc.run("dep", work(deadline_s=5))
    assert provider.calls == [("gpt-4o-2024", 5.0)]


async def test_a_retry_after_longer_than_the_time_left_is_not_waited_for() -> None:
    provider = FakeProvider(ProviderError("status", "", status=429, retry_after_s=10))
    svc, sink, clock = service(provider)
    item = work(deadline_s=5)
    outcome = await svc.run("dep", item)
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
    outcome = await svc.run("dep", work())
    assert isinstance(outcome, ChatCompleted)
    assert clock.slept == [0.25, 0.5]


async def test_an_answer_without_usage_is_a_bad_response_not_an_estimate() -> None:
    provider = FakeProvider(ProviderError("bad_response", "the answer carries no token usage"))
    svc, _, _ = service(provider)
    outcome = await svc.run("dep", work())
    assert isinstance(outcome, InferenceAttemptFailed) and outcome.error == "provider_bad_response"


async def test_a_model_the_deployment_does_not_map_goes_back_to_the_router() -> None:
    svc, _, _ = service(FakeProvider(OK))
    outcome = await svc.run("dep", work(model="gpt-9"))
    assert isinstance(outcome, InferenceAttemptFailed) and outcome.error == "model_not_served"


async def test_cooldown_shows_in_the_status_and_a_success_after_it_ends_clears_it() -> None:
    provider = FakeProvider(ProviderError("timeout", "t"), OK)
    svc, _, clock = service(provider, max_retries=0, cooldown_after_failures=1, cooldown_s=30)
    await svc.run("dep", work())
    status = svc.status("dep", 2.0)
    assert not status.available and status.cooldown_until == START + timedelta(seconds=30)
    clock.now += timedelta(seconds=31)
    assert isinstance(await svc.run("dep", work(deadline_s=120)), ChatCompleted)
    assert svc.status("dep", 2.0).available


async def test_a_keyless_deployment_reports_why_and_the_router_falls_back() -> None:
    svc, _, _ = service(None)
    outcome = await svc.run("dep", work())
    assert isinstance(outcome, InferenceAttemptFailed) and outcome.error == "deployment_unavailable"
    status = svc.status("dep", 2.0)
    assert not status.available and status.unavailable_reason == "OPENAI_API_KEY is not set"


async def test_work_without_uuid_ids_is_poison() -> None:
    svc, _, _ = service(FakeProvider(OK))
    bad = work().model_copy(update={"id": "not-a-uuid"})
    with pytest.raises(InvalidCommandError):
        await svc.run("dep", bad)


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
