"""Accuracy table (BENCHMARKS.md "Accuracy"): NWRMSLE on the default validation window, same features for all.

Learners: the weekday moving-average baseline (no training), the engine's
linear model and MLP (trained exactly as ``pipeline.train`` trains them, from
params.yaml), and LightGBM as a benchmark-only peer on the same dense
features and categorical ids, with the same weights and the same early
stopping data. Targets: the MLP beats the baseline by >= 10 % (ratio <= 0.90)
and is no worse than LightGBM (ratio <= 1.0).

    python benchmarks/accuracy.py [--root .] [--json] [--skip-lightgbm]

On synthetic data a last row gives the noise floor (``noise_floor.py``): the
forecast made from the generator's true expected demand, the best NWRMSLE any
learner could reach, so the table shows how much of the reachable gain each
learner takes.

Every backtest window (``--windows``, default ``evaluate.backtest_windows``):
window 0 is the validation window above; window k is the ``split.validation_days``
days k windows earlier, with the MLP and LightGBM trained on the days before it
exactly as evaluate's backtest trains (``pipeline/backtest.py``). Each window
reports MLP vs baseline, MLP vs LightGBM and noise floor vs baseline with the
paired bootstrap interval over series the threshold test uses
(``pipeline.metrics.improvement_interval``). ``--json``: the ids A1, A3, A4
are the latest window; the lines ``A1.wK``, ``A3.wK``, ``A4.wK`` are window K.

Needs the data stages' outputs (``dvc repro split``) and, for the peer,
``pip install lightgbm==4.7.0`` (never a runtime dependency).
"""

from __future__ import annotations

import argparse
import importlib.util
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# the repository goes on sys.path first (above), so these imports come after it
from pipeline import train  # noqa: E402 - after sys.path
from pipeline.backtest import history_before, series_key  # noqa: E402 - after sys.path
from pipeline.features import CATEGORICAL_FIELDS, build_features  # noqa: E402 - after sys.path
from pipeline.history import HistoryError, build_history, load_history, read_sales, rows_at_origin  # noqa: E402 - after sys.path
from pipeline.metrics import improvement_interval, nwrmsle, perishable_weights, rmse  # noqa: E402 - after sys.path
from pipeline.model_params import evaluate_params, feature_params, train_params  # noqa: E402 - after sys.path
from pipeline.models import baseline_predict, predict_weights  # noqa: E402 - after sys.path
from pipeline.params import ParamsError, data_params, load_yaml  # noqa: E402 - after sys.path

import noise_floor  # noqa: E402  (benchmarks/ is on sys.path, as for common)

FLOOR = "noise floor (synthetic data's true demand)"


def validation_set(root: Path, data, fparams, weeks: int):
    """Validation rows (every grid row of the window) with their features, via the training path.

    Equal to what evaluate computes through the bundle (tests/pipeline/models/test_features.py proves
    the two paths identical); the vocabularies are the training ones.
    """
    full = build_history(read_sales([root / train.TRAIN_DATA, root / "data/split/validation.parquet"]),
                         first_day=data.history.first_day)
    rows, units, perishable, series = rows_at_origin(full, data.validation_origin, fparams.spec.history_days,
                                                     fparams.spec.horizon)
    keys = (full.store_nbr[series], full.item_nbr[series], rows.origin_day + rows.horizon)
    return build_features(fparams.spec, data.vocab, rows), units, perishable_weights(perishable), \
        baseline_predict(rows, weeks), keys


def fit_engine(kind: str, tparams, data, spec, matrix):
    """(median-like forecast, expected units, fit seconds, steps run) of an engine model trained as train does."""
    params = dataclasses.replace(tparams, model=kind)
    started = time.perf_counter()
    print(f"accuracy: training the engine {kind} ...", file=sys.stderr, flush=True)

    def progress(step: int, curve: dict) -> None:
        print(f"  {kind} step {step:6d}  inner-validation NWRMSLE {curve['inner_validation_nwrmsle']:.4f}",
              file=sys.stderr, flush=True)

    config, result = train.fit(params, data, spec, on_eval=progress)
    seconds = time.perf_counter() - started
    return (predict_weights(config, result.weights, matrix),
            predict_weights(config, result.weights, matrix, result.expected_factor), seconds,
            f"{result.steps_run} steps (best {result.best_step})")


