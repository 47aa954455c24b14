"""Amounts and dates written the Belgian, French, Dutch and English way."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from koprogo_node.domain.tasks.local_formats import find_amounts, find_dates, parse_amount, parse_date


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 512,50 €", "1512.50"),
        ("€ 1.512,50", "1512.50"),
        ("1.512,50 EUR", "1512.50"),
        ("1,512.50", "1512.50"),
        ("$1,512.50", "1512.50"),
        ("1512.50", "1512.50"),
        ("1512,50", "1512.50"),
        ("18 450", "18450"),
        ("18.450", "18450"),
        ("48 310,22", "48310.22"),
        ("1\u00a0512,50\u202f€", "1512.50"),
        ("1.234.567,89 EUR", "1234567.89"),
        ("262,5", "262.5"),
        ("0,125", "0.125"),
        ("-12,50 €", "-12.50"),
        ("1.512,50EUR", "1512.50"),
        ("10 324,50 euros", "10324.50"),
        ("2.200.00", "2200.00"),
        ("1 512.50", "1512.50"),
    ],
)
def test_amounts_in_every_local_format_parse_to_the_same_decimal(text: str, expected: str) -> None:
    assert parse_amount(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["", "abc", "12 abc", "14/03/2025", "F-2025-0142", "21 %"])
def test_what_is_not_one_amount_parses_to_none(text: str) -> None:
    assert parse_amount(text) is None


def test_find_amounts_skips_dates_references_and_percentages_and_keeps_currencies() -> None:
    text = (
        "Facture F-2025-0142 du 14/03/2025 : total 1 512,50 € dont TVA 21 % 262,50 EUR ; "
        "budget 2025 49 500 €, fonds de réserve 7 %, 3 465 $."
    )
    found = [(value, currency) for _, value, currency in find_amounts(text)]
    assert found == [
        (Decimal("1512.50"), "EUR"),
        (Decimal("262.50"), "EUR"),
        (Decimal("2025"), None),
        (Decimal("49500"), "EUR"),
        (Decimal("3465"), "USD"),
    ]


def test_find_amounts_spans_cover_the_amount_and_its_currency() -> None:
    text = "Te betalen: € 1.512,50 vóór 13 april 2025"
    [(span, value, currency)] = find_amounts(text)
    assert text[span[0] : span[1]] == "€ 1.512,50"
    assert (value, currency) == (Decimal("1512.50"), "EUR")


@pytest.mark.parametrize(
    "text",
    [
        "14/03/2025",
        "14-03-2025",
        "14.03.2025",
        "14 / 03 / 2025",
        "14/03/25",
        "2025-03-14",
        "14 mars 2025",
        "14 Mars 2025",
        "14 maart 2025",
        "14 MAART 2025",
        "14 mrt. 2025",
        "March 14, 2025",
        "Mar 14 2025",
        "14th March 2025",
        "14 March 2025",
        "03/14/2025",
    ],
)
def test_dates_in_every_local_format_parse_to_the_same_day(text: str) -> None:
    assert parse_date(text) == date(2025, 3, 14)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1er avril 2025", date(2025, 4, 1)),
        ("13 févr. 2025", date(2025, 2, 13)),
        ("13 fevrier 2025", date(2025, 2, 13)),
        ("1 août 2025", date(2025, 8, 1)),
        ("1 aout 2025", date(2025, 8, 1)),
        ("31 décembre 2024", date(2024, 12, 31)),
        ("1ste mei 2025", date(2025, 5, 1)),
        ("30 juni 2025", date(2025, 6, 30)),
        ("17 oktober 2025", date(2025, 10, 17)),
        ("April 1st, 2025", date(2025, 4, 1)),
        ("05/06/2025", date(2025, 6, 5)),
        ("Aprl 13, 2025", date(2025, 4, 13)),  # OCR lost a letter: one month is that close
        ("3februari2025", date(2025, 2, 3)),  # OCR lost the spaces
    ],
)
def test_month_names_in_french_dutch_and_english_and_day_first_numbers(text: str, expected: date) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    "text", ["30 février 2025", "32/01/2025", "13/13/2025", "14 foo 2025", "14 jui 2025", "2025", ""]
)
def test_impossible_or_absent_dates_parse_to_none(text: str) -> None:
    assert parse_date(text) is None


def test_find_dates_returns_each_date_once_in_reading_order() -> None:
    text = "Date : 14/03/2025 — Échéance : 13 avril 2025 (période 2025-01-01 au 31.03.2025)"
    found = find_dates(text)
    assert [value for _, value in found] == [
        date(2025, 3, 14),
        date(2025, 4, 13),
        date(2025, 1, 1),
        date(2025, 3, 31),
    ]
    span, _ = found[1]
    assert text[span[0] : span[1]] == "13 avril 2025"
