"""IBANs and VAT ids as invoices print them: found, checked, written in their usual form.

Pure functions, no I/O. A checksum is verified and reported, never used to alter what was read.
"""

from __future__ import annotations

import re

# Lengths of the IBANs of the countries whose suppliers a Belgian building meets most.
_IBAN_LENGTHS = {
    "BE": 16,
    "FR": 27,
    "NL": 18,
    "LU": 20,
    "DE": 22,
    "GB": 22,
    "ES": 24,
    "IT": 27,
    "CH": 21,
    "AT": 20,
    "PT": 25,
    "IE": 22,
    "MC": 27,
}
# Countries whose IBAN implies an account in euros (the euro area, and Monaco).
EURO_AREA = frozenset("AT BE CY DE EE ES FI FR GR HR IE IT LT LU LV MC MT NL PT SI SK".split())
# Printed in groups of four, or compact; the groups may run into the next word (`BIC`), so a
# match is cut to its country's length afterwards.
# Glued to `IBAN` is fine: OCR drops spaces (`IBANBE68...`, read `1BAN` too).
# A dot between groups is a speck OCR read, or a printer's habit.
_IBAN = re.compile(
    r"(?:(?<![A-Z0-9])|(?<=BAN))(?P<country>[A-Z]{2})\s?(?P<check>\d{2})(?P<rest>(?:[\s.]?[A-Z0-9]{1,4}){3,8})"
)
# Countries whose account part is digits only: a letter there means the match ran into a word.
_DIGITS_ONLY = frozenset("AT BE DE DK EE ES FI HR LT NO PL PT SE SI SK".split())

_BE_VAT = re.compile(
    r"(?:(?<![A-Z0-9])|(?<=TVA)|(?<=BTW)|(?<=VAT))BE\s?[.:-]?\s?(?P<digits>[01]?\s?\d{3}[.\s]?\d{3}[.\s]?\d{3})(?![\d])",
    re.IGNORECASE,
)
# A Belgian enterprise number printed without its `BE` (`ondernemingsnummer 0456.789.123`).
_BE_ENTERPRISE = re.compile(r"(?<![\d.])(?P<digits>[01]\d{3}\.\d{3}\.\d{3})(?![\d])")
# After its label, the number's dots may be missing (OCR, or a habit): `ondernemingsnummer0834.567890`.
_BE_ENTERPRISE_LABELLED = re.compile(
    r"(?:ondernemingsn\w*|kbo|bce|n°\s*d'entreprise|numero\s+d'entreprise|enterprise\s+n\w*)\W*"
    r"(?P<digits>[01]\d{3}[.\s]?\d{3}[.\s]?\d{3})(?!\d)",
    re.IGNORECASE,
)
_FR_VAT = re.compile(r"(?<![A-Z0-9])FR\s?(?P<key>[0-9A-HJ-NP-Z]{2})\s?(?P<siren>\d{3}\s?\d{3}\s?\d{3})(?!\d)")
_NL_VAT = re.compile(r"(?<![A-Z0-9])NL\s?(?P<number>\d{9})\s?B\s?(?P<suffix>\d{2})(?!\d)")
_LU_VAT = re.compile(r"(?<![A-Z0-9])LU\s?(?P<number>\d{8})(?!\d)")
_DE_VAT = re.compile(r"(?<![A-Z0-9])DE\s?(?P<number>\d{9})(?!\d)")


def compact_iban(text: str) -> str:
    return re.sub(r"[\s.]", "", text).upper()


def format_iban(iban: str) -> str:
    """`BE71096123456769` -> `BE71 0961 2345 6769`."""
    compact = compact_iban(iban)
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def iban_checksum_ok(iban: str) -> bool:
    """ISO 13616: the IBAN, its first four characters moved to the end, letters as 10..35, mod 97 = 1."""
    compact = compact_iban(iban)
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{8,30}", compact):
        return False
    expected = _IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def find_ibans(text: str) -> list[tuple[tuple[int, int], str]]:
    """IBANs in `text` (span, compact form), checksum good or not: a bad one is still reported."""
    found: list[tuple[tuple[int, int], str]] = []
    position = 0
    while (match := _IBAN.search(text, position)) is not None:
        position = match.start() + 1
        country = match.group("country")
        compact = compact_iban(match.group(0))
        expected = _IBAN_LENGTHS.get(country)
        if expected is None:
            if not iban_checksum_ok(compact):
                continue  # an unknown country and no checksum: likely not an IBAN at all
        elif len(compact) < expected:
            continue
        else:
            compact = compact[:expected]
            if country in _DIGITS_ONLY and not compact[4:].isdigit():
                continue
        span = (match.start(), _end_of(text, match.start(), len(compact)))
        found.append((span, compact))
        # The next IBAN may start inside what the greedy groups took.
        position = span[1]
    return found


def _end_of(text: str, start: int, characters: int) -> int:
    """Where the `characters`-th character from `start` ends, spaces and dots not counted."""
    seen = 0
    for index in range(start, len(text)):
        if not text[index].isspace() and text[index] != ".":
            seen += 1
            if seen == characters:
                return index + 1
    return len(text)


def find_vat_ids(text: str) -> list[tuple[tuple[int, int], str]]:
    """VAT ids (span, usual printed form): `BE 0456.789.123`, `FR 12 345678901`, `NL123456789B01`..."""
    found: list[tuple[tuple[int, int], str]] = []
    for match in _BE_VAT.finditer(text):
        digits = re.sub(r"\D", "", match.group("digits"))
        found.append((match.span(), format_be_vat(digits)))
    for pattern in (_BE_ENTERPRISE, _BE_ENTERPRISE_LABELLED):
        for match in pattern.finditer(text):
            start, end = match.span("digits")
            if not any(s <= start < e or start <= s < end for (s, e), _ in found):
                found.append(((start, end), format_be_vat(re.sub(r"\D", "", match.group("digits")))))
    for match in _FR_VAT.finditer(text):
        siren = re.sub(r"\D", "", match.group("siren"))
        found.append((match.span(), f"FR {match.group('key')} {siren}"))
    for match in _NL_VAT.finditer(text):
        found.append((match.span(), f"NL{match.group('number')}B{match.group('suffix')}"))
    for match in _LU_VAT.finditer(text):
        found.append((match.span(), f"LU{match.group('number')}"))
    for match in _DE_VAT.finditer(text):
        found.append((match.span(), f"DE{match.group('number')}"))
    found.sort()
    return found


def format_be_vat(digits: str) -> str:
    """`0456789123` or the old 9-digit `456789123` -> `BE 0456.789.123`."""
    ten = digits.zfill(10)
    return f"BE {ten[:4]}.{ten[4:7]}.{ten[7:]}"
