"""Rolling backtest windows: the training recipe scored on several past windows, not one.

One validation window is one draw: a calm fortnight flatters a model, a
holiday fortnight sinks it. As Kaggle practitioners do, evaluation also
rewinds time: window 1 is the ``length`` days right before the validation
window, window 2 the ``length`` days before that, and so on. For each, a model
is trained exactly as ``pipeline.train`` trains the candidate (its
``prepare_training`` and ``fit``, same params), on the days before that window
only, and scored on it beside the weekday moving-average baseline. Window 0,
the validation window itself, is scored by ``pipeline.evaluate`` with the
candidate bundle through the serving path.

Every window yields the same ``WindowScores`` (one entry per scored row), so
the gate (``pipeline.metrics.improvement_interval``) pools them, series by
series. With a Dask scheduler configured each window is one task on a worker
(``window_from_files``: it reads the split files itself), as is each
candidate x window of ``pipeline.sweep``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.examples import forecasts_at_origin
from pipeline.history import SalesHistory, load_history
from pipeline.metrics import perishable_weights
from pipeline.model_params import FeatureParams, TrainParams

TRAIN_DATA = "data/split/train.parquet"
VALIDATION_DATA = "data/split/validation.parquet"


class BacktestError(ValueError):
    """The data is too short for the backtest windows asked for (the message names the param)."""


@dataclass
class WindowScores:
    """Actual units, candidate and baseline forecasts of every scored row of one window."""

    index: int  # 0: the validation window (the candidate itself); k: k windows earlier
    first_day: int  # day numbers (days since 1970-01-01)
    last_day: int
    series: np.ndarray  # [N] int64 store×item key: store_nbr * 2**32 + item_nbr
    day: np.ndarray  # [N] int64 target day
    actual: np.ndarray  # [N] float64 units
    candidate: np.ndarray  # [N] float64 units
    baseline: np.ndarray  # [N] float64 units
    weights: np.ndarray  # [N] float64 (1.25 perishable, 1.0 other)
    model: str  # what forecast the window: the candidate bundle, or a model trained on the days before it
    train_examples: int = 0
    expected: np.ndarray | None = None  # [N] float64 expected units (bias-corrected mean): what sums compare with

    @property
    def rows(self) -> int:
        return int(self.actual.size)


def series_key(store_nbr, item_nbr) -> np.ndarray:
    """One int64 per store×item, the unit the bootstrap resamples."""
    return np.asarray(store_nbr, np.int64) * (1 << 32) + np.asarray(item_nbr, np.int64)


def history_before(history: SalesHistory, cut: int, start: int = 0) -> SalesHistory:
    """The history of the days in columns ``start`` .. ``cut - 1``: views of the arrays, nothing copied.

    Every series stays, with no grid rows where it sold nothing in those days; ``train.prepare_training``
    builds its vocabularies from the series that sold, so a series that starts later is unknown to a
    model trained then (as a new item is to the candidate) and has no training rows. Keeping only the
    sold series instead copied the arrays once per window (Favorita: ~1 GB each). With ``start = cut -
    train.days_needed(...)`` a window's model sees the same span of days the train stage reads.
    """
    start = max(0, start)
    days = slice(start, cut)
    return dataclasses.replace(
        history, first_day=history.first_day + start, sales=history.sales[:, days], promo=history.promo[:, days],
        observed=history.observed[:, days], holidays=history.holidays[:, days],
        promo_known=None if history.promo_known is None else history.promo_known[:, days])


def earlier_windows(root: Path, fparams: FeatureParams, tparams: TrainParams, windows: int, length: int,
                    say: Callable[[str], None] = lambda _: None, progress: bool = False,
                    client=None) -> list[WindowScores]:
    """Windows 1 .. ``windows - 1`` (each ``length`` days, back to back before the validation window).

    With a Dask ``client`` (pipeline/cluster.py) each window is one task on the cluster's workers.
    """
    from pipeline import train
    from pipeline.cluster import run_tasks

    if windows <= 1:
        return []
    spec = fparams.spec
    if length > spec.horizon:
        raise BacktestError(f"split.validation_days: windows of {length} days are longer than features.horizon "
                            f"({spec.horizon}), which the models forecast")
    span = train.days_needed(fparams)  # what the train stage reads before its window
    history = load_history([root / TRAIN_DATA], days=span + (windows - 1) * length, progress=progress)
    cuts = [history.days - k * length for k in range(1, windows)]  # column of each window's first day
    try:  # every window's training origins exist, checked before any training starts
        train.origins(history_before(history, cuts[-1], cuts[-1] - span), fparams)
    except train.TrainError as exc:
        known = history.observed.any(axis=0)
        days = history.days - int(np.argmax(known)) if known.any() else 0
        raise BacktestError(
            f"evaluate.backtest_windows: {windows} windows of {length} days need more training data than the "
            f"{days} days before the validation window: for the earliest window, {exc}; lower "
            "evaluate.backtest_windows") from None
    if client is not None:
        say(f"evaluate: backtest windows 1..{windows - 1} as Dask tasks, each trained on the days before it")
        return run_tasks(window_from_files, range(1, windows), client=client, desc="evaluate: backtest windows",
                         progress=progress, same_blas_kernels=True, root=str(Path(root).resolve()), fparams=fparams,
                         tparams=tparams)
    results = []
    for k, cut in enumerate(cuts, start=1):
        first_day = history.first_day + cut
        say(f"evaluate: backtest window {k}/{windows - 1}: {np.datetime64(first_day, 'D')} .. "
            f"{np.datetime64(first_day + length - 1, 'D')}, training on the days before it")
        results.append(window_scores(history, k, cut, length, fparams, tparams, say, progress))
    return results


def window_scores(history: SalesHistory, index: int, cut: int, length: int, fparams: FeatureParams,
                  tparams: TrainParams, say: Callable[[str], None] = lambda _: None,
                  progress: bool = False) -> WindowScores:
    """One window: a model trained as ``pipeline.train`` trains, on the days before column ``cut``, scored on the
    ``length`` days from it beside the baseline (also one training run of ``pipeline.sweep``)."""
    from pipeline import train
    from pipeline.models import forecast_weights

    spec = fparams.spec
    first_day = history.first_day + cut
    data = train.prepare_training(history_before(history, cut, cut - train.days_needed(fparams)), fparams,
                                  tparams.baseline_weeks, seed=tparams.seed, progress=progress)
    config, result = train.fit(tparams, data, spec, on_eval=lambda step, curve: say(
        f"  window {index}: step {step:6d}/{tparams.max_steps}  inner-validation NWRMSLE "
        f"{curve['inner_validation_nwrmsle']:.4f}"))
    # series chunk by series chunk: Favorita's 3.5 M window rows x 392-day windows would not fit at once
    scored = forecasts_at_origin(history, spec, data.vocab, cut - 1, length, tparams.baseline_weeks,
                                 lambda matrix: forecast_weights(config, result.weights, matrix,
                                                                 result.expected_factor),
                                 chunk_rows=65_536, progress=progress)
    series = scored["series"]
    return WindowScores(
        index=index, first_day=first_day, last_day=first_day + length - 1,
        series=series_key(history.store_nbr[series], history.item_nbr[series]),
        day=scored["day"], actual=scored["units"], candidate=scored["candidate"], baseline=scored["baseline"],
        weights=perishable_weights(scored["perishable"]),
        model=f"{tparams.model} trained on the days before the window",
        train_examples=data.train_examples, expected=scored["expected"])


def validation_days(root: Path) -> tuple[int, int]:
    """(first, last) day number of the validation window: the days of data/split/validation.parquet."""
    import pandas as pd

    path = Path(root) / VALIDATION_DATA
    if not path.is_file():
        raise BacktestError(f"{path}: not found (run the data stages first: dvc repro split)")
    days = pd.read_parquet(path, columns=["date"])["date"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    if days.size == 0:
        raise BacktestError(f"{path}: no rows")
    return int(days.min()), int(days.max())


def window_from_files(index: int, root: str, fparams: FeatureParams, tparams: TrainParams) -> WindowScores:
    """Window ``index`` (0: the validation window) read, trained and scored from the project's split files alone.

    What a Dask worker runs (module level, so workers import it): it needs the data at the same path
    and nothing else, and reads only the days the window's model trains on and is scored on. Window 0
    is scored like the others here (a model trained on the days before it, predicting its rows), which
    is how ``pipeline.sweep`` scores each candidate's recipe on the validation window.
    """
    from pipeline import train

    first, last = validation_days(Path(root))
    length = last - first + 1
    if length > fparams.spec.horizon:
        raise BacktestError(f"split.validation_days: windows of {length} days are longer than features.horizon "
                            f"({fparams.spec.horizon}), which the models forecast")
    first_day = first - index * length
    files = [Path(root) / TRAIN_DATA] + ([Path(root) / VALIDATION_DATA] if index == 0 else [])
    last_read = last if index == 0 else first - 1
    history = load_history(files, days=last_read - (first_day - train.days_needed(fparams)) + 1)
    return window_scores(history, index, first_day - history.first_day, length, fparams, tparams)