def fit_lightgbm(tparams, data, matrix, threads: int):
    import lightgbm as lgb

    def table(m):
        return np.concatenate([m.dense, m.categorical.astype(np.float32)], axis=1)

    dense_size = data.train.matrix.dense.shape[1]
    categorical = list(range(dense_size, dense_size + len(CATEGORICAL_FIELDS)))
    started = time.perf_counter()
    train_set = lgb.Dataset(table(data.train.matrix), np.log1p(data.train.units), weight=data.train.weights,
                            categorical_feature=categorical, free_raw_data=True)
    inner_set = lgb.Dataset(table(data.inner.matrix), np.log1p(data.inner.units), weight=data.inner.weights,
                            reference=train_set)
    booster = lgb.train(
        {"objective": "regression", "learning_rate": 0.1, "num_leaves": 63, "min_data_in_leaf": 200,
         "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "seed": tparams.seed,
         "num_threads": threads, "verbose": -1, "deterministic": True, "force_row_wise": True},
        train_set, num_boost_round=400, valid_sets=[inner_set],
        callbacks=[lgb.early_stopping(20, verbose=False)])
    seconds = time.perf_counter() - started
    predicted = np.expm1(np.clip(booster.predict(table(matrix), num_iteration=booster.best_iteration), 0, None))
    return predicted, seconds, booster.best_iteration


@dataclasses.dataclass
class WindowForecasts:
    """One backtest window's rows and every learner's forecast of them (units)."""

    index: int
    first_day: int
    last_day: int
    series: np.ndarray
    actual: np.ndarray
    weights: np.ndarray
    forecasts: dict  # learner -> forecast: "baseline", "mlp", optionally "lightgbm" and "floor"


def earlier_window(full, k: int, length: int, span: int, fparams, tparams, args, synthetic) -> WindowForecasts:
    """Window k (k windows of ``length`` days before the validation window): MLP and LightGBM trained on the
    ``span`` days before it (what train reads), as evaluate's backtest does."""
    spec = fparams.spec
    cut = full.days - k * length
    data = train.prepare_training(history_before(full, cut, cut - span), fparams, tparams.baseline_weeks,
                                  seed=tparams.seed)
    rows, units, perishable, series = rows_at_origin(full, cut - 1, spec.history_days, length)
    matrix = build_features(spec, data.vocab, rows)
    forecasts = {"baseline": baseline_predict(rows, tparams.baseline_weeks),
                 "mlp": fit_engine("mlp", tparams, data, spec, matrix)[0]}
    if not args.skip_lightgbm:
        forecasts["lightgbm"] = fit_lightgbm(tparams, data, matrix, args.threads)[0]
    days = rows.origin_day + rows.horizon
    if synthetic is not None:
        forecasts["floor"] = noise_floor.floor_forecast(synthetic, full.store_nbr[series], full.item_nbr[series], days)
    return WindowForecasts(k, full.first_day + cut, full.first_day + cut + length - 1,
                           series_key(full.store_nbr[series], full.item_nbr[series]), np.asarray(units, np.float64),
                           perishable_weights(perishable), forecasts)


COMPARISONS = (("A1", "engine MLP vs baseline", "mlp", "baseline", common.Target("<=", 0.90)),
               ("A3", "engine MLP vs LightGBM", "mlp", "lightgbm", common.Target("<=", 1.0)),
               ("A4", "noise floor vs baseline", "floor", "baseline", None))


def window_results(window: WindowForecasts, eparams) -> tuple[list, list[str]]:
    """Per-window Results (ids A1.wK, A3.wK, A4.wK) with the improvement interval, and a table row."""
    scores = {name: nwrmsle(window.actual, f, window.weights) for name, f in window.forecasts.items()}
    dates = f"{np.datetime64(window.first_day, 'D')} .. {np.datetime64(window.last_day, 'D')}"
    results, cells = [], []
    for rid, workload, ours, theirs, target in COMPARISONS:
        if ours not in scores or theirs not in scores:
            cells.append("-")
            continue
        interval = improvement_interval(window.series, window.actual, window.forecasts[ours],
                                        window.forecasts[theirs], window.weights, confidence=eparams.confidence,
                                        resamples=eparams.bootstrap_resamples, seed=eparams.seed + window.index)
        extra = {"window": window.index, "first_day": str(np.datetime64(window.first_day, "D")),
                 "last_day": str(np.datetime64(window.last_day, "D")), "rows": int(window.actual.size),
                 "improvement": interval.estimate, "improvement_low": interval.low, "improvement_high": interval.high,
                 "confidence": interval.confidence, "series": interval.series}
        results.append(common.Result(f"{rid}.w{window.index}", f"{workload}, window {window.index} ({dates})",
                                     "NWRMSLE", scores[ours], scores[theirs], target, extra=extra))
        cells.append(f"{interval.estimate:+.1%} [{interval.low:+.1%}, {interval.high:+.1%}]")
    share = "-"
    if "floor" in scores and scores["baseline"] > scores["floor"]:
        share = f"{(scores['baseline'] - scores['mlp']) / (scores['baseline'] - scores['floor']):.0%}"
    row = [str(window.index), dates, f"{window.actual.size:,}", f"{scores['baseline']:.4f}", f"{scores['mlp']:.4f}",
           f"{scores['lightgbm']:.4f}" if "lightgbm" in scores else "-", f"{scores['floor']:.4f}" if "floor" in scores
           else "-", *cells, share]
    return results, row


