"""DVC stage ``evaluate``: score the training recipe on rolling backtest windows, then the threshold test.

Window 0 is the validation window, scored with the candidate bundle through
the serving path (bundle loader + ``rows_from_snapshot`` + the one feature
function), so what is evaluated there is what the app will serve. Windows
1 .. ``evaluate.backtest_windows - 1`` are the windows of the same length
before it, each forecast by a model trained with the candidate's recipe on
the days before that window (``pipeline/backtest.py``).

**The threshold test** (the gate ``promote`` obeys) passes when all hold:

1. the candidate beats the weekday moving-average baseline *with confidence*:
   over the rows of all windows, the improvement 1 - NWRMSLE(candidate) /
   NWRMSLE(baseline) has a paired bootstrap interval over store×item series
   (``evaluate.confidence``, ``evaluate.bootstrap_resamples``) whose lower
   bound is strictly above ``evaluate.min_improvement`` (0 allowed), the interval
   resting on at least ``evaluate.min_series`` series;
2. if ``evaluate.max_nwrmsle`` is set (not null): the candidate's NWRMSLE over
   all windows is at most that;
3. in the validation window, no family or store slice with at least
   ``evaluate.slice.min_rows`` rows has an NWRMSLE above ``evaluate.slice.max_nwrmsle``.

A failure exits with status 2 and one line per failed rule, naming its param
and by how much. Outputs (all written before the verdict is returned):

* ``results/metrics.json`` (DVC metrics): the headline figures only;
* ``results/backtest.json``: every window's dates, rows, scores and interval;
* ``results/slices.json``: per-family and per-store NWRMSLE of the validation window;
* ``results/plots/daily.csv`` (units per day, every window) and
  ``results/plots/predictions.csv`` (a seeded sample, log1p scale) for ``dvc plots``;
* ``results/evaluation.json``: the verdict and the hashes of the bundle, code,
  data and params it was reached on — what ``promote`` checks; no time and no run
  id, so the same inputs give the same bytes (git stays clean after ``make run``);
* an MLflow run nested under the candidate's training run (found by the bundle digest
  its tags record) with all of the above: when, from which commit, which runs.

    python -m pipeline.evaluate [--root DIR]
"""

from __future__ import annotations

import pipeline.blas  # noqa: F401 - first: pins OpenBLAS's kernels before numpy loads it (pipeline/blas.py)
import csv
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.backtest import VALIDATION_DATA, BacktestError, WindowScores, earlier_windows, series_key
from pipeline.bundle import EXPECTED_OUTPUT, PREDICTION_OUTPUT, BundleError, load_bundle
from pipeline.cluster import ClusterError, dask_client, scheduler_address
from pipeline.features import FeatureInputError, rows_from_snapshot
from pipeline.history import HistoryError
from pipeline.io import atomic_file
from pipeline.metrics import (
    ImprovementInterval,
    MetricInputError,
    improvement_interval,
    improvement_words,
    nwrmsle,
    nwrmsle_by,
    perishable_weights,
    rmse,
)
from pipeline.model_params import (EvaluateParams, evaluate_params, feature_params, train_params,
                                   validation_within_horizon)
from pipeline.models import TrainingDiverged
from pipeline.params import load_yaml
from pipeline.stage import bar_options, run_stage
from pipeline.versions import code_version, data_version, params_version, shown_source

DATA_INPUTS = ("data/split/train.parquet", VALIDATION_DATA, "data/prepared/holidays.parquet")
CANDIDATE_DIR = "models/candidate"
METRICS_FILE = "results/metrics.json"
BACKTEST_FILE = "results/backtest.json"
SLICES_FILE = "results/slices.json"
EVALUATION_FILE = "results/evaluation.json"
PLOTS_DIR = "results/plots"
RESULT_FILES = (METRICS_FILE, BACKTEST_FILE, SLICES_FILE, EVALUATION_FILE)
PARAM_SECTIONS = ("features", "train", "evaluate")
THRESHOLD_FAILED = 2
SCORE_CHUNK_ROWS = 65_536  # validation rows whose features are built at once


