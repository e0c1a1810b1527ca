"""Compare served requests and forecasts with the bundle's training statistics; decide whether to alarm."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from monitoring.drift_params import DriftParams
from monitoring.serving_data import UNKNOWN_LABEL, ServingData, collect
from monitoring.statistics import ShiftTest, categorical_shift, numeric_shift
from pipeline.metrics import MetricInputError, nwrmsle, perishable_weights

ACTUALS_COLUMNS = ("store_nbr", "item_nbr", "date", "unit_sales")


class ActualsError(ValueError):
    """An actual-sales file drift cannot use; names the file, row and column."""


def read_actuals(path: Path | str) -> dict[tuple[str, str, str], float]:
    """(store_nbr, item_nbr, date) -> unit_sales from a CSV with those columns (Favorita's train.csv works)."""
    path = Path(path)
    if not path.is_file():
        raise ActualsError(f"{path}: no such file")
    actual: dict[tuple[str, str, str], float] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ACTUALS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ActualsError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(ACTUALS_COLUMNS)})")
        for number, row in enumerate(reader, start=2):
            try:
                units = float(row["unit_sales"])
                store, item = str(int(row["store_nbr"])), str(int(row["item_nbr"]))
                date = dt.date.fromisoformat(row["date"].strip()).isoformat()
            except (TypeError, ValueError) as exc:
                raise ActualsError(f"{path}: line {number}: {exc}") from None
            if not np.isfinite(units) or units < 0:
                raise ActualsError(f"{path}: line {number}: unit_sales must be finite and >= 0, got {row['unit_sales']!r}")
            actual[(store, item, date)] = units
    return actual


def _shift_record(test: ShiftTest, params: DriftParams, psi_alert: float) -> dict[str, Any]:
    drifted = test.psi > psi_alert and test.p_value < params.p_value_alert
    return {"psi": test.psi, "test": test.test, "statistic": test.statistic, "p_value": test.p_value,
            "drifted": bool(drifted),
            "bins": {"labels": test.labels, "live": test.live_shares, "train": test.train_shares}}


def live_accuracy(data: ServingData, actuals: Mapping[tuple[str, str, str], float]) -> dict[str, Any]:
    """NWRMSLE of the served forecasts whose actual sales are known (perishable rows weigh 1.25)."""
    matched = [i for i, key in enumerate(data.keys) if key in actuals]
    if not matched:
        return {"rows": 0, "nwrmsle": None}
    index = np.asarray(matched)
    actual = np.asarray([actuals[data.keys[i]] for i in matched])
    perishable = np.asarray(data.categorical.get("perishable", ["0"] * data.rows))[index] == "1"
    try:
        score = nwrmsle(actual, data.predictions[index], perishable_weights(perishable))
    except MetricInputError as exc:
        raise ActualsError(f"live NWRMSLE: {exc}") from None
    return {"rows": int(index.size), "nwrmsle": score}


def analyse(events: Sequence[Mapping[str, Any]], bundle_metadata: Mapping[str, Any], training_stats: Mapping[str, Any],
            params: DriftParams, actuals: Mapping[tuple[str, str, str], float] | None = None,
            source: str = "") -> dict[str, Any]:
    """The drift report (a JSON-ready dict) with `alarm` and the reasons for it."""
    dense_names = list(training_stats.get("dense", {}))
    data = collect(events, dense_names, bundle_metadata["vocabularies"])
    report: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "source": source, "events": data.rows,
        "window": {"first": data.first_timestamp, "last": data.last_timestamp},
        "model": {"name": bundle_metadata.get("name"), "version": bundle_metadata.get("version"),
                  "training_rows": training_stats.get("rows")},
        "served_model_versions": data.model_versions,
        "thresholds": params.__dict__.copy(),
        "features": {}, "categorical": {}, "unseen": {}, "prediction": None, "live": None,
        "alarm": False, "reasons": [], "status": "ok",
    }
    if data.rows < params.min_events:
        report["status"] = "insufficient_data"
        report["reasons"].append(f"only {data.rows} event(s), fewer than drift.min_events={params.min_events}: no verdict")
    reasons: list[str] = []
    for name in dense_names:
        reference = training_stats["dense"][name]
        if reference.get("count", 0) == 0:
            continue
        record = _shift_record(numeric_shift(data.dense[name], reference), params, params.psi_alert)
        record["live_mean"] = float(np.mean(data.dense[name])) if data.rows else None
        record["train_mean"] = reference.get("mean")
        report["features"][name] = record
        if record["drifted"]:
            reasons.append(f"feature {name}: PSI {record['psi']:.3f} > {params.psi_alert} "
                           f"(KS p={record['p_value']:.2g})")
    for name, reference in training_stats.get("categorical", {}).items():
        labels = data.categorical.get(name, [])
        record = _shift_record(categorical_shift(labels, reference), params, params.psi_alert)
        report["categorical"][name] = record
        unseen = (sum(label == UNKNOWN_LABEL for label in labels) / len(labels)) if labels else 0.0
        report["unseen"][name] = unseen
        if record["drifted"]:
            reasons.append(f"category {name}: PSI {record['psi']:.3f} > {params.psi_alert} "
                           f"(chi-square p={record['p_value']:.2g})")
        if unseen > params.unseen_share_alert:
            reasons.append(f"category {name}: {unseen:.1%} of requests have a value unseen in training "
                           f"(> {params.unseen_share_alert:.1%})")
    report["unseen"]["any"] = float(data.unknown_rows.mean()) if data.rows else 0.0
    reference = training_stats.get("prediction_units", {})
    if reference.get("count", 0):
        record = _shift_record(numeric_shift(data.predictions, reference), params, params.prediction_psi_alert)
        record["live_mean"] = float(np.mean(data.predictions)) if data.rows else None
        record["train_mean"] = reference.get("mean")
        report["prediction"] = record
        if record["drifted"]:
            reasons.append(f"predictions: PSI {record['psi']:.3f} > {params.prediction_psi_alert} "
                           f"(KS p={record['p_value']:.2g})")
    if actuals is not None:
        live = live_accuracy(data, actuals)
        report["live"] = live
        if live["nwrmsle"] is not None and live["nwrmsle"] > params.max_live_nwrmsle:
            reasons.append(f"live NWRMSLE {live['nwrmsle']:.4f} over {live['rows']} rows > {params.max_live_nwrmsle}")
    if report["status"] != "insufficient_data" and reasons:
        report["alarm"], report["status"] = True, "drift"
    report["reasons"].extend(reasons)
    return report
