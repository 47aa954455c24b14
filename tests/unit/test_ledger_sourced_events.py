"""The ledger's rule for events sourced into the hub's stream: only the kinds a building makes."""

from __future__ import annotations

import pytest

from koprogo_ledger.domain.sourced_events import refused_sourced_kind
from koprogo_shared import subjects

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
