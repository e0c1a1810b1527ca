"""Training examples built from the history arrays in bounded chunks, streamed or (when they fit) concatenated.

An example is a (series, origin) *pair* expanded to the observed target days of
its horizon. Full Favorita is ~220 k series × 16 origins × 16 days = 57 M rows;
as one feature matrix, with the float64 temporaries ``build_features`` makes of
each row's 112-day window, that is tens of GB. So the pairs are only indices
(two int arrays), and features are computed ``chunk_rows`` rows at a time
through the one feature function: ``ExampleStream.batches`` yields shuffled
training batches chunk by chunk (memory: one chunk), ``materialize`` concatenates
the chunks of a set small enough to hold (the inner validation, or a seeded
sample of pairs capped by ``features.max_train_examples``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from pipeline.features import (
    CATEGORICAL_FIELDS,
    FeatureMatrix,
    FeatureRows,
    FeatureSpec,
    Vocabularies,
    build_features,
    dense_feature_names,
)
from pipeline.bundle import EXPECTED_OUTPUT, PREDICTION_OUTPUT
from pipeline.history import SalesHistory, promotion_known, rows_for_pairs, target_rows
from pipeline.metrics import perishable_weights
from pipeline.stage import bar_options

DEFAULT_CHUNK_ROWS = 32_768  # rows per feature chunk: ~0.5 GB of build_features temporaries at 392 days
STATISTICS_ROWS = 1_000_000  # a streamed set's normalization and drift statistics come from a sample this size


@dataclass
class Examples:
    matrix: FeatureMatrix
    units: np.ndarray  # [N] float32 units sold on the target day
    weights: np.ndarray  # [N] float32 NWRMSLE weights (1.25 perishable)
    baseline: np.ndarray | None  # [N] float32 weekday moving-average forecast (None: not computed)

    def __len__(self) -> int:
        return int(self.units.shape[0])

    def take(self, index) -> "Examples":
        return Examples(FeatureMatrix(self.matrix.dense[index], self.matrix.categorical[index]), self.units[index],
                        self.weights[index], None if self.baseline is None else self.baseline[index])

    @classmethod
    def concatenate(cls, parts: list["Examples"], spec_width: tuple[int, int]) -> "Examples":
        if not parts:
            dense, cats = spec_width
            return cls(FeatureMatrix(np.zeros((0, dense), np.float32), np.zeros((0, cats), np.int32)),
                       np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return cls(FeatureMatrix(np.concatenate([p.matrix.dense for p in parts]),
                                 np.concatenate([p.matrix.categorical for p in parts])),
                   np.concatenate([p.units for p in parts]), np.concatenate([p.weights for p in parts]),
                   None if any(p.baseline is None for p in parts) else np.concatenate([p.baseline for p in parts]))


def origin_pairs(n_series: int, origin_cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every series at every origin, origin-major (the order training has always used)."""
    series = np.tile(np.arange(n_series, dtype=np.int32), len(origin_cols))
    origins = np.repeat(np.asarray(origin_cols, np.int32), n_series)
    return series, origins


