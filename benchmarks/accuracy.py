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

Needs the data stages' outputs (``dvc repro split``) and, for the peer,
``pip install lightgbm==4.7.0`` (never a runtime dependency).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import train  # noqa: E402
from pipeline.features import CATEGORICAL_FIELDS, build_features  # noqa: E402
from pipeline.history import build_history, load_history, read_sales, rows_at_origin  # noqa: E402
from pipeline.metrics import nwrmsle, perishable_weights, rmse  # noqa: E402
from pipeline.model_params import feature_params, train_params  # noqa: E402
from pipeline.models import baseline_predict, predict_weights  # noqa: E402
from pipeline.params import data_params, load_yaml  # noqa: E402

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
        print(f"  {kind} step {step:6d}  inner-validation NWRMSLE {curve['validation_nwrmsle']:.4f}", file=sys.stderr,
              flush=True)

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="project root with data/ and params.yaml")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    parser.add_argument("--skip-lightgbm", action="store_true", help="leave the LightGBM peer out")
    parser.add_argument("--skip-floor", action="store_true", help="leave the noise-floor row out (synthetic data)")
    parser.add_argument("--threads", type=int, default=common.available_cores())
    args = parser.parse_args(argv)

    raw = load_yaml(args.root / "params.yaml")
    fparams, tparams = feature_params(raw), train_params(raw)
    history = load_history([args.root / train.TRAIN_DATA], days=train.days_needed(fparams))
    data = train.prepare_training(history, fparams, tparams.baseline_weeks)
    matrix, actual, weights, baseline, keys = validation_set(args.root, data, fparams, tparams.baseline_weeks)

    learners = [("baseline (weekday moving average, %d weeks)" % tparams.baseline_weeks, baseline, 0.0, "-")]
    expected_sums = {}
    for kind in ("linear", "mlp"):
        predicted, expected, seconds, steps = fit_engine(kind, tparams, data, fparams.spec, matrix)
        learners.append((f"engine {kind}", predicted, seconds, steps))
        expected_sums[kind] = float(expected.sum())
    if not args.skip_lightgbm:
        predicted, seconds, rounds = fit_lightgbm(tparams, data, matrix, args.threads)
        learners.append(("LightGBM 4.7 (peer)", predicted, seconds, f"{rounds} trees"))
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
    print(common.results_table(results, peer_name="reference"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
