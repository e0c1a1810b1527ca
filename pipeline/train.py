"""DVC stage ``train``: features from many forecast origins -> engine model -> models/candidate/ + an MLflow run.

Origins (time-based, no look-ahead): the *validation origin* is the last
training day (the day before the validation window); the *inner validation
origin* is ``horizon`` days earlier, and early stopping scores the horizon
after it; training examples come from ``features.train_origins`` origins,
``origin_stride_days`` apart, whose targets all end at or before the inner
validation origin. The bundle's history snapshot is taken at the validation
origin, so it forecasts exactly the validation window.

    python -m pipeline.train [--root DIR]
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import tracking
from pipeline.bundle import load_bundle, write_bundle
from pipeline.drift_stats import served_reference, training_statistics
from pipeline.features import (
    CATEGORICAL_FIELDS,
    FeatureMatrix,
    FeatureSpec,
    Vocabularies,
    build_features,
    dense_feature_names,
)
from pipeline.history import SalesHistory, build_history, future_calendar, read_sales, rows_at_origin, snapshot_at
from pipeline.metrics import nwrmsle, perishable_weights
from pipeline.model_params import FeatureParams, TrainParams, feature_params, train_params
from pipeline.params import load_yaml
from pipeline.stage import StageError, run_stage
from pipeline.versions import code_version, data_version, git_commit

TRAIN_DATA = "data/split/train.parquet"
HOLIDAYS_DATA = "data/prepared/holidays.parquet"
CANDIDATE_DIR = "models/candidate"


class TrainError(RuntimeError):
    """The training data cannot support the requested origins/windows (message says which param)."""


@dataclass
class Examples:
    matrix: FeatureMatrix
    units: np.ndarray
    weights: np.ndarray
    baseline: np.ndarray


def origins(history: SalesHistory, fparams: FeatureParams) -> tuple[int, int, list[int]]:
    """(validation origin, inner validation origin, training origins) as column indices."""
    spec = fparams.spec
    validation_origin = history.days - 1
    inner_origin = validation_origin - spec.horizon
    earliest = spec.history_days - 1
    train = [inner_origin - spec.horizon - k * fparams.origin_stride_days for k in range(fparams.train_origins)]
    train = [o for o in train if o >= earliest]
    if inner_origin < earliest or not train:
        raise TrainError(
            f"features: the training data has {history.days} days; history_days={spec.history_days} plus two horizons "
            f"of {spec.horizon} days need at least {spec.history_days + 2 * spec.horizon} (lower features.history_days "
            "or use more data)")
    return validation_origin, inner_origin, train


def examples_at(history: SalesHistory, spec: FeatureSpec, vocab: Vocabularies, origin_cols: list[int],
                baseline_weeks: int) -> Examples:
    from pipeline.models import baseline_predict

    parts = []
    for origin in origin_cols:
        rows, units, perishable, _ = rows_at_origin(history, origin, spec.history_days, spec.horizon)
        parts.append((build_features(spec, vocab, rows), units, perishable_weights(perishable),
                      baseline_predict(rows, baseline_weeks)))
    return Examples(
        matrix=FeatureMatrix(dense=np.concatenate([p[0].dense for p in parts]),
                             categorical=np.concatenate([p[0].categorical for p in parts])),
        units=np.concatenate([p[1] for p in parts]).astype(np.float32),
        weights=np.concatenate([p[2] for p in parts]).astype(np.float32),
        baseline=np.concatenate([p[3] for p in parts]),
    )


@dataclass
class PreparedTraining:
    history: SalesHistory
    vocab: Vocabularies
    train: Examples
    inner: Examples
    validation_origin: int
    inner_origin: int
    train_origins: list[int]


def prepare_training(history: SalesHistory, fparams: FeatureParams, baseline_weeks: int) -> PreparedTraining:
    validation_origin, inner_origin, train_origins = origins(history, fparams)
    vocab = Vocabularies.fit(history.series_categorical())
    train = examples_at(history, fparams.spec, vocab, train_origins, baseline_weeks)
    inner = examples_at(history, fparams.spec, vocab, [inner_origin], baseline_weeks)
    if train.units.size == 0 or inner.units.size == 0:
        raise TrainError("no training or inner-validation rows at the chosen origins")
    return PreparedTraining(history, vocab, train, inner, validation_origin, inner_origin, train_origins)


def model_config(tparams: TrainParams, data: PreparedTraining, spec: FeatureSpec):
    from pipeline.models import ModelConfig, normalization

    mean, std = normalization(data.train.matrix.dense)
    log_y = np.log1p(data.train.units.astype(np.float64))
    return ModelConfig(
        kind=tparams.model, dense_size=len(dense_feature_names(spec)),
        vocab_sizes={f: data.vocab.size(f) for f in CATEGORICAL_FIELDS},
        embedding_dims=dict(tparams.embedding_dims), hidden_units=tuple(tparams.hidden_units),
        dense_mean=mean, dense_std=std, output_bias=float(np.average(log_y, weights=data.train.weights)),
    )


def fit(tparams: TrainParams, data: PreparedTraining, spec: FeatureSpec, on_epoch=None):
    from pipeline import models

    config = model_config(tparams, data, spec)
    result = models.train(config, data.train.matrix, data.train.units, data.train.weights, data.inner.matrix,
                          data.inner.units, data.inner.weights, seed=tparams.seed, epochs=tparams.epochs,
                          patience=tparams.patience, batch_size=tparams.batch_size,
                          learning_rate=tparams.learning_rate, on_epoch=on_epoch)
    return config, result


def _day(day_number: int) -> str:
    return str(np.datetime64(int(day_number), "D"))


def run(root: Path, quiet: bool = False) -> dict:
    """Train, write the candidate bundle, log the MLflow run; returns a summary."""
    started = time.perf_counter()
    raw = load_yaml(root / "params.yaml")
    fparams, tparams = feature_params(raw), train_params(raw)
    spec = fparams.spec
    history = build_history(read_sales([root / TRAIN_DATA]))
    data = prepare_training(history, fparams, tparams.baseline_weeks)
    calendar = future_calendar(root / HOLIDAYS_DATA, history.stores["store_nbr"], history.last_day + 1, spec.horizon)
    versions = {"git_commit": git_commit(root), "code_version": code_version(),
                "data_version": data_version(root, [TRAIN_DATA, HOLIDAYS_DATA])}
    data_tag = ",".join(f"{Path(k).name}:{v[:12]}" for k, v in versions["data_version"].items())
    tags = {"git_commit": versions["git_commit"], "code_version": versions["code_version"][:16],
            "data_version": data_tag, "model_kind": tparams.model, "stage": "train"}
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"train: {data.train.units.size:,} examples from {len(data.train_origins)} origins "
        f"({_day(history.first_day + min(data.train_origins))} .. {_day(history.first_day + max(data.train_origins))}), "
        f"{data.inner.units.size:,} inner-validation rows at {_day(history.first_day + data.inner_origin)}")

    with tracking.TrainingRun(root, f"train-{tparams.model}", tags) as mlflow_run:
        mlflow_run.log_params({"features": {**spec.to_json(), "train_origins": fparams.train_origins,
                                            "origin_stride_days": fparams.origin_stride_days},
                               "train": {k: v for k, v in tparams.__dict__.items()}})

        def on_epoch(epoch: int, curve: dict) -> None:
            mlflow_run.log_metrics(curve, step=epoch)
            say(f"  epoch {epoch + 1:3d}  train_loss {curve['train_loss']:.4f}  "
                f"inner-validation NWRMSLE {curve['validation_nwrmsle']:.4f}")

        config, result = fit(tparams, data, spec, on_epoch)
        from pipeline import models

        inner_pred = _predict_weights(config, result.weights, data.inner.matrix)
        metrics = {
            "inner_validation_nwrmsle": nwrmsle(data.inner.units, inner_pred, data.inner.weights),
            "inner_validation_baseline_nwrmsle": nwrmsle(data.inner.units, data.inner.baseline, data.inner.weights),
            "best_epoch": float(result.best_epoch + 1), "epochs_run": float(result.epochs_run),
            "train_examples": float(data.train.units.size),
        }
        snapshot = snapshot_at(history, data.validation_origin, spec.history_days, calendar)
        names = dense_feature_names(spec)
        served = served_reference(spec, data.vocab, snapshot,
                                  data.train.matrix.dense[:, names.index("target_onpromotion")])
        stats = training_statistics(data.train.matrix.dense, names, data.train.matrix.categorical,
                                    CATEGORICAL_FIELDS, data.vocab.values, data.train.units, inner_pred, served)
        created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        graph_io: dict = {}

        def write_graph(directory: Path) -> None:
            graph_io.update(models.export_model(config, result.weights, directory))

        metadata = {
            "name": tracking.REGISTERED_MODEL,
            "version": f"{created:%Y%m%dT%H%M%SZ}-{tparams.model}-{mlflow_run.run_id[:8]}",
            "created": created.isoformat(), **versions,
            "params": {"features": {**spec.to_json(), "train_origins": fparams.train_origins,
                                    "origin_stride_days": fparams.origin_stride_days},
                       "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in tparams.__dict__.items()}},
            "metrics": metrics, "model": config.to_json(), "features": spec.to_json(),
            "vocabularies": data.vocab.to_json(), "horizon": spec.horizon,
            "horizon_dates": [_day(snapshot.calendar_days[0]), _day(snapshot.calendar_days[-1])],
            "input_schema": {
                "request": {"store_nbr": "integer", "item_nbr": "integer", "date": "YYYY-MM-DD within horizon_dates",
                            "onpromotion": "boolean"},
                "dense": dense_feature_names(spec), "categorical": list(CATEGORICAL_FIELDS),
            },
            "mlflow_run_id": mlflow_run.run_id,
        }
        bundle_dir = root / CANDIDATE_DIR
        digest = write_bundle(bundle_dir, write_graph=write_graph, metadata=metadata,
                              snapshot=snapshot, training_stats=stats)
        bundle = load_bundle(bundle_dir)  # the serving loader must reproduce the training process's predictions
        served = bundle.predict_features(data.inner.matrix)
        if not np.allclose(served, inner_pred, rtol=1e-5, atol=1e-5):
            raise TrainError("the exported bundle does not reproduce the trained model's predictions")
        mlflow_run.log_metrics(metrics)
        mlflow_run.set_tags({"bundle_digest": digest, "bundle_version": metadata["version"]})
        mlflow_run.log_bundle(bundle_dir)
    summary = {"run_id": mlflow_run.run_id, "bundle": str(bundle_dir), "digest": digest, **metrics,
               "seconds": time.perf_counter() - started}
    say(f"train: {tparams.model} best epoch {result.best_epoch + 1}/{result.epochs_run}, inner-validation NWRMSLE "
        f"{metrics['inner_validation_nwrmsle']:.4f} (baseline {metrics['inner_validation_baseline_nwrmsle']:.4f}); "
        f"bundle {bundle_dir} ({digest[:12]}), MLflow run {mlflow_run.run_id} in {summary['seconds']:.1f} s")
    return summary


def _predict_weights(config, weights, matrix: FeatureMatrix) -> np.ndarray:
    """Predictions of trained weights in a training-side session (compared with the bundle's)."""
    import engine as en
    from pipeline import models

    graph = en.Graph()
    with graph.as_default():
        variables = {name: en.Variable(value, name=name.replace("/", "_")) for name, value in weights.items()}
        tensors = models.forward(config, variables)
        init = en.global_variables_initializer()
    with en.Session(graph=graph) as sess:
        sess.run(init)
        return models.predict_in_session(sess, tensors, matrix)


def main(argv=None) -> int:
    def body(args) -> None:
        try:
            run(args.root)  # prints its own summary
        except Exception as exc:  # the tracking server refused or is unreachable: say where, no traceback
            if type(exc).__module__.startswith("mlflow"):
                raise StageError(f"MLflow at {tracking.tracking_uri(args.root)}: {exc}") from None
            raise

    return run_stage("train", body, argv, errors=(TrainError, FileNotFoundError, ValueError),
                     description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
