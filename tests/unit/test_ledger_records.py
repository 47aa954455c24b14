"""The ledger's pure rules: events -> rows, outcomes, delivered latency."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from koprogo_ledger.domain.errors import InvalidEventError
from koprogo_ledger.domain.records import (
    RequestState,
    UserKey,
    delivered_execution_info,
    failure_record,
    forged_sender,
    request_row,
    response_row,
    settled_status,
    user_key,
)
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    ChatMessage,
    ChatRequested,
    ExecutionInfo,
    Usage,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def requested(**changes: object) -> ChatRequested:
    fields: dict[str, object] = {
        "source": "tests",
        "time": T0,
        "model": "llama3:8b",
        "messages": [ChatMessage(role="user", content="Bonjour")],
        "reply_subject": "koprogo.reply.tests",
        "deadline": T0 + timedelta(seconds=30),
    }
    fields.update(changes)
    return ChatRequested.model_validate(fields)


def completed(request_id: str, copro_id: str | None = None) -> ChatCompleted:
    return ChatCompleted(
        source="tests",
        time=T0 + timedelta(seconds=1),
        copro_id=copro_id,
        request_id=request_id,
        model="llama3:8b",
        content="Bonjour !",
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id="pi-1", latency_ms=420.0, co2_grams=0.001, co2_saved_grams=0.0011
        ),
    )


def test_request_row_uses_the_event_id_as_request_id_and_keeps_messages_as_json() -> None:
    event = requested(copro_id="copro-7")
    row = request_row(event)
    assert row.id == uuid.UUID(event.id)
    assert row.messages == [{"role": "user", "content": "Bonjour"}]
    assert row.copro_id == "copro-7"
    assert row.created_at == T0


def test_request_row_takes_the_copro_from_the_context_when_the_envelope_names_none() -> None:
    assert request_row(requested(context="copro:les-tilleuls")).copro_id == "les-tilleuls"
    assert request_row(requested(context="personal")).copro_id is None


def test_request_whose_id_is_not_a_uuid_can_never_be_stored() -> None:
    with pytest.raises(InvalidEventError, match="request id"):
        request_row(requested(id="request-42"))


UUID_USER = uuid.uuid4()


@pytest.mark.parametrize(
    ("user", "seed_user_id"),
    [("dev-user", None), ("alice", None), ("alice.martin@example.be", None), (str(UUID_USER), UUID_USER)],
)
def test_every_user_id_is_kept_as_text_and_a_uuid_in_the_seeds_column_too(
    user: str, seed_user_id: uuid.UUID | None
) -> None:
    row = request_row(requested(user_id=user))
    assert (row.user_ref, row.user_id) == (user, seed_user_id)


def test_a_user_id_no_row_can_carry_is_left_out_of_the_request_and_refused_for_an_erasure() -> None:
    row = request_row(requested(user_id="al\x00ice"))
    assert (row.user_ref, row.user_id) == (None, None)
    assert request_row(requested()).user_ref is None
    with pytest.raises(InvalidEventError, match="NUL"):
        user_key("al\x00ice")


def test_a_users_key_is_their_id_as_written_and_its_uuid_value_when_it_is_one() -> None:
    user = uuid.uuid4()
    assert user_key("alice") == UserKey(ref="alice", as_uuid=None)
    assert user_key(str(user).upper()) == UserKey(ref=str(user).upper(), as_uuid=user)


def test_response_row_copies_the_figures_and_prefers_the_request_copro() -> None:
    request = requested(copro_id="copro-a")
    row = response_row(completed(request.id, copro_id="copro-b"), RequestState("pending", "copro-a"))
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (3, 4, 7)
    assert (row.execution_type, row.node_id, row.latency_ms) == ("edge", "pi-1", 420.0)
    assert (row.co2_grams, row.co2_saved_grams) == (0.001, 0.0011)
    assert row.execution_info["execution_type"] == "edge"
    assert row.copro_id == "copro-a"


def test_response_row_falls_back_to_the_completion_copro_when_the_request_has_none() -> None:
    request = requested()
    row = response_row(completed(request.id, copro_id="copro-b"), RequestState("pending", None))
    assert row.copro_id == "copro-b"


def test_failure_record_keeps_code_status_and_message() -> None:
    event = ChatFailed(
        source="tests",
        request_id=str(uuid.uuid4()),
        status=404,
        error="model_not_found",
        message="unknown model",
        known_models=["llama3:8b"],
    )
    assert failure_record(event) == {
        "error": "model_not_found",
        "status": 404,
        "message": "unknown model",
        "known_models": ["llama3:8b"],
    }


@pytest.mark.parametrize(
    ("current", "outcome", "expected"),
    [
        ("pending", "completed", "completed"),
        ("pending", "failed", "failed"),
        ("completed", "failed", "completed"),
        ("failed", "completed", "failed"),
    ],
)
def test_the_first_outcome_of_a_request_wins(current: str, outcome: str, expected: str) -> None:
    assert settled_status(current, outcome) == expected  # type: ignore[arg-type]


def test_delivered_latency_replaces_latency_and_keeps_the_node_time_as_inference_ms() -> None:
    info = {"execution_type": "edge", "latency_ms": 420.0}
    once = delivered_execution_info(info, 512.5)
    assert once == {"execution_type": "edge", "latency_ms": 512.5, "inference_ms": 420.0}
    assert info["latency_ms"] == 420.0, "the input is not modified"
    assert delivered_execution_info(once, 600.0)["inference_ms"] == 420.0


def test_an_answer_that_called_tools_keeps_its_calls_in_the_stored_content() -> None:
    import json

    from koprogo_shared.generation import FunctionCall, ToolCall

    request = requested()
    call = ToolCall(id="call_1", function=FunctionCall(name="get_charges", arguments='{"lot": 12}'))
    event = completed(request.id).model_copy(
        update={"content": "", "tool_calls": [call], "finish_reason": "tool_calls"}
    )
    row = response_row(event, RequestState("pending", None))
    assert json.loads(row.content) == {"content": None, "tool_calls": [call.model_dump(mode="json")]}
    assert row.finish_reason == "tool_calls"
    # A text answer is stored as it is.
    assert (
        response_row(completed(request.id), RequestState("pending", None)).content
        == completed(request.id).content
    )


def _as(answer: ChatCompleted, execution_type: str, node_id: str | None) -> ChatCompleted:
    info = answer.execution_info.model_copy(update={"execution_type": execution_type, "node_id": node_id})
    return answer.model_copy(update={"execution_info": info})


NODE_SUBJECT = subjects.node_chat_completed("copro-7", "pi-1")
PLAIN_SUBJECT = subjects.chat_completed("copro-7")
CLOUD_SUBJECT = subjects.cloud_chat_completed("copro-7")
# Where releases before 2026-12-04 stored the cloud worker's answers: a subject per request.
OLD_CLOUD_SUBJECT = f"{CLOUD_SUBJECT}.{uuid.uuid4()}"


@pytest.mark.parametrize(
    ("subject", "execution_type", "node_id", "nodes_keyed", "refused"),
    [
        (NODE_SUBJECT, "edge", "pi-1", True, False),  # the node it names sent it
        (NODE_SUBJECT, "grid", "pi-1", True, False),  # a chat the router sent to the grid's nodes
        (subjects.node_chat_completed("copro-7", "pi-2"), "grid", "pi-1", True, True),
        (PLAIN_SUBJECT, "grid", "pi-1", True, True),
        (subjects.node_chat_completed("copro-7", "pi.lan-1"), "edge", "pi.lan-1", True, False),
        (subjects.node_chat_completed("copro-7", "pi-2"), "edge", "pi-1", True, True),  # speaks for pi-1
        (NODE_SUBJECT, "edge", None, True, True),
        (NODE_SUBJECT, "cloud", "openai-main", True, True),  # a node posing as the cloud worker
        (PLAIN_SUBJECT, "cloud", "openai-main", True, False),
        (CLOUD_SUBJECT, "cloud", "openai-main", True, False),  # the cloud worker's own subject
        (CLOUD_SUBJECT, "edge", "pi-1", True, True),  # only cloud answers there
        (CLOUD_SUBJECT, "grid", "pi-1", False, True),
        (OLD_CLOUD_SUBJECT, "cloud", "openai-main", True, False),  # replayed from an older release
        (PLAIN_SUBJECT, "edge", "pi-1", True, True),  # no keyed node may send here
        (PLAIN_SUBJECT, "edge", "pi-1", False, False),  # nodes without keys: as before
    ],
)
def test_a_completion_is_believed_only_from_the_node_it_names(
    subject: str, execution_type: str, node_id: str | None, nodes_keyed: bool, refused: bool
) -> None:
    answer = _as(completed(str(uuid.uuid4()), "copro-7"), execution_type, node_id)
    assert (forged_sender(subject, answer, nodes_keyed=nodes_keyed) is not None) is refused


def test_a_failure_names_no_node_and_is_left_to_its_subjects_permission() -> None:
    failed = ChatFailed(
        source="tests", request_id=str(uuid.uuid4()), status=504, error="timeout", message="m"
    )
    assert forged_sender(subjects.node_chat_failed(None, "pi-2"), failed, nodes_keyed=True) is None
    assert subjects.outcome_sender(subjects.node_chat_failed("c", "pi-2")) == "pi-2"
    assert subjects.outcome_sender(subjects.chat_failed("c")) is None
    cloud_failure = failed.model_copy(update={"copro_id": "copro-7"})
    assert forged_sender(CLOUD_SUBJECT, cloud_failure, nodes_keyed=True) is not None, "answers only there"
    assert subjects.is_cloud_answer(CLOUD_SUBJECT) and not subjects.is_cloud_answer(OLD_CLOUD_SUBJECT)
    assert not subjects.is_cloud_answer(PLAIN_SUBJECT) and not subjects.is_cloud_answer(NODE_SUBJECT)
