"""What an extracted invoice is checked for, and the result the `ocr_invoice` task returns. Pure.

A failed check is reported, never repaired: the values stay as they were read, so the syndic
sees both what the document says and that it does not add up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from koprogo_node.domain.tasks.iban import iban_checksum_ok
from koprogo_node.domain.tasks.invoice_fields import FIELD_NAMES, FoundField

# Totals are printed to the cent; the VAT of a sum of lines may differ by a few cents from the
# rate applied to the sum (each line's VAT rounded), hence a wider margin for the rate check.
TOTALS_TOLERANCE = 0.01
VAT_RATE_TOLERANCE = 0.05

CheckOutcome = Literal["ok", "failed", "missing", "incomplete"]


def check_fields(fields: Mapping[str, FoundField]) -> dict[str, CheckOutcome]:
    return {
        "iban_checksum": _iban_check(fields),
        "totals": _totals_check(fields),
        "vat_rate": _vat_rate_check(fields),
    }


def _iban_check(fields: Mapping[str, FoundField]) -> CheckOutcome:
    iban = fields.get("iban")
    if iban is None:
        return "missing"
    return "ok" if iban_checksum_ok(str(iban.value)) else "failed"


def _number(fields: Mapping[str, FoundField], name: str) -> float | None:
    found = fields.get(name)
    return None if found is None or not isinstance(found.value, float) else found.value


def _totals_check(fields: Mapping[str, FoundField]) -> CheckOutcome:
    excl, vat, incl = (_number(fields, n) for n in ("total_excl_vat", "vat", "total_incl_vat"))
    if excl is None or vat is None or incl is None:
        return "incomplete"
    return "ok" if abs(excl + vat - incl) <= TOTALS_TOLERANCE + 1e-9 else "failed"


def _vat_rate_check(fields: Mapping[str, FoundField]) -> CheckOutcome:
    rate, excl, vat = (_number(fields, n) for n in ("vat_rate", "total_excl_vat", "vat"))
    if rate is None or excl is None or vat is None:
        return "incomplete"
    return "ok" if abs(excl * rate / 100 - vat) <= VAT_RATE_TOLERANCE + 1e-9 else "failed"


def invoice_result(
    fields: Mapping[str, FoundField], text_source: Literal["pdf_text", "ocr"], pages: int
) -> dict[str, Any]:
    """The task's result: fields found (with confidence and source), the names of those missing,
    the checks, how the text was read and how many pages it had."""
    return {
        "fields": {
            name: {
                "value": fields[name].value,
                "confidence": fields[name].confidence,
                "source": fields[name].source,
            }
            for name in FIELD_NAMES
            if name in fields
        },
        "missing": [name for name in FIELD_NAMES if name not in fields],
        "checks": check_fields(fields),
        "text_source": text_source,
        "pages": pages,
    }
