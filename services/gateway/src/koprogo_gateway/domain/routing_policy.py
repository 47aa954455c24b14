"""Routing preferences as the gateway takes them in (strict) and shows a copro's stored policy.

A request's `routing` and a copro's policy share one shape, `RoutingPreference`; the router
merges them (a request may tighten its copro's policy, never loosen it). The gateway only
checks the shape, stores the copro's policy and passes the request's on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from koprogo_gateway.domain.errors import InvalidCoproIdError
from koprogo_shared.events import RoutingPolicyName, RoutingPreference
from koprogo_shared.subjects import routing_policy_key


class RoutingPreferenceIn(RoutingPreference):
    """A routing preference from an HTTP body: unknown fields and coerced values are errors."""

    # strict: `"max_latency_ms": "500"` or `"allow_fallback": "yes"` is refused, not coerced.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def as_preference(self) -> RoutingPreference:
        return RoutingPreference(**self.model_dump())


class CoproRoutingPolicyPublic(BaseModel):
    """A copro's routing policy; `is_default` when the copro has none and the deployment's applies."""

    copro_id: str
    policy: RoutingPolicyName | None
    max_latency_ms: int | None
    allow_fallback: bool | None
    is_default: bool

    @classmethod
    def of(cls, copro_id: str, stored: RoutingPreference | None) -> CoproRoutingPolicyPublic:
        preference = stored or RoutingPreference()
        return cls(copro_id=copro_id, **preference.model_dump(), is_default=stored is None)


def checked_copro_id(copro_id: str) -> str:
    """`copro_id` when it can name a routing policy; InvalidCoproIdError (422) otherwise."""
    try:
        routing_policy_key(copro_id)
    except ValueError as exc:
        raise InvalidCoproIdError(str(exc)) from None
    return copro_id
