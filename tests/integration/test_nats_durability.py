"""The stream setup step checks that the NATS it writes to fsyncs every write (or replicates),
reading the server's own configuration (issue 12, finding 8)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from koprogo_cli.embedded import wait_for_port
from koprogo_cli.embedded_nats import EmbeddedNats, nats_server_binary
from koprogo_cli.ports import free_port
from koprogo_shared.durability import Durability, DurabilityError, Finding, judge, observed, policy_from
from koprogo_shared.nats_connection import connect_nats, ensure_streams

pytestmark = pytest.mark.integration

# nats-server's defaults: JetStream fsyncs every two minutes.
DEFAULT_SYNC = """\
host: 127.0.0.1
port: {port}
http: "127.0.0.1:{monitor_port}"
jetstream {{ store_dir: "{store_dir}" }}
"""


@contextmanager
def server_with_default_sync(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port, monitor_port = free_port(), free_port()
    conf = tmp_path / "nats-server.conf"
    conf.write_text(DEFAULT_SYNC.format(port=port, monitor_port=monitor_port, store_dir=tmp_path / "js"))
    log = tmp_path / "nats-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], stdout=out, stderr=out)
    try:
        wait_for_port(port, proc, [log], timeout=20)
        yield f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor_port}"
    finally:
        proc.kill()
        proc.wait(10)


@asynccontextmanager
async def finding_of(url: str, monitor_url: str | None) -> AsyncIterator[Finding]:
    nc, js = await connect_nats(url, "durability-test")
    try:
        await ensure_streams(js)
        yield await observed(js, monitor_url)
    finally:
        await nc.close()


async def test_the_stacks_own_server_fsyncs_every_write_and_passes(tmp_path: Path) -> None:
    monitor_port = free_port()
    server = EmbeddedNats(tmp_path, port=free_port(), monitor_port=monitor_port).start()
    try:
        async with finding_of(server.url, f"http://127.0.0.1:{monitor_port}") as finding:
            judge(finding, policy_from({"NATS_DURABILITY": "refuse"}))
    finally:
        server.stop()
    assert finding.durability is Durability.SYNC_ALWAYS


async def test_a_server_that_fsyncs_every_two_minutes_is_refused_unless_the_operator_accepts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with server_with_default_sync(tmp_path) as (url, monitor_url):
        async with finding_of(url, monitor_url) as finding:
            pass
    assert finding.durability is Durability.LATE_FSYNC
    assert "every 120 s" in finding.detail
    with pytest.raises(DurabilityError, match="sync_interval: always"):
        judge(finding, policy_from({}))
    caplog.set_level(logging.WARNING, logger="koprogo_shared.durability")
    judge(finding, policy_from({"NATS_DURABILITY": "warn"}))
    assert "NATS MAY LOSE ACKNOWLEDGED EVENTS" in caplog.text


async def test_without_a_monitoring_url_it_cannot_be_known_and_is_said_loudly(
    clean_jetstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with finding_of(clean_jetstream, None) as finding:
        pass
    assert finding.durability is Durability.UNKNOWN and "NATS_MONITOR_URL" in finding.detail
    caplog.set_level(logging.WARNING, logger="koprogo_shared.durability")
    judge(finding, policy_from({}))
    assert "NATS MAY LOSE ACKNOWLEDGED EVENTS" in caplog.text
    with pytest.raises(DurabilityError):
        judge(finding, policy_from({"NATS_DURABILITY": "refuse"}))
    with pytest.raises(ValueError, match="refuse"):
        policy_from({"NATS_DURABILITY": "maybe"})


def test_three_replicas_are_durable_whatever_the_fsync() -> None:
    judge(Finding(Durability.REPLICATED, "KOPROGO_EVENTS has 3 replicas"), "refuse")


def test_koprogo_up_on_a_server_that_fsyncs_late_stops_before_starting_anything(tmp_path: Path) -> None:
    # With NATS_URL (a server of one's own) and its monitoring URL, `koprogo up` checks it first.
    with server_with_default_sync(tmp_path) as (url, monitor_url):
        env = {
            k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "NATS_DURABILITY")
        }
        env |= {"NATS_URL": url, "NATS_MONITOR_URL": monitor_url, "DATABASE_URL": "postgresql://unused"}
        up = subprocess.run(
            [
                sys.executable,
                "-m",
                "koprogo_cli.main",
                "up",
                "--no-demo",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert up.returncode != 0, up.stdout
    assert "NATS may lose acknowledged events" in up.stderr, up.stderr
    assert "fsyncs every 120 s" in up.stderr and "sync_interval: always" in up.stderr


def test_the_setup_step_refuses_a_server_that_fsyncs_late_and_passes_with_warn(tmp_path: Path) -> None:
    with server_with_default_sync(tmp_path) as (url, monitor_url):
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_NKEY_SEED_FILE", "NATS_DURABILITY")}
        env |= {"NATS_URL": url, "NATS_MONITOR_URL": monitor_url}

        def setup(**extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "koprogo_shared.nats_connection"],
                env=env | extra,
                capture_output=True,
                text=True,
                timeout=120,
            )

        refused, accepted = setup(), setup(NATS_DURABILITY="warn")
    assert refused.returncode == 1 and "NATS may lose acknowledged events" in refused.stderr, refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert "NATS MAY LOSE ACKNOWLEDGED EVENTS" in accepted.stderr
