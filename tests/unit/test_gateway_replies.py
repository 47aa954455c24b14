"""The gateway takes a reply from an edge node only for the request that node says it runs.

A node holding a key replies on its own subject (`subjects.node_reply`); the reply waiter is
told who sent each reply and refuses what that node may not say.
"""

from __future__ import annotations

from koprogo_gateway.adapters.replies import ReplyWaiter
from koprogo_shared.events import ChatCompleted, ChatFailed, ExecutionInfo, InferenceStarted, Usage


def started(node_id: str) -> InferenceStarted:
    return InferenceStarted(source="test", request_id="r1", node_id=node_id)


def completed(node_id: str, content: str = "Bonjour") -> ChatCompleted:
    return ChatCompleted(
        source="test",
        copro_id="c1",
        request_id="r1",
        model="m1",
        content=content,
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id=node_id, latency_ms=1.0, co2_grams=0.0, co2_saved_grams=0.0
        ),
    )


async def test_a_node_answers_only_a_request_it_said_it_runs() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1")
    waiter.deliver(completed("pi-2", "forged before anyone started"), sender="pi-2")
    waiter.deliver(started("pi-1"), sender="pi-1")
    waiter.deliver(completed("pi-2", "forged by a node that does not run it"), sender="pi-2")
    waiter.deliver(completed("pi-1", "forged in pi-1's name"), sender="pi-2")
    assert not expected.outcome.done()
    waiter.deliver(completed("pi-1"), sender="pi-1")
    outcome = expected.outcome.result()
    assert isinstance(outcome, ChatCompleted) and outcome.content == "Bonjour"
    assert waiter.sender_of("r1") == "pi-1"


async def test_a_node_cannot_say_it_started_a_request_in_another_nodes_name() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1")
    waiter.deliver(started("pi-1"), sender="pi-2")
    assert expected.node_id is None and waiter.sender_of("r1") is None
    waiter.deliver(completed("pi-1"), sender="pi-1")  # pi-1 never said it runs it
    assert not expected.outcome.done()


async def test_a_node_that_cannot_run_a_request_may_fail_it_before_anyone_started() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1")
    failed = ChatFailed(source="test", request_id="r1", status=503, error="engine_unavailable", message="x")
    waiter.deliver(failed, sender="pi-2")
    assert expected.outcome.result() == failed


async def test_replies_on_the_gateways_own_subject_are_the_services_and_taken_as_before() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1")
    waiter.deliver(started("cloud:openai"))
    waiter.deliver(completed("cloud:openai"))
    assert expected.outcome.done() and expected.node_id == "cloud:openai"
    assert waiter.sender_of("r1") is None  # a cancel then goes to the request's own subject
