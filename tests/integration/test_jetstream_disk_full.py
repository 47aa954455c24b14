"""Disk full on the JetStream store (issue 12): a clear 503, nothing acknowledged lost, and what recovery takes.

A nats-server of the test's own keeps its store on a 4 MB tmpfs, fsyncing every write as the
shipped configuration does, with `max_file_store` far above the tmpfs so the filesystem's ENOSPC
is hit, not JetStream's own limit (that one is `test_full_streams.py`). A filler file takes the
space; `KOPROGO_EVENTS` takes events until a write fails.

What nats-server (v2.15) does then, as this test shows: the stream keeps the write error
("critical write error ... no space left on device") and refuses every later write with it,
without answering the publisher (the server answers no publish that failed on an I/O error), so
`publish_event` retries for PUBLISH_RETRY_S and raises a timeout, and the gateway's caller gets a
503 `bus_unavailable` after as long. JetStream is not disabled: other streams take writes once
there is room, reads work. Freeing the space does not mend the stream (its `/healthz` still
reports the write error): nats-server must be restarted. Killed (SIGKILL, nothing flushed) and
started on the same store, it has every acknowledged event intact, none of the unanswered ones,
and takes new ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import nats.errors
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_cli.embedded import tail_of, wait_for_port
from koprogo_cli.embedded_nats import nats_server_binary
from koprogo_cli.ports import free_port
from koprogo_gateway.adapters.chat_bus import NatsChatBus
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.entrypoints.http.errors import install_error_handlers
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared import subjects
from koprogo_shared.events import ChatDelivered
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.publishing import PUBLISH_RETRY_S, publish_event

pytestmark = pytest.mark.integration

COPRO = "copro-disk-full"
MODEL = "smollm2:135m-instruct-q4"
STORE_SIZE = "4m"
# What the filler leaves free: a few dozen events' worth.
HEADROOM = 48 * 1024
# How long one publish of the fill may take before the disk counts as full (a publish that
# is stored answers in milliseconds; one that is not is never answered).
UNANSWERED_S = 3.0

CONFIG = """\
host: 127.0.0.1
port: {port}
http: "127.0.0.1:{monitor_port}"
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
  # Far more than the tmpfs holds (and than the KOPROGO_* streams reserve), as on a real
  # server whose disk fills before JetStream's own limit.
  max_file_store: 20GB
}}
"""


@contextmanager
def small_disk(mount_point: Path) -> Iterator[Path]:
    """A STORE_SIZE tmpfs at `mount_point`, unmounted afterwards; fails (never skips) if refused."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={STORE_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a {STORE_SIZE} tmpfs at {mount_point} (needs root): {mounted.stderr}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


class StoreServer:
    """A nats-server whose JetStream store is `store_dir`; stopped and started on the same ports and store."""

    def __init__(self, base: Path, store_dir: Path) -> None:
        self.port, self.monitor_port = free_port(), free_port()
        self.conf = base / "nats-server.conf"
        self.conf.write_text(
            CONFIG.format(port=self.port, monitor_port=self.monitor_port, store_dir=store_dir)
        )
        self.log = base / "nats-server.log"  # off the small disk: it must not fill it
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([nats_server_binary(), "-c", str(self.conf)], stdout=out, stderr=out)
        wait_for_port(self.port, self.proc, [self.log], timeout=20)

    def kill(self) -> None:
        """SIGKILL: nothing is flushed on the way out, so what the restart finds is what was on disk."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def health(self) -> tuple[int, dict[str, object]]:
        """`/healthz`: its HTTP status and body."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@asynccontextmanager
async def connected(url: str, name: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc, js = await connect_nats(url, name)
    try:
        yield nc, js
    finally:
        await nc.close()


def delivered(tag: str, i: int) -> ChatDelivered:
    # About 1 KB each, so the headroom takes a few dozen.
    return ChatDelivered(
        source="disk-full-test", copro_id=COPRO, request_id=f"{tag}-{i}-" + "x" * 1000, latency_ms=1
    )


def fill_the_disk(store_dir: Path) -> Path:
    """Take all but HEADROOM bytes of the store's filesystem with a file; the file."""
    stat = os.statvfs(store_dir)
    filler = store_dir / "filler"
    with filler.open("wb") as out:
        out.write(b"\0" * (stat.f_bavail * stat.f_frsize - HEADROOM))
    return filler


def chat_service(chat_bus: NatsChatBus) -> ChatService:
    admission = ChatAdmission(
        limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
        input_limits=InputLimits(),
        copro_policy=RateLimitPolicy("copro", 100, 3600),
        user_policy=None,
    )
    return ChatService(bus=chat_bus, admission=admission, registry=NodeRegistry(), timeout_s=5.0)


async def chat_over_http(url: str) -> tuple[httpx.Response, float]:
    """One `POST /mcp/v1/chat` through a gateway of its own connection: the response and how long it took."""
    async with connected(url, "disk-full-gateway") as (nc, js):
        chat_bus = NatsChatBus(nc, js, subjects.gateway_reply("gw-disk-full"))
        await chat_bus.start()
        chats = chat_service(chat_bus)
        resident = caller_from_claims("u1", [COPRO], frozenset({READ, WRITE}))
        body = ChatRequestIn.model_validate(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Bonjour"}],
                "context": f"copro:{COPRO}",
            }
        )
        app = FastAPI()
        install_error_handlers(app)

        @app.post("/mcp/v1/chat")
        async def chat() -> None:
            await chats.answer(resident, body)

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as client:
            started = time.monotonic()
            response = await client.post("/mcp/v1/chat")
            took = time.monotonic() - started
    # The gateway records the refusal in the background (it cannot be stored either); its
    # connection is closed, so that publish gives up at once.
    await chats.settle()
    return response, took


