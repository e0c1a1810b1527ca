"""Forecast accuracy metrics, defined once for evaluation, benchmarks and monitoring.

NWRMSLE is the Favorita competition's metric (Kaggle):

    NWRMSLE = sqrt( sum_i w_i * (ln(p_i + 1) - ln(a_i + 1))^2 / sum_i w_i )

with w_i = 1.25 for perishable items and 1.0 otherwise. Predictions must be
non-negative (the competition rejected negative submissions); so must actuals
(returns are cleaned in ``prepare``). Anything else is an error, not a clip.
"""

from __future__ import annotations

from typing import Mapping

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
