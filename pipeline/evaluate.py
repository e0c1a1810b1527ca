"""DVC stage ``evaluate``: score the candidate bundle on the validation window, then the threshold test.

The candidate is scored through the serving path (bundle loader +
``rows_from_snapshot`` + the one feature function), so what is evaluated is
what the app will serve. Outputs:

* ``results/metrics.json`` (DVC metrics): NWRMSLE and RMSE of the candidate
  and of the weekday moving-average baseline, the improvement, per-family and
  per-store NWRMSLE slices;
* ``results/plots/daily.csv`` (total actual vs predicted per day) and
  ``results/plots/predictions.csv`` (a seeded sample of rows, log1p scale) for
  ``dvc plots``;
* ``results/evaluation.json``: the verdict and the hashes of the bundle, code,
  data and params it was reached on — what ``promote`` checks.

The threshold test exits with status 2 and one line per failed threshold,
naming it and by how much, when the candidate's NWRMSLE is above
``evaluate.max_nwrmsle``, improves on the baseline by less than
``evaluate.min_improvement``, or a slice (with at least
``evaluate.slice.min_rows`` rows) is above ``evaluate.slice.max_nwrmsle``.

    python -m pipeline.evaluate [--root DIR]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.bundle import BundleError, load_bundle
from pipeline.features import FeatureInputError, rows_from_snapshot
from pipeline.io import atomic_file
from pipeline.metrics import MetricInputError, nwrmsle, nwrmsle_by, perishable_weights, rmse
from pipeline.model_params import EvaluateParams, evaluate_params, train_params
from pipeline.params import ParamsError, load_yaml
from pipeline.versions import code_version, data_version, params_version

VALIDATION_DATA = "data/split/validation.parquet"
DATA_INPUTS = ("data/split/train.parquet", VALIDATION_DATA, "data/prepared/holidays.parquet")
CANDIDATE_DIR = "models/candidate"
METRICS_FILE = "results/metrics.json"
EVALUATION_FILE = "results/evaluation.json"
PLOTS_DIR = "results/plots"
PARAM_SECTIONS = ("features", "train", "evaluate")
THRESHOLD_FAILED = 2


class EvaluateError(RuntimeError):
    """The candidate or the validation data cannot be evaluated (message names the file/field)."""


def current_versions(root: Path, raw_params: Mapping) -> dict:
    """The hashes an evaluation is valid for (promote recomputes and compares them)."""
    return {"code_version": code_version(), "data_version": data_version(root, DATA_INPUTS),
            "params_version": params_version({k: raw_params.get(k) for k in PARAM_SECTIONS})}


def score(actual, predicted, weights, family, store) -> dict:
    return {
        "nwrmsle": nwrmsle(actual, predicted, weights), "rmse": rmse(actual, predicted),
        "by_family": nwrmsle_by(family, actual, predicted, weights),
        "by_store": nwrmsle_by(store, actual, predicted, weights),
    }


def threshold_failures(metrics: Mapping, rows_per_slice: Mapping[str, Mapping[str, int]], params: EvaluateParams) -> list[str]:
    """Every failed threshold, as a message naming it and by how much (empty: the candidate passes)."""
    failures = []
    cand, base = metrics["candidate"]["nwrmsle"], metrics["baseline"]["nwrmsle"]
    if cand > params.max_nwrmsle:
        failures.append(f"evaluate.max_nwrmsle: candidate NWRMSLE {cand:.4f} is above the threshold "
                        f"{params.max_nwrmsle:.4f} by {cand - params.max_nwrmsle:.4f}")
    improvement = metrics["improvement_over_baseline"]
    if improvement < params.min_improvement:
        failures.append(f"evaluate.min_improvement: candidate NWRMSLE {cand:.4f} improves on the baseline's {base:.4f} "
                        f"by {improvement:.2%}, less than the required {params.min_improvement:.2%} "
                        f"(short by {params.min_improvement - improvement:.2%})")
    bound = params.slice_bound
    for kind in ("by_family", "by_store"):
        for key, value in sorted(metrics["candidate"][kind].items()):
            rows = rows_per_slice[kind].get(key, 0)
            if rows >= bound.min_rows and value > bound.max_nwrmsle:
                failures.append(f"evaluate.slice.max_nwrmsle: {kind[3:]} {key!r} ({rows} rows) has NWRMSLE {value:.4f}, "
                                f"above the bound {bound.max_nwrmsle:.4f} by {value - bound.max_nwrmsle:.4f}")
    return failures


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def read_validation(path: Path) -> pd.DataFrame:
    columns = ["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion", "family", "perishable"]
    if not path.exists():
        raise EvaluateError(f"{path}: not found (run the data stages first: dvc repro split)")
    frame = pd.read_parquet(path, columns=columns)
    if frame.empty:
        raise EvaluateError(f"{path}: no rows to evaluate")
    return frame


def run(root: Path, quiet: bool = False) -> tuple[dict, list[str]]:
    """Evaluate the candidate; returns (metrics, threshold failures). Writes every output first."""
    from pipeline.models import baseline_predict

    raw = load_yaml(root / "params.yaml")
    eparams, tparams = evaluate_params(raw), train_params(raw)
    bundle = load_bundle(root / CANDIDATE_DIR)
    frame = read_validation(root / VALIDATION_DATA)
    try:
        rows = rows_from_snapshot(bundle.snapshot, frame["store_nbr"].to_numpy(), frame["item_nbr"].to_numpy(),
                                  frame["date"].to_numpy(dtype="datetime64[D]"), frame["onpromotion"].to_numpy(bool))
    except FeatureInputError as exc:
        raise EvaluateError(f"{root / VALIDATION_DATA}: {exc} (is split.validation_days <= features.horizon, and is "
                            "the candidate trained on the current split?)") from None
    predicted = bundle.predict_features(bundle.features(rows))
    baseline = baseline_predict(rows, tparams.baseline_weeks)
    actual = frame["unit_sales"].to_numpy(np.float64)
    weights = perishable_weights(frame["perishable"].to_numpy(bool))
    family = frame["family"].astype(str).to_numpy()
    store = frame["store_nbr"].astype(str).to_numpy()
    try:
        candidate_scores = score(actual, predicted, weights, family, store)
        baseline_scores = score(actual, baseline, weights, family, store)
    except MetricInputError as exc:
        raise EvaluateError(f"{root / VALIDATION_DATA}: {exc}") from None
    metrics = {
        "rows": int(actual.size),
        "candidate": candidate_scores, "baseline": baseline_scores,
        "improvement_over_baseline": 1.0 - candidate_scores["nwrmsle"] / baseline_scores["nwrmsle"],
    }
    rows_per_slice = {"by_family": dict(zip(*np.unique(family, return_counts=True))),
                      "by_store": dict(zip(*np.unique(store, return_counts=True)))}
    rows_per_slice = {k: {str(a): int(b) for a, b in v.items()} for k, v in rows_per_slice.items()}
    failures = threshold_failures(metrics, rows_per_slice, eparams)
    metrics["threshold_test_passed"] = int(not failures)

    _write_json(root / METRICS_FILE, metrics)
    daily = pd.DataFrame({"date": frame["date"].dt.strftime("%Y-%m-%d"), "actual": actual, "predicted": predicted,
                          "baseline": baseline}).groupby("date", sort=True).sum()
    _write_csv(root / PLOTS_DIR / "daily.csv", ["date", "actual", "predicted", "baseline"],
               [(d, f"{r.actual:.3f}", f"{r.predicted:.3f}", f"{r.baseline:.3f}") for d, r in daily.iterrows()])
    sample = np.sort(np.random.default_rng(eparams.seed).choice(actual.size, min(eparams.plot_rows, actual.size),
                                                                replace=False))
    _write_csv(root / PLOTS_DIR / "predictions.csv", ["actual_log1p", "predicted_log1p", "family"],
               [(f"{np.log1p(actual[i]):.4f}", f"{np.log1p(predicted[i]):.4f}", family[i]) for i in sample])
    evaluation = {
        "passed": not failures, "failures": failures, "bundle_digest": bundle.digest,
        "bundle_version": bundle.metadata.get("version"), "mlflow_run_id": bundle.metadata.get("mlflow_run_id"),
        "candidate_nwrmsle": candidate_scores["nwrmsle"], "baseline_nwrmsle": baseline_scores["nwrmsle"],
        "evaluated_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        **current_versions(root, raw),
    }
    _write_json(root / EVALUATION_FILE, evaluation)
    _log_to_run(root, bundle.metadata.get("mlflow_run_id"), metrics, not failures, quiet)
    return metrics, failures


def _log_to_run(root: Path, run_id: str | None, metrics: Mapping, passed: bool, quiet: bool) -> None:
    """Add the validation scores to the candidate's MLflow run (the experiment view shows them side by side)."""
    if not run_id:
        return
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    try:
        client = tracking.client(root)
        for key, value in (("validation_nwrmsle", metrics["candidate"]["nwrmsle"]),
                           ("validation_rmse", metrics["candidate"]["rmse"]),
                           ("validation_baseline_nwrmsle", metrics["baseline"]["nwrmsle"]),
                           ("validation_improvement", metrics["improvement_over_baseline"])):
            client.log_metric(run_id, key, float(value))
        client.set_tag(run_id, "threshold_test", "passed" if passed else "failed")
    except MlflowException as exc:
        if not quiet:
            print(f"evaluate: note: could not add the scores to MLflow run {run_id}: {exc.message}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    args = parser.parse_args(argv)
    try:
        metrics, failures = run(args.root)
    except (ParamsError, BundleError, EvaluateError, FileNotFoundError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    cand, base = metrics["candidate"], metrics["baseline"]
    summary = (f"evaluate: candidate NWRMSLE {cand['nwrmsle']:.4f} (RMSE {cand['rmse']:.3f}) vs baseline "
               f"{base['nwrmsle']:.4f}: {metrics['improvement_over_baseline']:.1%} better on {metrics['rows']:,} rows")
    if failures:
        print(summary, file=sys.stderr)
        print("evaluate: THRESHOLD TEST FAILED", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return THRESHOLD_FAILED
    print(summary + "; threshold test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
