"""Reference statistics stored in the bundle, so drift reports compare requests with what the model expects.

Two references, both plain JSON (numpy only):

* ``served`` -- the reference drift checks use. Features *of the requests the bundle
  can serve*: every store x item of its history snapshot at every day of its forecast
  window (origin+1 .. origin+horizon), sampled uniformly, computed by the one feature
  function. That is the shape of served traffic: one origin, the served horizons, the
  calendar of those days. Training rows come from many earlier origins and targets all
  over the month, so comparing requests with them alarms on day one (a target day of
  month the window never reaches, series that have aged since). The one request input
  the snapshot cannot know, the target day's promotion flag, keeps the distribution of the
  training rows whose promotion the data gave (pipeline/train.py picks them: unknown ones
  read False and made ordinary traffic look promoted). Each dense feature carries a role:
  ``history`` (the series' past at the origin), ``request`` (given by the caller) or
  ``calendar`` (set by the requested date and the store's holidays; the app refuses dates
  outside the window, so these say which days clients ask for, not that the data changed --
  reports show them, never alarm). With the model at hand (``predict``) it also holds the
  forecasts of those rows, the promotion flag drawn at the training rows' share: one
  histogram over all of them (``prediction_units``) and, on the same edges, one per horizon
  day (``prediction_by_horizon``), so monitoring mixes the days in the proportions the
  requests ask for them (a model forecasts day 1 otherwise than day 16, and traffic for the
  next day alone is ordinary). The forecasts leave out the rows of a day the store is closed
  (pipeline/closed_days.py: a closed day a year earlier, or a store closed for good), which the
  app answers 0 by that rule, not the model, and drift leaves out of the live forecasts too;
  their features stay (they are requests all the same). Each history feature likewise keeps
  its counts per horizon day (``by_horizon``, on its own histogram's edges): the weekday means
  and the year-ago features are the series' past *at the target's weekday or week*, so traffic
  for one day of the window shifts them though nothing changed (a year-end window: PSI 0.44 on
  the year-ago season change).
* the training rows' own distributions (``dense``, ``categorical``, ``target_units``,
  ``prediction_units``: the inner-validation forecasts, one origin at every horizon),
  kept for the model card and for bundles made before ``served`` existed. A bundle whose ``served``
  lacks ``prediction_units``/``prediction_by_horizon`` (promoted by older code) has its forecasts compared
  with these, and monitoring's report and summary line say so (``NO_FORECAST_REFERENCE_NOTE``).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.closed_days import ClosedDays
from pipeline.features import (
    CATEGORICAL_FIELDS,
    HORIZON_FEATURE,
    FeatureMatrix,
    FeatureSpec,
    HistorySnapshot,
    Vocabularies,
    build_features,
    dense_feature_names,
    rows_from_snapshot,
)

UNKNOWN_LABEL = "<unknown>"  # category id 0 (a value the model never saw) in references and monitoring's live labels

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 20
TOP_CATEGORIES = 200
SERVED_REFERENCE_ROWS = 20_000  # store x item x day rows sampled for the served reference (bounded memory)
REQUEST_FEATURES = ("target_onpromotion",)  # dense features the caller gives (the request's promotion flag)
ROLE_HISTORY, ROLE_REQUEST, ROLE_CALENDAR = "history", "request", "calendar"


def distribution(values: np.ndarray, bins: str = "even") -> dict:
    """Count, moments, quantiles and a histogram of the finite `values` (HISTOGRAM_BINS bins at most).

    ``bins="even"`` spaces the edges evenly over [min, max]; ``bins="quantile"`` puts them at the values' own
    quantiles (equal shares, ties merged), for unit sales and forecasts: there even bins put ~98 % of the rows in
    the first one, and forecasts doubled everywhere moved the PSI by 0.02.
    """
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    if bins not in ("even", "quantile"):
        raise ValueError(f"bins: expected 'even' or 'quantile', got {bins!r}")
    if bins == "quantile":
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)))
        edges = np.append(edges, high) if edges.size < 2 else edges
        counts, edges = np.histogram(values, bins=edges)
    else:
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    return {
        "count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "bins": bins},
    }


def category_frequencies(ids: np.ndarray, vocabulary: Sequence[str]) -> dict:
    """Share of rows per category value (id 0 = unknown), top values first."""
    ids = np.asarray(ids, np.int64)
    counts = np.bincount(ids, minlength=len(vocabulary) + 1)
    total = max(int(counts.sum()), 1)
    order = np.argsort(-counts, kind="stable")
    labels = [UNKNOWN_LABEL] + list(vocabulary)
    top = {labels[i]: counts[i] / total for i in order[:TOP_CATEGORIES] if counts[i] > 0}
    rest = float(counts[order[TOP_CATEGORIES:]].sum()) / total
    return {"rows": int(counts.sum()), "distinct": int((counts > 0).sum()), "top": top, "other": rest}


def feature_role(name: str) -> str:
    """history | request | calendar: the horizon and the target day's calendar and holiday flags are calendar."""
    if name in REQUEST_FEATURES:
        return ROLE_REQUEST
    if name == HORIZON_FEATURE or name.startswith("target_"):
        return ROLE_CALENDAR
    return ROLE_HISTORY


