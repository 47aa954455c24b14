"""Cutting long documents into pieces a model's context holds."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from koprogo_gateway.domain.charge_share import charge_share, parse_decimal
from koprogo_gateway.domain.document_chunks import EDGE_NODE_CONTEXT_TOKENS, prompt_context_tokens
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.document_chunks import (
    MIN_CHUNK_CHARS,
    chunk_budget_chars,
    merge_rounds,
    split_document,
    split_paragraph_units,
)

MINUTES = "\n\n".join(
    f"{n}. Point {n} de l'ordre du jour. " + "L'assemblée délibère et vote. " * (n * 3) for n in range(1, 9)
)


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_a_short_document_is_one_piece() -> None:
    assert split_document("Un seul paragraphe.\n\nEt un autre.", 1000) == [
        "Un seul paragraphe.\n\nEt un autre."
    ]


def test_pieces_respect_the_budget_and_lose_no_word() -> None:
    pieces = split_document(MINUTES, 300)
    assert len(pieces) > 3
    assert all(0 < len(p) <= 300 for p in pieces)
    assert _words(" ".join(pieces)) == _words(MINUTES)


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    paragraphs = ["A" * 40, "B" * 40, "C" * 40]
    pieces = split_document("\n\n".join(paragraphs), 90)
    assert pieces == ["A" * 40 + "\n\n" + "B" * 40, "C" * 40]


def test_a_paragraph_larger_than_the_budget_is_cut_on_sentences_then_hard() -> None:
    sentences = "Première phrase assez longue. Deuxième phrase assez longue. " + "x" * 130
    pieces = split_document(sentences, 45)
    assert pieces[:2] == ["Première phrase assez longue.", "Deuxième phrase assez longue."]
    assert all(len(p) <= 45 for p in pieces)
    assert "".join(pieces).replace(" ", "").endswith("x" * 130)


def test_paragraph_units_keep_each_paragraph_apart() -> None:
    text = "Court.\n\n\n  Deuxième.  \n\nPhrase une. Phrase deux est longue."
    assert split_paragraph_units(text, 20) == [
        "Court.",
        "Deuxième.",
        "Phrase une.",
        "Phrase deux est long",
        "ue.",
    ]


def test_an_empty_document_has_no_piece() -> None:
    assert split_document(" \n\n \n", 100) == []
    with pytest.raises(ValueError):
        split_document("texte", 0)


def test_the_budget_leaves_room_for_instructions_and_answer() -> None:
    assert chunk_budget_chars(2048, 448) < chunk_budget_chars(2048, 160)
    assert chunk_budget_chars(100, 500) == MIN_CHUNK_CHARS


def test_an_edge_model_is_sized_for_the_nodes_context_a_cloud_model_for_its_own() -> None:
    assert prompt_context_tokens(BUNDLED_MODEL_ID) == EDGE_NODE_CONTEXT_TOKENS
    assert prompt_context_tokens("auto") == EDGE_NODE_CONTEXT_TOKENS
    assert prompt_context_tokens("gpt-4o") == 128000
    assert prompt_context_tokens("unknown-model") == EDGE_NODE_CONTEXT_TOKENS


def test_partial_summaries_are_grouped_under_the_budget() -> None:
    groups = merge_rounds(["a" * 50, "b" * 50, "c" * 50, " "], 110)
    assert groups == ["a" * 50 + "\n\n" + "b" * 50, "c" * 50]
    assert all(len(g) <= 40 for g in merge_rounds(["d" * 100], 40))


def test_a_share_of_charges_follows_the_quotites() -> None:
    assert charge_share(parse_decimal("1 200,50 €"), parse_decimal("125"), Decimal(10000)) == Decimal("15.01")
    assert parse_decimal("1.234,56") == Decimal("1234.56")
    with pytest.raises(ValueError):
        charge_share(Decimal(100), Decimal(20), Decimal(10))
    with pytest.raises(ValueError):
        parse_decimal("beaucoup")
