"""A context names a copro (`copro:<id>`) or nothing; a malformed one is refused, never "no copro"."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.domain.errors import InvalidChatRequestError
from koprogo_gateway.domain.openai_request import CONTEXT_HEADER, openai_context

COPRO = "550e8400-e29b-41d4-a716-446655440000"


def test_a_context_names_its_copro_or_nothing() -> None:
    assert copro_of_context(f"copro:{COPRO}") == COPRO
    assert copro_of_context(None) is None


@pytest.mark.parametrize(
    "context", [f"copr:{COPRO}", "copro:", "copro", "copro:a b", "building:12", f"Copro:{COPRO}"]
)
def test_a_malformed_context_is_an_error_naming_it(context: str) -> None:
    with pytest.raises(ValueError, match=repr(context).replace("(", r"\(")):
        copro_of_context(context)
    with pytest.raises(ValidationError, match="context"):
        ChatRequestIn.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "context": context}
        )
    with pytest.raises(InvalidChatRequestError, match=CONTEXT_HEADER):
        openai_context(context, set())


def test_the_openai_header_wins_over_the_tokens_copros_when_well_formed() -> None:
    assert openai_context(f" copro:{COPRO} ", {"other"}) == f"copro:{COPRO}"
    assert openai_context(None, {COPRO}) == f"copro:{COPRO}"
