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

from koprogo_node.domain.tasks.iban import EURO_AREA, find_ibans, find_vat_ids, format_iban, iban_checksum_ok
from koprogo_node.domain.tasks.invoice_labels import (
    AMOUNT_LABELS,
    CUSTOMER_LABEL,
    CUSTOMER_MENTION,
    CUSTOMER_NAME,
    DATE_LABELS,
    IBAN_LABEL,
    INVOICE_NUMBER_HEAD,
    INVOICE_NUMBER_LABEL,
    INVOICE_NUMBER_VALUE,
    LEGAL_FORM,
    NOT_A_NAME,
    SUPPLIER_LABEL,
    VAT_ID_LABEL,
    fold,
)
from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates
from koprogo_node.domain.tasks.page_layout import ROW_JOINER, Row, TextLine, blocks_of, rows_of

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

_AMOUNT_LABEL = re.compile("|".join(f"(?P<{name}>{p})" for name, p in AMOUNT_LABELS.items()))
_DATE_LABEL = re.compile("|".join(f"(?P<{name}>{p})" for name, p in DATE_LABELS.items()))
_NUMBER = re.compile(INVOICE_NUMBER_LABEL + f"(?P<value>{INVOICE_NUMBER_VALUE})")
_RATE = re.compile(r"(?<![\d,.])(?P<rate>\d{1,2}(?:[.,]\d{1,2})?)\s?%")
_DECIMALS = re.compile(r"\d[.,]\d{2}(?!\d)")


@dataclass(frozen=True, slots=True)
class FoundField:
    value: str | float
    confidence: float
    source: str


@dataclass(frozen=True, slots=True)
class _Hit:
    value: str | float
    certainty: float
    row: Row
    currency: str | None = None


def extract_fields(lines: list[TextLine], source: str) -> dict[str, FoundField]:
    """Every field the rules find in `lines` (all pages), by name; `source` is how the text was read."""
    rows = rows_of(lines)
    hits: dict[str, _Hit] = {}
    _amounts(rows, hits)
    _dates(rows, hits)
    if (number := _invoice_number(rows)) is not None:
        hits["invoice_number"] = number
    customer = _customer_lines(lines)
    supplier_block: list[TextLine] = []
    if (supplier := _supplier(lines, customer)) is not None:
        hits["supplier"], supplier_block = supplier
    if (vat_id := _supplier_vat_id(rows, customer, supplier_block)) is not None:
        hits["supplier_vat_id"] = vat_id
    if (iban := _iban(rows, customer)) is not None:
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


def _amounts(rows: list[Row], hits: dict[str, _Hit]) -> None:
    found: dict[str, list[_Hit]] = {}
    for index, row in enumerate(rows):
        text = _masked(row.text)
        for name, _, label_end, end in _segments(_AMOUNT_LABEL, text):
            segment = text[label_end:end]
            money, certainty = _money(segment), 0.95
            if not money and index + 1 < len(rows):
                below = _value_below(row, label_end, rows[index + 1])
                if below is not None and not _AMOUNT_LABEL.search(fold(below.text)):
                    money, certainty = _money(_masked(below.text)), 0.75
            if name == "vat" and (rate := _vat_rate(segment)) is not None:
                found.setdefault("vat_rate", []).append(_Hit(rate, 0.95, row))
            if money:
                amount, currency = money[-1]
                found.setdefault(name, []).append(_Hit(float(amount), certainty, row, currency))
    if "vat_rate" not in found:
        # `Total incl. 21 % BTW`, or a rate in a summary line of its own.
        for row in rows:
            text = fold(_masked(row.text))
            if re.search(AMOUNT_LABELS["vat"], text) and (rate := _vat_rate(text)) is not None:
                found.setdefault("vat_rate", []).append(_Hit(rate, 0.8, row))
    if "total_incl_vat" not in found and "total" in found:
        found["total_incl_vat"] = [_Hit(h.value, 0.75, h.row, h.currency) for h in found["total"]]
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


def _dates(rows: list[Row], hits: dict[str, _Hit]) -> None:
    for index, row in enumerate(rows):
        text = row.text
        for name, _, label_end, end in _segments(_DATE_LABEL, text):
            if name in hits or name == "other_date":
                continue
            dates = [d for (s, _), d in find_dates(text) if label_end <= s < end]
            if dates:
                hits[name] = _Hit(dates[0].isoformat(), 0.95, row)
            elif index + 1 < len(rows) and (below := _value_below(row, label_end, rows[index + 1])):
                below_dates = find_dates(below.text)
                if below_dates:
                    hits[name] = _Hit(below_dates[0][1].isoformat(), 0.8, rows[index + 1])
    if "issue_date" not in hits:
        # An invoice's first date that is not its due date is its date (`Liège, le 14 mars 2025`).
        for row in rows:
            due = hits.get("due_date")
            isos = [d.isoformat() for _, d in find_dates(row.text)]
            isos = [d for d in isos if due is None or d != due.value]
            if isos:
                hits["issue_date"] = _Hit(isos[0], 0.6, row)
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


def _invoice_number(rows: list[Row]) -> _Hit | None:
    # A number on its label's row first; only then a number under a label that ends its line
    # (a table's header), so a title `FACTUUR` over `Factuurnummer: ...` is not taken for one.
    for row in rows:
        folded = fold(row.text)
        for match in _NUMBER.finditer(folded):
            start, end = match.span("value")
            value = row.text[start:end].rstrip(".-/")
            if _looks_like_number(value):
                explicit = re.search(r"(n\s?[°o*'º]|no|nr|num|#|number)", folded[match.start() : start])
                return _Hit(value, 0.95 if explicit else 0.85, row)
    for index, row in enumerate(rows[:-1]):
        for line in row.lines:
            if not re.fullmatch(r"\s*" + INVOICE_NUMBER_HEAD + r"\s*[:.#]?\s*", fold(line.text)):
                continue
            below = _cell_below(line, rows[index + 1])
            first = below.text.split()[0] if below is not None and below.text.split() else ""
            if re.fullmatch(INVOICE_NUMBER_VALUE, fold(first)) and _looks_like_number(first):
                return _Hit(first, 0.8, rows[index + 1])
    return None


