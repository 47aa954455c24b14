"""The fields a syndic needs from an invoice, found by rules over its lines. Pure, no I/O.

Rules, not a model: a label the invoice prints (`Total HTVA`, `Vervaldatum`, `Invoice No.`)
names the value that follows it on its row, or the value under it (a table's header). The
supplier is the issuer's block at the top of the first page, never the customer's (a block
that says `Client`/`Klant`/`Bill to`, or names an ACP/VME). A field no rule finds is missing;
nothing is guessed here (the executor may ask the model, see `invoice_model`).

Confidence = how sure the rule is (an explicit label on the value's row: high; a value under
its label, or a name found by position only: lower) times the reader's score of the row (1 for a
PDF text layer, the OCR engine's score otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from koprogo_node.domain.tasks.iban import EURO_AREA, find_ibans, find_vat_ids
from koprogo_node.domain.tasks.invoice_labels import (
    AMOUNT_LABEL,
    AMOUNT_LABELS,
    DATE_LABEL,
    INVOICE_NUMBER_HEAD,
    INVOICE_NUMBER_LABEL,
    INVOICE_NUMBER_VALUE,
    fold,
)
from koprogo_node.domain.tasks.invoice_parties import (
    Hit,
    customer_lines,
    payee_iban,
    supplier,
    supplier_vat_id,
)
from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates
from koprogo_node.domain.tasks.page_layout import ROW_JOINER, Row, TextLine, rows_of

FIELD_NAMES = (
    "supplier",
    "supplier_vat_id",
    "invoice_number",
    "issue_date",
    "due_date",
    "total_excl_vat",
    "vat_rate",
    "vat",
    "total_incl_vat",
    "currency",
    "iban",
)

_NUMBER = re.compile(INVOICE_NUMBER_LABEL + f"(?P<value>{INVOICE_NUMBER_VALUE})")
_RATE = re.compile(r"(?<![\d,.])(?P<rate>\d{1,2}(?:[.,]\d{1,2})?)\s?%")
_DECIMALS = re.compile(r"\d[.,]\d{2}(?!\d)")


@dataclass(frozen=True, slots=True)
class FoundField:
    value: str | float
    confidence: float
    source: str


def extract_fields(lines: list[TextLine], source: str) -> dict[str, FoundField]:
    """Every field the rules find in `lines` (all pages), by name; `source` is how the text was read."""
    rows = rows_of(lines)
    hits: dict[str, Hit] = {}
    _amounts(rows, hits)
    _dates(rows, hits)
    if (number := _invoice_number(rows)) is not None:
        hits["invoice_number"] = number
    customer = customer_lines(lines)
    supplier_block: list[TextLine] = []
    if (found := supplier(lines, customer)) is not None:
        hits["supplier"], supplier_block = found
    if (vat_id := supplier_vat_id(rows, customer, supplier_block)) is not None:
        hits["supplier_vat_id"] = vat_id
    if (iban := payee_iban(rows, customer)) is not None:
        hits["iban"] = iban
    if (currency := _currency(rows, hits)) is not None:
        hits["currency"] = currency
    return {
        name: FoundField(hit.value, round(hit.certainty * hit.row.confidence, 2), source)
        for name, hit in hits.items()
    }


def _masked(text: str) -> str:
    """The row without its IBANs and VAT ids, whose digit groups would read as amounts."""
    spans = [span for span, _ in find_ibans(text)] + [span for span, _ in find_vat_ids(text)]
    for start, end in spans:
        text = text[:start] + "#" * (end - start) + text[end:]
    return text


def _segments(pattern: re.Pattern[str], text: str) -> Iterable[tuple[str, int, int, int]]:
    """(label name, label start, label end, end of its segment: where the next label starts)."""
    matches = [m for m in pattern.finditer(fold(text)) if m.lastgroup]
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        yield str(match.lastgroup), match.start(), match.end(), end


def _money(text: str) -> list[tuple[Decimal, str | None]]:
    """Amounts that look like money: with a currency, or with cents."""
    return [
        (value, currency)
        for (start, end), value, currency in find_amounts(text)
        if currency is not None or _DECIMALS.search(text, start, end)
    ]


def _amounts(rows: list[Row], hits: dict[str, Hit]) -> None:
    found: dict[str, list[Hit]] = {}
    for index, row in enumerate(rows):
        text = _masked(row.text)
        for name, _, label_end, end in _segments(AMOUNT_LABEL, text):
            segment = text[label_end:end]
            money, certainty = _money(segment), 0.95
            if not money and index + 1 < len(rows):
                below = _value_below(row, label_end, rows[index + 1])
                if below is not None and not AMOUNT_LABEL.search(fold(below.text)):
                    money, certainty = _money(_masked(below.text)), 0.75
            if name == "vat" and (rate := _vat_rate(segment)) is not None:
                found.setdefault("vat_rate", []).append(Hit(rate, 0.95, row))
            if money:
                amount, currency = money[-1]
                found.setdefault(name, []).append(Hit(float(amount), certainty, row, currency))
    if "vat_rate" not in found:
        # `Total incl. 21 % BTW`, or a rate in a summary line of its own.
        for row in rows:
            text = fold(_masked(row.text))
            if re.search(AMOUNT_LABELS["vat"], text) and (rate := _vat_rate(text)) is not None:
                found.setdefault("vat_rate", []).append(Hit(rate, 0.8, row))
    if "total_incl_vat" not in found and "total" in found:
        found["total_incl_vat"] = [Hit(h.value, 0.75, h.row, h.currency) for h in found["total"]]
    for name in ("total_excl_vat", "vat", "total_incl_vat", "vat_rate"):
        if found.get(name):
            # The surest label wins; among equals the last, the summary under the line items.
            hits[name] = max(reversed(found[name]), key=lambda hit: hit.certainty)


def _vat_rate(text: str) -> float | None:
    match = _RATE.search(text)
    if match is None:
        return None
    rate = float(match.group("rate").replace(",", "."))
    return rate if 0 < rate <= 30 else None


def _dates(rows: list[Row], hits: dict[str, Hit]) -> None:
    for index, row in enumerate(rows):
        text = row.text
        for name, _, label_end, end in _segments(DATE_LABEL, text):
            if name in hits or name == "other_date":
                continue
            dates = [d for (s, _), d in find_dates(text) if label_end <= s < end]
            if dates:
                hits[name] = Hit(dates[0].isoformat(), 0.95, row)
            elif index + 1 < len(rows) and (below := _value_below(row, label_end, rows[index + 1])):
                below_dates = find_dates(below.text)
                if below_dates:
                    hits[name] = Hit(below_dates[0][1].isoformat(), 0.8, rows[index + 1])
    if "issue_date" not in hits:
        # An invoice's first date that is not its due date is its date (`Liège, le 14 mars 2025`).
        for row in rows:
            due = hits.get("due_date")
            isos = [d.isoformat() for _, d in find_dates(row.text)]
            isos = [d for d in isos if due is None or d != due.value]
            if isos:
                hits["issue_date"] = Hit(isos[0], 0.6, row)
                break


def _value_below(row: Row, label_end: int, below: Row) -> TextLine | None:
    """The line under a label that ends its own line (a table's header over its cell)."""
    position = 0
    for line in row.lines:
        if position <= label_end <= position + len(line.text):
            if row.text[label_end : position + len(line.text)].strip(" :.-|#"):
                return None  # the label has something after it on its own line
            return _cell_below(line, below)
        position += len(line.text) + len(ROW_JOINER)
    return None


def _cell_below(line: TextLine, below: Row) -> TextLine | None:
    overlaps = [
        (min(cell.x1, line.x1) - max(cell.x0, line.x0), cell)
        for cell in below.lines
        if min(cell.x1, line.x1) > max(cell.x0, line.x0)
    ]
    return max(overlaps, key=lambda item: item[0])[1] if overlaps else None


def _invoice_number(rows: list[Row]) -> Hit | None:
    # A number on its label's row first; only then a number under a label that ends its line
    # (a table's header), so a title `FACTUUR` over `Factuurnummer: ...` is not taken for one.
    for row in rows:
        folded = fold(row.text)
        # A number that starts a date or an amount (`Facture du 7 avril`) is not the invoice's.
        taken = [span for span, _ in find_dates(row.text)] + [span for span, _, _ in find_amounts(row.text)]
        for match in _NUMBER.finditer(folded):
            start, end = match.span("value")
            value = row.text[start:end].rstrip(".-/")
            inside = any(s <= start < e and (s, e) != (start, end) for s, e in taken)
            if _looks_like_number(value) and not inside:
                explicit = re.search(r"(n\s?[°o*'º]|no|nr|num|#|number)", folded[match.start() : start])
                return Hit(value, 0.95 if explicit else 0.85, row)
    for index, row in enumerate(rows[:-1]):
        for line in row.lines:
            if not re.fullmatch(r"\s*" + INVOICE_NUMBER_HEAD + r"\s*[:.#]?\s*", fold(line.text)):
                continue
            below = _cell_below(line, rows[index + 1])
            first = below.text.split()[0] if below is not None and below.text.split() else ""
            if re.fullmatch(INVOICE_NUMBER_VALUE, fold(first)) and _looks_like_number(first):
                return Hit(first, 0.8, rows[index + 1])
    return None


def _looks_like_number(value: str) -> bool:
    return bool(re.search(r"\d", value)) and not find_dates(value) and len(value) <= 30


def _currency(rows: list[Row], hits: dict[str, Hit]) -> Hit | None:
    for name in ("total_incl_vat", "total_excl_vat", "vat"):
        hit = hits.get(name)
        if hit is not None and hit.currency is not None:
            return Hit(hit.currency, 0.95, hit.row)
    for row in rows:
        for _, _, currency in find_amounts(_masked(row.text)):
            if currency is not None:
                return Hit(currency, 0.8, row)
    # No mark read (the OCR model has no `€` glyph): an account in the euro area is paid in euros.
    iban = hits.get("iban")
    if iban is not None and str(iban.value)[:2] in EURO_AREA:
        return Hit("EUR", 0.6, iban.row)
    return None
