"""Forecasts one monthly expense series with statsmodels' ETS (exponential smoothing, state space).

Which model, and why (docs/tasks/predict_expenses.md has the long version):

- 24 months or more (two seasons seen): candidates ETS(A,N,N), ETS(A,Ad,N), ETS(A,N,A),
  ETS(A,Ad,A), and, when every amount is positive, ETS(M,N,M) and ETS(M,Ad,M); the lowest AICc
  wins. Trends are damped: a charge that grew 3 % a year is not promised to grow forever.
  Seasonal models start from the classical decomposition of the first two years (statsmodels'
  "heuristic" initialisation) instead of fitting 12 more start values, which keeps a fit around
  0.1 s; their AICc is still charged for those start values, so seasonality must earn its keep.
- fewer than 24 months: a season cannot be told from a trend or from noise with one year, so
  none is modelled: the mean is the last 12 months' average, the intervals the history's own
  spread (Student t) plus the level's drift as ETS(A,N,N) measures it. Wide, on purpose.
- intervals: exact formulas for the all-additive models; simulated paths (2000, from a fixed
  seed) for the multiplicative ones, so the same input gives the same result. Both are then
  stretched for the parameters the fit spent (unbiased variance, Student t), see `_points`.
- a series with the same amount every month is forecast as that amount, with no interval.
"""

from __future__ import annotations

import ctypes
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
from scipy import stats
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from statsmodels.tsa.exponential_smoothing.ets import ETSModel, ETSResults

from koprogo_node.domain.tasks.expense_forecast import ForecastPoint, SeriesForecast

log = logging.getLogger(__name__)

SEASON = 12
SEASONAL_MIN_MONTHS = 2 * SEASON
SIMULATED_PATHS = 2000
SIMULATION_SEED = 20240301
_MAXITER = 500


@dataclass(frozen=True, slots=True)
class _Candidate:
    error: str
    trend: bool
    seasonal: str | None

    @property
    def name(self) -> str:
        letters = (self.error[0].upper(), "Ad" if self.trend else "N", (self.seasonal or "n")[0].upper())
        label = f"ETS({','.join(letters)})"
        return f"{label} seasonal {SEASON}" if self.seasonal else label


_SEASONAL_CANDIDATES = (
    _Candidate("add", False, None),
    _Candidate("add", True, None),
    _Candidate("add", False, "add"),
    _Candidate("add", True, "add"),
)
_POSITIVE_ONLY_CANDIDATES = (_Candidate("mul", False, "mul"), _Candidate("mul", True, "mul"))
_LEVEL_ONLY = _Candidate("add", False, None)


class StatsmodelsExpenseForecaster:
    """Fits and forecasts one series at a time; CPU-bound, call it from a worker thread.

    Build it once at start-up: it sets scipy's OpenBLAS to one thread (see `_one_blas_thread`).
    """

    def __init__(self) -> None:
        _one_blas_thread()

    def forecast(self, values: Sequence[float], horizon: int) -> SeriesForecast:
        series = np.asarray(values, dtype=float)
        if float(series.max() - series.min()) < 0.005:
            flat = ForecastPoint(*([float(series[-1])] * 5))
            return SeriesForecast("constant (the same amount every month)", False, (flat,) * horizon)
        if len(series) < SEASONAL_MIN_MONTHS:
            return _short_history(series, horizon)
        candidates: tuple[_Candidate, ...] = _SEASONAL_CANDIDATES
        if float(series.min()) > 0:
            candidates = candidates + _POSITIVE_ONLY_CANDIDATES
        fitted = [
            (fit, candidate) for candidate in candidates if (fit := _fit(series, candidate)) is not None
        ]
        if not fitted:
            return _short_history(series, horizon, why="no ETS model converged")
        best, candidate = min(fitted, key=lambda pair: _aicc(pair[0], pair[1], len(series)))
        points = _points(best, candidate, len(series), horizon)
        return SeriesForecast(candidate.name, candidate.seasonal is not None, points)


def _fit(series: np.ndarray, candidate: _Candidate) -> ETSResults | None:
    """One candidate's fit, or None when the optimiser did not converge or the fit is unusable."""
    model = ETSModel(
        pd.Series(series),
        error=candidate.error,
        trend="add" if candidate.trend else None,
        damped_trend=candidate.trend,
        seasonal=candidate.seasonal,
        seasonal_periods=SEASON if candidate.seasonal else None,
        initialization_method="heuristic" if candidate.seasonal else "estimated",
    )
    # A candidate whose likelihood did not converge is dropped from the AICc race (handled here,
    # hence turned into an error here only). Multiplicative fits may overflow on odd series: the
    # finiteness check below drops them, so their RuntimeWarnings are handled too. (Python 3.11's
    # catch_warnings swaps the process-wide filters; fits are short, and another thread's warning
    # raised meanwhile is at worst shown or hidden once.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="statsmodels")
        try:
            result = model.fit(disp=False, maxiter=_MAXITER)
        except (ConvergenceWarning, ValueError, np.linalg.LinAlgError, FloatingPointError):
            return None
    if not math.isfinite(float(result.llf)) or not float(result.scale) > 0:
        return None
    return result


def _parameter_count(result: ETSResults, candidate: _Candidate) -> int:
    """Parameters the fit used, counting the start values of the state (level, trend, 11 free
    seasonal indices) even when the heuristic initialisation computed them (statsmodels' df_model
    leaves those out), plus the error variance."""
    k = int(result.df_model)
    if candidate.seasonal:
        k += 1 + int(candidate.trend) + (SEASON - 1)
    return k


