"""Training-data statistics stored in the bundle, so drift reports can compare requests with training.

Per dense feature: quantiles and a histogram; per categorical field: value
frequencies (top values + the rest); the distributions of the target and of
the model's predictions. Plain JSON, numpy only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 20
TOP_CATEGORIES = 200


def distribution(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    return {
        "count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def category_frequencies(ids: np.ndarray, vocabulary: Sequence[str]) -> dict:
    """Share of rows per category value (id 0 = unknown), top values first."""
    ids = np.asarray(ids, np.int64)
    counts = np.bincount(ids, minlength=len(vocabulary) + 1)
    total = max(int(counts.sum()), 1)
    order = np.argsort(-counts, kind="stable")
    labels = ["<unknown>"] + list(vocabulary)
    top = {labels[i]: counts[i] / total for i in order[:TOP_CATEGORIES] if counts[i] > 0}
    rest = float(counts[order[TOP_CATEGORIES:]].sum()) / total
    return {"rows": int(counts.sum()), "distinct": int((counts > 0).sum()), "top": top, "other": rest}


def training_statistics(dense: np.ndarray, dense_names: Sequence[str], categorical: np.ndarray,
                        categorical_fields: Sequence[str], vocabularies: Mapping[str, Sequence[str]],
                        target: np.ndarray, predictions: np.ndarray) -> dict:
    return {
        "rows": int(dense.shape[0]),
        "dense": {name: distribution(dense[:, j]) for j, name in enumerate(dense_names)},
        "categorical": {name: category_frequencies(categorical[:, j], vocabularies[name])
                        for j, name in enumerate(categorical_fields)},
        "target_units": distribution(target),
        "prediction_units": distribution(predictions),
    }
