"""CHAT_TIMEOUT_S is capped by the cloud workers' look-back for an earlier run's stored answer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from koprogo_gateway.settings import GatewaySettings
from koprogo_shared.chat_outcomes import ANSWER_LOOKBACK, CHAT_LIFETIME_MAX_S


@pytest.fixture(autouse=True)
def auth_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_DISABLED", "true")
    monkeypatch.delenv("CHAT_TIMEOUT_S", raising=False)


def test_a_chat_timeout_past_the_lifetime_stops_the_gateway_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHAT_TIMEOUT_S", str(CHAT_LIFETIME_MAX_S + 1))
    with pytest.raises(
        ValidationError, match=rf"chat_timeout_s\n.*less than or equal to {CHAT_LIFETIME_MAX_S}"
    ):
        GatewaySettings()


def test_the_longest_allowed_timeout_starts_and_the_look_back_covers_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHAT_TIMEOUT_S", str(CHAT_LIFETIME_MAX_S))
    settings = GatewaySettings()
    assert settings.chat_timeout_s == CHAT_LIFETIME_MAX_S
    # A minute of room for the routers' and nats-server's clocks to differ.
    assert ANSWER_LOOKBACK - timedelta(seconds=settings.chat_timeout_s) >= timedelta(minutes=1)