# What an evaluation.json holds that promote reads, by field, as run() writes it: promote refuses one without them
# (a hand edit, a bad merge of the git-tracked results/), naming the field, where it stopped with a traceback.
VERDICT_FIELDS: dict[str, type] = {"passed": bool, "failures": list, "rule": str, "improvement_interval": dict,
                                   "bundle_digest": str, "candidate_nwrmsle": float, "code_version": str,
                                   "data_version": dict, "params_version": str}


def verdict_problem(evaluation) -> str | None:
    """What makes ``evaluation`` (an evaluation.json as read) no verdict promote can act on, or None."""
    if not isinstance(evaluation, dict):
        return f"not an evaluation (a JSON {type(evaluation).__name__}, not an object)"
    checks = [(name, kind, evaluation.get(name)) for name, kind in VERDICT_FIELDS.items()]
    interval = evaluation.get("improvement_interval")
    if isinstance(interval, dict):
        checks += [(f"improvement_interval.{name}", float, interval.get(name)) for name in ImprovementInterval._fields]
    for name, kind, value in checks:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
        if not (number if kind is float else isinstance(value, kind)):
            return f"field {name!r} is missing or not {'a finite number' if kind is float else 'a ' + kind.__name__}"
    return None


class EvaluateError(RuntimeError):
    """The candidate or the validation data cannot be evaluated (message names the file/field)."""


def current_versions(root: Path, raw_params: Mapping) -> dict:
    """The hashes an evaluation is valid for (promote recomputes and compares them)."""
    return {"code_version": code_version(), "data_version": data_version(root, DATA_INPUTS),
            "params_version": params_version({k: raw_params.get(k) for k in PARAM_SECTIONS})}


def candidate_made_from_other_inputs(root: Path, metadata: Mapping, raw_params: Mapping) -> list[str]:
    """Where a candidate (its bundle.json ``metadata``) was trained from other inputs than train would read now: its
    ``features`` and ``train`` params, by key, and its training data, by file (empty: train makes it of these).

    A verdict's hashes are those of params.yaml and the data at evaluation time, not the candidate's: `python -m
    pipeline.evaluate` run after params.yaml changed, without train, judged the old model (its backtest windows
    retrained with the new params) and promote registered it as the current params' model."""
    from pipeline.models import mapping_changes
    from pipeline.train import HOLIDAYS_DATA, TRAIN_DATA

    parts = []
    recorded = metadata.get("params")
    if isinstance(recorded, Mapping):  # as train records them (through JSON: tuples are lists)
        ours = json.loads(json.dumps({"features": feature_params(raw_params).to_json(),
                                      "train": train_params(raw_params).to_json()}))
        if recorded != ours:
            parts.append(f"params ({', '.join(mapping_changes(recorded, ours))})")
    recorded = metadata.get("data_version")
    if isinstance(recorded, Mapping):
        changed = [path for path, md5 in data_version(root, [TRAIN_DATA, HOLIDAYS_DATA]).items()
                   if recorded.get(path) != md5]
        if changed:
            parts.append(f"data ({', '.join(changed)})")
    return parts


def score(actual, predicted, weights, family, store) -> dict:
    return {
        "nwrmsle": nwrmsle(actual, predicted, weights), "rmse": rmse(actual, predicted),
        "by_family": nwrmsle_by(family, actual, predicted, weights),
        "by_store": nwrmsle_by(store, actual, predicted, weights),
    }


def gate_rule(params: EvaluateParams) -> str:
    """The threshold test in one sentence, with the params' values (recorded beside every verdict)."""
    rule = (f"the lower bound of the {params.confidence:.0%} paired-bootstrap interval (over store x item series, "
            f"{params.bootstrap_resamples} resamples) of the improvement over the baseline, 1 - NWRMSLE(candidate) / "
            f"NWRMSLE(baseline) over all {params.backtest_windows} backtest window(s), must exceed "
            f"{params.min_improvement:g}, over at least {params.min_series} series")
    if params.max_nwrmsle is not None:
        rule += f"; the candidate's NWRMSLE over all windows must be at most {params.max_nwrmsle:g}"
    return rule + (f"; no family/store slice of the validation window with >= {params.slice_bound.min_rows} rows "
                   f"may exceed NWRMSLE {params.slice_bound.max_nwrmsle:g}")


