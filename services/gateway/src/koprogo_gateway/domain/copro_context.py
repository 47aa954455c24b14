"""A request's `context` names its copro: `copro:<id>`, or nothing. Anything else is refused.

A typo such as `copr:123` used to read as "no copro": no membership check and the shared
rate-limit counter. It is now an error naming the value, wherever a context arrives (the
chat body, the stats query, the OpenAI route's `X-KoproGo-Context` header). Pure rules.
"""

from __future__ import annotations

from typing import NewType

from koprogo_shared.subjects import routing_policy_key

PREFIX = "copro:"

# A copro id that passed `copro_of_context`'s rule (the rate-limit and routing-policy key rule):
# parsed once where a context arrives, then passed on as this value, never read again as text.
CoproId = NewType("CoproId", str)


def copro_of_context(context: str | None) -> CoproId | None:
    """The copro id `context` names (None for no context); ValueError naming a malformed one."""
    if context is None:
        return None
    if not context.startswith(PREFIX):
        raise ValueError(f"context {context!r} must be 'copro:<id>'")
    try:
        # The same rule as everywhere a copro id becomes a key (rate limits, routing policies).
        return CoproId(routing_policy_key(context.removeprefix(PREFIX)))
    except ValueError as exc:
        raise ValueError(f"context {context!r}: {exc}") from None
