"""Rate-limit arithmetic, as plain functions: windows, keys, remaining, reset, retry-after."""

from __future__ import annotations

import pytest

from koprogo_gateway.domain.rate_limit import (
    PolicyUsage,
    RateLimitDecision,
    RateLimitPolicy,
    admits,
    counter_key,
    seconds_until_reset,
    subject_token,
    window_at,
)
from koprogo_gateway.entrypoints.http.rate_limit_headers import rate_limit_headers, refusal_headers

COPRO = RateLimitPolicy("copro", 1000, 60)
USER = RateLimitPolicy("user", 100, 60)


def test_windows_are_fixed_slices_of_the_clock() -> None:
    window = window_at(120.0, 60)
    assert (window.index, window.start, window.end) == (2, 120.0, 180.0)
    assert window_at(179.999, 60).index == 2
    assert window_at(180.0, 60).index == 3


def test_reset_is_the_whole_seconds_left_in_the_window_rounded_up() -> None:
    window = window_at(130.2, 60)
    assert seconds_until_reset(130.2, window) == 50  # 49.8 s left
    assert seconds_until_reset(179.9, window) == 1
    assert seconds_until_reset(120.0, window) == 60


def test_a_request_fits_while_fewer_than_the_limit_were_counted() -> None:
    assert admits(0, 1)
    assert admits(999, 1000)
    assert not admits(1000, 1000)
    assert not admits(1001, 1000)


def test_counter_keys_name_the_policy_the_subject_and_the_window() -> None:
    key = counter_key(COPRO, "550e8400-e29b-41d4-a716-446655440000", window_at(600.0, 60))
    assert key == "copro.550e8400-e29b-41d4-a716-446655440000.60s.10"


@pytest.mark.parametrize(
    ("first", "second"),
    [("a.b", "a_b"), ("a b", "a-b"), ("", "="), ("été", "ete"), ("x" * 129, "x" * 128), ("*", ">")],
)
def test_distinct_subjects_get_distinct_key_tokens_made_of_key_characters(first: str, second: str) -> None:
    tokens = {subject_token(first), subject_token(second)}
    assert len(tokens) == 2
    for token in tokens:
        assert token and "." not in token and all(c.isalnum() or c in "-_=" for c in token)


def test_a_policy_needs_a_positive_limit_and_window() -> None:
    with pytest.raises(ValueError):
        RateLimitPolicy("copro", 0, 60)
    with pytest.raises(ValueError):
        RateLimitPolicy("copro", 10, 0)
    with pytest.raises(ValueError):
        RateLimitPolicy("co.pro", 10, 60)


def test_remaining_never_goes_below_zero() -> None:
    assert PolicyUsage(USER, used=100, reset_s=5).remaining == 0
    assert PolicyUsage(USER, used=100, reset_s=5).exhausted
    assert PolicyUsage(USER, used=40, reset_s=5).remaining == 60


def test_the_tightest_policy_is_the_one_with_fewest_remaining() -> None:
    decision = RateLimitDecision(
        admitted=True, usages=(PolicyUsage(USER, 90, 30), PolicyUsage(COPRO, 500, 30))
    )
    assert decision.tightest is not None and decision.tightest.policy == USER


def test_retry_after_waits_for_every_refusing_policy() -> None:
    long_window = RateLimitPolicy("copro", 1000, 3600)
    decision = RateLimitDecision(
        admitted=False, usages=(PolicyUsage(USER, 100, 20), PolicyUsage(long_window, 1000, 1800))
    )
    assert decision.retry_after_s == 1800


def test_headers_carry_both_drafts_and_agree_with_retry_after() -> None:
    decision = RateLimitDecision(admitted=False, usages=(PolicyUsage(COPRO, 1000, 42),))
    headers = refusal_headers(decision)
    assert headers == {
        "RateLimit-Policy": '"copro";q=1000;w=60',
        "RateLimit": '"copro";r=0;t=42',
        "RateLimit-Limit": "1000",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "42",
        "Retry-After": "42",
    }


def test_headers_list_every_policy_counted_and_report_the_tightest_alone() -> None:
    decision = RateLimitDecision(admitted=True, usages=(PolicyUsage(USER, 99, 10), PolicyUsage(COPRO, 7, 10)))
    headers = rate_limit_headers(decision)
    assert headers["RateLimit-Policy"] == '"user";q=100;w=60, "copro";q=1000;w=60'
    assert headers["RateLimit"] == '"user";r=1;t=10, "copro";r=993;t=10'
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("100", "1")


def test_an_uncounted_request_has_no_rate_limit_headers() -> None:
    assert rate_limit_headers(RateLimitDecision(admitted=True)) == {}
