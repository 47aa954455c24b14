"""Limits on what a chat request may carry, as a plain function."""

from __future__ import annotations

from koprogo_gateway.domain.input_limits import InputLimits, input_limit_violations
from koprogo_shared.events import ChatMessage

LIMITS = InputLimits(max_messages=3, max_message_chars=10, max_total_chars=25)


def messages(*contents: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=c) for c in contents]


def test_a_request_within_every_limit_has_no_violation() -> None:
    assert input_limit_violations(messages("a" * 10, "b" * 10, "c" * 5), LIMITS) == []


def test_too_many_messages_is_named() -> None:
    (violation,) = input_limit_violations(messages("a", "b", "c", "d"), LIMITS)
    assert violation.field == "messages"
    assert violation.message == "at most 3 messages, got 4"


def test_a_message_too_long_is_named_by_its_position() -> None:
    (violation,) = input_limit_violations(messages("ok", "x" * 11), LIMITS)
    assert violation.field == "messages.1.content"
    assert "at most 10 characters per message, got 11" in violation.message


def test_the_total_is_checked_even_when_each_message_fits() -> None:
    (violation,) = input_limit_violations(messages("a" * 10, "b" * 10, "c" * 6), LIMITS)
    assert violation.field == "messages"
    assert "26" in violation.message


def test_characters_are_counted_not_bytes() -> None:
    assert input_limit_violations(messages("é" * 10), LIMITS) == []
