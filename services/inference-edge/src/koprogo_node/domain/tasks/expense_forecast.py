"""What an expense forecast is, and how the per-category forecasts become the result (pure).

The engine (`adapters.tasks.forecaster`) fills `SeriesForecast`s; the rules here make the
task's JSON: months named, amounts in cents, nothing below zero, and a total whose mean is the
sum of the categories' means while its intervals come from a model of the summed series (the
categories move together — a cold winter raises heating and electricity at once — so adding
their interval bounds, or their variances as if independent, would both be wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from koprogo_node.domain.tasks.expense_history import ExpenseHistory, Month

DEFAULT_HORIZON_MONTHS = 12
MAX_HORIZON_MONTHS = 60


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """One future month: the expected amount and its 80 % and 95 % prediction intervals."""

    mean: float
    lower_80: float
    upper_80: float
    lower_95: float
    upper_95: float


@dataclass(frozen=True, slots=True)
class SeriesForecast:
    """A series' forecast, one point per future month, and the model that made it."""

    model: str
    seasonal: bool
    points: tuple[ForecastPoint, ...]


def forecast_months(history: ExpenseHistory, horizon: int) -> list[Month]:
    last = history.months[-1]
    return [last.plus(step) for step in range(1, horizon + 1)]


def summed_series(history: ExpenseHistory) -> tuple[float, ...]:
    """The building's monthly total over every category (what the total's intervals are fitted on)."""
    columns = list(history.amounts.values())
    return tuple(sum(column[index] for column in columns) for index in range(len(history.months)))


def total_forecast(categories: Sequence[SeriesForecast], summed: SeriesForecast) -> list[ForecastPoint]:
    """Mean: the sum of the categories' means (the table adds up). Intervals: the summed series'
    own interval, shifted onto that mean (its distances below and above its own mean kept)."""
    points = []
    for step, summed_point in enumerate(summed.points):
        mean = sum(category.points[step].mean for category in categories)
        shift = mean - summed_point.mean
        points.append(
            ForecastPoint(
                mean=mean,
                lower_80=summed_point.lower_80 + shift,
                upper_80=summed_point.upper_80 + shift,
                lower_95=summed_point.lower_95 + shift,
                upper_95=summed_point.upper_95 + shift,
            )
        )
    return points


def forecast_result(
    history: ExpenseHistory,
    horizon: int,
    categories: Mapping[str, SeriesForecast],
    total: Sequence[ForecastPoint],
    method: str,
) -> dict[str, Any]:
    """The task's JSON result (amounts in euro cents, never below zero, bounds ordered)."""
    months = forecast_months(history, horizon)
    return {
        "horizon_months": horizon,
        "history_months": len(history.months),
        "first_forecast_month": str(months[0]),
        "method": method,
        "categories": {
            name: {
                "model": forecast.model,
                "seasonal": forecast.seasonal,
                "forecast": [
                    _point_json(month, point) for month, point in zip(months, forecast.points, strict=True)
                ],
            }
            for name, forecast in categories.items()
        },
        "total": [_point_json(month, point) for month, point in zip(months, total, strict=True)],
    }


def _point_json(month: Month, point: ForecastPoint) -> dict[str, Any]:
    # Charges were checked non-negative, so a bound below zero is the normal approximation's
    # tail, not a possible amount: clip at 0. Sorting guards the order after rounding.
    mean = _cents(point.mean)
    lower_95, lower_80 = sorted((_cents(point.lower_95), _cents(point.lower_80)))
    upper_80, upper_95 = sorted((_cents(point.upper_80), _cents(point.upper_95)))
    return {
        "month": str(month),
        "mean": mean,
        "lower_80": min(lower_80, mean),
        "upper_80": max(upper_80, mean),
        "lower_95": min(lower_95, mean),
        "upper_95": max(upper_95, mean),
    }


def _cents(amount: float) -> float:
    return round(max(amount, 0.0), 2)
