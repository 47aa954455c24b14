"""Pure rules of the edge node: answer budget, deadline, measured tokens/s, keep-alive pace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from koprogo_node.domain.errors import ContextOverflowError
from koprogo_node.domain.generation import DEFAULT_MAX_TOKENS, TokenRate, answer_budget, deadline_passed
from koprogo_shared.kept_alive import keep_alive_interval


def test_answer_budget_defaults_to_256_tokens_when_the_request_names_none() -> None:
    assert DEFAULT_MAX_TOKENS == 256
    assert answer_budget(None, prompt_tokens=40, n_ctx=2048) == 256
    assert answer_budget(0, prompt_tokens=40, n_ctx=2048) == 256


def test_answer_budget_keeps_the_requested_maximum_when_it_fits() -> None:
    assert answer_budget(1000, prompt_tokens=40, n_ctx=2048) == 1000


def test_answer_budget_is_clamped_to_what_the_context_has_left() -> None:
    assert answer_budget(None, prompt_tokens=2000, n_ctx=2048) == 48
    assert answer_budget(5000, prompt_tokens=40, n_ctx=2048) == 2008


def test_a_prompt_that_fills_the_context_is_a_context_overflow() -> None:
    with pytest.raises(ContextOverflowError) as caught:
        answer_budget(None, prompt_tokens=2048, n_ctx=2048)
    assert caught.value.status == 400
    assert caught.value.error == "context_length_exceeded"
    assert "2048" in str(caught.value)


def test_a_deadline_in_the_past_has_passed_and_one_in_the_future_has_not() -> None:
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert deadline_passed(now - timedelta(milliseconds=1), now)
    assert deadline_passed(now, now)
    assert not deadline_passed(now + timedelta(seconds=1), now)


def test_tokens_per_second_is_zero_before_any_answer_then_the_first_sample() -> None:
    rate = TokenRate()
    assert rate.value == 0.0
    assert rate.observe(100, 2.0) == 50.0


def test_tokens_per_second_is_smoothed_over_recent_answers() -> None:
    rate = TokenRate(alpha=0.5)
    rate.observe(100, 1.0)
    assert rate.observe(50, 1.0) == pytest.approx(75.0)
    assert rate.observe(50, 1.0) == pytest.approx(62.5)


def test_an_empty_answer_does_not_move_the_measured_speed() -> None:
    rate = TokenRate()
    rate.observe(30, 1.0)
    assert rate.observe(0, 0.5) == 30.0
    assert rate.observe(10, 0.0) == 30.0


def test_in_progress_acks_come_three_times_per_ack_wait_and_at_least_every_five_seconds() -> None:
    assert keep_alive_interval(3.0) == pytest.approx(1.0)
    assert keep_alive_interval(60.0) == 5.0
