"""The copro a chat runs for (issue 11, finding 6): the one its `context` names, or else the token's
only copro; a token naming several must say which; a token naming none runs with no copro.

The copro decides the routing policy the router applies, the quota counted and the figures the
ledger files the request under, so a member cannot leave `context` out to escape any of them.
"""

from __future__ import annotations

import time

import pytest

from koprogo_gateway.adapters.chat_bus import FakeChatBus
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.domain.access import ADMIN, READ, WRITE, caller_from_claims
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import ForbiddenError, InvalidChatRequestError, RateLimitedError
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatRequested, ExecutionInfo, Usage
from koprogo_shared.node_registry import NodeRegistry

COPRO = "copro-a"
OTHER = "copro-b"
MODEL = "smollm2:135m-instruct-q4"
MEMBER = caller_from_claims("u1", [COPRO], frozenset({READ, WRITE}))
MEMBER_OF_TWO = caller_from_claims("u2", [COPRO, OTHER], frozenset({READ, WRITE}))
OPERATOR = caller_from_claims("op", [], frozenset({ADMIN}))


def body(context: str | None = None, **extra: object) -> ChatRequestIn:
    fields: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}]}
    if context is not None:
        fields["context"] = context
    return ChatRequestIn.model_validate(fields | extra)


def completed(request: ChatRequested) -> ChatCompleted:
    return ChatCompleted(
        source="test",
        copro_id=request.copro_id,
        request_id=request.id,
        model=request.model,
        content="Bonjour !",
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id="pi-1", latency_ms=1.0, co2_grams=0.0, co2_saved_grams=0.0
        ),
    )


def service(bus: FakeChatBus, *, copro_limit: int = 100) -> ChatService:
    admission = ChatAdmission(
        limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
        input_limits=InputLimits(),
        copro_policy=RateLimitPolicy("copro", copro_limit, 3600),
        user_policy=None,
    )
    return ChatService(bus=bus, admission=admission, registry=NodeRegistry(), timeout_s=5.0)


def answering() -> FakeChatBus:
    return FakeChatBus(lambda r: (completed(r),))


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_one_copro_member_without_context_is_published_under_that_copro(streamed: bool) -> None:
    bus = answering()
    chats = service(bus)
    if streamed:
        stream = await chats.stream(MEMBER, body())
        pieces = [piece async for piece in stream.pieces]
        assert pieces
    else:
        await chats.answer(MEMBER, body())
    [(subject, request)] = [(s, e) for s, e in bus.published if isinstance(e, ChatRequested)]
    assert isinstance(request, ChatRequested)
    # The router reads the copro's policy from `copro_id`; the ledger files the figures under it.
    assert request.copro_id == COPRO
    assert subject == subjects.chat_requested(COPRO)


async def test_leaving_out_context_does_not_escape_the_copros_quota() -> None:
    bus = answering()
    chats = service(bus, copro_limit=1)
    await chats.answer(MEMBER, body(context=f"copro:{COPRO}"))
    with pytest.raises(RateLimitedError):
        await chats.answer(MEMBER, body())
    assert len(bus.events(ChatRequested)) == 1


async def test_a_member_of_several_copros_without_context_is_asked_which_and_nothing_is_counted() -> None:
    bus = answering()
    chats = service(bus, copro_limit=1)
    for attempt in (chats.answer(MEMBER_OF_TWO, body()), chats.stream(MEMBER_OF_TWO, body())):
        with pytest.raises(InvalidChatRequestError) as refused:
            await attempt
        assert refused.value.status == 422
        assert "several copros" in refused.value.message
    assert bus.published == []
    # Naming one works, and the refusals above used none of its quota.
    await chats.answer(MEMBER_OF_TWO, body(context=f"copro:{OTHER}"))
    assert [e.copro_id for e in bus.events(ChatRequested)] == [OTHER]


async def test_a_token_naming_no_copro_runs_with_none_and_a_named_one_is_kept() -> None:
    bus = answering()
    chats = service(bus)
    await chats.answer(OPERATOR, body())
    await chats.answer(OPERATOR, body(context=f"copro:{OTHER}"))
    assert [e.copro_id for e in bus.events(ChatRequested)] == [None, OTHER]


async def test_a_member_still_cannot_name_another_copro() -> None:
    bus = answering()
    with pytest.raises(ForbiddenError):
        await service(bus).answer(MEMBER, body(context=f"copro:{OTHER}"))
    assert bus.published == []


# A building's gateway (docs/building-offline.md): its copro's chats only, since the hub takes the
# building's copro's events alone; another copro's would be answered and never reach the hub.


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_buildings_gateway_refuses_another_copros_chat_before_counting_or_publishing(
    streamed: bool,
) -> None:
    bus = answering()
    chats = service(bus, copro_limit=1)
    chats.building_copro = CoproId(COPRO)
    for caller, context in ((MEMBER_OF_TWO, f"copro:{OTHER}"), (OPERATOR, None)):
        attempt = chats.stream(caller, body(context)) if streamed else chats.answer(caller, body(context))
        with pytest.raises(ForbiddenError) as refused:
            await attempt
        assert (refused.value.status, refused.value.error) == (403, "other_building")
        assert f"serves copro {COPRO} only" in refused.value.message
    assert bus.published == []
    # Its own copro's chat goes through, and the refusals used none of the quota.
    await chats.answer(MEMBER, body())
    assert [e.copro_id for e in bus.events(ChatRequested)] == [COPRO]