WINDOW_HEADERS = ["window", "days", "rows", "baseline", "MLP", "LightGBM", "floor", "MLP vs baseline [interval]",
                  "MLP vs LightGBM [interval]", "floor vs baseline [interval]", "MLP's share of reachable gain"]


def _report(learner, actual, weights) -> None:
    """Progress: a learner's validation NWRMSLE as soon as it has one (the table comes at the end)."""
    name, predicted, seconds, note = learner
    print(f"accuracy: {name}: validation NWRMSLE {nwrmsle(actual, predicted, weights):.4f} ({seconds:.0f} s, {note})",
          file=sys.stderr, flush=True)


def _lightgbm_installed() -> bool:
    return importlib.util.find_spec("lightgbm") is not None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="project root with data/ and params.yaml")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    parser.add_argument("--skip-lightgbm", action="store_true", help="leave the LightGBM peer out")
    parser.add_argument("--skip-floor", action="store_true", help="leave the noise-floor row out (synthetic data)")
    parser.add_argument("--threads", type=int, default=common.available_cores())
    parser.add_argument("--windows", type=int, default=None,
                        help="backtest windows, the validation window included (default: evaluate.backtest_windows)")
    args = parser.parse_args(argv)
    # --windows 0 quietly became 1 window, --threads 0 LightGBM's own default (every core)
    common.refuse_counts_below_one(parser, [("--threads", args.threads)]
                                   + ([] if args.windows is None else [("--windows", args.windows)]))
    # both checked before minutes of training, each in one line saying what to do (the peer's import failed only
    # after the engine's fits, in a traceback; a fresh clone's missing data/ was a HistoryError traceback)
    if not args.skip_lightgbm and not _lightgbm_installed():
        print("accuracy: error: LightGBM (the peer) is not installed: `.venv/bin/pip install lightgbm==4.7.0` "
              "(or `make bench`), or pass --skip-lightgbm", file=sys.stderr)
        return 1
    try:
        raw = load_yaml(args.root / "params.yaml")
        fparams, tparams = feature_params(raw), train_params(raw)
        history = load_history([args.root / train.TRAIN_DATA], days=train.days_needed(fparams))
    except (ParamsError, HistoryError) as error:
        print(f"accuracy: error: {error}", file=sys.stderr)
        return 1
    data = train.prepare_training(history, fparams, tparams.baseline_weeks)
    matrix, actual, weights, baseline, keys = validation_set(args.root, data, fparams, tparams.baseline_weeks)

    learners = [("baseline (weekday moving average, %d weeks)" % tparams.baseline_weeks, baseline, 0.0, "-")]
    expected_sums = {}
    for kind in ("linear", "mlp"):
        predicted, expected, seconds, steps = fit_engine(kind, tparams, data, fparams.spec, matrix)
        learners.append((f"engine {kind}", predicted, seconds, steps))
        expected_sums[kind] = float(expected.sum())
        _report(learners[-1], actual, weights)
    if not args.skip_lightgbm:
        predicted, seconds, rounds = fit_lightgbm(tparams, data, matrix, args.threads)
        learners.append(("LightGBM 4.7 (peer)", predicted, seconds, f"{rounds} trees"))
        _report(learners[-1], actual, weights)
    data_config = data_params(raw)
    if data_config.source == "synthetic" and not args.skip_floor:
        started = time.perf_counter()
        try:
            floor = noise_floor.floor_forecast(data_config.synthetic, *keys)
            learners.append((FLOOR, floor, time.perf_counter() - started, "knows the true demand"))
        except ValueError as error:  # data/ made from other params than params.yaml's
            print(f"accuracy: no noise-floor row: {error}", file=sys.stderr)

    scores = {name: nwrmsle(actual, p, weights) for name, p, _, _ in learners}
    base = scores[learners[0][0]]
    mlp = scores["engine mlp"]
    results = [
        common.Result("A1", "engine MLP vs baseline", "NWRMSLE", mlp, base, common.Target("<=", 0.90)),
        common.Result("A2", "engine linear vs baseline", "NWRMSLE", scores["engine linear"], base),
    ]
    if not args.skip_lightgbm:
        results.append(common.Result("A3", "engine MLP vs LightGBM", "NWRMSLE", mlp, scores["LightGBM 4.7 (peer)"],
                                     common.Target("<=", 1.0)))
    if FLOOR in scores:
        results.append(common.Result("A4", "noise floor vs baseline", "NWRMSLE", scores[FLOOR], base))
        results.append(common.Result("A5", "engine MLP vs noise floor", "NWRMSLE", mlp, scores[FLOOR]))
        reachable = base - scores[FLOOR]
        if reachable > 0:
            results.append(common.Result("A7", "engine MLP's share of the reachable gain", "share",
                                         (base - mlp) / reachable, None, common.Target(">=", 0.92, "engine")))
    results.append(common.Result("A6", "engine MLP expected units vs actual units (validation sum)", "units",
                                 expected_sums["mlp"], float(np.sum(actual)), common.Target(">=", 0.95),
                                 extra={"within_5_percent": bool(abs(expected_sums["mlp"] / max(float(np.sum(actual)),
                                                                                                1e-9) - 1) <= 0.05)}))
    # every backtest window: window 0 from the learners above, earlier ones retrained on the days before them
    eparams = evaluate_params(raw)
    windows = eparams.backtest_windows if args.windows is None else args.windows
    length = int(keys[2].max() - keys[2].min() + 1)
    latest = {"baseline": baseline, "mlp": next(p for n, p, _, _ in learners if n == "engine mlp")}
    latest.update({short: p for n, p, _, _ in learners for short, name in (("lightgbm", "LightGBM 4.7 (peer)"),
                                                                           ("floor", FLOOR)) if n == name})
    per_window = [WindowForecasts(0, int(keys[2].min()), int(keys[2].max()), series_key(keys[0], keys[1]),
                                  np.asarray(actual, np.float64), np.asarray(weights, np.float64), latest)]
    if windows > 1:
        span = train.days_needed(fparams)
        full = load_history([args.root / train.TRAIN_DATA], days=span + (windows - 1) * length)
        synthetic = data_config.synthetic if FLOOR in scores else None
        for k in range(1, windows):
            print(f"accuracy: backtest window {k}/{windows - 1} ...", file=sys.stderr, flush=True)
            per_window.append(earlier_window(full, k, length, span, fparams, tparams, args, synthetic))
    window_rows = []
    for window in per_window:
        extra_results, row = window_results(window, eparams)
        window_rows.append(row)
        if window.index == 0:  # the latest window's ids keep their place; its interval joins them
            for result in results:
                twin = next((r for r in extra_results if r.id == f"{result.id}.w0"), None)
                if twin is not None:
                    result.extra.update({k: v for k, v in twin.extra.items() if k.startswith("improvement")
                                         or k in ("confidence", "series")})
        results.extend(extra_results)
    if args.json:
        common.write_json_lines(results)
        return 0
    rows = [[name, f"{scores[name]:.4f}", f"{rmse(actual, p):.3f}", f"{1 - scores[name] / base:+.1%}",
             f"{seconds:.1f}", note] for name, p, seconds, note in learners]
    print(f"Validation window: {actual.size:,} store×item×day rows, origin "
          f"{np.datetime64(history.first_day + data.validation_origin, 'D')}; training: "
          f"{data.train.units.size:,} examples from {len(data.train_origins)} origins; threads {args.threads}")
    print(common.format_table(["learner", "NWRMSLE", "RMSE", "vs baseline", "fit s", "fit"], rows))
    print(f"Validation sums: actual {np.sum(actual):,.0f} units; median-like MLP forecast "
          f"{np.sum(learners[2][1]):,.0f}; expected units linear {expected_sums['linear']:,.0f}, "
          f"MLP {expected_sums['mlp']:,.0f} ({expected_sums['mlp'] / max(np.sum(actual), 1e-9) - 1:+.1%})")
    print()
    print(f"Backtest windows ({eparams.confidence:.0%} paired-bootstrap intervals over series, "
          f"{eparams.bootstrap_resamples} resamples; positive = the first learner's NWRMSLE is lower):")
    print(common.format_table(WINDOW_HEADERS, window_rows))
    print()
    print(common.results_table(results, peer_name="reference"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
