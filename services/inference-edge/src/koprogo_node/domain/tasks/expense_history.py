"""A building's monthly charges per category, read and checked before any forecast (pure, no I/O).

Two ways in, one result (`ExpenseHistory`: contiguous months, one amount per category per month):

- `history_from_records`: a JSON list of `{"month", "category", "amount" | "amount_eur"}`;
  an error names the entry by its 0-based index in the list (`row`).
- `history_from_csv`: text in long form `month,category,amount[_eur]` or wide form
  `month,<category1>,<category2>,...`; an error names the 1-based line number, header included.

Rules (docs/tasks/predict_expenses.md says why):

- months are `YYYY-MM` or `MM/YYYY` (also `M/YYYY`); anything else is refused;
- amounts are numbers, or text read by `local_formats.parse_amount` (the Belgian `1 234,56 €`,
  `1.234,56`, the English `1,234.56`: the same reading as the invoices');
- each (month, category) appears once, so each amount is that month's total for the category,
  and a negative one (a refund larger than the month's charges) is refused;
- every category has an amount for every month from the first to the last, no gap.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from koprogo_node.domain.tasks.local_formats import parse_amount

MIN_MONTHS = 6
MAX_MONTHS = 240
MAX_CATEGORIES = 30

_MONTH_NAMES = {"month", "mois", "maand", "period", "periode", "période", "date", "datum"}
_CATEGORY_NAMES = {"category", "categorie", "catégorie", "categorie_nl", "rubriek", "poste"}
_AMOUNT_NAMES = {"amount", "amount_eur", "montant", "montant_eur", "bedrag", "bedrag_eur"}

_ISO_MONTH = re.compile(r"(\d{4})-(\d{1,2})")
_SLASH_MONTH = re.compile(r"(\d{1,2})/(\d{4})")


class ExpenseHistoryError(ValueError):
    """The history cannot be read; `row` is the CSV line (1-based, header included) or the JSON
    list index (0-based) at fault, `field` the column, when there is one."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = row


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    def plus(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class ExpenseHistory:
    """Contiguous months (oldest first) and, per category, one amount per month (same order)."""

    months: tuple[Month, ...]
    amounts: Mapping[str, tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class _Entry:
    month: Month
    category: str
    amount: float
    row: int


def parse_month(text: str) -> Month | None:
    """`2024-03`, `03/2024` or `3/2024`; None for anything else (a full date is refused on purpose)."""
    value = text.strip()
    if match := _ISO_MONTH.fullmatch(value):
        year, month = int(match[1]), int(match[2])
    elif match := _SLASH_MONTH.fullmatch(value):
        month, year = int(match[1]), int(match[2])
    else:
        return None
    if not 1 <= month <= 12 or not 1900 <= year <= 2200:
        return None
    return Month(year, month)


def history_from_records(records: Any) -> ExpenseHistory:
    """Reads a JSON list of `{"month", "category", "amount"|"amount_eur"}`; errors name the index."""
    if not isinstance(records, list):
        raise ExpenseHistoryError("history must be a list of {month, category, amount}", field="history")
    if not records:
        raise ExpenseHistoryError("history is empty: no month to forecast from", field="history")
    entries = []
    for index, record in enumerate(records):
        where = f"history[{index}]"
        if not isinstance(record, dict):
            raise ExpenseHistoryError(f"{where}: expected an object with month, category, amount", row=index)
        raw_amount = record.get("amount", record.get("amount_eur"))
        entries.append(
            _entry(record.get("month"), record.get("category"), raw_amount, row=index, where=where)
        )
    return _assemble(entries, where=lambda row: f"history[{row}]")


def history_from_csv(text: str) -> ExpenseHistory:
    """Reads long (`month,category,amount`) or wide (`month,<cat>,...`) CSV; errors name the line."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise ExpenseHistoryError("line 1: the CSV is empty (expected a header month,category,amount)", row=1)
    first_line = text.splitlines()[0]
    # Belgian spreadsheets export with ';' because ',' is their decimal separator.
    delimiter = max((";", ",", "\t"), key=first_line.count)
    rows = _numbered_rows(text, delimiter)
    raw_header = next(rows)[1]
    header = [name.strip().lower() for name in raw_header]
    if not header or header[0] not in _MONTH_NAMES:
        raise ExpenseHistoryError(
            f"line 1: the header must start with a 'month' column, got {first_line.strip()[:80]!r}", row=1
        )
    long_form = len(header) == 3 and header[1] in _CATEGORY_NAMES and header[2] in _AMOUNT_NAMES
    entries = _long_rows(rows) if long_form else _wide_rows(rows, raw_header)
    if not entries:
        raise ExpenseHistoryError("line 1: the CSV has a header but no data row", row=1)
    return _assemble(entries, where=lambda row: f"line {row}")


def _numbered_rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Each record with its line number (the last physical line, should a quoted cell span two)."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    for cells in reader:
        yield reader.line_num, cells


def _long_rows(rows: Iterable[tuple[int, list[str]]]) -> list[_Entry]:
    entries = []
    for row, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != 3:
            raise ExpenseHistoryError(
                f"line {row}: expected 3 cells (month, category, amount), got {len(cells)}", row=row
            )
        entries.append(_entry(cells[0], cells[1], cells[2], row=row, where=f"line {row}"))
    return entries


def _wide_rows(rows: Iterable[tuple[int, list[str]]], header: list[str]) -> list[_Entry]:
    categories = [" ".join(name.split()) for name in header[1:]]
    if not categories or any(not name for name in categories) or len(set(categories)) != len(categories):
        raise ExpenseHistoryError(
            "line 1: a wide CSV needs distinct, non-empty category names after 'month' "
            "(or use the long form month,category,amount)",
            row=1,
        )
    entries = []
    for row, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise ExpenseHistoryError(f"line {row}: expected {len(header)} cells, got {len(cells)}", row=row)
        for category, cell in zip(categories, cells[1:], strict=True):
            if not cell.strip():
                raise ExpenseHistoryError(
                    f"line {row}: no amount for category {category!r} (write 0 if nothing was spent)",
                    field=category,
                    row=row,
                )
            entries.append(_entry(cells[0], category, cell, row=row, where=f"line {row}"))
    return entries


def _entry(raw_month: Any, raw_category: Any, raw_amount: Any, *, row: int, where: str) -> _Entry:
    if not isinstance(raw_month, str) or (month := parse_month(raw_month)) is None:
        raise ExpenseHistoryError(
            f"{where}: month {raw_month!r} is not YYYY-MM or MM/YYYY", field="month", row=row
        )
    if not isinstance(raw_category, str) or not (category := " ".join(raw_category.split())):
        raise ExpenseHistoryError(f"{where}: the category is missing", field="category", row=row)
    amount: float | None
    if isinstance(raw_amount, bool):
        amount = None
    elif isinstance(raw_amount, int | float):
        amount = float(raw_amount) if math.isfinite(raw_amount) else None
    elif isinstance(raw_amount, str):
        parsed = parse_amount(raw_amount)
        amount = float(parsed) if parsed is not None else None
    else:
        amount = None
    if amount is None:
        raise ExpenseHistoryError(f"{where}: amount {raw_amount!r} is not a number", field="amount", row=row)
    if amount < 0:
        raise ExpenseHistoryError(
            f"{where}: amount {amount:.2f} for {category!r} in {month} is negative; each row is the "
            "month's total for its category, refunds must be netted into it",
            field="amount",
            row=row,
        )
    return _Entry(month, category, amount, row)


def _assemble(entries: list[_Entry], *, where: Callable[[int], str]) -> ExpenseHistory:
    seen: dict[tuple[Month, str], _Entry] = {}
    for entry in entries:
        if (first := seen.get((entry.month, entry.category))) is not None:
            raise ExpenseHistoryError(
                f"{where(entry.row)}: {entry.category!r} in {entry.month} already appears at "
                f"{where(first.row)}",
                row=entry.row,
            )
        seen[(entry.month, entry.category)] = entry
    months_present = sorted({entry.month for entry in entries})
    first_month, last_month = months_present[0], months_present[-1]
    span = (last_month.year - first_month.year) * 12 + last_month.month - first_month.month + 1
    months = tuple(first_month.plus(offset) for offset in range(span))
    # The first row of each month, in file order, to name where a gap or a hole shows.
    first_row_of: dict[Month, int] = {}
    for entry in entries:
        first_row_of.setdefault(entry.month, entry.row)
    for previous, month in itertools.pairwise(months):
        if month not in first_row_of:
            following = next(m for m in months_present if m > month)
            row = first_row_of[following]
            raise ExpenseHistoryError(
                f"{where(row)}: month {month} is missing between {previous} and {following}",
                field="month",
                row=row,
            )
    categories = sorted({entry.category for entry in entries})
    if len(categories) > MAX_CATEGORIES:
        raise ExpenseHistoryError(f"{len(categories)} categories, at most {MAX_CATEGORIES}", field="history")
    if len(months) > MAX_MONTHS:
        raise ExpenseHistoryError(f"{len(months)} months of history, at most {MAX_MONTHS}", field="history")
    if len(months) < MIN_MONTHS:
        raise ExpenseHistoryError(
            f"{len(months)} months of history ({first_month} to {last_month}): at least {MIN_MONTHS} needed",
            field="history",
        )
    amounts: dict[str, tuple[float, ...]] = {}
    for category in categories:
        values = []
        for month in months:
            found = seen.get((month, category))
            if found is None:
                row = first_row_of[month]
                raise ExpenseHistoryError(
                    f"{where(row)}: month {month} has no amount for {category!r} (its rows start here; "
                    "write 0 if nothing was spent)",
                    field=category,
                    row=row,
                )
            values.append(found.amount)
        amounts[category] = tuple(values)
    return ExpenseHistory(months=months, amounts=amounts)