def threshold_failures(pooled: Mapping, interval: ImprovementInterval, slices: Mapping, params: EvaluateParams
                       ) -> list[str]:
    """Every failed rule of the threshold test, as a message naming its param and by how much (empty: passed).

    ``pooled``: candidate/baseline NWRMSLE over all windows; ``slices``: the validation window's
    ``{"candidate": {"by_family": ..., "by_store": ...}, "rows": {"by_family": ..., "by_store": ...}}``.
    """
    failures = []
    if interval.series < params.min_series:  # a bootstrap over 1 series has an interval of zero width
        failures.append(f"evaluate.min_series: the improvement interval rests on {interval.series} series, fewer than "
                        f"the {params.min_series} it needs to judge with confidence (lower evaluate.min_series to "
                        "accept a verdict on so few)")
    if not interval.low > params.min_improvement:
        failures.append(
            f"evaluate.min_improvement: against the baseline the candidate is "
            f"{improvement_words(interval.estimate, interval.low, interval.high, digits=2)} (NWRMSLE "
            f"{pooled['candidate_nwrmsle']:.4f} vs {pooled['baseline_nwrmsle']:.4f}; the {interval.confidence:.0%} "
            f"interval over {interval.series} series), and its lower end, an improvement of {interval.low:.2%}, "
            f"does not clear the required {params.min_improvement:.2%} (short by "
            f"{params.min_improvement - interval.low:.2%})")
    cand = pooled["candidate_nwrmsle"]
    if params.max_nwrmsle is not None and not cand <= params.max_nwrmsle:  # a NaN score fails too
        failures.append(f"evaluate.max_nwrmsle: candidate NWRMSLE {cand:.4f} is above the threshold "
                        f"{params.max_nwrmsle:.4f} by {cand - params.max_nwrmsle:.4f}")
    bound = params.slice_bound
    for kind in ("by_family", "by_store"):
        for key, value in sorted(slices["candidate"][kind].items()):
            rows = slices["rows"][kind].get(key, 0)
            if rows >= bound.min_rows and not value <= bound.max_nwrmsle:
                failures.append(f"evaluate.slice.max_nwrmsle: {kind[3:]} {key!r} ({rows} rows) "
                                f"has NWRMSLE {value:.4f}, above the bound {bound.max_nwrmsle:.4f} "
                                f"by {value - bound.max_nwrmsle:.4f}")
    return failures


