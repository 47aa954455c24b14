"""Use case: decide whether a request may go on: a chat before anything is published (`admit`),
any other authenticated request before its route runs (`admit_request`).

Both count against the same per-user counter (the seed's rule: 100 requests per minute per
user, every request); a chat counts against its copro's too.
"""

from __future__ import annotations

from dataclasses import dataclass

from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import InputTooLargeError, RateLimitedError
from koprogo_gateway.domain.input_limits import InputLimits, input_limit_violations
from koprogo_gateway.domain.rate_limit import RateLimitDecision, RateLimitPolicy
from koprogo_gateway.service_layer.rate_limit_headers import rate_limit_headers, refusal_headers
from koprogo_gateway.service_layer.rate_limits import Claims, RateLimiter


@dataclass
class ChatAdmission:
    limiter: RateLimiter
    input_limits: InputLimits
    copro_policy: RateLimitPolicy | None
    user_policy: RateLimitPolicy | None

    async def admit(
        self, body: ChatRequestIn, *, copro_id: CoproId | None, user_id: str | None = None
    ) -> RateLimitDecision:
        """Input limits first (422, counts nothing), then the rate limits of the user and the copro.

        The decision says whether the request was admitted; a refused one was counted nowhere.
        """
        violations = input_limit_violations(body.messages, self.input_limits)
        if violations:
            summary = "; ".join(f"{v.field}: {v.message}" for v in violations[:5])
            raise InputTooLargeError(
                f"invalid request: {summary}",
                extra={"details": [{"field": v.field, "message": v.message} for v in violations]},
            )
        return await self.limiter.admit(
            chat_claims(
                copro_policy=self.copro_policy,
                user_policy=self.user_policy,
                copro_id=copro_id,
                user_id=user_id,
            )
        )

    async def admit_request(self, user_id: str | None) -> dict[str, str]:
        """Count a request of any other route against its user's policy; its RateLimit fields.

        Raises RateLimitedError (429, with `Retry-After`) when the user's quota for the window
        is used up, RateLimitUnavailableError (503) when the store cannot decide. Nobody
        identified (authentication off) is counted nowhere.
        """
        decision = await self.limiter.admit(user_claims(self.user_policy, user_id))
        if not decision.admitted:
            raise RateLimitedError(refusal_message(decision), headers=refusal_headers(decision))
        return rate_limit_headers(decision)


def user_claims(user_policy: RateLimitPolicy | None, user_id: str | None) -> Claims:
    """What any request is counted against: its user, when a token names one and the policy is on."""
    if user_policy is None or user_id is None:
        return []
    return [(user_policy, user_id)]


def chat_claims(
    *,
    copro_policy: RateLimitPolicy | None,
    user_policy: RateLimitPolicy | None,
    copro_id: str | None,
    user_id: str | None,
) -> list[tuple[RateLimitPolicy, str]]:
    """What one chat request is counted against: its user (when a token names one), then its copro.

    `copro_id` is the copro the chat runs for (`chat_copro`: named, or the token's only one);
    chats that run for no copro share one counter (the empty copro id's).
    """
    claims = list(user_claims(user_policy, user_id))
    if copro_policy is not None:
        claims.append((copro_policy, copro_id or ""))
    return claims


def refusal_message(decision: RateLimitDecision) -> str:
    """What a refused request is told: which policies are exhausted, and when to retry."""
    refusing = [u for u in decision.usages if u.exhausted]
    names = " and ".join(
        f"{u.policy.limit} requests per {u.policy.window_s}s per {u.policy.name}" for u in refusing
    )
    return f"rate limit reached ({names}); retry in {decision.retry_after_s}s"
