"""A chat body's `routing` and `auto` model classes, as the gateway validates them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.model_classes import auto_classes, context_length_of, find_auto_class
from koprogo_shared.catalogue import AUTO_CLASSES, BUNDLED_MODEL_ID, find_model
from koprogo_shared.events import RoutingPreference


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "Bonjour"}], **fields}


def test_a_routing_preference_is_taken_and_handed_on_as_the_shared_event_shape() -> None:
    request = ChatRequestIn.model_validate(
        body(routing={"policy": "edge_only", "max_latency_ms": 3000, "allow_fallback": False})
    )
    assert request.routing is not None
    preference = request.routing.as_preference()
    assert type(preference) is RoutingPreference
    assert preference == RoutingPreference(policy="edge_only", max_latency_ms=3000, allow_fallback=False)
    assert ChatRequestIn.model_validate(body()).routing is None
    empty = ChatRequestIn.model_validate(body(routing={})).routing
    assert empty is not None and empty.as_preference() == RoutingPreference()


@pytest.mark.parametrize(
    "routing",
    [
        {"policy": "cheapest"},
        {"policy": "edge_only", "region": "eu"},
        {"max_latency_ms": "500"},
        {"max_latency_ms": 0},
        {"allow_fallback": "yes"},
        {"allow_fallback": 1},
        "edge_only",
    ],
)
def test_a_routing_preference_outside_the_contract_is_refused(routing: object) -> None:
    with pytest.raises(ValidationError):
        ChatRequestIn.model_validate(body(routing=routing))


def test_max_tokens_of_an_auto_class_must_fit_its_smallest_model() -> None:
    smallest = min(find_model(m).context_length for m in AUTO_CLASSES["auto:small"])  # type: ignore[union-attr]
    assert smallest == 2048  # phi-2 is in the small class
    ChatRequestIn.model_validate(body(model="auto:small", max_tokens=smallest))
    with pytest.raises(ValidationError, match=r"exceeds the context of auto:small \(2048\)"):
        ChatRequestIn.model_validate(body(model="auto:small", max_tokens=smallest + 1))
    ChatRequestIn.model_validate(body(model="auto:large", max_tokens=8192))
    with pytest.raises(ValidationError):
        ChatRequestIn.model_validate(body(model="auto:large", max_tokens=8193))


def test_an_unknown_model_is_left_to_the_router_whatever_its_max_tokens() -> None:
    assert context_length_of("llama9:1t") is None
    ChatRequestIn.model_validate(body(model="llama9:1t", max_tokens=100000))
    assert context_length_of(BUNDLED_MODEL_ID) == 8192


def test_every_auto_class_lists_as_a_model_of_its_catalogue_models() -> None:
    assert [c.id for c in auto_classes()] == list(AUTO_CLASSES)
    small = find_auto_class("auto:small")
    assert small is not None
    assert small.edge_compatible and small.context_length == 2048
    assert small.available({BUNDLED_MODEL_ID}) and not small.available({"gpt-4o"})
    assert find_auto_class("gpt-4o") is None
