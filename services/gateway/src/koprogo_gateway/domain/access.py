"""Who may do what: scopes and copro isolation, as plain functions over a `Caller`.

A token's `scope` claim is space-separated (`mcp:read mcp:write`); `mcp:admin` implies the
other two and sees every copro. A chat or a stats query names at most one copro (its
`context`), which must be one of the token's `copros` unless the caller is an admin. A chat
that names none runs for the token's only copro (`chat_copro`).

The grid's nodes (standing, balance, escrow) are an admin's to see, or their operator's: a
token's `nodes` claim (`koprogo token --node ID`) names the nodes it operates (`grid_nodes_of`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from koprogo_gateway.domain.copro_context import PREFIX, CoproId, copro_of_context
from koprogo_gateway.domain.errors import (
    CoproNotFoundError,
    ForbiddenError,
    GridNodeNotFoundError,
    InvalidChatRequestError,
    OtherBuildingError,
    UserNotFoundError,
)

READ = "mcp:read"
WRITE = "mcp:write"
ADMIN = "mcp:admin"
KNOWN_SCOPES = frozenset({READ, WRITE, ADMIN})


@dataclass(frozen=True)
class Caller:
    """Who is calling, from a verified token; `user_id` is None only when authentication is off."""

    user_id: str | None
    copros: frozenset[str]
    scopes: frozenset[str]
    is_admin: bool
    # The grid nodes this token's holder operates (claim `nodes`): their standing and balance.
    nodes: frozenset[str] = frozenset()


# With no verifier configured the gateway is open, as it was before tokens: everything, no user.
OPEN_ACCESS = Caller(user_id=None, copros=frozenset(), scopes=KNOWN_SCOPES, is_admin=True)


def parse_scopes(scope_claim: object) -> frozenset[str]:
    """The `scope` claim (space-separated) as a set; unknown scopes are kept but grant nothing."""
    if not isinstance(scope_claim, str):
        return frozenset()
    return frozenset(scope_claim.split())


def caller_from_claims(
    user_id: str, copros: Iterable[str], scopes: frozenset[str], nodes: Iterable[str] = ()
) -> Caller:
    return Caller(
        user_id=user_id,
        copros=frozenset(copros),
        scopes=scopes,
        is_admin=ADMIN in scopes,
        nodes=frozenset(nodes),
    )


def has_scope(caller: Caller, scope: str) -> bool:
    return caller.is_admin or scope in caller.scopes


def require_scope(caller: Caller, scope: str) -> None:
    """Raise `ForbiddenError` (403) when the caller's token does not grant `scope`."""
    if not has_scope(caller, scope):
        raise ForbiddenError(f"this token lacks the '{scope}' scope")


def require_chat_copro(caller: Caller, copro_id: str | None) -> None:
    """A chat may go into one of the caller's copros only (403 otherwise: no object is looked up).

    A chat that names no copro touches no copro's data and is allowed.
    """
    if copro_id is None or caller.is_admin or copro_id in caller.copros:
        return
    raise ForbiddenError("this token does not give access to that copro")


def require_building_copro(copro_id: CoproId | None, building_copro: CoproId | None) -> None:
    """At a building's gateway (`building_copro` set), a chat for its copro only (403 otherwise):
    the hub takes the building's copro's events alone (docs/building-offline.md)."""
    if building_copro is None or copro_id == building_copro:
        return
    raise OtherBuildingError(
        f"this building's gateway serves copro {building_copro} only; send "
        f"{'this copro' if copro_id else 'a chat without a copro'} to the hub's gateway"
    )


def chat_copro(caller: Caller, named: CoproId | None) -> CoproId | None:
    """The copro a chat runs for, whose routing policy, quota and figures apply to it.

    The one the request names, if the caller may chat there (403 otherwise); without one, the
    token's only copro, so that leaving `context` out never escapes a copro's `edge_only`, quota
    or statistics; a token naming several must say which (422); a token naming none (an
    operator's, or authentication off) runs with no copro. The OpenAI route's rule too
    (`openai_context`), before its request gets here.
    """
    if named is not None:
        require_chat_copro(caller, named)
        return named
    if len(caller.copros) > 1:
        raise InvalidChatRequestError(
            "your token names several copros: say which one this request is for "
            "('context': 'copro:<id>'; 'copro_id' in the MCP tools)"
        )
    for only in caller.copros:
        try:
            return copro_of_context(PREFIX + only)
        except ValueError as exc:
            raise InvalidChatRequestError(f"your token's copro: {exc}") from None
    return None


def stats_copros(caller: Caller, copro_id: str | None) -> list[str] | None:
    """The copros a stats query covers: None for every copro (admins), else a list (maybe empty).

    Another copro's figures are reported as not found (404), so their existence is not revealed.
    """
    if caller.is_admin:
        return None if copro_id is None else [copro_id]
    if copro_id is None:
        return sorted(caller.copros)
    if copro_id in caller.copros:
        return [copro_id]
    raise CoproNotFoundError("no statistics for that context")


def require_admin(caller: Caller) -> None:
    """Deployment-wide settings (a copro's routing policy, the node list) are an admin's (403 otherwise)."""
    if not caller.is_admin:
        raise ForbiddenError(f"this token lacks the '{ADMIN}' scope")


def require_copro_member(caller: Caller, copro_id: str) -> None:
    """A copro's own settings are readable by its residents and admins; to anyone else it does not exist (404)."""
    if caller.is_admin or copro_id in caller.copros:
        return
    raise CoproNotFoundError("no such copro")


def require_user_data_access(caller: Caller, user_id: str) -> None:
    """A user's stored data (GDPR export and erasure) is the user's own, or any user's for an admin.

    Refused with 403 when authentication is off (nobody is identified: an open gateway never
    exports or erases anyone's data); another user's data is a 404, its existence not revealed.
    """
    if caller.user_id is None:
        raise ForbiddenError("authentication is not configured")
    if caller.is_admin or _same_user(caller.user_id, user_id):
        return
    raise UserNotFoundError("no data for that user")


def _same_user(a: str, b: str) -> bool:
    """Equal ids; two UUIDs are equal whatever their spelling (case, braces, hyphens)."""
    if a == b:
        return True
    try:
        return uuid.UUID(a) == uuid.UUID(b)
    except ValueError:
        return False


def grid_nodes_of(caller: Caller) -> frozenset[str] | None:
    """The grid nodes whose standing and balance the caller may see: None for every node (admins),
    else the token's `nodes`; a token naming none is refused (403), whatever node it asks for."""
    if caller.is_admin:
        return None
    if caller.nodes:
        return caller.nodes
    raise ForbiddenError(
        "the grid's nodes are shown to admins and to each node's operator: this token names no node "
        "(an operator's token carries the claim 'nodes', e.g. `koprogo token --node ID`)"
    )


def require_grid_node(caller: Caller, node_id: str) -> None:
    """A node's balance and entries: an admin's or its operator's; to anyone else it does not exist (404)."""
    visible = grid_nodes_of(caller)
    if visible is not None and node_id not in visible:
        raise GridNodeNotFoundError(f"no grid node {node_id!r} among this token's nodes")
