"""Scopes and copro isolation: pure rules over a Caller."""

from __future__ import annotations

import pytest

from koprogo_gateway.domain.access import (
    ADMIN,
    OPEN_ACCESS,
    READ,
    WRITE,
    caller_from_claims,
    has_scope,
    parse_scopes,
    require_chat_copro,
    require_scope,
    require_user_data_access,
    stats_copros,
)
from koprogo_gateway.domain.errors import CoproNotFoundError, ForbiddenError, UserNotFoundError

RESIDENT = caller_from_claims("u1", ["copro-a", "copro-b"], frozenset({READ, WRITE}))
READER = caller_from_claims("u2", ["copro-a"], frozenset({READ}))
ADMIN_CALLER = caller_from_claims("ops", [], frozenset({ADMIN}))


def test_the_scope_claim_is_space_separated_and_anything_else_grants_nothing() -> None:
    assert parse_scopes("mcp:read  mcp:write") == {READ, WRITE}
    assert parse_scopes(["mcp:read"]) == frozenset()
    assert parse_scopes(None) == frozenset()


def test_a_reader_may_read_but_not_write() -> None:
    assert has_scope(READER, READ)
    with pytest.raises(ForbiddenError):
        require_scope(READER, WRITE)


def test_admin_implies_read_and_write() -> None:
    assert ADMIN_CALLER.is_admin
    assert has_scope(ADMIN_CALLER, READ) and has_scope(ADMIN_CALLER, WRITE)
    assert not RESIDENT.is_admin


def test_a_chat_goes_only_into_one_of_the_callers_copros() -> None:
    require_chat_copro(RESIDENT, "copro-b")
    require_chat_copro(RESIDENT, None)  # names no copro: touches no copro's data
    with pytest.raises(ForbiddenError):
        require_chat_copro(RESIDENT, "copro-z")
    require_chat_copro(ADMIN_CALLER, "copro-z")


def test_stats_cover_the_callers_copros_and_another_copro_is_not_found() -> None:
    assert stats_copros(RESIDENT, None) == ["copro-a", "copro-b"]
    assert stats_copros(RESIDENT, "copro-a") == ["copro-a"]
    with pytest.raises(CoproNotFoundError) as refused:
        stats_copros(RESIDENT, "copro-z")
    assert refused.value.status == 404


def test_a_caller_without_copros_sees_zero_figures_not_everything() -> None:
    assert stats_copros(caller_from_claims("lonely", [], frozenset({READ})), None) == []


def test_admins_and_an_open_gateway_see_every_copro() -> None:
    assert stats_copros(ADMIN_CALLER, None) is None
    assert stats_copros(ADMIN_CALLER, "copro-z") == ["copro-z"]
    assert stats_copros(OPEN_ACCESS, None) is None
    assert OPEN_ACCESS.user_id is None


def test_a_users_data_is_theirs_or_an_admins_and_never_an_open_gateways() -> None:
    require_user_data_access(RESIDENT, "u1")
    require_user_data_access(ADMIN_CALLER, "u1")
    require_user_data_access(ADMIN_CALLER, "anyone")
    with pytest.raises(UserNotFoundError) as other:
        require_user_data_access(READER, "u1")
    assert other.value.status == 404
    with pytest.raises(ForbiddenError, match="authentication is not configured") as open_gateway:
        require_user_data_access(OPEN_ACCESS, "u1")
    assert open_gateway.value.status == 403


def test_a_uuid_user_is_the_same_user_whatever_its_spelling() -> None:
    user = "550E8400-E29B-41D4-A716-446655440000"
    caller = caller_from_claims(user, [], frozenset({READ}))
    require_user_data_access(caller, user.lower())
    with pytest.raises(UserNotFoundError):
        require_user_data_access(caller, "11111111-2222-3333-4444-555555555555")
