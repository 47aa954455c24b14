"""The gateway's authentication settings: closed unless a verifier is configured or AUTH_DISABLED is explicit."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from koprogo_gateway.bootstrap import build_verifier
from koprogo_gateway.settings import GatewaySettings

STRONG = "s" * 32


@pytest.fixture(autouse=True)
def no_auth_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the variables it is about (the test session runs gateways with AUTH_DISABLED=true)."""
    for name in ("AUTH_DISABLED", "JWT_SECRET", "JWT_SECRET_FILE", "JWKS_URL", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_verifier_the_gateway_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=r"no token verifier.*AUTH_DISABLED=true"):
        GatewaySettings()
    monkeypatch.setenv("JWT_SECRET", "")  # an empty variable is no secret either
    monkeypatch.setenv("JWT_SECRET_FILE", "")
    with pytest.raises(ValidationError, match="no token verifier"):
        GatewaySettings()
    monkeypatch.setenv("AUTH_DISABLED", "false")
    with pytest.raises(ValidationError, match="no token verifier"):
        GatewaySettings()


def test_auth_disabled_is_the_one_way_to_start_without_a_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DISABLED", "true")
    settings = GatewaySettings()
    assert not settings.authentication_on
    assert settings.auth_status == "disabled"
    assert build_verifier(settings) is None


def test_auth_disabled_never_switches_a_configured_verifier_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DISABLED", "true")
    settings = GatewaySettings(jwt_secret=STRONG)
    assert settings.authentication_on and settings.auth_status == "on"
    assert build_verifier(settings) is not None


def test_production_refuses_auth_disabled_and_a_missing_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="needs JWT_SECRET_FILE or JWKS_URL"):
        GatewaySettings()
    monkeypatch.setenv("AUTH_DISABLED", "true")
    with pytest.raises(ValidationError, match="AUTH_DISABLED=true is refused in production"):
        GatewaySettings()


def test_the_secret_is_read_from_jwt_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(STRONG + "\n")  # the newline `echo` leaves is not part of the secret
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET_FILE", str(secret_file))
    settings = GatewaySettings()
    assert settings.authentication_on
    assert settings.jwt_secret is not None and settings.jwt_secret.get_secret_value() == STRONG
    assert STRONG not in repr(settings)


def test_an_unreadable_or_weak_secret_file_and_two_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot be read"):
        GatewaySettings(jwt_secret_file=tmp_path / "missing")
    weak = tmp_path / "weak"
    weak.write_text("changethis\n")
    with pytest.raises(ValidationError, match="placeholder or shorter than 32 bytes"):
        GatewaySettings(jwt_secret_file=weak)
    strong = tmp_path / "strong"
    strong.write_text(STRONG)
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings(jwt_secret_file=strong, jwt_secret=STRONG)
    with pytest.raises(ValidationError, match="not both"):
        GatewaySettings(jwt_secret_file=strong, jwks_url="https://id.example/jwks.json")


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