def served_reference(spec: FeatureSpec, vocab: Vocabularies, snapshot: HistorySnapshot,
                     train_onpromotion: np.ndarray, predict: Callable[[FeatureMatrix], np.ndarray] | None = None,
                     seed: int = 0, max_rows: int = SERVED_REFERENCE_ROWS) -> dict:
    """Feature distributions of the requests `snapshot` can serve, and with `predict` (a feature matrix -> unit
    forecasts) their forecasts, overall and per horizon day (see the module docstring)."""
    series, days = snapshot.store_nbr.size, snapshot.calendar_days.size
    total = series * days
    if total == 0:
        return {"rows": 0, "dense": {}, "categorical": {}, "roles": {}}
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(total, size=max_rows, replace=False)) if total > max_rows else np.arange(total)
    row, day = np.divmod(picked, days)
    promoted = np.asarray(train_onpromotion, np.float64)
    promoted = promoted[np.isfinite(promoted)]
    share = float(promoted.mean()) if promoted.size else 0.0  # the forecasts' promotion mix: the requests' expected
    rows = rows_from_snapshot(snapshot, snapshot.store_nbr[row], snapshot.item_nbr[row],
                              snapshot.calendar_days[day].astype("datetime64[D]"),
                              (rng.random(picked.size) < share).astype(np.uint8))
    matrix = build_features(spec, vocab, rows)
    names = dense_feature_names(spec)
    dense = {name: distribution(matrix.dense[:, j]) for j, name in enumerate(names)}
    for j, name in enumerate(names):  # a history feature at each horizon day, on the same edges (see by_horizon_day)
        if feature_role(name) == ROLE_HISTORY and dense[name].get("count"):
            dense[name]["by_horizon"] = by_horizon_day(matrix.dense[:, j], np.asarray(rows.horizon), dense[name])
    for name in REQUEST_FEATURES:
        dense[name] = distribution(train_onpromotion)
    first, last = (str(np.datetime64(int(d), "D")) for d in (snapshot.calendar_days[0], snapshot.calendar_days[-1]))
    served = {
        "rows": int(picked.size), "series": int(series), "origin": str(np.datetime64(int(snapshot.origin_day), "D")),
        "horizon_dates": [first, last],
        "dense": dense,
        "categorical": {name: category_frequencies(matrix.categorical[:, j], vocab.values[name])
                        for j, name in enumerate(CATEGORICAL_FIELDS)},
        "roles": {name: feature_role(name) for name in names},
    }
    # the model's forecasts only: a closed store-day is answered 0 by the closed-day rule (drift leaves those out)
    opened = ~ClosedDays(snapshot).of(snapshot.store_nbr[row], snapshot.calendar_days[day])
    if predict is not None and opened.any():
        forecasts = np.asarray(predict(matrix), np.float64).ravel()[opened]
        served["prediction_units"] = distribution(forecasts, bins="quantile")
        served["prediction_by_horizon"] = by_horizon_day(forecasts, np.asarray(rows.horizon)[opened],
                                                         served["prediction_units"])
    return served


def by_horizon_day(values: np.ndarray, horizon: np.ndarray, overall: Mapping) -> dict:
    """{horizon day: {"counts": its finite `values` in `overall`'s histogram bins (the outer bins open-ended, as
    monitoring counts live values), "mean": their mean}}: forecasts, and history features whose value depends on
    the target day too (the weekday means, the year-ago week), so monitoring can mix the days as requests ask."""
    edges = np.asarray(overall.get("histogram", {}).get("edges", []), np.float64)
    if edges.size < 2:
        return {}
    values, horizon = np.asarray(values, np.float64), np.asarray(horizon)
    finite = np.isfinite(values)
    values, horizon = values[finite], horizon[finite]
    bins = np.searchsorted(edges[1:-1], values, side="right")
    return {str(int(h)): {"counts": np.bincount(bins[horizon == h], minlength=edges.size - 1).astype(int).tolist(),
                          "mean": float(values[horizon == h].mean())} for h in np.unique(horizon)}


def roll_served_reference(served: Mapping, spec: FeatureSpec, vocab: Vocabularies, snapshot: HistorySnapshot,
                          predict: Callable[[FeatureMatrix], np.ndarray] | None = None) -> dict:
    """`served` recomputed for a snapshot moved to a later origin (the production bundle, pipeline/serving_bundle.py):
    its own origin, horizon days and forecasts there; the request features keep their training distribution."""
    promotion = served["dense"].get(REQUEST_FEATURES[0], {})
    share = promotion.get("mean", 0.0) if promotion.get("count") else 0.0
    rolled = served_reference(spec, vocab, snapshot, np.asarray([share]), predict)
    for name in REQUEST_FEATURES:
        rolled["dense"][name] = served["dense"][name]
    return rolled


def training_statistics(dense: np.ndarray, dense_names: Sequence[str], categorical: np.ndarray,
                        categorical_fields: Sequence[str], vocabularies: Mapping[str, Sequence[str]],
                        target: np.ndarray, predictions: np.ndarray, served: Mapping | None = None) -> dict:
    """training_stats.json: the training rows' distributions, plus the `served` reference when given."""
    stats = {
        "rows": int(dense.shape[0]),
        "dense": {name: distribution(dense[:, j]) for j, name in enumerate(dense_names)},
        "categorical": {name: category_frequencies(categorical[:, j], vocabularies[name])
                        for j, name in enumerate(categorical_fields)},
        "target_units": distribution(target, bins="quantile"),
        "prediction_units": distribution(predictions, bins="quantile"),
    }
    if served is not None:
        stats["served"] = dict(served)
    return stats
