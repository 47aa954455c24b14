"""A co-owner's share of a charge: amount x their quotités / the building's quotités (plain arithmetic)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation


def parse_decimal(value: str) -> Decimal:
    """A number as people write it here: `1 234,56`, `1234.56` or `1.234,56`."""
    cleaned = value.replace("\u00a0", "").replace(" ", "").replace("€", "")
    if "," in cleaned:
        cleaned = cleaned.replace(".", "").replace(",", ".")
    try:
        number = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a number: {value!r}")
    return number


def charge_share(amount: Decimal, quotites: Decimal, total_quotites: Decimal) -> Decimal:
    """The part of `amount` owed for `quotites` out of `total_quotites`, to the cent."""
    if total_quotites <= 0 or quotites < 0 or quotites > total_quotites:
        raise ValueError("quotités must be between 0 and the total, and the total positive")
    return (amount * quotites / total_quotites).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
