"""`koprogo up`'s local authentication: one secret kept for good, a dev token, tokens on demand."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from koprogo_cli.dev_auth import (
    DEMO_COPRO_ID,
    DevAuthError,
    cli_token,
    dev_token_path,
    ensure_jwt_secret,
    jwt_secret_path,
    mint_local_token,
    operator_verifier_env,
    write_dev_token,
)
from koprogo_cli.stack import Stack, StackError
from koprogo_gateway.bootstrap import build_verifier
from koprogo_gateway.domain.access import KNOWN_SCOPES as GATEWAY_SCOPES
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared.local_tokens import KNOWN_SCOPES as MINTABLE_SCOPES


def test_the_local_secret_is_made_once_private_and_accepted_by_the_gateway(tmp_path: Path) -> None:
    first = ensure_jwt_secret(tmp_path, environ={})
    # The gateway is given the file, never the secret itself.
    assert first == {"JWT_SECRET_FILE": str(jwt_secret_path(tmp_path))}
    secret = jwt_secret_path(tmp_path).read_text()
    assert stat.S_IMODE(jwt_secret_path(tmp_path).stat().st_mode) == 0o600
    assert ensure_jwt_secret(tmp_path, environ={}) == first
    assert jwt_secret_path(tmp_path).read_text() == secret, "a restart keeps the secret"
    # The gateway's own validation (length, placeholders) accepts it, even in production.
    settings = GatewaySettings(jwt_secret_file=first["JWT_SECRET_FILE"], environment="production")
    assert settings.authentication_on


def test_koprogo_up_refuses_a_secret_in_the_environment_and_passes_an_operators_file_or_jwks() -> None:
    with pytest.raises(DevAuthError, match="JWT_SECRET_FILE"):
        operator_verifier_env({"JWT_SECRET": "s" * 48})
    assert operator_verifier_env({"JWT_SECRET_FILE": "/run/secret", "OTHER": "x"}) == {
        "JWT_SECRET_FILE": "/run/secret"
    }
    assert operator_verifier_env({"JWKS_URL": "https://id.example/jwks"}) == {
        "JWKS_URL": "https://id.example/jwks"
    }
    assert operator_verifier_env({}) == {}


def test_koprogo_up_with_jwt_secret_in_its_environment_stops_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", "s" * 48)
    stack = Stack(tmp_path / "data")
    with pytest.raises(StackError, match="set JWT_SECRET_FILE"):
        stack.start()
    assert stack.pids() == []
    assert not dev_token_path(tmp_path / "data").exists()


@pytest.mark.parametrize("variable", ["JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL"])
def test_an_operators_verifier_wins_and_no_local_secret_is_made(tmp_path: Path, variable: str) -> None:
    assert ensure_jwt_secret(tmp_path, environ={variable: "configured"}) == {}
    assert not jwt_secret_path(tmp_path).exists()


async def test_the_dev_token_reads_and_writes_the_demo_copro_only(tmp_path: Path) -> None:
    secret_file = ensure_jwt_secret(tmp_path, environ={})["JWT_SECRET_FILE"]
    token = write_dev_token(tmp_path)
    assert stat.S_IMODE(dev_token_path(tmp_path).stat().st_mode) == 0o600
    verifier = build_verifier(GatewaySettings(jwt_secret_file=secret_file))
    assert verifier is not None
    caller = await verifier.verify(token)
    assert caller.copros == frozenset({DEMO_COPRO_ID})
    assert caller.scopes == frozenset({"mcp:read", "mcp:write"})


async def test_minted_tokens_carry_what_was_asked_and_unknown_scopes_are_refused(tmp_path: Path) -> None:
    secret_file = ensure_jwt_secret(tmp_path, environ={})["JWT_SECRET_FILE"]
    token = mint_local_token(
        tmp_path, user="syndic-1", copros=["c1", "c2"], scopes=["mcp:admin"], ttl=timedelta(hours=1)
    )
    verifier = build_verifier(GatewaySettings(jwt_secret_file=secret_file))
    assert verifier is not None
    caller = await verifier.verify(token)
    assert (caller.user_id, caller.copros, caller.is_admin) == ("syndic-1", frozenset({"c1", "c2"}), True)
    with pytest.raises(ValueError, match="unknown scopes"):
        mint_local_token(tmp_path, user="u", copros=[], scopes=["mcp:root"], ttl=timedelta(hours=1))


def test_the_minter_knows_exactly_the_scopes_the_gateway_checks() -> None:
    # The minter lives in libs (the CLI imports no service); the two lists must not drift.
    assert MINTABLE_SCOPES == GATEWAY_SCOPES


def test_minting_without_a_local_secret_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(DevAuthError, match="koprogo up"):
        mint_local_token(tmp_path, user="u", copros=["c"], scopes=["mcp:read"], ttl=timedelta(hours=1))


def test_the_cli_prefers_koprogo_token_then_the_dev_token(tmp_path: Path) -> None:
    assert cli_token(tmp_path, environ={}) is None
    ensure_jwt_secret(tmp_path, environ={})
    token = write_dev_token(tmp_path)
    assert cli_token(tmp_path, environ={}) == token
    assert cli_token(tmp_path, environ={"KOPROGO_TOKEN": "explicit"}) == "explicit"
