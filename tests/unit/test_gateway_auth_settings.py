"""The gateway's authentication settings: on when configured, refused when unsafe."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from koprogo_gateway.bootstrap import build_verifier
from koprogo_gateway.settings import GatewaySettings

STRONG = "s" * 32


def test_without_a_verifier_authentication_is_off_in_development() -> None:
    settings = GatewaySettings()
    assert not settings.authentication_on
    assert build_verifier(settings) is None


def test_production_without_a_secret_or_jwks_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="needs JWT_SECRET or JWKS_URL"):
        GatewaySettings()
    monkeypatch.setenv("JWT_SECRET", "")  # an empty variable is no secret either
    with pytest.raises(ValidationError, match="needs JWT_SECRET or JWKS_URL"):
        GatewaySettings()


@pytest.mark.parametrize("secret", ["changethis", "short-secret", "s" * 31, "changeme"])
def test_a_placeholder_or_short_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValidationError, match="placeholder or shorter than 32 bytes"):
        GatewaySettings(jwt_secret=secret)
    with pytest.raises(ValidationError):
        GatewaySettings(jwt_secret=secret, environment="production")


def test_production_with_a_strong_secret_starts_with_authentication_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG)
    settings = GatewaySettings()
    assert settings.authentication_on
    assert build_verifier(settings) is not None
    assert STRONG not in repr(settings)  # the secret never shows in logs of the settings


def test_a_secret_and_a_jwks_url_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings(jwt_secret=STRONG, jwks_url="https://id.example/jwks.json")


def test_production_needs_an_https_jwks_url() -> None:
    with pytest.raises(ValidationError, match="https"):
        GatewaySettings(environment="production", jwks_url="http://id.example/jwks.json")
    assert GatewaySettings(
        environment="production", jwks_url="https://id.example/jwks.json"
    ).authentication_on
