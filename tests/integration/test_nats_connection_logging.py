"""A service closing its own NATS connection logs no warning; a lost server still does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_shared.nats_connection import connect_nats
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

LOGGER = "koprogo_shared.nats_connection"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_draining_the_connection_at_a_normal_stop_logs_no_warning(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    nc, _ = await connect_nats(nats_url, "router-stopping")
    await nc.subscribe("koprogo.test.drain")
    await nc.drain()
    assert nc.is_closed
    assert warnings_of(caplog) == []
    assert "nats connection closed (router-stopping)" in caplog.messages


async def test_closing_the_connection_logs_no_warning(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    nc, _ = await connect_nats(nats_url, "gateway-stopping")
    await nc.close()
    assert warnings_of(caplog) == []
    assert "nats connection closed (gateway-stopping)" in caplog.messages


async def test_losing_the_server_is_still_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A server of its own: this test stops it under a connected client.
    server = EmbeddedNats(tmp_path / "nats", port=free_port(), monitor_port=free_port()).start()
    nc, _ = await connect_nats(server.url, "ledger-losing")
    try:
        server.stop()
        lost = "nats disconnected (ledger-losing); reconnecting"
        await wait_until(lambda: lost in warnings_of(caplog), timeout=10)
    finally:
        server.stop()
        await nc.close()
