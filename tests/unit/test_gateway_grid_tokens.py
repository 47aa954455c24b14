"""A token's `nodes` claim (`koprogo token --node ID`): read by the gateway's verifier into the
caller, refused when malformed, and what it lets its holder see of the grid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from koprogo_gateway.adapters.jwt_verifier import JwtVerifier
from koprogo_gateway.domain.access import ADMIN, READ, caller_from_claims, grid_nodes_of, require_grid_node
from koprogo_gateway.domain.errors import ForbiddenError, GridNodeNotFoundError, UnauthorizedError
from tests.token_support import AUDIENCE, ISSUER, SECRET

VERIFIER = JwtVerifier(issuer=ISSUER, audience=AUDIENCE, leeway_s=0, secret=SECRET)


def signed(**claims: object) -> str:
    now = datetime.now(UTC)
    base = {"sub": "olivia", "iss": ISSUER, "aud": AUDIENCE, "exp": now + timedelta(minutes=5), "scope": READ}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


async def test_a_tokens_nodes_claim_becomes_the_callers_nodes() -> None:
    caller = await VERIFIER.verify(signed(copros=["tilleuls"], nodes=["pi-cave", "pi-toit"]))
    assert caller.nodes == {"pi-cave", "pi-toit"}
    assert grid_nodes_of(caller) == {"pi-cave", "pi-toit"}
    assert (await VERIFIER.verify(signed())).nodes == frozenset()


@pytest.mark.parametrize("nodes", ["pi-cave", [1], [""], {"pi-cave": True}])
async def test_a_malformed_nodes_claim_is_refused(nodes: object) -> None:
    with pytest.raises(UnauthorizedError) as refused:
        await VERIFIER.verify(signed(nodes=nodes))
    assert "nodes" in refused.value.message


def test_admins_see_every_node_operators_theirs_and_others_none() -> None:
    admin = caller_from_claims("ops", [], frozenset({ADMIN}))
    operator = caller_from_claims("olivia", [], frozenset({READ}), nodes=["pi-cave"])
    member = caller_from_claims("alice", ["tilleuls"], frozenset({READ}))

    assert grid_nodes_of(admin) is None
    require_grid_node(admin, "anything")
    require_grid_node(operator, "pi-cave")
    with pytest.raises(GridNodeNotFoundError):
        require_grid_node(operator, "pi-grenier")
    with pytest.raises(ForbiddenError):
        grid_nodes_of(member)
