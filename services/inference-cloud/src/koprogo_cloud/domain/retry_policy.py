"""When to call a provider again, and after how long.

Retried: timeouts, unreachable providers, and statuses 408, 409, 429 and 5xx. The delay
is the provider's Retry-After (seconds or an HTTP date) when it is sane, capped at
`MAX_RETRY_AFTER_S`; otherwise exponential back-off with (equal) jitter. No retry is
planned that would start past the work's deadline.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

from koprogo_cloud.domain.errors import ProviderError

RETRYABLE_STATUSES = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 30.0
MAX_BACKOFF_S = 10.0


def is_retryable(error: ProviderError) -> bool:
    if error.kind in ("timeout", "connection"):
        return True
    if error.kind == "status" and error.status is not None:
        return error.status in RETRYABLE_STATUSES or error.status >= 500
    return False


def parse_retry_after(
    retry_after: str | None, retry_after_ms: str | None = None, *, now: datetime
) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI), `retry-after` seconds or HTTP date; None if absent or insane."""
    if retry_after_ms:
        try:
            ms = float(retry_after_ms)
        except ValueError:
            ms = -1.0
        if 0 <= ms < 3_600_000:
            return ms / 1000.0
    if not retry_after:
        return None
    value = retry_after.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max((when - now).total_seconds(), 0.0)
    if seconds != seconds or seconds < 0 or seconds > 86_400:  # NaN, negative or absurd
        return None
    return seconds


def backoff_s(retry: int, base_s: float, jitter: float) -> float:
    """Exponential back-off with equal jitter (half fixed, half random) for the `retry`-th retry (1-based); `jitter` in [0, 1)."""
    ceiling = min(base_s * 2 ** (retry - 1), MAX_BACKOFF_S)
    return ceiling / 2 + ceiling / 2 * jitter


def retry_delay(
    error: ProviderError,
    retry: int,
    max_retries: int,
    *,
    base_s: float,
    jitter: float,
    remaining_s: float,
) -> float | None:
    """Seconds to wait before the `retry`-th retry (1-based), or None: do not retry.

    `remaining_s` is the time left before the work's deadline: a retry that could not
    start (and have a moment to answer) before it is not planned.
    """
    if retry > max_retries or not is_retryable(error):
        return None
    if error.retry_after_s is not None:
        delay = min(error.retry_after_s, MAX_RETRY_AFTER_S)
    else:
        delay = backoff_s(retry, base_s, jitter)
    if delay >= remaining_s:
        return None
    return delay
