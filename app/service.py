"""Forecast validated instances with the served model and record one prediction event for each.

Shared by the JSON API and the form, so both log the same events (inputs, features, output,
model name/version/kind, latency, request id, and the readable family, store, horizon in days
and release variant — production, canary or shadow — that dashboards group by, and the serving host's id)
through the same sink.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from app.events import PredictionEventSink, prediction_event
from app.metrics import CLOSED_DAY_ANSWERS, PREDICTIONS, labelled
from app.predictor import Forecast, LoadedModel
from app.validation import Instance
from pipeline.release_store import SHADOW


def day_numbers(dates) -> np.ndarray:
    return np.asarray([d.toordinal() - 719163 for d in dates], np.int64)  # 719163 = date(1970, 1, 1).toordinal()


def forecast_instances(model: LoadedModel, instances: Sequence[Instance]) -> Forecast:
    return model.forecast([i.store_nbr for i in instances], [i.item_nbr for i in instances],
                          day_numbers(i.date for i in instances), [int(i.onpromotion) for i in instances])


def readable_fields(model: LoadedModel, instance: Instance, variant: str) -> dict:
    """What dashboards group by, in words and days (the features carry vocabulary codes and 0..1 scales):
    the item's family name, the store's label, days after the forecast origin, the release variant."""
    item = model.catalog.items.get(instance.item_nbr)
    store = model.catalog.stores.get(instance.store_nbr)
    return {"family": item.family if item else "unknown", "store": store.label if store else str(instance.store_nbr),
            "horizon_days": (instance.date - model.origin_date).days, "model_variant": variant}


def predict_and_log(model: LoadedModel, instances: Sequence[Instance], sink: PredictionEventSink, request_id: str,
                    started: float, source: str, variant: str = "production",
                    positions: Sequence[int] | None = None, batch_size: int | None = None,
                    canary_failed: bool = False, serving_host: str | None = None) -> list[dict]:
    """Predictions as JSON-ready dicts; emits one event per instance (never raises for logging).

    ``variant`` is the release variant that answers (production, canary, shadow: app/variants.py);
    ``positions`` the instances' places in the request (of ``batch_size``) when it was split between variants;
    ``serving_host`` the release store's id (pipeline.release_store.SERVING_HOST_FILE), named in each event."""
    result = forecast_instances(model, instances)
    units = [round(float(u), 4) for u in result.units]
    expected = None if result.expected_units is None else [round(float(u), 4) for u in result.expected_units]
    if variant != SHADOW:  # a shadow's forecasts are logged (events), never returned: not predictions served
        labelled(PREDICTIONS, source).inc(len(units))
        if result.store_closed is not None and result.store_closed.any():
            labelled(CLOSED_DAY_ANSWERS, source).inc(int(result.store_closed.sum()))
    latency_ms = (time.perf_counter() - started) * 1000.0
    predictions = []
    for index, (instance, value) in enumerate(zip(instances, units)):
        inputs = instance.to_json()
        closed = {"store_closed": True, "closed_reason": result.closed_reason[index]} \
            if result.store_closed is not None and result.store_closed[index] else {}
        sink.emit(prediction_event(
            request_id=request_id, model_name=model.name, model_version=model.version, inputs=inputs,
            features=model.feature_record(result.features, index),
            output={"unit_sales": value, **({} if expected is None else {"expected_units": expected[index]}),
                    **closed},  # the answer's closed fields: a dashboard or a replay tells the two reasons apart
            latency_ms=round(latency_ms, 3), source=source,
            instance_index=index if positions is None else int(positions[index]),
            batch_size=batch_size or len(instances),
            model_digest=model.bundle.digest, model_kind=model.kind, **readable_fields(model, instance, variant),
            **({} if model.catalog.has_history(instance.store_nbr, instance.item_nbr) else {"new_series": True}),
            **({"canary_failed": True} if canary_failed else {}),
            **({"serving_host": serving_host} if serving_host else {}),
        ))
        predictions.append({**inputs, "unit_sales": value,
                            **({} if expected is None else {"expected_units": expected[index]}),
                            **closed, "model_version": model.version})
    return predictions