def sample_pairs(series: np.ndarray, origins: np.ndarray, max_rows: int | None, horizon: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_rows // horizon`` pairs (so at most ``max_rows`` rows), a seeded uniform sample in order."""
    if max_rows is None or series.size * horizon <= max_rows:
        return series, origins
    keep = np.sort(np.random.default_rng(seed).choice(series.size, max(1, max_rows // horizon), replace=False))
    return series[keep], origins[keep]


class ExampleStream:
    """The examples of a set of (series, origin) pairs, computed chunk by chunk on demand."""

    def __init__(self, history: SalesHistory, spec: FeatureSpec, vocab: Vocabularies, series: np.ndarray,
                 origins: np.ndarray, baseline_weeks: int | None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 label: str = "examples"):
        """``baseline_weeks`` None: no baseline forecasts (training batches do not need them)."""
        self.history, self.spec, self.vocab, self.baseline_weeks = history, spec, vocab, baseline_weeks
        self.series, self.origins = np.asarray(series, np.int64), np.asarray(origins, np.int64)
        self.chunk_pairs = max(1, chunk_rows // spec.horizon)
        self.label = label
        self._categorical = history.series_categorical()

    @property
    def pairs(self) -> int:
        return int(self.series.size)

    @property
    def max_rows(self) -> int:
        """Rows if every target day is observed (the real count is known only once built)."""
        return self.pairs * self.spec.horizon

    def count_rows(self) -> int:
        """The exact number of examples (observed target days), without building them."""
        total = 0
        for origin in np.unique(self.origins):
            series = self.series[self.origins == origin]
            total += int(self.history.observed[series, origin + 1:origin + 1 + self.spec.horizon].sum())
        return total

    def target_promotion_known(self) -> np.ndarray:
        """Per example, in build order: whether the data gave its target day's promotion (no features built)."""
        pair, _, target_col = target_rows(self.history, self.series, self.origins, self.spec.horizon)
        return promotion_known(self.history, self.series[pair], target_col)

    def build(self, index: np.ndarray) -> Examples:
        """The examples of the pairs at ``index`` (pair-major, then horizon)."""
        return self.build_rows(index)[0]

    def build_rows(self, index: np.ndarray) -> tuple[Examples, FeatureRows, np.ndarray]:
        """``build``, plus the feature inputs and each row's series index (what a feature shard records)."""
        rows, units, perishable, row_series = rows_for_pairs(self.history, self.series[index], self.origins[index],
                                                             self.spec.history_days, self.spec.horizon,
                                                             categorical=self._categorical)
        return examples_from_rows(self.spec, self.vocab, rows, units, perishable, self.baseline_weeks), rows, \
            row_series

    def chunks(self, order: np.ndarray | None = None, progress: bool = False) -> Iterator[Examples]:
        """Examples chunk by chunk, pairs in ``order`` (default: as given)."""
        order = np.arange(self.pairs) if order is None else order
        starts = range(0, order.size, self.chunk_pairs)
        for start in tqdm(starts, desc=f"{self.label}: features", unit="chunk",
                          **bar_options(progress), leave=False):
            yield self.build(order[start:start + self.chunk_pairs])

    def materialize(self, progress: bool = False) -> Examples:
        """All examples in one matrix (only for sets that fit: see ``max_rows``)."""
        width = (len(dense_feature_names(self.spec)), len(CATEGORICAL_FIELDS))
        return Examples.concatenate([c for c in self.chunks(progress=progress) if len(c)], width)

    def batches(self, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of training batches (``pipeline.models.BatchSource`` items), the same for the same seed.

        Pairs come in a seeded random order, rows are shuffled within each chunk;
        every batch has ``batch_size`` rows except the last. Memory: one chunk plus
        the rows carried over to the next.
        """
        rng = np.random.default_rng(seed)
        return shuffled_batches(self.chunks(rng.permutation(self.pairs)), batch_size, rng)

    def batch_source(self, batch_size: int, seed: int, progress: bool = False):
        """epoch -> that epoch's batches, built on a background thread while the model trains."""
        from engine import data as en_data

        def epoch_batches(epoch: int):
            batches = self.batches(batch_size, seed * 100_003 + epoch)
            if progress:
                batches = tqdm(batches, total=-(-self.count_rows() // batch_size), unit="batch", leave=False,
                               desc=f"{self.label}: epoch {epoch + 1}, streamed batches", **bar_options(progress))
            return en_data.prefetch(batches)

        return epoch_batches


def examples_from_rows(spec: FeatureSpec, vocab: Vocabularies, rows: FeatureRows, units: np.ndarray,
                       perishable: np.ndarray, baseline_weeks: int | None) -> Examples:
    """Examples (features, targets, weights, optional baseline) of gathered feature inputs."""
    from pipeline.models import baseline_predict

    baseline = None if baseline_weeks is None else np.asarray(baseline_predict(rows, baseline_weeks), np.float32)
    return Examples(build_features(spec, vocab, rows), np.asarray(units, np.float32),
                    perishable_weights(perishable).astype(np.float32), baseline)


def shuffled_batches(chunks: Iterator[Examples], batch_size: int,
                     rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Training batches of a chunk stream: rows shuffled within each chunk, the remainder carried over.

    Every batch has ``batch_size`` rows except the last. Memory: one chunk plus the carry.
    """
    carry = None
    for chunk in chunks:
        chunk = chunk.take(rng.permutation(len(chunk)))
        if carry is not None and len(carry):
            chunk = Examples.concatenate([carry, chunk], (0, 0))
        full = len(chunk) - len(chunk) % batch_size
        for start in range(0, full, batch_size):
            yield _batch(chunk.take(slice(start, start + batch_size)))
        carry = chunk.take(slice(full, len(chunk)))
    if carry is not None and len(carry):
        yield _batch(carry)


def _batch(examples: Examples) -> dict[str, np.ndarray]:
    return {"dense": examples.matrix.dense, "categorical": examples.matrix.categorical,
            "log1p": np.log1p(examples.units), "weight": examples.weights}


def forecasts_at_origin(history: SalesHistory, spec: FeatureSpec, vocab: Vocabularies, origin_col: int, days: int,
                        baseline_weeks: int, predict: Callable[[FeatureMatrix], np.ndarray | Mapping],
                        chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: bool = False) -> dict[str, np.ndarray]:
    """Every series' forecasts of the ``days`` observed days after an origin, series chunk by series chunk.

    Returns per row: ``series`` (index into the history), ``day`` (target day number),
    ``units`` (actual), ``perishable``, ``candidate`` (``predict`` of the features) and
    ``baseline``; memory is one chunk's feature inputs plus these columns. A ``predict`` that returns
    both outputs (``{"prediction": ..., "expected_units": ...}``, as ``pipeline.models.forecast_weights``)
    adds ``expected``, its expected units.
    """
    from pipeline.models import baseline_predict

    categorical = history.series_categorical()
    n_series = history.sales.shape[0]
    per_chunk = max(1, chunk_rows // days)
    parts = []
    for start in tqdm(range(0, n_series, per_chunk), desc="forecasts: series chunks", unit="chunk",
                      **bar_options(progress), leave=False):
        index = np.arange(start, min(n_series, start + per_chunk))
        rows, units, perishable, series = rows_for_pairs(history, index, np.full(index.size, origin_col),
                                                         spec.history_days, days, categorical=categorical)
        forecast = predict(build_features(spec, vocab, rows))
        outputs = forecast if isinstance(forecast, Mapping) else {PREDICTION_OUTPUT: forecast}
        parts.append({"series": series, "day": np.asarray(rows.origin_day + rows.horizon, np.int64),
                      "units": np.asarray(units, np.float64), "perishable": np.asarray(perishable, bool),
                      "candidate": np.asarray(outputs[PREDICTION_OUTPUT], np.float64),
                      "baseline": np.asarray(baseline_predict(rows, baseline_weeks), np.float64)})
        if EXPECTED_OUTPUT in outputs:
            parts[-1]["expected"] = np.asarray(outputs[EXPECTED_OUTPUT], np.float64)
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
