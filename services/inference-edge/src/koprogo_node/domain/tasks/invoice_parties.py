"""Who the invoice is from and to be paid to: the supplier (the issuer's block, never the
customer's), its VAT id, the IBAN. Pure, no I/O.

The customer's blocks are those that say `Client`/`Klant`/`Bill to` or name an ACP/VME (and
the block right under a lone `Client :`); nothing in them is taken for the supplier's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from koprogo_node.domain.tasks.iban import find_ibans, find_vat_ids, format_iban, iban_checksum_ok
from koprogo_node.domain.tasks.invoice_labels import (
    AMOUNT_LABEL,
    CUSTOMER_LABEL,
    CUSTOMER_MENTION,
    CUSTOMER_NAME,
    DATE_LABEL,
    IBAN_LABEL,
    LEGAL_FORM,
    NOT_A_NAME,
    SUPPLIER_LABEL,
    VAT_ID_LABEL,
    fold,
)
from koprogo_node.domain.tasks.page_layout import Row, TextLine, blocks_of


@dataclass(frozen=True, slots=True)
class Hit:
    """A value a rule found: how sure the rule is, the row it was read on (its reader's score)."""

    value: str | float
    certainty: float
    row: Row
    currency: str | None = None


def customer_lines(lines: list[TextLine]) -> set[TextLine]:
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


def supplier(lines: list[TextLine], customer: set[TextLine]) -> tuple[Hit, list[TextLine]] | None:
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
                    return Hit(name, 0.9, _row(line)), block
    bottom = max((ln.bottom for ln in first_page), default=0.0)
    for block in sorted(blocks, key=lambda b: (b[0].top, b[0].x0)):
        for line in block:
            if line.top < bottom / 2 and LEGAL_FORM.search(line.text) and _is_a_name(line.text):
                return Hit(_name_of(line.text), 0.9, _row(line)), block
    for block in sorted(blocks, key=lambda b: (b[0].top, b[0].x0)):
        named = [line for line in block if _is_a_name(line.text)]
        if named:
            return Hit(_name_of(named[0].text), 0.65, _row(named[0])), block
    return None


def _is_a_name(text: str) -> bool:
    folded = fold(text)
    if re.search(NOT_A_NAME, folded) or ":" in text:
        return False
    if AMOUNT_LABEL.search(folded) or DATE_LABEL.search(folded) or find_vat_ids(text):
        return False
    return len(re.findall(r"[^\W\d_]", text)) >= 3


def _name_of(text: str) -> str:
    return text.strip(" -\u2013\u2014|,")  # hyphen, en and em dashes


def _row(line: TextLine) -> Row:
    return Row((line,))


def supplier_vat_id(rows: list[Row], customer: set[TextLine], supplier_block: list[TextLine]) -> Hit | None:
    candidates: list[Hit] = []
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
                candidates.append(Hit(vat_id, certainty, _row(line)))
    return max(candidates, key=lambda hit: hit.certainty) if candidates else None


def payee_iban(rows: list[Row], customer: set[TextLine]) -> Hit | None:
    candidates: list[Hit] = []
    for row in rows:
        for line in row.lines:
            if line in customer or re.search(CUSTOMER_MENTION, fold(line.text)):
                continue
            labelled = re.search(IBAN_LABEL, fold(row.text)) is not None
            for _, iban in find_ibans(line.text):
                # A bad checksum is most often a misread: it lowers the confidence, the value stays.
                certainty = (0.95 if labelled else 0.85) * (1.0 if iban_checksum_ok(iban) else 0.5)
                candidates.append(Hit(format_iban(iban), certainty, _row(line), currency=None))
    labelled_first = sorted(candidates, key=lambda hit: -hit.certainty)
    return labelled_first[0] if labelled_first else None
