"""Reading a building's charges history for `predict_expenses`: formats accepted, and each kind
of bad input refused with the row at fault (CSV: 1-based line with the header; JSON: list index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_node.domain.tasks.expense_history import (
    ExpenseHistoryError,
    Month,
    history_from_csv,
    history_from_records,
    parse_month,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
TILLEULS = FIXTURES / "charges-les-tilleuls-2022-2024.csv"


def _long_csv(months: int = 8, categories: tuple[str, ...] = ("lift", "verwarming")) -> list[str]:
    lines = ["month,category,amount"]
    for index in range(months):
        month = Month(2023, 1).plus(index)
        for number, category in enumerate(categories):
            lines.append(f"{month},{category},{100 + 10 * number + index}.50")
    return lines


def _refusal(text: str) -> ExpenseHistoryError:
    with pytest.raises(ExpenseHistoryError) as caught:
        history_from_csv(text)
    return caught.value


def test_the_tilleuls_fixture_reads_as_36_contiguous_months_of_6_categories() -> None:
    history = history_from_csv(TILLEULS.read_text(encoding="utf-8"))

    assert len(history.months) == 36
    assert (str(history.months[0]), str(history.months[-1])) == ("2022-01", "2024-12")
    assert sorted(history.amounts) == [
        "ascenseur",
        "assurance",
        "chauffage",
        "electricite_communs",
        "honoraires_syndic",
        "nettoyage",
    ]
    assert history.amounts["chauffage"][0] == pytest.approx(4782.51)
    assert all(len(values) == 36 for values in history.amounts.values())


def test_amounts_written_the_belgian_way_are_read_from_a_semicolon_csv() -> None:
    lines = ["mois;catégorie;montant"]
    lines += [f"{month:02d}/2024;chauffage;{month} 512,50 €" for month in range(1, 7)]
    lines += [f"{month:02d}/2024;ascenseur;1.204,{month:02d}" for month in range(1, 7)]

    history = history_from_csv("\n".join(lines))

    assert history.amounts["chauffage"][0] == pytest.approx(1512.5)
    assert history.amounts["ascenseur"][5] == pytest.approx(1204.06)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2024-03", Month(2024, 3)), ("03/2024", Month(2024, 3)), ("3/2024", Month(2024, 3))],
)
def test_months_are_iso_or_month_slash_year(text: str, expected: Month) -> None:
    assert parse_month(text) == expected


@pytest.mark.parametrize("text", ["2024-13", "15/03/2024", "2024-03-01", "mars 2024", "24-03", "March"])
def test_other_month_notations_are_refused(text: str) -> None:
    assert parse_month(text) is None


def test_a_wide_belgian_csv_with_semicolons_reads_like_the_long_form() -> None:
    wide = ["maand;verwarming;lift;schoonmaak"]
    long = ["month,category,amount"]
    for index in range(7):
        month = Month(2024, 6).plus(index)
        amounts = (1000 + 150 * index + 0.25, 200 + index, 1234.5 + index)
        cells = [f"{amount:,.2f}".replace(",", " ").replace(".", ",") for amount in amounts]
        wide.append(f"{month.month:02d}/{month.year};" + ";".join(cells))
        long += [
            f"{month},{name},{amount:.2f}"
            for name, amount in zip(("verwarming", "lift", "schoonmaak"), amounts, strict=True)
        ]

    from_wide = history_from_csv("\n".join(wide) + "\n")
    from_long = history_from_csv("\n".join(long))

    assert from_wide == from_long
    assert from_wide.amounts["schoonmaak"][0] == pytest.approx(1234.5)
    assert str(from_wide.months[-1]) == "2024-12"


def test_rows_in_any_order_are_put_in_month_order() -> None:
    lines = _long_csv()
    shuffled = [lines[0], *reversed(lines[1:])]

    assert history_from_csv("\n".join(shuffled)) == history_from_csv("\n".join(lines))


def test_the_json_list_accepts_amount_or_amount_eur_numbers_or_text() -> None:
    records = [
        {"month": str(Month(2023, 5).plus(index)), "category": "water", "amount": 50 + index}
        for index in range(6)
    ]
    records += [
        {"month": str(Month(2023, 5).plus(index)), "category": "lift", "amount_eur": f"{1200 + index},50"}
        for index in range(6)
    ]

    history = history_from_records(records)

    assert history.amounts["water"] == (50.0, 51.0, 52.0, 53.0, 54.0, 55.0)
    assert history.amounts["lift"][5] == pytest.approx(1205.5)


def test_text_in_an_amount_is_refused_naming_its_line() -> None:
    lines = _long_csv()
    lines[6] = "2023-03,verwarming,environ 200"  # line 7 of the file

    error = _refusal("\n".join(lines))

    assert (error.row, error.field) == (7, "amount")
    assert "line 7" in error.message and "environ 200" in error.message


def test_a_negative_amount_is_refused_naming_its_line() -> None:
    lines = _long_csv()
    lines[9] = '2023-05,lift,"-35,00"'  # line 10; a Belgian decimal comma, quoted

    error = _refusal("\n".join(lines))

    assert error.row == 10
    assert "negative" in error.message and "line 10" in error.message


def test_a_duplicate_month_and_category_names_the_second_line_and_the_first() -> None:
    lines = _long_csv()
    lines.insert(12, "2023-02,lift,999.00")  # 2023-02 lift is line 4 already; this is line 13

    error = _refusal("\n".join(lines))

    assert error.row == 13
    assert "line 4" in error.message


def test_a_missing_month_is_refused_naming_the_first_line_after_the_gap() -> None:
    lines = [line for line in _long_csv() if not line.startswith("2023-04")]  # lines 8 and 9 gone

    error = _refusal("\n".join(lines))

    assert error.row == 8  # 2023-05's first line, now line 8
    assert "2023-04 is missing" in error.message


def test_a_category_missing_one_month_is_refused_naming_that_month() -> None:
    lines = [line for line in _long_csv() if line != "2023-06,verwarming,115.50"]

    error = _refusal("\n".join(lines))

    assert error.row == 12  # the first line of 2023-06
    assert error.field == "verwarming" and "2023-06" in error.message


def test_an_empty_cell_in_a_wide_csv_names_its_line_and_category() -> None:
    lines = ["month,lift,water"] + [f"2024-{month:02d},100,20" for month in range(1, 9)]
    lines[5] = "2024-05,100,"

    error = _refusal("\n".join(lines))

    assert (error.row, error.field) == (6, "water")


def test_an_unknown_date_format_is_refused_naming_its_line() -> None:
    lines = _long_csv()
    lines[3] = "15/02/2023,lift,101.50"

    error = _refusal("\n".join(lines))

    assert (error.row, error.field) == (4, "month")
    assert "15/02/2023" in error.message


@pytest.mark.parametrize(
    "text", ["", "\ufeff\n\n", "month,category,amount\n", "month,category,amount\n\n,,\n"]
)
def test_an_empty_csv_is_refused_at_line_1(text: str) -> None:
    assert _refusal(text).row == 1


def test_a_csv_without_a_month_header_is_refused_at_line_1() -> None:
    error = _refusal("2024-01,lift,100\n2024-02,lift,100\n")

    assert error.row == 1 and "header" in error.message


def test_a_history_shorter_than_six_months_is_refused() -> None:
    error = _refusal("\n".join(_long_csv(months=5)))

    assert "at least 6" in error.message


@pytest.mark.parametrize(
    ("records", "row", "field"),
    [
        (
            [
                {"month": "2024-01", "category": "lift", "amount": 10},
                {"month": "2024-02", "category": "lift"},
            ],
            1,
            "amount",
        ),
        ([{"month": "2024-01", "category": "lift", "amount": "veel"}], 0, "amount"),
        (
            [
                {"month": "2024-01", "category": "lift", "amount": 1},
                {"month": "2024/02", "category": "lift", "amount": 1},
            ],
            1,
            "month",
        ),
        (
            [
                {"month": "2024-01", "category": "lift", "amount": 1},
                {"month": "2024-01", "category": "lift", "amount": 2},
            ],
            1,
            None,
        ),
        (
            [
                {"month": "2024-01", "category": "lift", "amount": 1},
                {"month": "2024-02", "category": "lift", "amount": -3},
            ],
            1,
            "amount",
        ),
        ([{"month": "2024-01", "category": "", "amount": 1}], 0, "category"),
        ([{"month": "2024-01", "category": "lift", "amount": True}], 0, "amount"),
        (["2024-01,lift,1"], 0, None),
    ],
)
def test_bad_json_entries_are_refused_naming_their_index(
    records: list[object], row: int, field: str | None
) -> None:
    with pytest.raises(ExpenseHistoryError) as caught:
        history_from_records(records)

    assert (caught.value.row, caught.value.field) == (row, field)
    assert f"history[{row}]" in caught.value.message


def test_an_empty_json_list_is_refused() -> None:
    with pytest.raises(ExpenseHistoryError, match="empty") as caught:
        history_from_records([])

    assert caught.value.field == "history"
