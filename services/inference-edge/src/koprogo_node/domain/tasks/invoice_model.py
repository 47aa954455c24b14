"""The model as a fallback for the invoice fields the rules missed: what it is asked, under
which JSON schema, and what of its answer is kept. Pure, no I/O.

A small model's answer is not trusted (ARCHITECTURE, Known traps: a grammar shapes tokens, it
does not make them true). A value is kept only when it parses as its field's type AND is
found in the document itself: an amount among the document's amounts, a date among its
dates, a name or a number in its text. What survives gets a low confidence and source "model".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from koprogo_node.domain.tasks.iban import find_ibans, find_vat_ids
from koprogo_node.domain.tasks.invoice_fields import FoundField
from koprogo_node.domain.tasks.invoice_labels import CUSTOMER_LABEL, CUSTOMER_NAME, fold
from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates, parse_amount, parse_date
from koprogo_shared.events import ChatMessage

MODEL_CONFIDENCE = 0.3
MODEL_SOURCE = "model"

_WHAT = {
    "supplier": "name of the company that issued the invoice (not the customer)",
    "supplier_vat_id": "VAT number of the issuer, as printed",
    "invoice_number": "invoice number, as printed",
    "issue_date": "invoice date, as printed",
    "due_date": "payment due date, as printed",
    "total_excl_vat": "total excluding VAT, as printed",
    "vat_rate": "VAT rate in percent, as printed",
    "vat": "VAT amount, as printed",
    "total_incl_vat": "total including VAT (amount to pay), as printed",
    "currency": "ISO currency code (EUR, USD, GBP, CHF)",
    "iban": "IBAN to pay to, as printed",
}
_CURRENCIES = ("EUR", "USD", "GBP", "CHF")


def model_schema(missing: Sequence[str]) -> dict[str, Any]:
    """Every missing field as a short string; an empty string is the model's "not found"."""
    return {
        "type": "object",
        "properties": {name: {"type": "string", "maxLength": 60} for name in missing},
        "required": list(missing),
        "additionalProperties": False,
    }


def model_messages(missing: Sequence[str], document: str) -> list[ChatMessage]:
    wanted = "\n".join(f"- {name}: {_WHAT[name]}" for name in missing)
    return [
        ChatMessage(
            role="system",
            content=(
                "You read invoices. Copy values exactly as the invoice prints them. "
                "If a value is not in the invoice, answer an empty string for it. "
                "Answer with only a JSON object."
            ),
        ),
        ChatMessage(role="user", content=f"Invoice:\n{document}\n\nFind:\n{wanted}"),
    ]


def read_model_answer(answer: str, missing: Sequence[str], document: str) -> dict[str, FoundField]:
    """The fields of the model's answer that parse and are found in `document`; others dropped."""
    try:
        parsed = json.loads(answer)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    kept: dict[str, FoundField] = {}
    for name in missing:
        raw = parsed.get(name)
        if not isinstance(raw, str) or not raw.strip():
            continue
        value = _GROUNDED[name](raw.strip(), document)
        if value is not None:
            kept[name] = FoundField(value, MODEL_CONFIDENCE, MODEL_SOURCE)
    return kept


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", " ", fold(text)).strip()


def _name(raw: str, document: str) -> str | None:
    folded = fold(raw)
    if len(raw) < 3 or re.search(CUSTOMER_NAME, folded) or re.search(CUSTOMER_LABEL, folded):
        return None
    if not re.search(r"[^\W\d_]{2}", raw):
        return None
    return raw if _squeezed(raw) in _squeezed(document) else None


def _reference(raw: str, document: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9/_.-]{0,29}", raw) or not re.search(r"\d", raw):
        return None
    return raw if re.search(rf"(?<![\w]){re.escape(raw)}(?![\w])", document, re.IGNORECASE) else None


def _date(raw: str, document: str) -> str | None:
    value = parse_date(raw)
    if value is None:
        return None
    return value.isoformat() if value in {d for _, d in find_dates(document)} else None


def _amount(raw: str, document: str) -> float | None:
    value = parse_amount(raw)
    if value is None:
        return None
    return float(value) if value in {v for _, v, _ in find_amounts(document)} else None


def _rate(raw: str, document: str) -> float | None:
    match = re.fullmatch(r"(\d{1,2}(?:[.,]\d{1,2})?)\s?%?", raw)
    if match is None:
        return None
    rate = float(match.group(1).replace(",", "."))
    printed = {
        float(m.group(1).replace(",", "."))
        for m in re.finditer(r"(?<![\d,.])(\d{1,2}(?:[.,]\d{1,2})?)\s?%", document)
    }
    return rate if 0 < rate <= 30 and rate in printed else None


def _currency(raw: str, document: str) -> str | None:
    code = raw.upper()
    if code not in _CURRENCIES:
        return None
    printed = {currency for _, _, currency in find_amounts(document) if currency is not None}
    return code if code in printed else None


def _iban(raw: str, document: str) -> str | None:
    found = find_ibans(raw.upper())
    if len(found) != 1:
        return None
    compact = found[0][1]
    if compact not in {iban for _, iban in find_ibans(document)}:
        return None
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _vat_id(raw: str, document: str) -> str | None:
    found = find_vat_ids(raw.upper())
    if len(found) != 1:
        return None
    printed = found[0][1]
    return printed if printed in {v for _, v in find_vat_ids(document)} else None


_GROUNDED: dict[str, Callable[[str, str], str | float | None]] = {
    "supplier": _name,
    "supplier_vat_id": _vat_id,
    "invoice_number": _reference,
    "issue_date": _date,
    "due_date": _date,
    "total_excl_vat": _amount,
    "vat_rate": _rate,
    "vat": _amount,
    "total_incl_vat": _amount,
    "currency": _currency,
    "iban": _iban,
}
