"""Comparators: a task result reduced to an agreement key; replicas with equal keys agree. Pure.

`agreement_key(task_type, result)` is the sha256 (hex) of the canonical JSON
(`grid_signing.digest`) of the result normalised for its task type (docs/grid-trust.md):

    ocr_invoice         the fields' values only (no confidence, source, missing, checks, pages):
                        amounts and the VAT rate to cents, dates ISO, IBAN and VAT ids without
                        spaces, dots or hyphens and upper-cased, other text NFKC + casefold +
                        whitespace collapsed; a field absent, null or empty is the same
    predict_expenses    each category's and the total's forecast points: months as given, every
                        other number to cents; the model's name, the method and the history's
                        size are left out (descriptions, not the forecast)
    summarize_meeting   the summary after whitespace normalisation, the extracted parts exactly
                        (language, meeting date, items, decisions, no_vote, amounts, dates,
                        summary_source) and the model file's `model_sha256`; left out:
                        `summary_rejected` and `model_calls` (diagnostics of the tries)
    translate_document  the text after whitespace normalisation, the languages, `paragraphs`,
                        `numbers_missing`, `paragraphs_in_source_language` and `model_sha256`;
                        left out: `model_calls` (it depends on the context length configured)

A result is a node's untrusted word: any shape is reduced without raising. A value that cannot
be read as its field's type is kept as its plain JSON form under "unparsed" (so it agrees only
with the same odd value); structures deeper than `MAX_DEPTH`, cyclic, or larger than
`MAX_NODES` values are cut at that point with a marker (only other such garbage can share it).
An unknown task type is a ValueError (the caller's bug, not the node's).

Cents: `Decimal(repr(float))` quantised half-even, so 1512.5, "1512.50" and "1 512,50" agree.
Forecasts are rounded to cents by the node already; a value whose last float bits fall on a
half cent on one machine and not on another would make two honest replicas disagree (another
replica is asked), never two different forecasts agree.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from koprogo_shared.grid_signing import digest

MAX_DEPTH = 64
MAX_NODES = 1_000_000
CENT = Decimal("0.01")

AMOUNT_FIELDS = frozenset({"total_excl_vat", "vat", "total_incl_vat", "vat_rate"})
DATE_FIELDS = frozenset({"issue_date", "due_date"})
IDENTIFIER_FIELDS = frozenset({"iban", "supplier_vat_id"})

SUMMARY_PARTS = (
    "language",
    "meeting_date",
    "summary_source",
    "items",
    "decisions",
    "no_vote",
    "amounts",
    "dates",
)
TRANSLATION_PARTS = (
    "source_language",
    "target_language",
    "paragraphs",
    "numbers_missing",
    "paragraphs_in_source_language",
)

_TOO_DEEP = "<nested deeper than the comparator reads>"
_CYCLE = "<cycle>"
_TOO_MANY = "<more values than the comparator reads>"
_MONEY_MARKS = re.compile(r"€|\bEUR\b", re.IGNORECASE)
_GROUPING = re.compile("[\\s'\u2019]")
_NUMBER = re.compile(r"([+-]?)([0-9][0-9.,]*)")
_DAY_FIRST = re.compile(r"(\d{1,2})[./-](\d{1,2})[./-](\d{4})")
_IDENTIFIER_SEPARATORS = re.compile(r"[\s.\-]")
_BLANK_LINES = re.compile(r"\n{3,}")


def agreement_key(task_type: str, result: Mapping[str, Any]) -> str:
    """The digest replicas of a `task_type` task agree on when their results mean the same."""
    normalise = _NORMALISERS.get(task_type)
    if normalise is None:
        raise ValueError(f"no comparator for task type {task_type!r}")
    normalised = normalise(result) if isinstance(result, Mapping) else _unparsed(result)
    # A last pass makes every string encodable and every key a string, whatever got through.
    return digest(_Plain()({"task_type": task_type, "result": normalised}))


class _Plain:
    """A value as plain JSON data (dict with str keys, list, str, int, float, bool, None)."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, value: Any, depth: int = 0, path: frozenset[int] = frozenset()) -> Any:
        self.seen += 1
        if self.seen > MAX_NODES:
            return _TOO_MANY
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            # Beyond Python's int-to-str limit, hex has none; such a number is garbage anyway.
            return value if abs(value) < 10**300 else f"int:{value:x}"
        if isinstance(value, str):
            return _encodable(value)
        if isinstance(value, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                return _TOO_DEEP
            if id(value) in path:
                return _CYCLE
            inner = path | {id(value)}
            if isinstance(value, Mapping):
                return {_encodable(str(k)): self(v, depth + 1, inner) for k, v in value.items()}
            return [self(v, depth + 1, inner) for v in value]
        return f"{type(value).__name__}:{_encodable(str(value))}"


def _encodable(text: str) -> str:
    # A lone surrogate (valid in a Python str, not in UTF-8) would make the JSON unencodable.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unparsed(value: Any) -> dict[str, Any]:
    return {"unparsed": _Plain()(value)}


# ---- ocr_invoice ----------------------------------------------------------------------------


def _invoice(result: Mapping[str, Any]) -> Any:
    fields = result.get("fields")
    if fields is None:
        return {"fields": {}}
    if not isinstance(fields, Mapping):
        return {"fields": _unparsed(fields)}
    values: dict[str, Any] = {}
    for name, entry in fields.items():
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # absent, null and empty are the same
        values[str(name)] = _field_value(str(name), value)
    return {"fields": values}


def _field_value(name: str, value: Any) -> Any:
    if name in AMOUNT_FIELDS:
        cents = _cents(value)
        return cents if cents is not None else _unparsed(value)
    if name in DATE_FIELDS:
        iso = _iso_date(value)
        return iso if iso is not None else _text(value)
    if name in IDENTIFIER_FIELDS and isinstance(value, str):
        return _IDENTIFIER_SEPARATORS.sub("", unicodedata.normalize("NFKC", value)).upper()
    return _text(value)


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        return _unparsed(value)
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _cents(value: Any) -> str | None:
    """An amount as a string of euros and cents ("1512.50"); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        text: str | None = repr(value)
    elif isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else None
    elif isinstance(value, str):
        text = _money_text(value)
    else:
        return None
    try:
        amount = Decimal(text) if text is not None else None
        if amount is None or not amount.is_finite():
            return None
        cents = amount.quantize(CENT, rounding=ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError):
        return None
    return str(abs(cents) if cents == 0 else cents)


def _money_text(text: str) -> str | None:
    """A printed amount as a plain decimal: "1 512,50 €", "1.512,50", "1,512.50" -> "1512.50".

    As the node reads amounts: the last of two different separators is the decimal one; a lone
    separator followed by exactly three digits groups thousands; repeated ones group thousands.
    """
    cleaned = _GROUPING.sub("", _MONEY_MARKS.sub("", unicodedata.normalize("NFKC", text)))
    match = _NUMBER.fullmatch(cleaned)
    if match is None:
        return None
    sign, digits = match.groups()
    separators = {c for c in digits if c in ".,"}
    if len(separators) == 2:
        cut = max(digits.rfind(","), digits.rfind("."))
        whole, fraction = digits[:cut], digits[cut + 1 :]
        groups = whole.replace(",", ".").split(".")
        if not fraction.isdigit() or any(len(g) != 3 for g in groups[1:]):
            return None
        return f"{sign}{''.join(groups)}.{fraction}"
    if len(separators) == 1:
        (separator,) = separators
        parts = digits.split(separator)
        if len(parts) > 2 or len(parts[1]) == 3:
            if not parts[0] or any(len(p) != 3 for p in parts[1:]):
                return None
            return sign + "".join(parts)
        return f"{sign}{parts[0]}.{parts[1]}" if parts[1] else None
    return sign + digits


def _iso_date(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    for parse in (date.fromisoformat, lambda t: datetime.fromisoformat(t).date()):
        try:
            return parse(text).isoformat()
        except ValueError:
            pass
    match = _DAY_FIRST.fullmatch(text)
    if match is None:
        return None
    day, month, year = (int(g) for g in match.groups())
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


# ---- predict_expenses -----------------------------------------------------------------------


def _forecast(result: Mapping[str, Any]) -> Any:
    categories = result.get("categories")
    if isinstance(categories, Mapping):
        by_category: Any = {
            str(name): _points(entry.get("forecast") if isinstance(entry, Mapping) else entry)
            for name, entry in categories.items()
        }
    else:
        by_category = _unparsed(categories)
    return {"categories": by_category, "total": _points(result.get("total"))}


def _points(points: Any) -> Any:
    if not isinstance(points, list):
        return _unparsed(points)
    return [_point(point) for point in points]


def _point(point: Any) -> Any:
    if not isinstance(point, Mapping):
        return _unparsed(point)
    normalised: dict[str, Any] = {}
    for key, value in point.items():
        if key == "month":
            normalised["month"] = _Plain()(value)
        else:
            cents = _cents(value)
            normalised[str(key)] = cents if cents is not None else _unparsed(value)
    return normalised


# ---- summarize_meeting, translate_document --------------------------------------------------


def _model_text(text_key: str, parts: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    def normalise(result: Mapping[str, Any]) -> Any:
        plain = _Plain()
        normalised = {part: plain(result.get(part)) for part in parts}
        normalised[text_key] = _prose(result.get(text_key))
        sha = result.get("model_sha256")
        normalised["model_sha256"] = sha.strip().lower() if isinstance(sha, str) else plain(sha)
        return normalised

    return normalise


def _prose(value: Any) -> Any:
    """Text with its line ends unified, each line's spaces collapsed, blank runs made one."""
    if not isinstance(value, str):
        return _unparsed(value)
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    text = "\n".join(" ".join(line.split()) for line in lines).strip()
    return _BLANK_LINES.sub("\n\n", text)


_NORMALISERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ocr_invoice": _invoice,
    "predict_expenses": _forecast,
    "summarize_meeting": _model_text("summary", SUMMARY_PARTS),
    "translate_document": _model_text("text", TRANSLATION_PARTS),
}
