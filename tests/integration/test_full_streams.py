"""A full stream refuses new messages and keeps every older one (issue 12, finding 7).

With `discard: old` a full KOPROGO_EVENTS dropped its oldest events to take new ones, whether the
ledger had projected them or not. Now the work and event streams (and the dead-letter stream)
refuse a message that does not fit: the publisher gets `StreamFullError`, the gateway's caller a
503 `bus_full`, and nothing already stored goes. Each test runs its own nats-server and makes a
stream tiny (as the admin may) to fill it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_gateway.adapters.chat_bus import NatsChatBus
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import BusFullError, BusUnavailableError
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.entrypoints.http.errors import install_error_handlers
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared import subjects
from koprogo_shared.events import ChatDelivered, ChatMessage, Event, RunInference, utc_now
from koprogo_shared.nats_connection import connect_nats, declare_streams, ensure_streams
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.publishing import StreamFullError, publish_event

pytestmark = pytest.mark.integration

COPRO = "copro-full"
MODEL = "smollm2:135m-instruct-q4"
TINY_BYTES = 4096


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of this module's own: its streams are shrunk to be filled."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-full"), port=free_port()).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def bus(own_nats: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    """Connected, with freshly declared streams."""
    nc, js = await connect_nats(own_nats, "full-streams")
    for spec in subjects.STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name)
    await ensure_streams(js)
    yield nc, js
    await nc.close()


async def shrink(js: JetStreamContext, stream: str, max_bytes: int = TINY_BYTES) -> None:
    info = await js.stream_info(stream)
    info.config.max_bytes = max_bytes
    await js.update_stream(info.config)


def delivered(i: int) -> ChatDelivered:
    return ChatDelivered(source="test", copro_id=COPRO, request_id=f"r-{i}", latency_ms=1.0)


def work(i: int) -> RunInference:
    return RunInference(
        source="test",
        copro_id=COPRO,
        request_id=f"r-{i}",
        model=MODEL,
        messages=[ChatMessage(role="user", content="Bonjour")],
        reply_subject="koprogo.reply.test",
        deadline=utc_now() + timedelta(minutes=1),
    )


STREAMS_UNDER_TEST: list[tuple[str, str, Callable[[int], Event]]] = [
    (subjects.EVENTS_STREAM, subjects.chat_delivered(COPRO), delivered),
    (subjects.WORK_STREAM, subjects.run_inference_edge(MODEL), work),
    # A dead letter keeps the event it could not handle, on `koprogo.deadletter.<subject>`.
    (subjects.DEADLETTER_STREAM, subjects.deadletter_for(subjects.chat_delivered(COPRO)), delivered),
]


async def fill(
    js: JetStreamContext, subject: str, make: Callable[[int], Event], limit: int = 500
) -> list[str]:
    """Publish until the stream refuses; the ids it took, in order. Fails when it never refuses."""
    taken: list[str] = []
    for i in range(limit):
        event = make(i)
        try:
            await publish_event(js, subject, event)
        except StreamFullError:
            return taken
        taken.append(event.id)
    pytest.fail(f"{limit} events published to a {TINY_BYTES}-byte stream and none refused")


async def ids_in(js: JetStreamContext, stream: str) -> list[str]:
    info = await js.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    return ids


@pytest.mark.parametrize(
    ("stream", "subject", "make"), STREAMS_UNDER_TEST, ids=["events", "work", "deadletter"]
)
async def test_a_full_stream_refuses_the_new_message_and_keeps_every_older_one(
    bus: tuple[NATS, JetStreamContext], stream: str, subject: str, make: Callable[[int], Event]
) -> None:
    _, js = bus
    await shrink(js, stream)

    taken = await fill(js, subject, make)

    assert len(taken) >= 3
    info = await js.stream_info(stream)
    assert info.state.first_seq == 1  # nothing dropped to make room
    assert await ids_in(js, stream) == taken
    with pytest.raises(StreamFullError) as refused:
        await publish_event(js, subject, make(10_000))
    assert "full" in str(refused.value) and stream in str(refused.value)
    assert await ids_in(js, stream) == taken  # still all there, still nothing more


async def test_the_setup_step_brings_a_stream_that_discarded_old_messages_to_refusing_new_ones(
    own_nats: str, bus: tuple[NATS, JetStreamContext]
) -> None:
    _, js = bus
    for spec in subjects.STREAMS:
        # As every earlier version declared them.
        info = await js.stream_info(spec.name)
        info.config.discard = js_api.DiscardPolicy.OLD
        await js.update_stream(info.config)
    await publish_event(js, subjects.chat_delivered(COPRO), delivered(1))

    await declare_streams(own_nats)

    for spec in subjects.STREAMS:
        assert (await js.stream_info(spec.name)).config.discard == js_api.DiscardPolicy.NEW, spec.name
    assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 1


def chat_service(chat_bus: NatsChatBus) -> ChatService:
    admission = ChatAdmission(
        limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
        input_limits=InputLimits(),
        copro_policy=RateLimitPolicy("copro", 100, 3600),
        user_policy=None,
    )
    return ChatService(bus=chat_bus, admission=admission, registry=NodeRegistry(), timeout_s=5.0)


async def test_a_full_event_log_is_the_callers_503_bus_full(bus: tuple[NATS, JetStreamContext]) -> None:
    nc, js = bus
    await shrink(js, subjects.EVENTS_STREAM)
    await fill(js, subjects.chat_delivered(COPRO), delivered)
    chat_bus = NatsChatBus(nc, js, subjects.gateway_reply("gw-full"))
    await chat_bus.start()
    chats = chat_service(chat_bus)
    resident = caller_from_claims("u1", [COPRO], frozenset({READ, WRITE}))
    body = ChatRequestIn.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}], "context": f"copro:{COPRO}"}
    )

    with pytest.raises(BusFullError) as refused:
        await chats.answer(resident, body)

    assert isinstance(refused.value, BusUnavailableError)  # still a 503 wherever those are handled
    assert (refused.value.status, refused.value.error) == (503, "bus_full")
    assert "full" in refused.value.message

    # As the HTTP surfaces write it.
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/mcp/v1/chat")
    async def chat() -> None:
        await chats.answer(resident, body)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        response = await client.post("/mcp/v1/chat")
    assert response.status_code == 503
    assert response.json()["error"] == "bus_full"
