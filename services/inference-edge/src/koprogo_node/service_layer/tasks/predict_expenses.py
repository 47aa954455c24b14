"""`predict_expenses`: a building's monthly charges per category → the next months' forecast.

Input: `history` in the parameters (a JSON list of {month, category, amount|amount_eur}) or a
document: a CSV (long `month,category,amount` or wide `month,<category>,...`) or that JSON list
as a file; `horizon_months`
(1..60, default 12). Result: per category and for the building's total, each future month's
mean with 80 % and 95 % intervals (docs/tasks/predict_expenses.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar, Protocol

from koprogo_node.domain.tasks.expense_forecast import (
    DEFAULT_HORIZON_MONTHS,
    MAX_HORIZON_MONTHS,
    SeriesForecast,
    forecast_result,
    summed_series,
    total_forecast,
)
from koprogo_node.domain.tasks.expense_history import (
    ExpenseHistory,
    ExpenseHistoryError,
    history_from_csv,
    history_from_records,
)
from koprogo_node.service_layer.tasks.executor import (
    CSV,
    TEXT,
    TaskCancelledError,
    TaskDocument,
    TaskExecutor,
    TaskInputError,
    TaskOutput,
    TaskRun,
)

log = logging.getLogger(__name__)

METHOD = (
    "ETS exponential smoothing (statsmodels), one model per category chosen by AICc; seasonal "
    "(12 months) and damped-trend models from 24 months of history, a 12-month mean with wide "
    "intervals below that; the total's mean is the sum of the categories', its intervals those "
    "of the summed series"
)


class ExpenseForecaster(Protocol):
    """Forecasts one monthly series (oldest first) `horizon` months ahead; CPU-bound."""

    def forecast(self, values: tuple[float, ...], horizon: int) -> SeriesForecast: ...


class PredictExpensesExecutor(TaskExecutor):
    task_type: ClassVar[str] = "predict_expenses"

    def __init__(self, forecaster: ExpenseForecaster) -> None:
        self._forecaster = forecaster

    async def run(self, run: TaskRun) -> TaskOutput:
        horizon = _horizon(run.parameters)
        history = _history(run.parameters, run.document)
        result = await asyncio.to_thread(self._forecast, history, horizon, run)
        return TaskOutput(result=result)

    def _forecast(self, history: ExpenseHistory, horizon: int, run: TaskRun) -> dict[str, Any]:
        started = time.perf_counter()
        categories: dict[str, SeriesForecast] = {}
        for name, values in history.amounts.items():
            if run.cancelled.is_set():
                raise TaskCancelledError(f"predict_expenses cancelled before {name!r}")
            categories[name] = self._forecaster.forecast(values, horizon)
        if run.cancelled.is_set():
            raise TaskCancelledError("predict_expenses cancelled before the total")
        summed = self._forecaster.forecast(summed_series(history), horizon)
        total = total_forecast(list(categories.values()), summed)
        # The time goes to the log, not the result: the same input must give the same result.
        log.info(
            "predict_expenses: %d categories x %d months, %d ahead, fitted in %.2f s",
            len(categories),
            len(history.months),
            horizon,
            time.perf_counter() - started,
        )
        return forecast_result(history, horizon, categories, total, METHOD)


def _horizon(parameters: dict[str, Any]) -> int:
    value = parameters.get("horizon_months", DEFAULT_HORIZON_MONTHS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HORIZON_MONTHS:
        raise TaskInputError(
            f"horizon_months must be a whole number of months from 1 to {MAX_HORIZON_MONTHS}, got {value!r}",
            field="horizon_months",
        )
    return value


def _history(parameters: dict[str, Any], document: TaskDocument | None) -> ExpenseHistory:
    records = parameters.get("history")
    if records is not None and document is not None:
        raise TaskInputError(
            "give the history either as `history` or as a CSV document, not both", field="history"
        )
    try:
        if records is not None:
            return history_from_records(records)
        if document is None:
            raise TaskInputError(
                "no history: send `history` (a list of {month, category, amount}) or a CSV document",
                field="history",
            )
        if document.content_type not in (CSV, TEXT):
            raise TaskInputError(
                f"the document is {document.content_type}, expected a CSV (text/csv)", field="document"
            )
        text = _decoded(document.data)
        if text.lstrip().startswith("["):
            # A JSON list uploaded as a file (the gateway sniffs it as text/plain).
            return history_from_records(_json_list(text))
        return history_from_csv(text)
    except ExpenseHistoryError as error:
        raise TaskInputError(error.message, field=error.field, row=error.row) from None


def _json_list(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TaskInputError(
            f"line {error.lineno}: the document is not valid JSON ({error.msg})",
            field="document",
            row=error.lineno,
        ) from None


def _decoded(data: bytes) -> str:
    # Belgian spreadsheets still save CSV as Windows-1252 (é, €): accept it when it is not UTF-8.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")