async def test_a_full_disk_is_a_clear_503_loses_no_acknowledged_event_and_needs_a_restart(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "store") as store_dir:
        server = StoreServer(tmp_path, store_dir)
        server.start()
        try:
            async with connected(server.url, "disk-full-test") as (_, js):
                await ensure_streams(js)
                filler = fill_the_disk(store_dir)

                # Fill: every publish JetStream acknowledges, by sequence, until one is not answered.
                acked: dict[int, ChatDelivered] = {}
                for i in range(500):
                    event = delivered("acked", i)
                    try:
                        ack = await asyncio.wait_for(
                            publish_event(js, subjects.chat_delivered(COPRO), event), UNANSWERED_S
                        )
                    except TimeoutError:
                        break
                    acked[ack.seq] = event
                else:
                    pytest.fail(f"500 events of 1 KB stored with {HEADROOM} bytes free")
                assert len(acked) >= 3, "the disk was full before the first events"
                assert sorted(acked) == list(range(1, len(acked) + 1))

                # The publisher: no answer from the server, so retried for PUBLISH_RETRY_S, then
                # a timeout. The gateway's caller, at the same time: a 503, never a 500 or a hang.
                async def timed_publish() -> tuple[BaseException | None, float]:
                    started = time.monotonic()
                    try:
                        await publish_event(js, subjects.chat_delivered(COPRO), delivered("full", 0))
                    except Exception as exc:
                        return exc, time.monotonic() - started
                    return None, time.monotonic() - started

                (refusal, publish_took), (response, chat_took) = await asyncio.gather(
                    timed_publish(), chat_over_http(server.url)
                )
                assert isinstance(refusal, nats.errors.TimeoutError), repr(refusal)
                assert PUBLISH_RETRY_S <= publish_took < PUBLISH_RETRY_S + 3, publish_took
                assert response.status_code == 503, response.text
                assert PUBLISH_RETRY_S <= chat_took < PUBLISH_RETRY_S + 3, chat_took
                answer = response.json()
                assert answer["error"] == "bus_unavailable", answer
                confirmed_within = f"did not confirm the request within {PUBLISH_RETRY_S:g} s"
                assert confirmed_within in answer["message"], answer
                assert "full disk" in answer["message"], answer

                # The server knows: the stream's write error, in its log and its health. Only
                # that stream is broken: JetStream is not disabled.
                log = tail_of(server.log, 200)
                assert "KOPROGO_EVENTS' critical write error" in log and "no space left on device" in log, log
                assert "DISABLED" not in log, log
                status, health = server.health()
                assert status == 503, health
                assert "KOPROGO_EVENTS' write error" in str(health) and "no space left" in str(health), health

                # Room again: the stream still does not answer a publish (no retry would help),
                # while reads work and a stream that hit no error takes writes.
                filler.unlink()
                with pytest.raises(nats.errors.TimeoutError):
                    await js.publish(
                        subjects.chat_delivered(COPRO),
                        delivered("freed", 0).model_dump_json().encode(),
                        timeout=2,
                    )
                status, health = server.health()
                assert status == 503 and "no space left" in str(health), health
                for seq, event in acked.items():
                    assert (
                        await js.get_msg(subjects.EVENTS_STREAM, seq)
                    ).data == event.model_dump_json().encode()
                dead_letter = await publish_event(
                    js, subjects.deadletter_for(subjects.chat_delivered(COPRO)), delivered("other", 0)
                )
                assert dead_letter.stream == subjects.DEADLETTER_STREAM

            # What recovery takes: a restart, on the same store.
            server.kill()
            server.start()
            async with connected(server.url, "disk-full-test-after") as (_, js):
                status, health = server.health()
                assert status == 200, health
                info = await js.stream_info(subjects.EVENTS_STREAM)
                # Every acknowledged event, intact; none of the unanswered ones was stored.
                assert (info.state.first_seq, info.state.last_seq, info.state.messages) == (
                    1,
                    len(acked),
                    len(acked),
                )
                for seq, event in acked.items():
                    stored = await js.get_msg(subjects.EVENTS_STREAM, seq)
                    assert stored.data == event.model_dump_json().encode(), seq
                    assert (stored.headers or {}).get("Nats-Msg-Id") == event.id
                started = time.monotonic()
                ack = await publish_event(js, subjects.chat_delivered(COPRO), delivered("after", 0))
                assert ack.seq == len(acked) + 1 and time.monotonic() - started < 2
        finally:
            server.kill()
