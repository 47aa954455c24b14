"""Amounts and dates as Belgian, French, Dutch and English documents write them.

Pure functions, no I/O. Amounts come back as `Decimal` (money is never a float here).

Amounts: `1 512,50 €`, `€ 1.512,50`, `1.512,50 EUR`, `1,512.50`, `1512.50`, `18 450`,
`48 310,22` (thousands grouped by a space, a no-break space, a dot, a comma or an apostrophe).
A lone separator followed by exactly three digits (`18.450`, `1,512`) is read as a thousands
separator: money carries two decimals, so `1,512` in an invoice is one thousand five hundred.

Dates: day first (`14/03/2025`, `14-03-2025`, `14.03.2025`, `14/03/25`), ISO (`2025-03-14`),
month names in French, Dutch and English (`14 mars 2025`, `1er avril 2025`, `14 maart 2025`,
`March 14, 2025`, `14th March 2025`), accents optional (OCR often drops them). A numeric date
is read month first only when day first is impossible (`03/14/2025`).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from datetime import date
from decimal import Decimal, InvalidOperation

Span = tuple[int, int]

_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    (
        "janvier janv jan january januari",
        "fevrier fevr fev february februari feb",
        "mars march maart mar mrt maa",
        "avril avr april apr",
        "mai may mei",
        "juin june juni jun",
        "juillet juil july juli jul",
        "aout august augustus aug",
        "septembre sept september sep",
        "octobre october oktober oct okt",
        "novembre november nov",
        "decembre december dec",
    ),
    start=1,
):
    for _name in _names.split():
        _MONTHS[_name] = _number

_LONG_MONTH_NAMES = [name for name in _MONTHS if len(name) >= 4]
# Month words as they may be printed (with or without accents, any case); matched on the
# original text, then folded to look the number up.
_MONTH_WORD = r"[A-Za-zÀ-ÿ]{3,10}\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:er|e|ste|de|st|nd|rd|th)?\.?"
_YEAR = r"(?P<year>(?:19|20)\d{2})"

_NUMERIC_DATE = re.compile(
    r"(?<![\d/])(?<!\d[.-])(?P<a>[0-3]?\d)\s?(?P<sep>[/.-])\s?(?P<b>[0-3]?\d)\s?(?P=sep)\s?"
    r"(?P<year>(?:19|20)\d{2}|\d{2})(?![\d/])"
)
_ISO_DATE = re.compile(r"(?<![\d/])(?<!\d[.-])(?P<year>(?:19|20)\d{2})-(?P<b>[01]\d)-(?P<a>[0-3]\d)(?![\d/])")
# Spaces optional: OCR often drops them (`3februari2025`).
_DAY_MONTH_YEAR = re.compile(rf"(?<!\d){_DAY}\s*(?P<month>{_MONTH_WORD})\s*{_YEAR}(?!\d)")
_MONTH_DAY_YEAR = re.compile(rf"(?<![A-Za-zÀ-ÿ])(?P<month>{_MONTH_WORD})\s*{_DAY},?\s*{_YEAR}(?!\d)")

_CURRENCY_SYMBOLS = {"€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR", "$": "USD", "usd": "USD"}
_CURRENCY_SYMBOLS.update({"£": "GBP", "gbp": "GBP", "chf": "CHF"})
_CURRENCY = r"(?:€|EUR\b|EUROS?\b|euros?\b|Euros?\b|\$|USD\b|£|GBP\b|CHF\b)"
_NUMBER = (
    "(?P<sign>[-\u2212])?"  # hyphen or minus sign
    r"(?P<number>\d{1,3}(?P<group>[ \u00a0\u202f.,'\u2019])\d{3}(?:(?P=group)\d{3})*(?:[.,]\d{1,2})?"
    r"|\d+(?:[.,]\d{1,2})?)"
)
# Not glued to a word, a reference (`F-2025-0142`), another number (`3:180,00` is OCR's
# `3.180,00`, not 180) or a date; a dot or a colon glued to a label is fine (`Total:1512,50`).
_AMOUNT = re.compile(
    rf"(?<![\w/])(?<!\w-)(?<!\d[.,:;])(?:(?P<before>{_CURRENCY})\s?)?{_NUMBER}"
    rf"(?:\s?(?P<after>{_CURRENCY})|(?![\w/]|[.,]\d))"
)
_PERCENT_AFTER = re.compile(r"\s?%")


def _fold(word: str) -> str:
    """Lower case without accents, without a trailing dot: `Févr.` -> `fevr`."""
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower().rstrip(".")


def _month_number(word: str) -> int | None:
    """The month a name means; one letter misread or dropped is forgiven in names of four
    letters or more (OCR's `Aprl`), when only one month is that close."""
    folded = _fold(word)
    if folded in _MONTHS:
        return _MONTHS[folded]
    if len(folded) < 4:
        return None
    close = difflib.get_close_matches(folded, _LONG_MONTH_NAMES, n=2, cutoff=0.8)
    months = {_MONTHS[name] for name in close}
    return months.pop() if len(months) == 1 else None


def _number_value(number: str, group: str | None) -> Decimal | None:
    if group is None:
        digits = number.replace(",", ".")
    elif group in ".," and number.count(group) == 1 and number.startswith("0") and len(number) == 5:
        # `0,125`: a leading zero means decimals, not thousands.
        digits = number.replace(",", ".")
    else:
        # Cents first (a separator and one or two digits at the end: `2.200.00` is OCR's
        # `2.200,00`), then the thousands separators out of what is left.
        cents = re.search(r"[.,](\d{1,2})$", number)
        whole = number[: cents.start()] if cents else number
        digits = whole.replace(group, "") + (f".{cents.group(1)}" if cents else "")
    try:
        return Decimal(digits)
    except InvalidOperation:
        return None


def _currency_code(token: str | None) -> str | None:
    if token is None:
        return None
    return _CURRENCY_SYMBOLS.get(token.lower(), _CURRENCY_SYMBOLS.get(token))


def find_amounts(text: str) -> list[tuple[Span, Decimal, str | None]]:
    """Every amount in `text`, in reading order: (span, value, ISO currency or None).

    The span covers the currency mark when there is one. Numbers inside dates, references
    (`F-2025-0142`) and percentages (`21 %`) are not amounts and are left out.
    """
    date_spans = [span for span, _ in find_dates(text)]
    found: list[tuple[Span, Decimal, str | None]] = []
    for match in _AMOUNT.finditer(text):
        start, end = match.span()
        if any(start < d_end and d_start < end for d_start, d_end in date_spans):
            continue
        if match.group("after") is None and _PERCENT_AFTER.match(text, end):
            continue
        value = _number_value(match.group("number"), match.group("group"))
        if value is None:
            continue
        if match.group("sign"):
            value = -value
        currency = _currency_code(match.group("before")) or _currency_code(match.group("after"))
        found.append(((start, end), value, currency))
    return found


def parse_amount(text: str) -> Decimal | None:
    """The amount `text` is (`1 512,50 €` -> Decimal('1512.50')), or None if it is not one."""
    stripped = text.strip()
    amounts = find_amounts(stripped)
    if len(amounts) != 1:
        return None
    (start, end), value, _ = amounts[0]
    if stripped[:start].strip() or stripped[end:].strip(" .;:"):
        return None
    return value


def _build_date(year: str, month: int, day: int) -> date | None:
    full_year = int(year) + 2000 if len(year) == 2 else int(year)
    try:
        return date(full_year, month, day)
    except ValueError:
        return None


def find_dates(text: str) -> list[tuple[Span, date]]:
    """Every date in `text`, in reading order: (span, date). Impossible dates are left out."""
    found: list[tuple[Span, date]] = []
    for match in _ISO_DATE.finditer(text):
        iso = _build_date(match.group("year"), int(match.group("b")), int(match.group("a")))
        if iso is not None:
            found.append((match.span(), iso))
    for match in _NUMERIC_DATE.finditer(text):
        a, b = int(match.group("a")), int(match.group("b"))
        day_first = _build_date(match.group("year"), b, a)
        # Month first (`03/14/2025`) only when day first cannot be a date.
        numeric = day_first if day_first is not None else _build_date(match.group("year"), a, b)
        if numeric is not None:
            found.append((match.span(), numeric))
    for pattern in (_DAY_MONTH_YEAR, _MONTH_DAY_YEAR):
        for match in pattern.finditer(text):
            month = _month_number(match.group("month"))
            if month is None:
                continue
            named = _build_date(match.group("year"), month, int(match.group("day")))
            if named is not None:
                found.append((match.span(), named))
    found.sort(key=lambda item: item[0])
    # Drop a match that lies inside an earlier one (a numeric date inside an ISO one).
    kept: list[tuple[Span, date]] = []
    for span, value in found:
        if kept and span[0] < kept[-1][0][1]:
            continue
        kept.append((span, value))
    return kept


def parse_date(text: str) -> date | None:
    """The date `text` is (`14 maart 2025` -> date(2025, 3, 14)), or None if it is not one."""
    stripped = text.strip()
    dates = find_dates(stripped)
    if len(dates) != 1:
        return None
    (start, end), value = dates[0]
    if stripped[:start].strip() or stripped[end:].strip(" .,;:"):
        return None
    return value
