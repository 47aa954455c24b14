"""The ledger as a service: its console script, its ops server, its shutdown, a database restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_cli.ports import free_port
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.publishing import publish_event
from tests.conftest import TEST_CONTENT_KEYS, postgres_dir, wait_until
from tests.integration.ledger_support import (
    chat_completed,
    chat_delivered,
    chat_requested,
    metric,
    running_ledger,
    subject_of,
)

pytestmark = pytest.mark.integration


async def test_postgres_restarting_holds_events_instead_of_dead_lettering_them(clean_jetstream: str) -> None:
    with postgres_dir() as folder:
        await _postgres_restart_holds_events(clean_jetstream, folder)


async def _postgres_restart_holds_events(clean_jetstream: str, tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg", port=free_port(), database="ledger")
    await asyncio.to_thread(postgres.start)
    try:
        request = chat_requested()
        later = [chat_completed(request), chat_delivered(request, latency_ms=2500.0)]
        held_before = metric("koprogo_ledger_event_failures_total", kind="unavailable")
        # max_deliver=2: were the outage spending deliveries, these events would be dead-lettered.
        async with running_ledger(postgres.url, clean_jetstream, ledger_max_deliver=2) as ledger:
            await ledger.publish(request)
            await wait_until(lambda: ledger.applied(request.id))
            await ledger.db.close()  # the test's own pool; the ledger's is what is under test
            await asyncio.to_thread(postgres.stop)
            for event in later:
                await ledger.publish(event)
            await wait_until(
                lambda: metric("koprogo_ledger_event_failures_total", kind="unavailable") >= held_before + 3,
                timeout=30,
            )
            await asyncio.to_thread(postgres.start)
            ledger.db = await create_pool(postgres.url, max_size=2)
            await wait_until(lambda: ledger.applied(*(e.id for e in later)), timeout=30)
            await wait_until(ledger.settled)
            latency = await ledger.db.fetchval("SELECT latency_ms FROM mcp_responses")
            assert await ledger.dead_letters() == []
        assert latency == 2500.0
    finally:
        await asyncio.to_thread(postgres.stop)


async def test_the_console_script_serves_ops_and_stops_cleanly_on_sigterm(
    database_url: str, clean_jetstream: str, tmp_path: Path
) -> None:
    port = free_port()
    script = Path(sys.executable).parent / "koprogo-ledger"
    env = {
        **os.environ,
        **TEST_CONTENT_KEYS,
        "DATABASE_URL": database_url,
        "NATS_URL": clean_jetstream,
        "OPS_PORT": str(port),
    }
    log_path = tmp_path / "ledger.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(str(script), env=env, stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(ready, timeout=30)
            assert (await client.get("/health")).json() == {"status": "ok"}
            nc, js = await connect_nats(clean_jetstream, "ledger-tests")
            try:
                await ensure_streams(js)
                request = chat_requested()
                await publish_event(js, subject_of(request), request)
            finally:
                await nc.close()
            await wait_until(lambda: _metric_seen(client, request.type), timeout=15)
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(proc.wait(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = log_path.read_text()
    assert returncode == 0, output
    assert "stopped" in output


async def _metric_seen(client: httpx.AsyncClient, event_type: str) -> bool:
    text = (await client.get("/metrics")).text
    return f'koprogo_ledger_events_total{{outcome="applied",type="{event_type}"}} 1.0' in text
