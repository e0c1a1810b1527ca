"""Prediction events turned into the arrays drift checks compare: features, categories, forecasts.

An event (app/events.py, app/predictor.py's feature_record) carries
`features = {"dense": {name: value}, "categorical": {field: vocabulary id}}`,
`inputs = {"store_nbr", "item_nbr", "date", "onpromotion"}` and `output`, the
forecast in units: `{"unit_sales": x}` as app/service.py logs it (or a bare number), with
`"store_closed": true` where the app answered 0 by pipeline/closed_days.py's rule, not the model, and
`"new_series": true` where the store×item has no rows in the bundle's history (forecast from an empty one).
Categorical ids are turned back into the training labels through the bundle's
vocabularies (id 0 = a value never seen in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.drift_stats import UNKNOWN_LABEL
from pipeline.event_sources import event_time, is_closed_day

OUTPUT_KEYS = ("unit_sales", "units", "forecast", "prediction")
REQUEST_KEYS = ("store_nbr", "item_nbr", "date")  # an event's inputs that name its request


class EventShapeError(ValueError):
    """An event that lacks a field drift needs, or holds the wrong type; names the event and field."""


@dataclass
class ServingData:
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    unknown_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # any categorical id 0
    # events per categorical field whose id is 0 (a value never seen in training): counted by the id, never by the
    # label, which a vocabulary may hold too (a family called "<unknown>" in a user's items.csv)
    unseen: dict[str, int] = field(default_factory=dict)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    closed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # answered 0 as a closed store-day
    new_series: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # a store×item without history
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (store_nbr, item_nbr, date) per row
    model_versions: dict[str, int] = field(default_factory=dict)
    first_timestamp: str | None = None
    last_timestamp: str | None = None

    @property
    def rows(self) -> int:
        return int(self.predictions.size)


def _where(event: Mapping[str, Any], index: int) -> str:
    return f"event {index} (event_id {event.get('event_id', '?')})"


def is_finite_number(value: Any) -> bool:
    """A number drift can put in an array and a JSON report: NaN, Infinity and integers past float range are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def forecast_units(event: Mapping[str, Any], index: int) -> float:
    output = event.get("output")
    if isinstance(output, Mapping):
        for key in OUTPUT_KEYS:
            if key in output:
                output = output[key]
                break
        else:
            raise EventShapeError(f"{_where(event, index)}: output: expected a number or a mapping with one of "
                                  f"{', '.join(OUTPUT_KEYS)}, got keys {sorted(output)}")
    if isinstance(output, list) and len(output) == 1:
        output = output[0]
    if not is_finite_number(output):
        raise EventShapeError(f"{_where(event, index)}: output: expected a finite number of units, got {output!r}")
    if output < 0:  # a bundle's graph clips its forecast at 0 (pipeline/models.py): no answer of it, as logged
        raise EventShapeError(f"{_where(event, index)}: output: expected units of at least 0 (a bundle's forecast "
                              f"is clipped at 0), got {output!r}")
    return float(output)


def collect(events: Sequence[Mapping[str, Any]], dense_names: Sequence[str],
            vocabularies: Mapping[str, Sequence[str]]) -> ServingData:
    """Arrays of every feature the bundle has statistics for; an event without them is an error."""
    n = len(events)
    dense = {name: np.empty(n, np.float64) for name in dense_names}
    labels = {name: sorted(str(v) for v in values) for name, values in vocabularies.items()}
    categorical: dict[str, list[str]] = {name: [] for name in labels}
    unknown = np.zeros(n, bool)
    unseen = {name: 0 for name in labels}
    predictions = np.empty(n, np.float64)
    closed = np.zeros(n, bool)
    new_series = np.zeros(n, bool)
    keys: list[tuple[str, str, str]] = []
    versions: dict[str, int] = {}
    for i, event in enumerate(events):
        features = event.get("features")
        if not isinstance(features, Mapping) or not isinstance(features.get("dense"), Mapping) \
                or not isinstance(features.get("categorical"), Mapping):
            raise EventShapeError(f"{_where(event, i)}: features: "
                                  f"expected {{'dense': {{...}}, 'categorical': {{...}}}}")
        for name in dense_names:
            value = features["dense"].get(name)
            if not is_finite_number(value):
                raise EventShapeError(f"{_where(event, i)}: features.dense.{name}: expected a finite number, "
                                      f"got {value!r}")
            dense[name][i] = value
        for name, vocabulary in labels.items():
            code = features["categorical"].get(name)
            if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= len(vocabulary):
                raise EventShapeError(f"{_where(event, i)}: features.categorical.{name}: expected a vocabulary id "
                                      f"0..{len(vocabulary)}, got {code!r}")
            categorical[name].append(UNKNOWN_LABEL if code == 0 else vocabulary[code - 1])
            unknown[i] |= code == 0
            unseen[name] += code == 0
        predictions[i] = forecast_units(event, i)
        closed[i] = is_closed_day(event)
        new_series[i] = event.get("new_series") is True
        inputs = event.get("inputs")
        # which request it was: the tests count a request repeated once, and drift.min_events counts requests; an
        # event without them read as one request repeated (every such event the same observation: no verdict)
        missing = [name for name in REQUEST_KEYS if not isinstance(inputs, Mapping) or inputs.get(name) is None]
        if missing:
            raise EventShapeError(f"{_where(event, i)}: inputs.{missing[0]}: expected the request's "
                                  f"{', '.join(REQUEST_KEYS)}, got {inputs!r}")
        keys.append(tuple(str(inputs[name]) for name in REQUEST_KEYS))
        version = str(event.get("model_version", "unknown"))
        versions[version] = versions.get(version, 0) + 1
    stamps = sorted((moment, e["timestamp"]) for e in events if (moment := event_time(e)) is not None)  # instants
    return ServingData(dense=dense, categorical=categorical, unknown_rows=unknown, unseen=unseen,
                       predictions=predictions, closed=closed, new_series=new_series, keys=keys,
                       model_versions=versions, first_timestamp=stamps[0][1] if stamps else None,
                       last_timestamp=stamps[-1][1] if stamps else None)
