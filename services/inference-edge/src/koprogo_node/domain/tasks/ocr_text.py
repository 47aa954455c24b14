"""Repairs of what an OCR engine commonly misreads on a speckled scan. Pure.

Only confusions that no invoice means: a middle dot (`·`, a speck read as a character) is a
space; `!` right after a lower-case letter is an `l` (`Subtota!`); `1BAN` is `IBAN`; a colon
between thousands and cents (`3:180,00`) is the thousands dot. Digits are
never changed: a misread digit stays misread, for the checks to catch.
"""

from __future__ import annotations

import re

_REPAIRS = (
    (re.compile(r"[·•]"), " "),
    (re.compile(r"(?<=[a-z])!(?=\W|$)"), "l"),
    (re.compile(r"(?<![A-Za-z0-9])[1lI|]BAN(?=\b|[A-Z]{2}\d)"), "IBAN"),
    # A thousands dot read as a colon: `3:180,00` is `3.180,00` (a time has two digits after).
    (re.compile(r"(?<=\d)[:;](?=\d{3}[.,]\d{2}(?!\d))"), "."),
)


def repaired_ocr_text(text: str) -> str:
    for pattern, replacement in _REPAIRS:
        text = pattern.sub(replacement, text)
    return re.sub(r"\s{2,}", " ", text).strip()