def _looks_like_number(value: str) -> bool:
    return bool(re.search(r"\d", value)) and not find_dates(value) and len(value) <= 30


def _customer_lines(lines: list[TextLine]) -> set[TextLine]:
    """Lines of the customer's blocks: a block that says `Client` or names an ACP/VME, and the
    block right under a lone `Client :` line."""
    customer: set[TextLine] = set()
    blocks = blocks_of(lines)
    for index, block in enumerate(blocks):
        folded = [fold(line.text) for line in block]
        if any(re.search(CUSTOMER_LABEL, f) or re.search(CUSTOMER_NAME, f) for f in folded):
            customer.update(block)
            if len(block) == 1 and index + 1 < len(blocks):
                customer.update(_block_under(block[0], blocks))
    return customer


def _block_under(line: TextLine, blocks: list[list[TextLine]]) -> list[TextLine]:
    for block in blocks:
        first = block[0]
        if first.page == line.page and 0 <= first.top - line.bottom <= 2.5 * line.height:
            if abs(first.x0 - line.x0) <= 2 * line.height:
                return block
    return []


def _supplier(lines: list[TextLine], customer: set[TextLine]) -> tuple[_Hit, list[TextLine]] | None:
    if not lines:
        return None
    first = min(line.page for line in lines)
    first_page = [line for line in lines if line.page == first]
    blocks = [b for b in blocks_of(first_page) if not customer.intersection(b)]
    for block in blocks:
        for position, line in enumerate(block):
            labelled = re.match(SUPPLIER_LABEL, fold(line.text))
            if labelled:
                name = line.text[labelled.end() :].strip() or (
                    block[position + 1].text if position + 1 < len(block) else ""
                )
                if name:
                    return _Hit(name, 0.9, _row(line)), block
    bottom = max((ln.bottom for ln in first_page), default=0.0)
    for block in sorted(blocks, key=lambda b: (b[0].top, b[0].x0)):
        for line in block:
            if line.top < bottom / 2 and LEGAL_FORM.search(line.text) and _is_a_name(line.text):
                return _Hit(_name_of(line.text), 0.9, _row(line)), block
    for block in sorted(blocks, key=lambda b: (b[0].top, b[0].x0)):
        named = [line for line in block if _is_a_name(line.text)]
        if named:
            return _Hit(_name_of(named[0].text), 0.65, _row(named[0])), block
    return None


def _is_a_name(text: str) -> bool:
    folded = fold(text)
    if re.search(NOT_A_NAME, folded) or ":" in text:
        return False
    if _AMOUNT_LABEL.search(folded) or _DATE_LABEL.search(folded) or find_vat_ids(text):
        return False
    return len(re.findall(r"[^\W\d_]", text)) >= 3


def _name_of(text: str) -> str:
    return text.strip(" -\u2013\u2014|,")  # hyphen, en and em dashes


def _row(line: TextLine) -> Row:
    return Row((line,))


def _supplier_vat_id(rows: list[Row], customer: set[TextLine], supplier_block: list[TextLine]) -> _Hit | None:
    candidates: list[_Hit] = []
    for row in rows:
        for line in row.lines:
            if line in customer or re.search(CUSTOMER_MENTION, fold(line.text)):
                continue
            for _, vat_id in find_vat_ids(line.text):
                if line in supplier_block:
                    certainty = 0.95
                elif re.search(VAT_ID_LABEL, fold(line.text)):
                    certainty = 0.85
                else:
                    certainty = 0.7
                candidates.append(_Hit(vat_id, certainty, _row(line)))
    return max(candidates, key=lambda hit: hit.certainty) if candidates else None


def _iban(rows: list[Row], customer: set[TextLine]) -> _Hit | None:
    candidates: list[_Hit] = []
    for row in rows:
        for line in row.lines:
            if line in customer or re.search(CUSTOMER_MENTION, fold(line.text)):
                continue
            labelled = re.search(IBAN_LABEL, fold(row.text)) is not None
            for _, iban in find_ibans(line.text):
                # A bad checksum is most often a misread: it lowers the confidence, the value stays.
                certainty = (0.95 if labelled else 0.85) * (1.0 if iban_checksum_ok(iban) else 0.5)
                candidates.append(_Hit(format_iban(iban), certainty, _row(line), currency=None))
    labelled_first = sorted(candidates, key=lambda hit: -hit.certainty)
    return labelled_first[0] if labelled_first else None


def _currency(rows: list[Row], hits: dict[str, _Hit]) -> _Hit | None:
    for name in ("total_incl_vat", "total_excl_vat", "vat"):
        hit = hits.get(name)
        if hit is not None and hit.currency is not None:
            return _Hit(hit.currency, 0.95, hit.row)
    for row in rows:
        for _, _, currency in find_amounts(_masked(row.text)):
            if currency is not None:
                return _Hit(currency, 0.8, row)
    # No mark read (the OCR model has no `€` glyph): an account in the euro area is paid in euros.
    iban = hits.get("iban")
    if iban is not None and str(iban.value)[:2] in EURO_AREA:
        return _Hit("EUR", 0.6, iban.row)
    return None
