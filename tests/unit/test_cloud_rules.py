"""The cloud worker's pure rules: retries, Retry-After, cooldown, finish reasons, failure codes, secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from koprogo_cloud.domain.cooldown import Cooldown
from koprogo_cloud.domain.errors import ProviderError
from koprogo_cloud.domain.failures import (
    anthropic_finish_reason,
    classify,
    openai_finish_reason,
    safe_detail,
)
from koprogo_cloud.domain.retry_policy import (
    MAX_RETRY_AFTER_S,
    backoff_s,
    is_retryable,
    parse_retry_after,
    retry_delay,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def status(code: int, retry_after_s: float | None = None) -> ProviderError:
    return ProviderError("status", "", status=code, retry_after_s=retry_after_s)


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 529])
def test_transient_statuses_are_retried(code: int) -> None:
    assert is_retryable(status(code))


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 422])
def test_request_and_key_errors_are_not_retried(code: int) -> None:
    assert not is_retryable(status(code))


def test_timeouts_and_unreachable_providers_are_retried_but_bad_answers_are_not() -> None:
    assert is_retryable(ProviderError("timeout", "t"))
    assert is_retryable(ProviderError("connection", "c"))
    assert not is_retryable(ProviderError("bad_response", "b"))


def test_retry_after_in_seconds_is_read() -> None:
    assert parse_retry_after("2", now=NOW) == 2.0
    assert parse_retry_after(" 0.5 ", now=NOW) == 0.5


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after("5", "250", now=NOW) == 0.25


def test_retry_after_as_http_date_is_the_time_until_then() -> None:
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=7), usegmt=True), now=NOW) == 7.0
    assert parse_retry_after(format_datetime(NOW - timedelta(seconds=7), usegmt=True), now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-3", "nan", "999999"])
def test_missing_or_insane_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_retry_after_is_followed_within_the_cap() -> None:
    assert retry_delay(status(429, 3.0), 1, 2, base_s=0.5, jitter=0.0, remaining_s=60) == 3.0
    capped = retry_delay(status(429, 500.0), 1, 2, base_s=0.5, jitter=0.0, remaining_s=600)
    assert capped == MAX_RETRY_AFTER_S


def test_no_retry_that_would_start_past_the_deadline() -> None:
    assert retry_delay(status(429, 5.0), 1, 2, base_s=0.5, jitter=0.0, remaining_s=4.0) is None
    assert retry_delay(status(503), 1, 2, base_s=2.0, jitter=0.9, remaining_s=1.0) is None


def test_no_more_retries_than_configured() -> None:
    assert retry_delay(status(503), 2, 2, base_s=0.5, jitter=0.0, remaining_s=60) is not None
    assert retry_delay(status(503), 3, 2, base_s=0.5, jitter=0.0, remaining_s=60) is None
    assert retry_delay(status(503), 1, 0, base_s=0.5, jitter=0.0, remaining_s=60) is None
    assert retry_delay(status(400), 1, 2, base_s=0.5, jitter=0.0, remaining_s=60) is None


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert backoff_s(1, 0.5, 0.0) == 0.25
    assert backoff_s(1, 0.5, 0.999) == pytest.approx(0.5, abs=1e-3)
    assert backoff_s(3, 0.5, 0.0) == 1.0
    assert backoff_s(20, 0.5, 0.999) <= 10.0


def test_cooldown_starts_after_consecutive_failures_and_ends_in_time() -> None:
    cooldown = Cooldown(threshold=3, duration_s=60)
    assert not cooldown.record_failure(NOW)
    assert not cooldown.record_failure(NOW)
    assert cooldown.record_failure(NOW)
    assert cooldown.active(NOW + timedelta(seconds=59))
    assert not cooldown.active(NOW + timedelta(seconds=60))


def test_a_success_resets_the_failure_count() -> None:
    cooldown = Cooldown(threshold=2, duration_s=60)
    cooldown.record_failure(NOW)
    cooldown.record_success()
    assert not cooldown.record_failure(NOW)
    assert not cooldown.active(NOW)


def test_a_failed_probe_after_cooldown_rests_again_at_once() -> None:
    cooldown = Cooldown(threshold=2, duration_s=10)
    cooldown.record_failure(NOW)
    cooldown.record_failure(NOW)
    later = NOW + timedelta(seconds=11)
    assert not cooldown.active(later)
    assert cooldown.record_failure(later)
    assert cooldown.active(later + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("something_new", "error"),
    ],
)
def test_anthropic_stop_reasons_map_to_finish_reasons(stop_reason: str, expected: str) -> None:
    assert anthropic_finish_reason(stop_reason) == expected


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("model_length", "length"),
        ("weird", "error"),
        (None, "stop"),
    ],
)
def test_openai_finish_reasons_map_to_finish_reasons(finish_reason: str | None, expected: str) -> None:
    assert openai_finish_reason(finish_reason) == expected


@pytest.mark.parametrize(
    ("error", "code", "http", "fallback"),
    [
        (status(401), "provider_auth_failed", 502, True),
        (status(403), "provider_auth_failed", 502, True),
        (status(429), "provider_rate_limited", 503, True),
        (status(500), "provider_error", 502, True),
        (status(529), "provider_error", 502, True),
        (status(400), "provider_rejected_request", 422, False),
        (ProviderError("timeout", "t"), "provider_timeout", 504, True),
        (ProviderError("connection", "c"), "provider_unreachable", 502, True),
    ],
)
def test_failures_are_classified(error: ProviderError, code: str, http: int, fallback: bool) -> None:
    outcome = classify(error, "dep", 3)
    assert (outcome.error, outcome.status, outcome.fallback_worthy) == (code, http, fallback)


def test_a_rejected_request_is_not_the_deployments_fault() -> None:
    assert not classify(status(400), "dep", 1).counts_for_cooldown
    assert classify(status(500), "dep", 1).counts_for_cooldown


FAKE_KEY = "sk-ant-test-0123456789abcdefXYZ-secret"


def test_safe_detail_removes_the_configured_key_and_masked_echoes_of_it() -> None:
    echoed = f"invalid x-api-key {FAKE_KEY}; masked {FAKE_KEY[:8]}****{FAKE_KEY[-6:]}"
    detail = safe_detail(echoed, (FAKE_KEY,))
    assert FAKE_KEY not in detail
    assert FAKE_KEY[:8] not in detail
    assert FAKE_KEY[-6:] not in detail


def test_safe_detail_removes_key_shaped_strings_it_was_not_told_about() -> None:
    detail = safe_detail("Incorrect API key provided: sk-proj-AbCdEf123456789. See docs.")
    assert "AbCdEf123456789" not in detail
    assert "See docs." in detail


def test_safe_detail_is_short() -> None:
    assert len(safe_detail("prompt is too long " * 100)) <= 200
