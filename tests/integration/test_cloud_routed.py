"""The requests a gateway routed itself (`ChatRequested.routed`, on `subjects.routed_chat_requested`):
the cloud worker takes them from the audit log as it takes the router's work items, on real NATS
JetStream, against OpenAI's API at the HTTP boundary."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, RawStreamMsg

from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatMessage,
    ChatRequested,
    CloudDeploymentStatus,
    InferenceAttemptFailed,
    RoutingPlan,
    RoutingTarget,
    derived_event_id,
    utc_now,
)
from tests.integration.cloud_support import (
    FakeChatCompletionsApi,
    Reply,
    cloud_settings,
    collecting,
    completion_body,
    deployments_file,
    nats_client,
    openai_deployment,
    read_answer,
    reply_subject,
    running_cloud,
)

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"
ENV = {"OPENAI_API_KEY": "sk-proj-FAKEfakeFAKE0123456789-routed-only"}
COPRO = "copro-routed"


def routed_request(deployment: str, *, copro: str = COPRO, with_plan: bool = True) -> ChatRequested:
    plan = RoutingPlan(
        policy="prefer_edge",
        allow_fallback=True,
        reason="no edge node serves the model",
        targets=[RoutingTarget(kind="cloud", model=MODEL, deployment=deployment)],
    )
    return ChatRequested(
        source="koprogo/gateway",
        copro_id=copro,
        model=MODEL,
        messages=[ChatMessage(role="user", content="Quand a lieu l'assemblée générale ?")],
        max_tokens=32,
        reply_subject=reply_subject(),
        deadline=utc_now() + timedelta(seconds=60),
        routed=plan if with_plan else None,
    )


async def store(js: JetStreamContext, subject: str, request: ChatRequested) -> None:
    await js.publish(subject, request.model_dump_json().encode(), headers={"Nats-Msg-Id": request.id})


async def taking_routed_requests(nc: NATS, deployment: str) -> None:
    """Until the deployment's worker says it takes routed requests (its durable exists from then on:
    a gateway routes to it only once it heard this)."""
    async with collecting(nc, subjects.cloud_status(deployment)) as statuses:
        while not CloudDeploymentStatus.model_validate_json(
            await statuses.next(timeout=20)
        ).takes_routed_requests:
            pass


async def dead_letter(js: JetStreamContext, subject: str) -> RawStreamMsg:
    for _ in range(100):
        try:
            return await js.get_last_msg(subjects.DEADLETTER_STREAM, subjects.deadletter_for(subject))
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing was dead-lettered for {subject}")


async def test_a_request_the_gateway_routed_is_answered_from_the_audit_log_as_the_routers_work(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(body=completion_body("Le 12 mars.", prompt_tokens=19, completion_tokens=5)))
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js):
        # Stored before any worker of the deployment made its durable (no gateway routes there then:
        # no status said it takes routed requests): never replayed from the audit log.
        await store(js, subjects.routed_chat_requested(COPRO, dep), routed_request(dep))
        async with collecting(nc, subjects.cloud_status(dep)) as statuses, running_cloud(settings, ENV):
            # Its first status comes once its durable on the audit log exists, and says so.
            status = CloudDeploymentStatus.model_validate_json(await statuses.next(timeout=20))
            assert status.takes_routed_requests
            request = routed_request(dep)
            async with collecting(nc, request.reply_subject) as replies:
                await store(js, subjects.routed_chat_requested(COPRO, dep), request)
                _, outcome = await read_answer(replies)
            info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.routed_requests_durable(dep))
        work = await js.stream_info(subjects.WORK_STREAM)
    assert isinstance(outcome, ChatCompleted), outcome
    assert (outcome.request_id, outcome.content) == (request.id, "Le 12 mars.")
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (19, 5)
    assert outcome.execution_info.execution_type == "cloud" and outcome.execution_info.node_id == dep
    assert outcome.execution_info.routing is not None
    assert outcome.execution_info.routing.reason == "no edge node serves the model"
    (sent,) = api.calls
    assert sent.payload["messages"] == [{"role": "user", "content": "Quand a lieu l'assemblée générale ?"}]
    # One stored request, taken and acknowledged: no work item was made of it.
    assert (info.config.filter_subject, info.num_ack_pending, info.num_pending) == (
        subjects.routed_requests_filter(dep),
        0,
        0,
    )
    assert info.config.deliver_policy == DeliverPolicy.NEW
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 1
    assert work.state.messages == 0


async def test_a_routed_attempt_that_fails_hands_the_router_the_work_to_fall_back_from(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(503, {"error": "overloaded"}))
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    request = routed_request(dep)
    async with (
        nats_client(clean_jetstream) as (nc, js),
        running_cloud(settings, ENV),
        collecting(nc, subjects.inference_attempt_failed(COPRO)) as failures,
    ):
        await taking_routed_requests(nc, dep)
        await store(js, subjects.routed_chat_requested(COPRO, dep), request)
        failed = InferenceAttemptFailed.model_validate_json(await failures.next(timeout=20))
    assert (failed.status, failed.error) == (502, "provider_error")
    # The work item the router would have made: its id, its plan, the request's deadline and reply.
    assert failed.work.id == derived_event_id(request.id, "run")
    assert failed.work.request_id == request.id and failed.work.routing == request.routed
    assert (failed.work.reply_subject, failed.work.deadline) == (request.reply_subject, request.deadline)


async def test_a_routed_request_naming_another_copro_than_its_subject_is_dead_lettered_unrun(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(body=completion_body()))
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        await taking_routed_requests(nc, dep)
        elsewhere = subjects.routed_chat_requested("someone-else", dep)
        await store(js, elsewhere, routed_request(dep))
        planless = subjects.routed_chat_requested(COPRO, dep)
        await store(js, planless, routed_request(dep, with_plan=False))
        disagree = await dead_letter(js, elsewhere)
        no_plan = await dead_letter(js, planless)
    assert "subject and body disagree" in (disagree.headers or {})["KoproGo-Dead-Reason"]
    assert "no routing plan" in (no_plan.headers or {})["KoproGo-Dead-Reason"]
    assert api.calls == []
