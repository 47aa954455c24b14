"""Limits on what one chat request may carry, checked after parsing and before anything is published.

The body size is capped earlier, before parsing (`entrypoints/http/body_limit.py`); these
rules bound the work a valid body can ask for. `max_tokens` against the model's context is
checked by the request model itself (`chat_request.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from koprogo_shared.events import ChatMessage


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_messages: int = 256
    max_message_chars: int = 200_000
    max_total_chars: int = 400_000


@dataclass(frozen=True, slots=True)
class LimitViolation:
    field: str
    message: str


def input_limit_violations(messages: Sequence[ChatMessage], limits: InputLimits) -> list[LimitViolation]:
    """Every limit `messages` breaks (empty when the request fits)."""
    violations: list[LimitViolation] = []
    if len(messages) > limits.max_messages:
        violations.append(
            LimitViolation("messages", f"at most {limits.max_messages} messages, got {len(messages)}")
        )
    total = 0
    for i, message in enumerate(messages):
        chars = len(message.content)
        total += chars
        if chars > limits.max_message_chars:
            violations.append(
                LimitViolation(
                    f"messages.{i}.content",
                    f"at most {limits.max_message_chars} characters per message, got {chars}",
                )
            )
    if total > limits.max_total_chars:
        violations.append(
            LimitViolation(
                "messages", f"at most {limits.max_total_chars} characters in all messages, got {total}"
            )
        )
    return violations