def json_text(data) -> str:
    """A result file's text (results/*.json): the bytes DVC hashes and promote's evaluation digest reads."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json_text(data), encoding="utf-8")


def evaluation_run_params(params: EvaluateParams, rule: str) -> dict:
    """The params an evaluate run records (``pipeline.promote`` records a skipped evaluation with the same)."""
    return {"evaluate": params.to_json(), "rule": rule}


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


def scoreable_rows(frame: pd.DataFrame, bundle, path: Path) -> tuple[pd.DataFrame, dict | None]:
    """The validation rows the candidate can forecast, and what was left out: the rows of stores it has never seen
    (a store opened inside the window; an unknown item is scored, through the unknown-item ids)."""
    known = np.isin(frame["store_nbr"].to_numpy(), np.asarray(bundle.snapshot.stores["store_nbr"]))
    if known.all():
        return frame, None
    if not known.any():
        raise EvaluateError(f"{path}: no row of a store the candidate was trained on (is it trained on the current "
                            "split?)")
    stores = sorted(int(s) for s in np.unique(frame["store_nbr"].to_numpy()[~known]))
    return frame[known].reset_index(drop=True), {"rows": int((~known).sum()), "stores": stores}


def _day(day_number: int) -> str:
    return str(np.datetime64(int(day_number), "D"))


def validation_window(root: Path, bundle, frame: pd.DataFrame, baseline_weeks: int,
                      quiet: bool = True) -> WindowScores:
    """Window 0: the candidate bundle on the validation rows, through the serving path."""
    from pipeline.models import baseline_predict

    days = frame["date"].to_numpy(dtype="datetime64[D]")
    store, item = frame["store_nbr"].to_numpy(), frame["item_nbr"].to_numpy()
    promo = frame["onpromotion"].to_numpy(bool)
    candidate, expected, baseline = np.zeros(days.size), np.zeros(days.size), np.zeros(days.size)
    # In chunks: each row carries its series' whole feature window (Favorita: 3.5 M rows x 392 days).
    for start in tqdm(range(0, days.size, SCORE_CHUNK_ROWS), desc="evaluate: validation rows", unit="chunk",
                      **bar_options(not quiet), leave=False):
        part = slice(start, start + SCORE_CHUNK_ROWS)
        try:
            rows = rows_from_snapshot(bundle.snapshot, store[part], item[part], days[part], promo[part])
        except FeatureInputError as exc:
            raise EvaluateError(f"{root / VALIDATION_DATA}: {exc} (row numbers counted from row {start}; is "
                                "split.validation_days <= features.horizon, and is the candidate trained on the "
                                "current split?)") from None
        outputs = bundle.forecast_features(bundle.features(rows))
        candidate[part] = outputs[PREDICTION_OUTPUT]
        expected[part] = outputs.get(EXPECTED_OUTPUT, outputs[PREDICTION_OUTPUT])  # an older bundle: the median
        baseline[part] = baseline_predict(rows, baseline_weeks)
    day = days.astype(np.int64)
    return WindowScores(
        index=0, first_day=int(day.min()), last_day=int(day.max()),
        series=series_key(frame["store_nbr"].to_numpy(), frame["item_nbr"].to_numpy()), day=day,
        # a return (prepare.returns: keep) sold nothing that day, as the model's history counts it
        actual=np.maximum(frame["unit_sales"].to_numpy(np.float64), 0.0),
        candidate=candidate, baseline=baseline, expected=expected,
        weights=perishable_weights(frame["perishable"].to_numpy(bool)),
        model=f"candidate bundle {bundle.metadata.get('version')}")


def window_summary(window: WindowScores, params: EvaluateParams) -> dict:
    """One window's scores and improvement interval (a row of results/backtest.json)."""
    interval = improvement_interval(window.series, window.actual, window.candidate, window.baseline, window.weights,
                                    confidence=params.confidence, resamples=params.bootstrap_resamples,
                                    seed=params.seed + window.index)
    return {"window": window.index, "first_day": _day(window.first_day), "last_day": _day(window.last_day),
            "model": window.model, "rows": window.rows, "series": interval.series,
            "train_examples": window.train_examples,
            "candidate_nwrmsle": nwrmsle(window.actual, window.candidate, window.weights),
            "baseline_nwrmsle": nwrmsle(window.actual, window.baseline, window.weights),
            "improvement": interval.estimate, "improvement_low": interval.low, "improvement_high": interval.high}


def _slices(window: WindowScores, frame: pd.DataFrame) -> dict:
    family = frame["family"].astype(str).to_numpy()
    store = frame["store_nbr"].astype(str).to_numpy()
    out = {"window": {"first_day": _day(window.first_day), "last_day": _day(window.last_day)}, "rows": {}}
    for name, predicted in (("candidate", window.candidate), ("baseline", window.baseline)):
        scores = score(window.actual, predicted, window.weights, family, store)
        out[name] = {"by_family": scores["by_family"], "by_store": scores["by_store"]}
    for kind, groups in (("by_family", family), ("by_store", store)):
        keys, counts = np.unique(groups, return_counts=True)
        out["rows"][kind] = {str(k): int(c) for k, c in zip(keys, counts)}
    return out


def _write_plots(root: Path, windows: list[WindowScores], latest_family: np.ndarray, params: EvaluateParams) -> None:
    # expected units are what a day's total compares with: the median-like forecast the metric scores sums ~25 %
    # short of sales, and a plot of it alone read as a model that under-forecasts every day
    daily = pd.concat([pd.DataFrame({"day": w.day, "window": w.index, "actual": w.actual, "expected_units": w.expected,
                                     "predicted": w.candidate, "baseline": w.baseline}) for w in windows])
    daily = daily.groupby(["day", "window"], sort=True).sum().reset_index()
    _write_csv(root / PLOTS_DIR / "daily.csv", ["date", "window", "actual", "expected_units", "predicted", "baseline"],
               [(_day(r.day), int(r.window), f"{r.actual:.3f}", f"{r.expected_units:.3f}", f"{r.predicted:.3f}",
                 f"{r.baseline:.3f}") for r in daily.itertuples()])
    latest = windows[0]
    sample = np.sort(np.random.default_rng(params.seed).choice(latest.rows, min(params.plot_rows, latest.rows),
                                                               replace=False))
    _write_csv(root / PLOTS_DIR / "predictions.csv", ["actual_log1p", "predicted_log1p", "family"],
               [(f"{np.log1p(latest.actual[i]):.4f}", f"{np.log1p(latest.candidate[i]):.4f}", latest_family[i])
                for i in sample])


