"""A rate-limit decision as HTTP response fields.

Two generations of draft-ietf-httpapi-ratelimit-headers, because clients read both:

* `RateLimit-Policy` and `RateLimit` (draft-10): one item per policy the request was counted
  against, e.g. `"copro";q=1000;w=60` and `"copro";r=998;t=42`;
* `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (draft-06, what most client
  libraries parse today): the policy closest to refusing.

`t` and `RateLimit-Reset` are delay-seconds, as is `Retry-After` on a 429, and name the same
instant.
"""

from __future__ import annotations

from koprogo_gateway.domain.rate_limit import RateLimitDecision


def rate_limit_headers(decision: RateLimitDecision) -> dict[str, str]:
    tightest = decision.tightest
    if tightest is None:
        return {}  # not counted: no policy applies, or the store was down and the gateway fails open
    return {
        "RateLimit-Policy": ", ".join(
            f'"{u.policy.name}";q={u.policy.limit};w={u.policy.window_s}' for u in decision.usages
        ),
        "RateLimit": ", ".join(f'"{u.policy.name}";r={u.remaining};t={u.reset_s}' for u in decision.usages),
        "RateLimit-Limit": str(tightest.policy.limit),
        "RateLimit-Remaining": str(tightest.remaining),
        "RateLimit-Reset": str(tightest.reset_s),
    }


def refusal_headers(decision: RateLimitDecision) -> dict[str, str]:
    """The fields of a 429: the rate-limit fields, and `Retry-After` when every refusing policy has reset."""
    headers = rate_limit_headers(decision)
    headers["Retry-After"] = str(decision.retry_after_s)
    return headers
