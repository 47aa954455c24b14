"""`predict_expenses` end to end through its executor, with real statsmodels fits: coverage of
held-out months, seasonality, determinism, other buildings (short, long with a trend), the JSON
and wide-CSV inputs, and refusals that name the row."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest

from koprogo_node.adapters.tasks.forecaster import StatsmodelsExpenseForecaster
from koprogo_node.domain.tasks.expense_history import Month, history_from_csv
from koprogo_node.service_layer.tasks.executor import (
    CSV,
    TEXT,
    TaskCancelledError,
    TaskDocument,
    TaskInputError,
    TaskRun,
)
from koprogo_node.service_layer.tasks.predict_expenses import PredictExpensesExecutor

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
TILLEULS = FIXTURES / "charges-les-tilleuls-2022-2024.csv"
BOUNDS = ("lower_95", "lower_80", "mean", "upper_80", "upper_95")


@pytest.fixture(scope="module")
def executor() -> PredictExpensesExecutor:
    return PredictExpensesExecutor(StatsmodelsExpenseForecaster())


def _csv_document(lines: list[str]) -> TaskDocument:
    return TaskDocument(("\n".join(lines) + "\n").encode(), CSV, "charges.csv")


def _records(series: dict[str, list[float]], start: Month) -> list[dict[str, Any]]:
    return [
        {"month": str(start.plus(index)), "category": name, "amount": round(amount, 2)}
        for name, values in series.items()
        for index, amount in enumerate(values)
    ]


def _coverage(result: dict[str, Any], actual: dict[str, list[float]]) -> tuple[int, int, int]:
    """(categories whose 95 % intervals hold every held-out month, held-out points inside the 95 %
    interval, points inside the 80 % interval)."""
    categories_95 = points_95 = points_80 = 0
    for name, values in actual.items():
        forecast = result["categories"][name]["forecast"]
        inside_95 = [p["lower_95"] <= v <= p["upper_95"] for p, v in zip(forecast, values, strict=True)]
        points_95 += sum(inside_95)
        points_80 += sum(p["lower_80"] <= v <= p["upper_80"] for p, v in zip(forecast, values, strict=True))
        categories_95 += all(inside_95)
    return categories_95, points_95, points_80


def _other_building(months: int, seed: int, yearly_growth: float) -> dict[str, list[float]]:
    """A Flemish building's charges: heating (seasonal, gas), water, lift, cleaning, with noise."""
    rng = random.Random(seed)
    series: dict[str, list[float]] = {"verwarming": [], "water": [], "lift": [], "schoonmaak": []}
    for index in range(months):
        growth = (1 + yearly_growth) ** (index / 12)
        winter = math.cos(2 * math.pi * (index % 12) / 12)  # 1 in January, -1 in July
        series["verwarming"].append(growth * (2600 + 1900 * winter) * rng.gauss(1, 0.06))
        series["water"].append(growth * 380 * rng.gauss(1, 0.05))
        series["lift"].append(growth * 190 + rng.gauss(0, 12))
        series["schoonmaak"].append(growth * 820 * rng.gauss(1, 0.04))
    return series


async def test_tilleuls_held_out_quarter_lies_inside_the_intervals(executor: PredictExpensesExecutor) -> None:
    history = history_from_csv(TILLEULS.read_text(encoding="utf-8"))
    fit_months = 33
    first_33 = _records(
        {name: list(values[:fit_months]) for name, values in history.amounts.items()}, history.months[0]
    )
    held_out = {name: list(values[fit_months:]) for name, values in history.amounts.items()}

    output = await executor.run(TaskRun({"history": first_33, "horizon_months": 3}))
    result = output.result

    assert (result["history_months"], result["first_forecast_month"]) == (33, "2024-10")
    categories_95, points_95, points_80 = _coverage(result, held_out)
    assert categories_95 >= 5, result["categories"]
    assert points_95 >= 17  # of 18 held-out months
    assert points_80 >= 12  # of 18: an 80 % interval should miss about 4 of them
    assert result["categories"]["chauffage"]["seasonal"] is True


async def test_tilleuls_full_forecast_has_a_seasonal_heating_and_a_coherent_total(
    executor: PredictExpensesExecutor,
) -> None:
    started = time.process_time()
    output = await executor.run(TaskRun({}, TaskDocument(TILLEULS.read_bytes(), CSV)))
    cpu_seconds = time.process_time() - started
    result = output.result

    assert (result["horizon_months"], result["history_months"], result["first_forecast_month"]) == (
        12,
        36,
        "2025-01",
    )
    heating = result["categories"]["chauffage"]
    assert heating["seasonal"] is True and "seasonal 12" in heating["model"]
    by_month = {point["month"]: point["mean"] for point in heating["forecast"]}
    winter = (by_month["2025-01"] + by_month["2025-02"] + by_month["2025-12"]) / 3
    summer = (by_month["2025-06"] + by_month["2025-07"] + by_month["2025-08"]) / 3
    assert winter > 3 * summer
    assert [point["month"] for point in result["total"]] == [f"2025-{month:02d}" for month in range(1, 13)]
    for step, point in enumerate(result["total"]):
        assert [point[key] for key in BOUNDS] == sorted(point[key] for key in BOUNDS)
        summed = sum(category["forecast"][step]["mean"] for category in result["categories"].values())
        assert point["mean"] == pytest.approx(summed, abs=0.05)
    for category in result["categories"].values():
        for point in category["forecast"]:
            assert [point[key] for key in BOUNDS] == sorted(point[key] for key in BOUNDS)
            assert point["lower_95"] >= 0 and round(point["mean"], 2) == point["mean"]
    # 7 series (6 categories and the total) on 36 months: about 0.6 s of CPU on the dev box. CPU,
    # not wall time, so that other work on the machine does not make this fail.
    assert cpu_seconds < 4


