"""The copro a request is for, as a typed value parsed once from its `context`.

`ChatRequestIn` refuses a malformed context when the body is validated (a 422 naming it); the
use cases parse it once more into a `CoproId` and pass that value on, so no later step reads
the string again.
"""

from __future__ import annotations

from typing import NewType

from koprogo_gateway.domain.copro_context import copro_of_context

# A copro id that passed `copro_of_context`'s rule (the rate-limit and routing-policy key rule).
CoproId = NewType("CoproId", str)


def copro_id_of(context: str | None) -> CoproId | None:
    """The copro `context` names, or None; ValueError for a malformed one."""
    copro_id = copro_of_context(context)
    return None if copro_id is None else CoproId(copro_id)
