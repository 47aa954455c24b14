"""Summaries and translations of long documents, one chat request per piece the model can hold.

A summary summarises each piece, then summarises the summaries (in rounds, while they do not
fit one request); a translation translates each piece in order and joins them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from koprogo_gateway.domain.document_chunks import (
    chunk_budget_chars,
    merge_rounds,
    prompt_context_tokens,
    split_document,
)
from koprogo_gateway.entrypoints.mcp.backend import KoproGoBackend

TargetLanguage = Literal["fr", "nl", "en"]
LANGUAGE_NAMES = {"fr": "français", "nl": "néerlandais", "en": "anglais", "de": "allemand"}
# Instructions, roles and template tokens of one request, on top of the document piece.
INSTRUCTION_TOKENS = 160
# A summary of summaries may not shrink forever: stop after this many rounds.
MAX_MERGE_ROUNDS = 4

SUMMARY_SYSTEM = (
    "Tu es l'assistant d'une copropriété. Tu résumes des procès-verbaux d'assemblée générale "
    "de façon fidèle et concise : décisions prises, votes, montants, échéances, points reportés. "
    "N'invente rien. Réponds en {language}."
)
MERGE_SYSTEM = (
    "Tu es l'assistant d'une copropriété. Voici les résumés successifs des parties d'un même "
    "procès-verbal. Fusionne-les en un seul résumé fidèle et concis, sans répétition. "
    "Réponds en {language}."
)
TRANSLATE_SYSTEM = (
    "Tu es traducteur pour une copropriété belge. Traduis fidèlement le texte fourni en {language}, "
    "en gardant la mise en forme, les montants et les noms propres. Réponds uniquement par la traduction."
)


@dataclass
class DocumentRun:
    """What a document tool did: its text, and how many pieces and requests it took."""

    text: str
    model: str
    chunks: int
    requests: int


async def _ask(
    backend: KoproGoBackend,
    *,
    model: str,
    system: str,
    text: str,
    copro_id: str | None,
    max_tokens: int,
) -> tuple[str, str]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.2,
    }
    if copro_id:
        body["context"] = f"copro:{copro_id}"
    answer = await backend.chat(body)
    return str(answer["content"]).strip(), str(answer["model"])


def piece_budget(model: str, max_tokens: int) -> int:
    """Characters of document per request for `model` when `max_tokens` are kept for the answer."""
    return chunk_budget_chars(prompt_context_tokens(model), INSTRUCTION_TOKENS + max_tokens)


async def summarize(
    backend: KoproGoBackend,
    text: str,
    *,
    language: str,
    model: str,
    copro_id: str | None,
    max_tokens: int,
) -> DocumentRun:
    name = LANGUAGE_NAMES.get(language, language)
    budget = piece_budget(model, max_tokens)
    pieces = split_document(text, budget)
    if not pieces:
        raise ValueError("the document is empty")
    requests = 0
    used_model = model
    partials: list[str] = []
    for piece in pieces:
        summary, used_model = await _ask(
            backend,
            model=model,
            system=SUMMARY_SYSTEM.format(language=name),
            text=piece,
            copro_id=copro_id,
            max_tokens=max_tokens,
        )
        requests += 1
        partials.append(summary)
    rounds = 0
    while len(partials) > 1 and rounds < MAX_MERGE_ROUNDS:
        rounds += 1
        merged: list[str] = []
        for group in merge_rounds(partials, budget):
            summary, used_model = await _ask(
                backend,
                model=model,
                system=MERGE_SYSTEM.format(language=name),
                text=group,
                copro_id=copro_id,
                max_tokens=max_tokens,
            )
            requests += 1
            merged.append(summary)
        partials = merged
    return DocumentRun("\n\n".join(partials), used_model, len(pieces), requests)


async def translate(
    backend: KoproGoBackend,
    text: str,
    *,
    target_language: TargetLanguage,
    model: str,
    copro_id: str | None,
    max_tokens: int,
) -> DocumentRun:
    # A translation is about as long as its source: a piece gets as many characters as the answer may hold.
    budget = min(piece_budget(model, max_tokens), chunk_budget_chars(max_tokens, 0))
    pieces = split_document(text, budget)
    if not pieces:
        raise ValueError("the document is empty")
    translated: list[str] = []
    used_model = model
    for piece in pieces:
        part, used_model = await _ask(
            backend,
            model=model,
            system=TRANSLATE_SYSTEM.format(language=LANGUAGE_NAMES[target_language]),
            text=piece,
            copro_id=copro_id,
            max_tokens=max_tokens,
        )
        translated.append(part)
    return DocumentRun("\n\n".join(translated), used_model, len(pieces), len(pieces))
