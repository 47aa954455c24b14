"""The workers' shared parts: outcome events with redelivery-stable ids, and the work-item handler's decisions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from koprogo_shared import chat_outcomes, co2
from koprogo_shared.consumer import decide
from koprogo_shared.decisions import ACK, DeadLetter, Retry
from koprogo_shared.events import (
    ChatMessage,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    chat_failed_id,
    derived_event_id,
    utc_now,
)
from koprogo_shared.generation import FunctionCall, ToolCall
from koprogo_shared.work_items import WorkItemHandler, is_last_delivery, last_delivery_message


def work(*, plan: bool = False, **fields: Any) -> RunInference:
    return RunInference(
        source="test",
        copro_id="copro-42",
        request_id=str(uuid.uuid4()),
        model="gpt-4o",
        messages=[ChatMessage(role="user", content="Bonjour")],
        reply_subject="koprogo.reply.test",
        deadline=utc_now() + timedelta(seconds=60),
        routing=RoutingPlan(
            policy="lowest_carbon",
            allow_fallback=True,
            reason="greenest first",
            targets=[RoutingTarget(kind="edge", model="gpt-4o"), RoutingTarget(kind="cloud", model="gpt-4o")],
            attempt=2,
        )
        if plan
        else None,
        **fields,
    )


# --- outcomes ---------------------------------------------------------------------------


def test_a_completion_carries_its_counts_co2_and_routing_under_an_id_from_the_request() -> None:
    item = work(plan=True)
    call = ToolCall(id="call_1", function=FunctionCall(name="get_charges", arguments='{"lot": 12}'))

    done = chat_outcomes.completed(
        item,
        source="koprogo/cloud/dep",
        content="",
        finish_reason="tool_calls",
        tool_calls=[call],
        prompt_tokens=30,
        completion_tokens=9,
        execution_type="cloud",
        node_id="dep",
        seconds=1.23456789,
        co2_grams=0.01,
    )

    assert done.id == derived_event_id(item.request_id, "completed")
    assert (done.source, done.copro_id, done.request_id, done.model) == (
        "koprogo/cloud/dep",
        "copro-42",
        item.request_id,
        "gpt-4o",
    )
    assert (done.finish_reason, done.tool_calls) == ("tool_calls", [call])
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (30, 9, 39)
    info = done.execution_info
    assert (info.execution_type, info.node_id, info.latency_ms) == ("cloud", "dep", 1234.568)
    assert info.co2_grams == 0.01
    assert info.co2_saved_grams == pytest.approx(co2.cloud_grams(39) - 0.01)
    assert info.routing is not None
    assert (info.routing.policy, info.routing.reason, info.routing.attempts) == (
        "lowest_carbon",
        "greenest first",
        2,
    )


def test_a_completion_without_a_plan_has_no_routing_summary() -> None:
    done = chat_outcomes.completed(
        work(),
        source="koprogo/node/a",
        content="Bonjour",
        finish_reason="stop",
        tool_calls=None,
        prompt_tokens=3,
        completion_tokens=1,
        execution_type="edge",
        node_id="a",
        seconds=0.5,
        co2_grams=0.0,
    )
    assert done.execution_info.routing is None and done.tool_calls is None


def test_a_failure_id_comes_from_the_work_item_so_the_routers_refusal_is_not_deduplicated_against_it() -> (
    None
):
    item = work()
    again = item.model_copy(update={"id": str(uuid.uuid4())})  # the router's next attempt, same request

    failed = chat_outcomes.failed(item, source="koprogo/node/a", status=500, error="x", message="y")

    assert failed.id == derived_event_id(item.id, "failed")
    assert failed.id != chat_failed_id(item.request_id)
    assert chat_outcomes.failed(again, source="s", status=500, error="x", message="y").id != failed.id
    assert (failed.copro_id, failed.request_id, failed.status, failed.error, failed.message) == (
        "copro-42",
        item.request_id,
        500,
        "x",
        "y",
    )
    # A redelivered item fails under the same id; an attempt failure has its own.
    assert chat_outcomes.failed(item, source="s", status=502, error="z", message="w").id == failed.id
    assert chat_outcomes.attempt_failed_id(item) == derived_event_id(item.id, "attempt_failed")


def test_a_delta_is_numbered_for_its_request() -> None:
    item = work()
    piece = chat_outcomes.delta(item, source="koprogo/node/a", index=3, piece="jour")
    assert (piece.request_id, piece.copro_id, piece.index, piece.delta) == (
        item.request_id,
        "copro-42",
        3,
        "jour",
    )


@pytest.mark.parametrize("field", ["id", "request_id"])
def test_ids_that_are_not_uuids_are_refused_before_any_outcome(field: str) -> None:
    item = work().model_copy(update={field: "not-a-uuid"})
    with pytest.raises(chat_outcomes.UnusableIdsError, match="ids must be UUIDs"):
        chat_outcomes.check_ids(item)
    chat_outcomes.check_ids(work())  # usable ids pass


# --- the work-item handler --------------------------------------------------------------


class FakeMsg:
    """What the handler reads of a JetStream message, counting in-progress acks."""

    def __init__(self, data: bytes, delivered: int) -> None:
        self.data = data
        self.subject = "koprogo.work.test"
        self.headers: dict[str, str] | None = None
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.in_progress_acks = 0
        self.is_acked = False

    async def in_progress(self) -> None:
        self.in_progress_acks += 1


def raw_msg(data: bytes, delivered: int = 1) -> Any:
    return FakeMsg(data, delivered)


def msg_of(item: RunInference, delivered: int = 1) -> Any:
    return raw_msg(item.model_dump_json().encode(), delivered)


class Service:
    """A use case that does what it is told and records what it was asked."""

    def __init__(self, error: Exception | None = None, seconds: float = 0.0) -> None:
        self.error = error
        self.seconds = seconds
        self.ran: list[RunInference] = []
        self.redelivered: list[bool] = []
        self.reported: list[tuple[str, int, str, str]] = []
        self.report_error: Exception | None = None
        self.report_seconds = 0.0

    async def run(self, item: RunInference, *, redelivered: bool) -> None:
        self.ran.append(item)
        self.redelivered.append(redelivered)
        await asyncio.sleep(self.seconds)
        if self.error is not None:
            raise self.error

    async def report_failure(self, item: RunInference, status: int, error: str, message: str) -> None:
        await asyncio.sleep(self.report_seconds)
        if self.report_error is not None:
            raise self.report_error
        self.reported.append((item.request_id, status, error, message))


class ServicePoisonError(Exception):
    pass


def handler(service: Service, *, ack_wait_s: float = 30.0, max_deliver: int = 3) -> WorkItemHandler:
    return WorkItemHandler(
        service.run,
        service.report_failure,
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        worker_name="the test worker",
        poison=(ServicePoisonError,),
    )


def test_only_the_last_allowed_delivery_is_the_last() -> None:
    assert [is_last_delivery(n, 3) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert last_delivery_message("the edge node", 5) == "the edge node could not answer after 5 attempts"


async def test_a_handled_item_is_acknowledged_and_nothing_is_reported() -> None:
    service = Service()
    item = work()
    assert await decide(msg_of(item), handler(service).handle) == ACK
    assert [w.id for w in service.ran] == [item.id] and service.reported == []


async def test_the_use_case_is_told_whether_the_item_was_delivered_before() -> None:
    service = Service()
    item = work()
    await decide(msg_of(item, delivered=1), handler(service).handle)
    await decide(msg_of(item, delivered=2), handler(service).handle)
    assert service.redelivered == [False, True]
    # The work stays as its publisher wrote it.
    assert [w.may_be_answered for w in service.ran] == [False, False]


async def test_an_undecodable_payload_is_dead_lettered_without_running_anything() -> None:
    service = Service()
    decision = await decide(raw_msg(b'{"type": "koprogo.inference.run.v1"}'), handler(service).handle)
    assert isinstance(decision, DeadLetter) and decision.reason.startswith("poison: invalid RunInference")
    assert service.ran == []


async def test_unusable_ids_and_the_services_poison_are_dead_lettered_even_on_the_last_delivery() -> None:
    bad_ids = Service(error=chat_outcomes.UnusableIdsError(work()))
    decision = await decide(msg_of(work(), delivered=3), handler(bad_ids).handle)
    assert isinstance(decision, DeadLetter) and "ids must be UUIDs" in decision.reason
    own = Service(error=ServicePoisonError("never handleable"))
    decision = await decide(msg_of(work(), delivered=3), handler(own).handle)
    assert decision == DeadLetter("poison: never handleable")
    assert bad_ids.reported == own.reported == []


async def test_a_crash_before_the_last_delivery_is_retried_without_telling_the_caller() -> None:
    service = Service(error=RuntimeError("llama exploded"))
    decision = await decide(msg_of(work(), delivered=2), handler(service).handle)
    assert decision == Retry("RuntimeError('llama exploded')")
    assert service.reported == []


async def test_a_crash_on_the_last_delivery_tells_the_caller_then_is_retried_into_the_dead_letters() -> None:
    service = Service(error=RuntimeError("llama exploded"))
    item = work()
    decision = await decide(msg_of(item, delivered=3), handler(service, max_deliver=3).handle)
    assert isinstance(decision, Retry)  # the consumer dead-letters it: delivery 3 of 3
    assert service.reported == [
        (item.request_id, 500, "inference_failed", "the test worker could not answer after 3 attempts")
    ]


async def test_a_report_that_cannot_be_sent_does_not_hide_the_crash() -> None:
    service = Service(error=RuntimeError("llama exploded"))
    service.report_error = ConnectionError("NATS is down")
    with pytest.raises(RuntimeError, match="llama exploded"):
        await handler(service).handle(msg_of(work(), delivered=3))


async def test_a_long_item_is_kept_with_in_progress_acks_until_it_ends() -> None:
    service = Service(seconds=0.45)
    msg = msg_of(work())
    await handler(service, ack_wait_s=0.3).handle(msg)  # an in-progress ack every 0.1 s
    sent = msg.in_progress_acks
    assert 3 <= sent <= 5
    await asyncio.sleep(0.25)
    assert msg.in_progress_acks == sent  # none once the item is settled


async def test_a_last_delivery_s_failure_is_kept_ours_while_it_is_reported() -> None:
    # The report may retry its publish for longer than ack_wait: redelivered meanwhile, the item
    # would reach another worker past its limit, and be reported and dead-lettered twice.
    service = Service(error=RuntimeError("model crashed"))
    service.report_seconds = 0.45
    msg = msg_of(work(), delivered=3)
    decision = await decide(msg, handler(service, ack_wait_s=0.3, max_deliver=3).handle)  # acks every 0.1 s
    assert isinstance(decision, Retry) and len(service.reported) == 1  # settled: dead-lettered
    assert msg.in_progress_acks >= 3


async def test_an_item_delivered_past_its_limit_is_reported_and_dead_lettered_without_running() -> None:
    # The server redelivers without end (the consumer keeps the limit): a dead-letter publish that
    # failed, or a worker that died on the last delivery, must not run the model once more.
    service = Service()
    item = work()
    decision = await decide(msg_of(item, delivered=4), handler(service, max_deliver=3).handle)
    assert isinstance(decision, DeadLetter) and "past the limit of 3: not run again" in decision.reason
    assert service.ran == []
    assert service.reported == [
        (item.request_id, 500, "inference_failed", "the test worker could not answer after 3 attempts")
    ]


async def test_a_routed_request_from_another_sites_stream_is_dead_lettered_not_run() -> None:
    # A building's gateway never routes a chat itself; a routed request its stream brought into the
    # hub's would skip the hub's router and rate limits: refused, whatever its body.
    service = Service()
    routed = WorkItemHandler(
        service.run,
        service.report_failure,
        ack_wait_s=30.0,
        max_deliver=3,
        worker_name="the test worker",
        this_site_only=True,
    )
    item = work()
    sourced = msg_of(item)
    sourced.headers = {"Nats-Stream-Source": "KOPROGO_EVENTS_BUILDING 1 koprogo.events.> > >"}
    decision = await decide(sourced, routed.handle)
    assert isinstance(decision, DeadLetter) and "another site" in decision.reason
    assert service.ran == []
    assert await decide(msg_of(item), routed.handle) == ACK
    assert [w.id for w in service.ran] == [item.id]
