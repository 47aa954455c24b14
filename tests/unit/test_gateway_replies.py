"""The gateway takes a reply from an edge node only for the request that node says it runs.

A node holding a key replies on its own subject (`subjects.node_reply`); the reply waiter is
told who sent each reply and refuses what that node may not say.
"""

from __future__ import annotations

from koprogo_gateway.adapters.replies import ExpectedReplies, ReplyWaiter, RunnerChanged
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, ExecutionInfo, InferenceStarted, Usage


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


# A streamed request redelivered to another node mid-answer (issue 12, finding 4): the caller
# must never get node A's first pieces followed by node B's whole text.


def node_started(node_id: str) -> InferenceStarted:
    return InferenceStarted(source=f"koprogo/node/{node_id}", request_id="r1", node_id=node_id)


def piece(node_id: str, index: int, text: str) -> ChatDelta:
    return ChatDelta(source=f"koprogo/node/{node_id}", request_id="r1", index=index, delta=text)


def node_completed(node_id: str, content: str) -> ChatCompleted:
    return completed(node_id, content).model_copy(update={"source": f"koprogo/node/{node_id}"})


def queued(expected: ExpectedReplies) -> list[ChatDelta | RunnerChanged]:
    items = []
    while not expected.pieces.empty():
        items.append(expected.pieces.get_nowait())
    return items


async def test_a_stream_takes_each_piece_once_in_index_order_and_holds_back_what_follows_a_gap() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1", streamed=True)
    waiter.deliver(node_started("pi-1"))
    waiter.deliver(piece("pi-1", 0, "Il était"))
    waiter.deliver(piece("pi-1", 0, "Il était"))  # the same piece twice
    waiter.deliver(piece("pi-1", 1, " une fois"))
    waiter.deliver(piece("pi-1", 3, " after a lost piece"))  # index 2 never came
    waiter.deliver(piece("pi-1", 4, " and the next"))

    assert [(p.index, p.delta) for p in queued(expected) if isinstance(p, ChatDelta)] == [
        (0, "Il était"),
        (1, " une fois"),
    ]
    assert expected.pieces_lost


async def test_a_node_change_after_pieces_were_taken_ends_the_pieces_with_the_change() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1", streamed=True)
    waiter.deliver(node_started("pi-1"))
    waiter.deliver(piece("pi-1", 0, "Il était"))
    waiter.deliver(piece("pi-1", 1, " une fois"))
    waiter.deliver(node_started("pi-2"))  # pi-1 died; its work item went to pi-2
    waiter.deliver(piece("pi-2", 0, "Once"))
    waiter.deliver(piece("pi-2", 1, " upon a time"))
    waiter.deliver(node_completed("pi-2", "Once upon a time"))

    items = queued(expected)
    assert [p.delta for p in items if isinstance(p, ChatDelta)] == ["Il était", " une fois"]
    assert items[-1] == RunnerChanged(previous="pi-1", current="pi-2")
    assert expected.node_id == "pi-2"  # a cancel now reaches the node that runs it
    outcome = expected.outcome.result()  # pi-2's whole answer, for a retry with an idempotency key
    assert isinstance(outcome, ChatCompleted) and outcome.content == "Once upon a time"


async def test_a_node_change_before_any_piece_switches_to_the_new_node() -> None:
    waiter = ReplyWaiter()
    expected = waiter.expect("r1", streamed=True)
    waiter.deliver(node_started("pi-1"))
    waiter.deliver(node_started("pi-2"))
    waiter.deliver(piece("pi-1", 0, "late piece of the node that lost it"))
    waiter.deliver(piece("pi-2", 0, "Once"))
    waiter.deliver(node_completed("pi-1", "late answer of the node that lost it"))
    assert not expected.outcome.done()
    waiter.deliver(node_completed("pi-2", "Once"))

    assert [p.delta for p in queued(expected) if isinstance(p, ChatDelta)] == ["Once"]
    outcome = expected.outcome.result()
    assert isinstance(outcome, ChatCompleted) and outcome.content == "Once"


async def test_an_answer_from_another_target_after_pieces_were_taken_is_a_change_not_their_end() -> None:
    # pi-1 streamed a piece, then failed; the router fell back to a cloud deployment, which
    # answers whole without saying it started.
    waiter = ReplyWaiter()
    expected = waiter.expect("r1", streamed=True)
    waiter.deliver(node_started("pi-1"))
    waiter.deliver(piece("pi-1", 0, "Il était"))
    cloud = completed("cloud:openai", "Once upon a time").model_copy(
        update={"source": "koprogo/cloud/openai"}
    )
    waiter.deliver(cloud)

    items = queued(expected)
    assert [type(i) for i in items] == [ChatDelta, RunnerChanged]
    assert items[-1] == RunnerChanged(previous="pi-1", current="koprogo/cloud/openai")
    # Kept for a retry with the same idempotency key, which gets it whole.
    assert expected.outcome.result() == cloud


async def test_a_node_that_starts_the_request_again_after_pieces_ends_them_too() -> None:
    # pi-1 restarted and got the work item back: its new answer cannot follow the old pieces.
    waiter = ReplyWaiter()
    expected = waiter.expect("r1", streamed=True)
    waiter.deliver(node_started("pi-1"))
    waiter.deliver(piece("pi-1", 0, "Il était"))
    waiter.deliver(piece("pi-1", 1, " une fois"))
    waiter.deliver(node_started("pi-1"))
    waiter.deliver(piece("pi-1", 0, "Once"))
    waiter.deliver(piece("pi-1", 1, " upon"))
    waiter.deliver(piece("pi-1", 2, " a time"))

    items = queued(expected)
    assert [p.delta for p in items if isinstance(p, ChatDelta)] == ["Il était", " une fois"]
    assert items[-1] == RunnerChanged(previous="pi-1", current="pi-1")
