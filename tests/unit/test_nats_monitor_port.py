"""`koprogo up`'s embedded nats-server serves /varz on loopback only when NATS_MONITOR_PORT asks."""

from __future__ import annotations

import pytest

from koprogo_cli.stack import StackError, nats_monitor_port


def test_monitoring_is_off_unless_a_port_is_given_and_a_bad_one_is_refused_by_name() -> None:
    assert nats_monitor_port({}) is None
    assert nats_monitor_port({"NATS_MONITOR_PORT": " "}) is None
    assert nats_monitor_port({"NATS_MONITOR_PORT": "8222"}) == 8222
    for bad in ("eighty", "0", "70000", "-1"):
        with pytest.raises(StackError, match="NATS_MONITOR_PORT"):
            nats_monitor_port({"NATS_MONITOR_PORT": bad})