def run(root: Path, quiet: bool = False, candidate_root: Path | None = None) -> tuple[dict, list[str]]:
    """Evaluate the candidate; returns (headline metrics, threshold failures). Writes every output first.

    ``candidate_root`` (default ``root``) holds the params.yaml, the candidate and the results
    (``pipeline.sweep``'s best candidate lives in a directory of its own); data is the project's.
    """
    home = root if candidate_root is None else Path(candidate_root)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    raw = load_yaml(home / "params.yaml")
    eparams, fparams, tparams = evaluate_params(raw), feature_params(raw), train_params(raw)
    validation_within_horizon(raw)
    bundle = load_bundle(home / CANDIDATE_DIR)
    frame, unscored = scoreable_rows(read_validation(root / VALIDATION_DATA), bundle, root / VALIDATION_DATA)
    if unscored:
        say(f"evaluate: note: {unscored['rows']:,} validation row(s) of store(s) {unscored['stores']} not scored: "
            "they first sold inside the window, so the candidate has no history for them; once it is promoted (promote "
            "rolls its history forward) the app forecasts them from their own days of sales with the embedding "
            "reserved for stores unseen in training, as it does new items, until a model trained on them is promoted")
    latest = validation_window(root, bundle, frame, tparams.baseline_weeks, quiet)
    length = latest.last_day - latest.first_day + 1
    try:
        with dask_client(scheduler_address(raw)) as client:  # None (train them here) unless one is configured
            windows = [latest] + earlier_windows(root, fparams, tparams, eparams.backtest_windows, length, say,
                                                 progress=not quiet, client=client)
        per_window = [window_summary(w, eparams) for w in windows]
        pooled_interval = improvement_interval(
            np.concatenate([w.series for w in windows]), np.concatenate([w.actual for w in windows]),
            np.concatenate([w.candidate for w in windows]), np.concatenate([w.baseline for w in windows]),
            np.concatenate([w.weights for w in windows]), confidence=eparams.confidence,
            resamples=eparams.bootstrap_resamples, seed=eparams.seed)
        pooled_weights = np.concatenate([w.weights for w in windows])
        pooled_actual = np.concatenate([w.actual for w in windows])
        pooled = {"windows": len(windows), "rows": int(pooled_actual.size), "series": pooled_interval.series,
                  "candidate_nwrmsle": nwrmsle(pooled_actual, np.concatenate([w.candidate for w in windows]),
                                               pooled_weights),
                  "baseline_nwrmsle": nwrmsle(pooled_actual, np.concatenate([w.baseline for w in windows]),
                                              pooled_weights),
                  "improvement": pooled_interval.estimate, "improvement_low": pooled_interval.low,
                  "improvement_high": pooled_interval.high}
        slices = _slices(latest, frame)
    except MetricInputError as exc:
        raise EvaluateError(f"{root / VALIDATION_DATA} and the backtest windows: {exc}") from None
    failures = threshold_failures(pooled, pooled_interval, slices, eparams)
    validation = per_window[0]
    metrics = {  # the headline: what `dvc metrics show` prints
        "threshold_test_passed": int(not failures),
        "backtest": pooled,
        "validation": {"rows": validation["rows"], "candidate_nwrmsle": validation["candidate_nwrmsle"],
                       "baseline_nwrmsle": validation["baseline_nwrmsle"],
                       "improvement": validation["improvement"],
                       "candidate_rmse": rmse(latest.actual, latest.candidate),
                       "baseline_rmse": rmse(latest.actual, latest.baseline)},
    }
    backtest = {"confidence": eparams.confidence, "resamples": eparams.bootstrap_resamples,
                "window_days": int(length), "pooled": pooled, "windows": per_window}
    # The verdict goes first and comes back last: an evaluation interrupted in between leaves none, so new
    # scores never stand beside an old verdict (promote then refuses: not evaluated).
    (home / EVALUATION_FILE).unlink(missing_ok=True)
    _write_json(home / METRICS_FILE, metrics)
    _write_json(home / BACKTEST_FILE, backtest)
    _write_json(home / SLICES_FILE, slices)
    _write_plots(home, windows, frame["family"].astype(str).to_numpy(), eparams)
    evaluation = {
        "passed": not failures, "failures": failures, "rule": gate_rule(eparams),
        "improvement_interval": pooled_interval.to_json(), "bundle_digest": bundle.digest,
        "bundle_version": bundle.metadata.get("version"), "bundle_name": bundle.metadata.get("name"),
        "candidate_nwrmsle": validation["candidate_nwrmsle"], "baseline_nwrmsle": validation["baseline_nwrmsle"],
        "backtest_candidate_nwrmsle": pooled["candidate_nwrmsle"],
        "backtest_baseline_nwrmsle": pooled["baseline_nwrmsle"],
        **({"unscored_validation_rows": unscored} if unscored else {}),
        **current_versions(root, raw),
    }
    _log_to_mlflow(root, evaluation, metrics, per_window, eparams, quiet, home)
    _write_json(home / EVALUATION_FILE, evaluation)
    return metrics, failures


