"""Forecast accuracy metrics, defined once for evaluation, benchmarks and monitoring.

NWRMSLE is the Favorita competition's metric (Kaggle):

    NWRMSLE = sqrt( sum_i w_i * (ln(p_i + 1) - ln(a_i + 1))^2 / sum_i w_i )

with w_i = 1.25 for perishable items and 1.0 otherwise. Predictions must be
non-negative (the competition rejected negative submissions); so must actuals
(returns are cleaned in ``prepare``). Anything else is an error, not a clip.

``improvement_interval`` is what the threshold test judges by: the
candidate's improvement over the baseline with a paired bootstrap interval
over series (pipeline/evaluate.py states the rule).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

PERISHABLE_WEIGHT = 1.25
OTHER_WEIGHT = 1.0


class MetricInputError(ValueError):
    """Inputs a metric cannot be computed from (negative, non-finite, misaligned)."""


def perishable_weights(perishable) -> np.ndarray:
    """Kaggle's weights: 1.25 for perishable items, 1.0 for the rest."""
    flags = np.asarray(perishable).astype(bool)
    return np.where(flags, PERISHABLE_WEIGHT, OTHER_WEIGHT)


def _checked(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise MetricInputError(f"{name}: {int(bad.sum())} non-finite value(s), first at row {first} ({array[first]!r})")
    negative = array < 0
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        raise MetricInputError(
            f"{name}: {int(negative.sum())} negative value(s), first at row {first} ({array[first]!r}); "
            "NWRMSLE is defined for non-negative sales only"
        )
    return array


def _aligned(actual, predicted, weights):
    actual = _checked("actual", actual)
    predicted = _checked("predicted", predicted)
    if actual.shape != predicted.shape:
        raise MetricInputError(f"actual has {actual.size} rows but predicted has {predicted.size}")
    if actual.size == 0:
        raise MetricInputError("no rows to score")
    if weights is None:
        weights = np.ones_like(actual)
    else:
        weights = np.asarray(weights, dtype=np.float64).ravel()
        if weights.shape != actual.shape:
            raise MetricInputError(f"weights has {weights.size} rows but actual has {actual.size}")
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise MetricInputError("weights must be finite, non-negative and not all zero")
    return actual, predicted, weights


def nwrmsle(actual, predicted, weights=None) -> float:
    """Normalized weighted root mean squared logarithmic error (the competition metric)."""
    actual, predicted, weights = _aligned(actual, predicted, weights)
    squared = (np.log1p(predicted) - np.log1p(actual)) ** 2
    return float(np.sqrt(np.sum(weights * squared) / np.sum(weights)))


def rmse(actual, predicted) -> float:
    """Root mean squared error in units (what a store manager feels)."""
    actual, predicted, _ = _aligned(actual, predicted, None)
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def nwrmsle_by(groups, actual, predicted, weights=None) -> Mapping[str, float]:
    """NWRMSLE per slice (e.g. per family or per store), keyed by the group's value as text."""
    actual, predicted, weights = _aligned(actual, predicted, weights)
    groups = np.asarray(groups).ravel()
    if groups.shape != actual.shape:
        raise MetricInputError(f"groups has {groups.size} rows but actual has {actual.size}")
    keys, inverse = np.unique(groups, return_inverse=True)
    squared = weights * (np.log1p(predicted) - np.log1p(actual)) ** 2
    numerator = np.bincount(inverse, weights=squared, minlength=keys.size)
    denominator = np.bincount(inverse, weights=weights, minlength=keys.size)
    return {str(key): float(np.sqrt(num / den)) for key, num, den in zip(keys, numerator, denominator)}


class ImprovementInterval(NamedTuple):
    """How much better a candidate is than a baseline: 1 - NWRMSLE(candidate) / NWRMSLE(baseline), with a
    percentile interval from a paired bootstrap over series (``confidence`` of the resamples lie inside it)."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    series: int

    def to_json(self) -> dict:
        return self._asdict()


def improvement_words(estimate: float, low: float, high: float, digits: int = 1) -> str:
    """An improvement (1 - NWRMSLE ratio) and its interval in words, one line, each figure an amount beside its
    word so no sign can contradict it: "9.0% better [8.6%, 9.4%]", "47.3% worse [44.1%, 50.2%]", and, when the
    interval holds no change, "1.0% worse, not clearly: [3.0% worse, 1.0% better] includes no change" (it read
    "1.0% worse [-1.0%, 3.0%]", which a reader took for worse). The one wording of evaluate's summary and
    promote's champion/challenger line."""
    def amount(value: float) -> str:
        return f"{abs(value):.{digits}%}"

    def said(value: float) -> str:
        return "no change" if value == 0 else f"{amount(value)} {'better' if value > 0 else 'worse'}"

    if estimate > 0 and low > 0:
        return f"{amount(estimate)} better [{amount(low)}, {amount(high)}]"
    if estimate < 0 and high < 0:
        return f"{amount(estimate)} worse [{amount(high)}, {amount(low)}]"
    if low <= 0 <= high:
        return f"{said(estimate)}{', not clearly' if estimate else ''}: [{said(low)}, {said(high)}] includes no change"
    return f"{said(estimate)} [{said(low)}, {said(high)}]"  # an estimate outside its own interval: both ends named


def improvement_interval(series, actual, candidate, baseline, weights=None, *, confidence: float = 0.95,
                         resamples: int = 1000, seed: int = 0) -> ImprovementInterval:
    """The candidate's improvement over the baseline, with a paired bootstrap interval over series.

    Rows of one series (one store×item, ``series`` holds its key) are not independent — a series the
    models find easy is easy for both, on every day — so the bootstrap draws whole series with
    replacement and scores candidate and baseline on the *same* draw (paired). Each resample's
    improvement is 1 - sqrt(sum of the drawn series' weighted squared log errors of the candidate /
    the same sum of the baseline); the interval holds the central ``confidence`` share of them.
    """
    if not 0 < confidence < 1:
        raise MetricInputError(f"confidence: must lie strictly between 0 and 1, got {confidence}")
    if resamples < 1:
        raise MetricInputError(f"resamples: must be at least 1, got {resamples}")
    actual, candidate, weights = _aligned(actual, candidate, weights)
    _, baseline, _ = _aligned(actual, baseline, weights)
    series = np.asarray(series).ravel()
    if series.shape != actual.shape:
        raise MetricInputError(f"series has {series.size} rows but actual has {actual.size}")
    _, inverse = np.unique(series, return_inverse=True)
    log_actual = np.log1p(actual)
    cand_sq = np.bincount(inverse, weights=weights * (np.log1p(candidate) - log_actual) ** 2)
    base_sq = np.bincount(inverse, weights=weights * (np.log1p(baseline) - log_actual) ** 2)
    if base_sq.sum() <= 0:
        raise MetricInputError("the baseline's NWRMSLE is 0: an improvement over a perfect forecast is undefined")
    estimate = 1.0 - float(np.sqrt(cand_sq.sum() / base_sq.sum()))
    n = cand_sq.size
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // n))  # bounded memory at full Favorita scale (~220k series)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = rng.integers(0, n, size=(stop - start, n))
        cand, base = cand_sq[picks].sum(axis=1), base_sq[picks].sum(axis=1)
        # a draw of series the baseline forecasts perfectly: no improvement possible (equal), else none at all
        ratio = np.divide(cand, base, out=np.where(cand > 0, np.inf, 1.0), where=base > 0)
        draws[start:stop] = 1.0 - np.sqrt(ratio)
    tail = (1.0 - confidence) / 2.0
    # a draw of series the baseline forecasts perfectly is -inf; quantiles interpolated between two of them are
    # NaN (-inf - -inf): they are -inf
    low, high = np.nan_to_num(np.quantile(draws, [tail, 1.0 - tail]), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    return ImprovementInterval(estimate=estimate, low=float(low), high=float(high), confidence=float(confidence),
                               resamples=int(resamples), series=int(n))