async def test_the_same_input_twice_gives_the_same_result(executor: PredictExpensesExecutor) -> None:
    document = TaskDocument(TILLEULS.read_bytes(), CSV)

    first = await executor.run(TaskRun({"horizon_months": 24}, document))
    second = await executor.run(TaskRun({"horizon_months": 24}, document))

    assert first.result == second.result
    assert len(first.result["total"]) == 24


async def test_48_month_buildings_with_a_trend_are_forecast_inside_their_intervals(
    executor: PredictExpensesExecutor,
) -> None:
    # Three buildings drawn from the same process: one draw can be unlucky, the rate over 72
    # held-out months says whether the intervals are calibrated (95 % should hold ~68 of them).
    points_95 = points_80 = 0
    for seed in (1, 2, 3):
        series = _other_building(54, seed=seed, yearly_growth=0.06)
        fit = {name: values[:48] for name, values in series.items()}
        held_out = {name: values[48:] for name, values in series.items()}

        output = await executor.run(TaskRun({"history": _records(fit, Month(2021, 1)), "horizon_months": 6}))
        result = output.result

        assert result["first_forecast_month"] == "2025-01"
        assert result["categories"]["verwarming"]["seasonal"] is True
        _, inside_95, inside_80 = _coverage(result, held_out)
        points_95, points_80 = points_95 + inside_95, points_80 + inside_80
        # Charges that grew 6 % a year are forecast above their 4-year mean, near the last year's.
        water = [point["mean"] for point in result["categories"]["water"]["forecast"]]
        assert sum(water) / 6 > sum(fit["water"]) / 48
        assert sum(water) / 6 > 0.97 * sum(fit["water"][-12:]) / 12
    assert points_95 >= 62 and points_80 >= 48  # of 72: 86 % and 67 %


async def test_18_month_buildings_get_non_seasonal_forecasts_with_honest_intervals(
    executor: PredictExpensesExecutor,
) -> None:
    points_95 = points_80 = 0
    for seed in range(5):
        series = _other_building(30, seed=seed, yearly_growth=0.03)
        fit = {name: values[:18] for name, values in series.items()}
        held_out = {name: values[18:] for name, values in series.items()}
        lines = ["maand;verwarming;water;lift;schoonmaak"]
        for index in range(18):
            month = Month(2023, 1).plus(index)
            cells = [f"{fit[name][index]:.2f}".replace(".", ",") for name in series]
            lines.append(f"{month.month:02d}/{month.year};" + ";".join(cells))

        output = await executor.run(TaskRun({"horizon_months": 12}, _csv_document(lines)))
        result = output.result

        assert (result["history_months"], result["first_forecast_month"]) == (18, "2024-07")
        heating = result["categories"]["verwarming"]
        assert heating["seasonal"] is False and "short history" in heating["model"]
        # No season is modelled, so the 95 % band must hold the coming winter and summer alike.
        assert all(point["lower_95"] < 1000 and point["upper_95"] > 4500 for point in heating["forecast"])
        _, inside_95, inside_80 = _coverage(result, held_out)
        points_95, points_80 = points_95 + inside_95, points_80 + inside_80
    assert points_95 >= 216 and points_80 >= 168  # of 240: 90 % and 70 %


async def test_the_wide_csv_gives_the_same_forecast_as_the_long_one(
    executor: PredictExpensesExecutor,
) -> None:
    history = history_from_csv(TILLEULS.read_text(encoding="utf-8"))
    names = list(history.amounts)
    lines = ["month," + ",".join(names)]
    for index, month in enumerate(history.months):
        lines.append(
            f"{month},"
            + ",".join(f'"{history.amounts[name][index]:.2f}"'.replace(".", ",") for name in names)
        )

    wide = await executor.run(TaskRun({"horizon_months": 6}, _csv_document(lines)))
    long = await executor.run(TaskRun({"horizon_months": 6}, TaskDocument(TILLEULS.read_bytes(), CSV)))

    assert wide.result == long.result


