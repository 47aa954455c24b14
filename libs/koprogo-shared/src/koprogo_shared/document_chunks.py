"""Long documents cut into pieces a model's context can hold: plain functions, no I/O.

Shared by the gateway (its MCP documents tool sends one chat request per piece) and the edge
node (its summary and translation grid tasks run the model once per piece). A document is
split on paragraphs; a paragraph larger than the budget is split on sentences, and a sentence
larger than the budget is cut hard. The budget is in characters: it sizes a prompt, it counts
nothing (token counts come from the tokenizer, never from here).
"""

from __future__ import annotations

import re

# Sizing only: few characters per token, so that French text under a small-vocabulary
# tokenizer still fits. A prompt sized with it stays under the context it was sized for.
CHARS_PER_TOKEN_FOR_SIZING = 2.5
MIN_CHUNK_CHARS = 200

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def chunk_budget_chars(context_tokens: int, reserved_tokens: int) -> int:
    """Characters of document one request may carry, once `reserved_tokens` (instructions, answer) are set aside."""
    free_tokens = max(context_tokens - reserved_tokens, 0)
    return max(int(free_tokens * CHARS_PER_TOKEN_FOR_SIZING), MIN_CHUNK_CHARS)


def split_document(text: str, max_chars: int) -> list[str]:
    """Consecutive pieces of `text`, each at most `max_chars`, cut on paragraphs where possible.

    Paragraphs are packed together while they fit; nothing but whitespace between pieces is lost.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    return _pack(split_paragraph_units(text, max_chars), max_chars, separator="\n\n")


def split_paragraph_units(text: str, max_chars: int) -> list[str]:
    """The paragraphs of `text` (stripped, empty ones dropped), each one larger than `max_chars`
    cut on sentences, then hard; not packed together, for callers that keep paragraphs apart."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    units: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if paragraph:
            units.extend(fit_paragraph(paragraph, max_chars))
    return units


def fit_paragraph(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph as pieces of at most `max_chars`: whole, else by sentences, else cut hard."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        sentence = sentence.strip()
        while len(sentence) > max_chars:
            pieces.append(sentence[:max_chars])
            sentence = sentence[max_chars:].lstrip()
        if sentence:
            pieces.append(sentence)
    return _pack(pieces, max_chars, separator=" ")


def _pack(units: list[str], max_chars: int, *, separator: str) -> list[str]:
    chunks: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current}{separator}{unit}" if current else unit
        if not current or len(candidate) <= max_chars:
            current = candidate
        else:
            chunks.append(current)
            current = unit
    if current:
        chunks.append(current)
    return chunks


def merge_rounds(partials: list[str], max_chars: int) -> list[str]:
    """Partial summaries grouped into inputs of at most `max_chars` for the next round of summaries."""
    units = [piece for p in partials if p.strip() for piece in fit_paragraph(p.strip(), max_chars)]
    return _pack(units, max_chars, separator="\n\n")