def _log_to_mlflow(root: Path, evaluation: Mapping, metrics: Mapping, per_window: list[dict], params: EvaluateParams,
                   quiet: bool, home: Path) -> str | None:
    """Record the evaluation in MLflow (a run nested under the candidate's); None when it could not be."""
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    try:
        training_run = tracking.run_of_bundle(root, evaluation["bundle_digest"])
        if training_run is None:  # said under --quiet too (it drops progress, not what went unrecorded)
            print(f"evaluate: note: no finished MLflow training run at {tracking.shown_uri(root)} made bundle "
                  f"{evaluation['bundle_digest'][:12]}; the evaluation is not recorded in MLflow", file=sys.stderr)
            return None
        run_id = training_run.info.run_id
        recorded = tracking.log_evaluation(
            root, run_id, passed=evaluation["passed"], headline=metrics, windows=per_window,
            params=evaluation_run_params(params, evaluation["rule"]), bundle_digest=evaluation["bundle_digest"],
            evaluation_json=json_text(evaluation),
            artifacts=[home / f for f in RESULT_FILES if f != EVALUATION_FILE and (home / f).exists()],
            data=tracking.RunData(shown_source(root), evaluation["data_version"], {
                "validation_rows": metrics["validation"]["rows"],
                "backtest_windows": len(per_window)}))
    except (MlflowException, tracking.TrackingError) as exc:
        print(f"evaluate: note: could not record the evaluation in MLflow: {tracking.store_error_text(exc)}",
              file=sys.stderr)
        return None
    for closed in [] if quiet else recorded.closed:
        print(f"evaluate: note: {tracking.closed_run_note(closed)}", file=sys.stderr)
    if not quiet and not recorded.training_run_updated:
        print(f"evaluate: note: run {run_id} is a registered model version's; its recorded verdict is kept, this "
              f"evaluation is MLflow run {recorded.run_id}", file=sys.stderr)
    elif not quiet:
        print(f"evaluate: recorded as MLflow run {recorded.run_id} (nested under training run {run_id})", flush=True)
    return recorded.run_id


def main(argv=None) -> int:
    return run_stage("evaluate", _main, argv, errors=(BundleError, EvaluateError, BacktestError, HistoryError,
                                                      ClusterError, FileNotFoundError, TrainingDiverged),
                     description=__doc__.splitlines()[0])


def _main(args) -> int:
    metrics, failures = run(args.root, quiet=args.quiet)
    pooled, validation = metrics["backtest"], metrics["validation"]
    summary = (f"evaluate: {pooled['windows']} window(s), {pooled['rows']:,} rows: candidate NWRMSLE "
               f"{pooled['candidate_nwrmsle']:.4f} vs baseline {pooled['baseline_nwrmsle']:.4f}, "
               f"{improvement_words(pooled['improvement'], pooled['improvement_low'], pooled['improvement_high'])}; "
               f"validation window {validation['candidate_nwrmsle']:.4f} vs {validation['baseline_nwrmsle']:.4f}")
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