def _aicc(result: ETSResults, candidate: _Candidate, n: int) -> float:
    """AICc with every parameter counted, so models of different shapes compare fairly."""
    k = _parameter_count(result, candidate)
    if n - k - 1 <= 0:
        return math.inf
    return float(-2 * result.llf + 2 * k + 2 * k * (k + 1) / (n - k - 1))


def _points(result: ETSResults, candidate: _Candidate, n: int, horizon: int) -> tuple[ForecastPoint, ...]:
    mean = np.asarray(result.forecast(horizon), dtype=float)
    if candidate.error == "add" and candidate.seasonal != "mul":
        prediction = result.get_prediction(start=n, end=n + horizon - 1, method="exact")
        bounds = {}
        for level, alpha in ((80, 0.2), (95, 0.05)):
            frame = prediction.summary_frame(alpha=alpha)
            bounds[level] = (frame["pi_lower"].to_numpy(float), frame["pi_upper"].to_numpy(float))
    else:
        rng = np.random.default_rng(SIMULATION_SEED)
        errors = rng.standard_normal((horizon, SIMULATED_PATHS)) * math.sqrt(float(result.scale))
        paths = np.asarray(
            result.simulate(horizon, anchor="end", repetitions=SIMULATED_PATHS, random_errors=errors),
            dtype=float,
        )
        bounds = {
            80: (np.quantile(paths, 0.10, axis=1), np.quantile(paths, 0.90, axis=1)),
            95: (np.quantile(paths, 0.025, axis=1), np.quantile(paths, 0.975, axis=1)),
        }
    # The formulas and the paths take the fitted parameters as true and the errors as normal with
    # the maximum-likelihood variance (divided by n). With 3 years of data and up to 18 parameters
    # that is over-confident: stretch each bound's distance to the mean by the unbiased variance
    # (n / (n - p)) and Student's t quantile for n - p degrees of freedom instead of the normal one.
    freedom = max(n - (_parameter_count(result, candidate) - 1), 1)
    stretch = {
        level: math.sqrt(n / freedom) * float(stats.t.ppf(q, freedom) / stats.norm.ppf(q))
        for level, q in ((80, 0.90), (95, 0.975))
    }
    return tuple(
        ForecastPoint(
            mean=float(mean[step]),
            lower_80=float(mean[step] - stretch[80] * (mean[step] - bounds[80][0][step])),
            upper_80=float(mean[step] + stretch[80] * (bounds[80][1][step] - mean[step])),
            lower_95=float(mean[step] - stretch[95] * (mean[step] - bounds[95][0][step])),
            upper_95=float(mean[step] + stretch[95] * (bounds[95][1][step] - mean[step])),
        )
        for step in range(horizon)
    )


def _short_history(series: np.ndarray, horizon: int, why: str = "short history") -> SeriesForecast:
    """Fewer than two years: no season or trend can be told apart from noise, so no model of them.

    Mean: the average of the last 12 months (one of each calendar month, so a season cannot bias
    it; the yearly budget comes out right). Its interval is a linear regression's prediction
    interval whose slope is left unknown rather than set to zero: variance
    s² (1 + 1/k + d²/Sxx), s the history's standard deviation (the season's swing lands inside),
    k the months averaged, d the months from their centre to the forecast month, Sxx the spread of
    the history's months; plus the level's drift as ETS(A,N,N) measures it (α²σ² a month).
    Student t, n - 1 degrees of freedom.
    """
    n = len(series)
    recent = series[-SEASON:]
    mean = float(np.mean(recent))
    variance = float(np.var(series, ddof=1))
    months = np.arange(n, dtype=float)
    spread_of_months = float(np.sum((months - months.mean()) ** 2))
    centre = n - (len(recent) + 1) / 2
    drift_variance = 0.0
    if (level_fit := _fit(series, _LEVEL_ONLY)) is not None:
        alpha = dict(zip(level_fit.param_names, np.asarray(level_fit.params), strict=True))["smoothing_level"]
        drift_variance = alpha**2 * float(level_fit.scale)
    t_80, t_95 = (float(stats.t.ppf(q, n - 1)) for q in (0.90, 0.975))
    points = []
    for step in range(1, horizon + 1):
        distance = n - 1 + step - centre
        sd = math.sqrt(
            variance * (1 + 1 / len(recent) + distance**2 / spread_of_months) + (step - 1) * drift_variance
        )
        points.append(
            ForecastPoint(mean, mean - t_80 * sd, mean + t_80 * sd, mean - t_95 * sd, mean + t_95 * sd)
        )
    model = f"mean of the last {len(recent)} months, intervals from the history's spread ({why})"
    return SeriesForecast(model, False, tuple(points))


def _one_blas_thread() -> None:
    """Sets scipy's bundled OpenBLAS to one thread, for the whole process.

    ETS fits go through scipy's L-BFGS-B, which since scipy 1.15 calls BLAS on tiny matrices
    thousands of times per fit. With OpenBLAS's default of one thread per core, its threads spin
    against each other and against whatever else the node runs: measured on the 2-core dev box
    under load, the Les Tilleuls forecast took 8-10 s with 2 BLAS threads and 0.9-1.4 s with one
    (CPU time 3.7 s against 0.55 s). Nothing else on the node uses scipy's BLAS in a way that
    gains from threads. The setter is looked up by name in the wheel's bundled library; a scipy
    built on a system BLAS has none, and then this does nothing (set OPENBLAS_NUM_THREADS=1 in
    the node's environment instead).
    """
    libraries = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
    for path in sorted(libraries.glob("libscipy_openblas*.so*")):
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
            setter = getattr(library, name, None)
            if setter is not None:
                setter(1)
                return
    log.info("scipy's OpenBLAS thread setter not found; forecasts may be slow on a loaded node")
