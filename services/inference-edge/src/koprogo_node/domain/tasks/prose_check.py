"""Figures a model wrote, checked against the text it was given: pure functions, no I/O.

A small model rewrites `18 450 €` as `18 540 €` or dates a payment a month late, and nothing in
its prose says so. Two checks, on the figures (amounts, other numbers, dates, percentages) read
by `local_formats`, compared by value so that `10 324,50 €` and `€10,324.50` are the same:

- `unsupported_figures(prose, source)`: figures in a summary that the source does not hold;
- `missing_figures(source, translation)`: figures of a source that its translation lost.

Bare numbers under 100 in a summary are not checked: "3 ans" for "trois ans", or an item's
number, are not inventions, and a summary would otherwise be refused for them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal

from koprogo_node.domain.tasks.language import LANGUAGE_NAMES, Language, detect_language
from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates, parse_amount

FigureKind = Literal["money", "number", "date", "percent"]
# A summary shorter than this says nothing.
MIN_PROSE_CHARS = 40
# The same run of this many words, this many times: the model is looping.
REPEATED_WORDS = 5
REPEATS = 3
# Bare numbers below this are not checked in a summary (see the module docstring).
MIN_CHECKED_NUMBER = Decimal(100)

_PERCENT = re.compile(
    r"(?<![\w.,])(?P<n>\d+(?:[.,]\d+)?)\s?(?:%|pour ?cent\b|procent\b|percent\b|per cent\b)", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure as printed, and what it is worth."""

    text: str
    kind: FigureKind
    value: Decimal | date
    currency: str | None = None


def figures_in(text: str) -> list[Figure]:
    """Every amount, number, date and percentage in `text`, in reading order."""
    found: list[tuple[int, Figure]] = []
    percent_spans: list[tuple[int, int]] = []
    for match in _PERCENT.finditer(text):
        value = parse_amount(match.group("n"))
        if value is not None:
            percent_spans.append(match.span())
            found.append((match.start(), Figure(match.group(0), "percent", value)))
    for (start, end), value, currency in find_amounts(text):
        if any(start < p_end and p_start < end for p_start, p_end in percent_spans):
            continue
        kind: FigureKind = "number" if currency is None else "money"
        found.append((start, Figure(text[start:end], kind, value, currency)))
    for (start, end), day in find_dates(text):
        found.append((start, Figure(text[start:end], "date", day)))
    return [figure for _, figure in sorted(found, key=lambda item: item[0])]


class FigureIndex:
    """The figures a text holds, to tell whether another text's figure is one of them.

    Money must match an amount in value and currency; a bare number, any amount or number (or
    a day, month or year of a date); a date, a date; a percentage, a percentage. Bare numbers
    under `MIN_CHECKED_NUMBER` are taken as held (see the module docstring).
    """

    def __init__(self, text: str) -> None:
        held = figures_in(text)
        self._money = {(f.value, f.currency) for f in held if f.kind == "money"}
        self._numbers = {f.value for f in held if f.kind in ("money", "number")}
        self._dates = {f.value for f in held if f.kind == "date"}
        self._numbers |= {
            Decimal(part) for d in self._dates if isinstance(d, date) for part in (d.day, d.month, d.year)
        }
        self._percents = {f.value for f in held if f.kind == "percent"}

    def holds(self, figure: Figure) -> bool:
        if figure.kind == "money":
            return (figure.value, figure.currency) in self._money
        if figure.kind == "number":
            small = isinstance(figure.value, Decimal) and abs(figure.value) < MIN_CHECKED_NUMBER
            return small or figure.value in self._numbers
        if figure.kind == "date":
            return figure.value in self._dates
        return figure.value in self._percents


def unsupported_figures(prose: str, source: str) -> list[str]:
    """The figures of `prose` (as printed there) that `source` does not hold (`FigureIndex`)."""
    index = FigureIndex(source)
    return [figure.text for figure in figures_in(prose) if not index.holds(figure)]


def missing_figures(source: str, translation: str) -> list[str]:
    """The figures of `source` (as printed there) that `translation` lost, each counted as often
    as it occurs. Amounts and numbers are compared by value whatever their currency mark (a
    translation may write `EUR` for `€`), dates by date, percentages by value."""
    kept = Counter(_key(f) for f in figures_in(translation))
    missing: list[str] = []
    for figure in figures_in(source):
        key = _key(figure)
        if kept[key] > 0:
            kept[key] -= 1
        else:
            missing.append(figure.text)
    return missing


def _key(figure: Figure) -> tuple[str, Decimal | date]:
    kind = "number" if figure.kind == "money" else figure.kind
    return kind, figure.value


def prose_problems(prose: str, source: str, language: Language) -> list[str]:
    """Why a model's summary of `source` cannot be handed out (empty list: it can): too short,
    figures the source does not hold, another language than asked, or a loop."""
    problems: list[str] = []
    if len(prose.strip()) < MIN_PROSE_CHARS:
        problems.append(f"shorter than {MIN_PROSE_CHARS} characters")
        return problems
    if unsupported := unsupported_figures(prose, source):
        problems.append("figures not in the source: " + ", ".join(unsupported))
    written_in = detect_language(prose, default=language)
    if written_in != language:
        problems.append(f"written in {LANGUAGE_NAMES[written_in]}, not {LANGUAGE_NAMES[language]}")
    if repeats(prose):
        problems.append("repeats itself")
    return problems


def repeats(text: str) -> bool:
    """True when a run of `REPEATED_WORDS` words comes back `REPEATS` times (a model loop)."""
    words = re.findall(r"\w+", text.lower())
    runs = Counter(tuple(words[i : i + REPEATED_WORDS]) for i in range(len(words) - REPEATED_WORDS + 1))
    return any(count >= REPEATS for count in runs.values())
