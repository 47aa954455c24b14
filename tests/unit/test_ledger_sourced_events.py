"""The ledger's rule for events sourced into the hub's stream: only the kinds a building makes."""

from __future__ import annotations

import uuid

import pytest

from koprogo_ledger.domain.sourced_events import refused_sourced_body, refused_sourced_kind
from koprogo_shared import subjects
from koprogo_shared.events import ChatDelivered, ChatsDelivered, Delivery, UserDataErasureRequested

# The header as JetStream writes it on a sourced message (stream, sequence, filter, transform).
SOURCED = "KOPROGO_EVENTS:building-copro-a 42 > >"


@pytest.mark.parametrize(
    "subject",
    [
        subjects.task_event("completed", "copro-a"),
        subjects.task_event("assigned", "copro-a"),
        subjects.node_task_event("reported", "copro-a", "pi-1"),
        subjects.grid_node_trust("copro-a"),  # a node id equal to the copro id matches `*.*.copro-a`
        subjects.user_erasure_requested("copro-a"),
        "koprogo.events.chat",  # too short to name a kind
    ],
)
def test_a_sourced_event_of_a_kind_no_building_makes_is_refused(subject: str) -> None:
    reason = refused_sourced_kind(subject, SOURCED)
    assert reason is not None and reason.startswith("sourced_kind_refused: ")
    assert subject in reason and "chat.requested" in reason


@pytest.mark.parametrize(
    "subject",
    [
        subjects.chat_requested("copro-a"),
        subjects.chat_completed("copro-a"),
        subjects.node_chat_completed("copro-a", "pi-1"),
        subjects.chat_failed("copro-a"),
        subjects.chat_delivered("copro-a"),
        subjects.inference_attempt_failed("copro-a"),
    ],
)
def test_a_sourced_event_of_a_buildings_kind_is_believed(subject: str) -> None:
    assert refused_sourced_kind(subject, SOURCED) is None


def test_an_event_published_into_the_stream_directly_is_not_judged_by_this_rule() -> None:
    assert refused_sourced_kind(subjects.task_event("completed", "copro-a"), None) is None
    assert refused_sourced_kind(subjects.grid_node_trust("pi-1"), None) is None


def test_an_empty_source_header_still_marks_a_sourced_message() -> None:
    assert refused_sourced_kind(subjects.task_event("completed", "copro-a"), "") is not None


# The body must agree with the subject (review of 2026-12-03): a hand-edited building could carry
# an erasure request or a grid decision, or another copro's chat, on its own copro's chat subject.

INBOX_SOURCED = "KOPROGO_BUILDING_copro-a 7 > >"


def _delivered(copro: str | None = "copro-a") -> ChatDelivered:
    return ChatDelivered(source="building", copro_id=copro, request_id="r-1", latency_ms=1.0)


def test_a_sourced_chat_event_of_the_buildings_copro_is_believed() -> None:
    assert refused_sourced_body(subjects.chat_delivered("copro-a"), INBOX_SOURCED, _delivered()) is None
    # Not sourced: the hub's permissions checked its publisher, nothing to add here.
    erasure = UserDataErasureRequested(source="x", user_id="u-1", requested_by="u-1")
    assert refused_sourced_body(subjects.chat_delivered("copro-a"), None, erasure) is None


def test_a_sourced_erasure_or_grid_body_on_a_chat_subject_is_refused() -> None:
    erasure = UserDataErasureRequested(source="x", user_id="u-1", requested_by="u-1")
    reason = refused_sourced_body(subjects.chat_delivered("copro-a"), INBOX_SOURCED, erasure)
    assert reason is not None and "UserDataErasureRequested" in reason
    # A chat body of another kind than its subject's, too.
    assert refused_sourced_body(subjects.chat_requested("copro-a"), INBOX_SOURCED, _delivered()) is not None


def test_a_sourced_body_of_another_copro_or_through_another_buildings_inbox_is_refused() -> None:
    reason = refused_sourced_body(subjects.chat_delivered("copro-a"), INBOX_SOURCED, _delivered("copro-b"))
    assert reason is not None and "another copro" in reason
    other_inbox = "KOPROGO_BUILDING_copro-b 7 > >"
    reason = refused_sourced_body(subjects.chat_delivered("copro-a"), other_inbox, _delivered())
    assert reason is not None and "another building's inbox" in reason


def test_a_sourced_grouped_delivery_record_is_believed_on_its_copros_subject_only() -> None:
    record = ChatsDelivered(
        source="building",
        copro_id="copro-a",
        deliveries=[Delivery(request_id=uuid.uuid4(), latency_ms=3.0)],
    )
    assert refused_sourced_body(subjects.chat_delivered("copro-a"), INBOX_SOURCED, record) is None
    reason = refused_sourced_body(subjects.chat_completed("copro-a"), INBOX_SOURCED, record)
    assert reason is not None and "ChatsDelivered" in reason
    other = record.model_copy(update={"copro_id": "copro-b"})
    reason = refused_sourced_body(subjects.chat_delivered("copro-a"), INBOX_SOURCED, other)
    assert reason is not None and "another copro" in reason
