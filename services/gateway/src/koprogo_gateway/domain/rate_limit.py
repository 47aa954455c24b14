"""Rate-limit arithmetic: fixed windows counted per key, as plain functions over plain data.

A policy lets each subject (a copro, a user) make `limit` requests per `window_s` seconds.
Time is cut into windows `[k*w, (k+1)*w)` of the wall clock; the counter of (policy,
subject, k) is one key of the store, so a window starts from zero without any reset job
and its key simply expires. A request is admitted when the counter it increments was below
the limit; how the increment stays exact across gateway replicas is the limiter's business
(`service_layer/rate_limits.py`), not this module's.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass

_PLAIN_SUBJECT = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """`limit` requests per `window_s` seconds for each subject; `name` is the quota partition."""

    name: str
    limit: int
    window_s: int

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window_s < 1:
            raise ValueError("a rate-limit policy needs limit >= 1 and window_s >= 1")
        if not _PLAIN_SUBJECT.match(self.name):
            raise ValueError("a policy name is letters, digits, '_' and '-'")


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    start: float
    end: float


def window_at(now: float, window_s: int) -> Window:
    """The fixed window holding the instant `now` (seconds since the epoch)."""
    index = math.floor(now / window_s)
    return Window(index=index, start=float(index * window_s), end=float((index + 1) * window_s))


def seconds_until_reset(now: float, window: Window) -> int:
    """Whole seconds until `window` ends, rounded up (at least 1).

    Rounding up never invites a client back before the window has turned, and the
    HTTP delay-seconds the result goes into are integers.
    """
    return max(1, math.ceil(window.end - now))


def subject_token(subject: str) -> str:
    """`subject` as one token of a store key, distinct subjects staying distinct.

    Ids made of letters, digits, `_` and `-` are kept readable; anything else (the empty
    id too) becomes `=` followed by its URL-safe base64 without padding, and no readable id
    starts with `=`.
    """
    if _PLAIN_SUBJECT.match(subject):
        return subject
    encoded = base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=")
    return f"={encoded}"


def counter_key(policy: RateLimitPolicy, subject: str, window: Window) -> str:
    """The store key counting `subject`'s requests under `policy` during `window`."""
    return f"{policy.name}.{subject_token(subject)}.{policy.window_s}s.{window.index}"


def admits(used_before: int, limit: int) -> bool:
    """A request fits when fewer than `limit` were counted before it in the window."""
    return used_before < limit


@dataclass(frozen=True, slots=True)
class PolicyUsage:
    """Where one policy stands after a request: `used` counts this request if it was admitted."""

    policy: RateLimitPolicy
    used: int
    reset_s: int

    @property
    def remaining(self) -> int:
        return max(0, self.policy.limit - self.used)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.policy.limit


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The limiter's answer for one request, with every policy it was counted against."""

    admitted: bool
    usages: tuple[PolicyUsage, ...] = ()

    @property
    def tightest(self) -> PolicyUsage | None:
        """The policy closest to refusing (fewest remaining; on a tie, the later reset)."""
        if not self.usages:
            return None
        return min(self.usages, key=lambda u: (u.remaining, -u.reset_s))

    @property
    def retry_after_s(self) -> int:
        """For a refused request: seconds until every policy that refused it has reset."""
        refusing = [u.reset_s for u in self.usages if u.exhausted]
        return max(refusing, default=1)
