"""`koprogo up`'s embedded nats-server serves /varz on loopback only when NATS_MONITOR_PORT asks, and its
profiler only when NATS_PROF_PORT does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_cli.stack import StackError, nats_monitor_port, nats_prof_port


def test_monitoring_is_off_unless_a_port_is_given_and_a_bad_one_is_refused_by_name() -> None:
    assert nats_monitor_port({}) is None
    assert nats_monitor_port({"NATS_MONITOR_PORT": " "}) is None
    assert nats_monitor_port({"NATS_MONITOR_PORT": "8222"}) == 8222
    for bad in ("eighty", "0", "70000", "-1"):
        with pytest.raises(StackError, match="NATS_MONITOR_PORT"):
            nats_monitor_port({"NATS_MONITOR_PORT": bad})


def test_the_profiler_is_off_unless_a_port_is_given_and_refused_on_the_network() -> None:
    assert nats_prof_port({}, lan=False) is None
    assert nats_prof_port({"NATS_PROF_PORT": "6060"}, lan=False) == 6060
    with pytest.raises(StackError, match="NATS_PROF_PORT must be a port number"):
        nats_prof_port({"NATS_PROF_PORT": "pprof"}, lan=False)
    with pytest.raises(StackError, match="refused with --lan"):
        nats_prof_port({"NATS_PROF_PORT": "6060"}, lan=True)
    assert nats_prof_port({}, lan=True) is None


def test_the_embedded_server_serves_its_profiler_on_loopback_when_asked(tmp_path: Path) -> None:
    port, prof = free_port(), free_port()
    nats = EmbeddedNats(tmp_path / "nats", port=port, prof_port=prof).start()
    try:
        heap = httpx.get(f"http://127.0.0.1:{prof}/debug/pprof/heap?debug=1", timeout=10)
        assert heap.status_code == 200 and heap.text.startswith("heap profile:")
    finally:
        nats.stop()