@pytest.mark.parametrize(
    ("replace", "row", "words"),
    [
        ({5: "2022-01,nettoyage,cinq cents"}, 5, "not a number"),
        ({8: "2022-02,chauffage,-4353.82"}, 8, "negative"),
        ({14: "2022-02,honoraires_syndic,516.81"}, 14, "already appears at line 13"),
        ({20: "2022/04/01,chauffage,2667.66"}, 20, "not YYYY-MM"),
    ],
)
async def test_bad_fixture_rows_are_refused_naming_the_line(
    executor: PredictExpensesExecutor, replace: dict[int, str], row: int, words: str
) -> None:
    lines = TILLEULS.read_text(encoding="utf-8").splitlines()
    for line_number, text in replace.items():
        lines[line_number - 1] = text

    with pytest.raises(TaskInputError, match=words) as caught:
        await executor.run(TaskRun({}, _csv_document(lines)))

    assert caught.value.row == row and f"line {row}" in caught.value.message


async def test_a_missing_month_in_the_fixture_names_the_first_line_after_the_gap(
    executor: PredictExpensesExecutor,
) -> None:
    lines = [
        line for line in TILLEULS.read_text(encoding="utf-8").splitlines() if not line.startswith("2023-07")
    ]

    with pytest.raises(TaskInputError, match="2023-07 is missing") as caught:
        await executor.run(TaskRun({}, _csv_document(lines)))

    assert caught.value.row == 1 + 18 * 6 + 1  # header, Jan 2022 to Jun 2023, then 2023-08's first line


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"horizon_months": 0}, "horizon_months"),
        ({"horizon_months": 61}, "horizon_months"),
        ({"horizon_months": "12"}, "horizon_months"),
        ({}, "history"),
        ({"history": []}, "history"),
        ({"history": "2024-01,lift,1"}, "history"),
    ],
)
async def test_bad_parameters_are_refused(
    executor: PredictExpensesExecutor, parameters: dict[str, Any], field: str
) -> None:
    with pytest.raises(TaskInputError) as caught:
        await executor.run(TaskRun(parameters))

    assert caught.value.field == field


async def test_a_bad_json_entry_is_refused_naming_its_index(executor: PredictExpensesExecutor) -> None:
    records = _records({"lift": [190.0 + index for index in range(12)]}, Month(2024, 1))
    records[7]["amount"] = "n/a"

    with pytest.raises(TaskInputError, match=r"history\[7\]") as caught:
        await executor.run(TaskRun({"history": records}))

    assert caught.value.row == 7


async def test_a_set_cancel_flag_stops_the_run(executor: PredictExpensesExecutor) -> None:
    run = TaskRun({}, TaskDocument(TILLEULS.read_bytes(), CSV))
    run.cancelled.set()

    with pytest.raises(TaskCancelledError):
        await executor.run(run)


async def test_a_json_list_uploaded_as_a_file_reads_like_the_parameter(
    executor: PredictExpensesExecutor,
) -> None:
    records = _records(_other_building(26, seed=4, yearly_growth=0.02), Month(2023, 1))
    document = TaskDocument(json.dumps(records, indent=1).encode(), TEXT, "charges.json")

    from_file = await executor.run(TaskRun({"horizon_months": 3}, document))
    from_parameter = await executor.run(TaskRun({"history": records, "horizon_months": 3}))

    assert from_file.result == from_parameter.result
    assert from_file.result["first_forecast_month"] == "2025-03"


async def test_a_broken_json_file_is_refused_naming_its_line(executor: PredictExpensesExecutor) -> None:
    text = '[\n {"month": "2024-01", "category": "lift", "amount": 1},\n {"month": "2024-02",,}\n]'

    with pytest.raises(TaskInputError, match="line 3") as caught:
        await executor.run(TaskRun({}, TaskDocument(text.encode(), TEXT)))

    assert caught.value.row == 3


async def test_a_fixed_fee_and_an_occasional_works_category_are_forecast_without_negatives(
    executor: PredictExpensesExecutor,
) -> None:
    rng = random.Random(5)
    series = {
        "syndic fee": [450.0] * 30,
        "works": [
            rng.choice((0.0, 0.0, 0.0, 0.0, 1800.0)) + (120.0 if index % 6 == 0 else 0.0)
            for index in range(30)
        ],
        "lift": [190 + rng.gauss(0, 9) for _ in range(30)],
    }

    output = await executor.run(TaskRun({"history": _records(series, Month(2022, 7))}))
    result = output.result

    fee = result["categories"]["syndic fee"]
    assert fee["model"].startswith("constant")
    assert {(p["lower_95"], p["mean"], p["upper_95"]) for p in fee["forecast"]} == {(450.0, 450.0, 450.0)}
    works = result["categories"]["works"]["forecast"]
    assert all(p["lower_95"] >= 0 for p in works) and max(p["upper_95"] for p in works) > 1800
    for step, point in enumerate(result["total"]):
        assert point["mean"] == pytest.approx(
            sum(c["forecast"][step]["mean"] for c in result["categories"].values()), abs=0.05
        )
