"""DVC stage ``train``: features from many forecast origins -> engine model -> models/candidate/ + an MLflow run.

Origins (time-based, no look-ahead): the *validation origin* is the last
training day (the day before the validation window); the *inner validation
origin* is ``horizon`` days earlier, and early stopping scores the horizon
after it; training examples come from ``features.train_origins`` origins,
``origin_stride_days`` apart (by default a year of them, so every season and
holiday is among the targets), whose targets all end at or before the inner
validation origin. An origin needs only its short-term windows inside the
data: the year-ago part of its window may predate the data (zeros, flagged
by the ``year_ago_known`` feature). The bundle's history snapshot is taken at
the validation origin, so it forecasts exactly the validation window.

Training runs ``train.max_steps`` optimizer steps at most, scored on the
inner validation every ``train.eval_every_steps``, and checkpoints there into
``models/checkpoints/train/``: a stage killed mid-way resumes on the next run
(same data, params, code, libraries, batch order and batches per epoch: models.CheckpointIdentity; a
rerun with other ones starts over, saying which changed) and ends with the model an
uninterrupted run would have made; the checkpoints are removed as soon as the candidate they made
is in place. The candidate is swapped in only once its MLflow run is FINISHED and
tagged with its digest (``bundle_digest``, what evaluate and promote look it up by),
so no kill leaves a candidate without its run. Its MLflow run records its process (host and pid, as every stage's run
does): one killed outright stays RUNNING in MLflow until the next stage's run on that
host marks it KILLED (pipeline/tracking.py close_killed_runs).

    python -m pipeline.train [--root DIR]
"""

from __future__ import annotations

import pipeline.blas  # noqa: F401 - first: pins OpenBLAS's kernels before numpy loads it (pipeline/blas.py)
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import tracking
from pipeline.atomic import NO_SPACE_ERRNOS, DirectoryBusy, check_writable, held_exclusively, remove_directory
from pipeline.bundle import load_bundle, write_bundle
from pipeline.cluster import ClusterError, dask_client, scheduler_address
from pipeline.drift_stats import served_reference, training_statistics
from pipeline.examples import STATISTICS_ROWS, Examples, ExampleStream, origin_pairs, sample_pairs
from pipeline.feature_shards import SHARD_DIR, ShardStream, build_shards
from pipeline.features import (
    CATEGORICAL_FIELDS,
    FeatureSpec,
    Vocabularies,
    dense_feature_names,
)
from pipeline.history import SalesHistory, future_calendar, load_history, snapshot_at
from pipeline.metrics import nwrmsle
from pipeline.model_params import (FeatureParams, TrainParams, feature_params, model_name_param, train_params,
                                   validation_within_horizon)
from pipeline.params import load_yaml
from pipeline.stage import run_stage
from pipeline.versions import (bundle_version, code_version, data_version, git_commit, runtime_version,
                               shown_source)

TRAIN_DATA = "data/split/train.parquet"
HOLIDAYS_DATA = "data/prepared/holidays.parquet"
CANDIDATE_DIR = "models/candidate"
CHECKPOINT_DIR = "models/checkpoints/train"  # outside the DVC output, so a rerun after an interruption resumes
CURVE_PREFIX = "curve/"  # MLflow names of the training curves (curve/train_loss, curve/inner_validation_nwrmsle):
# one step per evaluation, apart from the summary metrics (inner_validation_nwrmsle of the kept weights) and the
# held-out heldout_* an evaluation adds; MLflow's UI groups them in a section of their own
CHECKPOINT_TAG = "checkpoint_fingerprint"  # a train run's resume key: the run a resumed one continued has the same
RESUMED_FROM_TAG, RESUMED_BY_TAG = "resumed_from_run", "resumed_by_run"  # the two ends of a resume, tagged on each


class TrainError(RuntimeError):
    """The training data cannot support the requested origins/windows (message says which param)."""


def days_needed(fparams: FeatureParams) -> int:
    """Days of history training reads: the windows of the earliest training origin up to the last day."""
    spec = fparams.spec
    return spec.history_days + 2 * spec.horizon + (fparams.train_origins - 1) * fparams.origin_stride_days


def origins(history: SalesHistory, fparams: FeatureParams) -> tuple[int, int, list[int]]:
    """(validation origin, inner validation origin, training origins) as column indices.

    A training origin needs its short-term windows (``FeatureSpec.longest_window``) inside the data;
    the rest of its window (the year-ago days) may predate the data, which the history pads with zeros.
    """
    spec = fparams.spec
    validation_origin = history.days - 1
    inner_origin = validation_origin - spec.horizon
    first_known = int(np.argmax(history.observed.any(axis=0))) if history.observed.any() else history.days
    earliest = max(spec.history_days - 1, first_known + spec.longest_window - 1)
    train = [inner_origin - spec.horizon - k * fparams.origin_stride_days for k in range(fparams.train_origins)]
    train = [o for o in train if o >= earliest]
    if inner_origin < earliest or not train:
        days = history.days - first_known
        room = days - 2 * spec.horizon  # the longest window the data leaves room for
        fix = (f"shorten those windows to at most {room} days, or use more data" if room >= 1 else
               # no window is shorter than a day: before, this said "shorten those windows to at most 0 days"
               f"the two horizons alone take {2 * spec.horizon} days, so no window fits: use more data (at least "
               f"{2 * spec.horizon + 1} days, with a window of 1 day), or a shorter features.horizon (and "
               "split.validation_days, at most it)")
        raise TrainError(
            f"features: the training data has {days} days; the longest feature window ({spec.longest_window} days: "
            f"features.mean_windows, promo_windows, 7 x dow_weeks) plus two horizons of {spec.horizon} days need at "
            f"least {spec.longest_window + 2 * spec.horizon}: {fix} (features.history_days may stay: the days "
            "before the data count as unknown)")
    missed = weekdays_missed(train, fparams)
    if missed:
        raise TrainError(missed)
    return validation_origin, inner_origin, train


def weekdays_missed(train: list[int], fparams: FeatureParams) -> str | None:
    """Why the training origins ``train`` (column indices) cannot train a model of every weekday, or None: with a
    horizon under 7 and origins a whole number of weeks apart, every target falls on the same few weekdays (the
    sweep asks it of each grid candidate's params before training: its origins as they are when the data has room
    for all of them)."""
    spec = fparams.spec
    weekdays = {(origin + ahead) % 7 for origin in train for ahead in range(1, spec.horizon + 1)}
    if len(weekdays) < 7:  # the rest are served (the inner validation's and the window's days) but never learnt
        stride = fparams.origin_stride_days
        return (
            f"features: the training targets fall on {len(weekdays)} of the 7 weekdays ({len(train)} origin(s) "
            f"features.origin_stride_days={stride} apart, each with features.horizon={spec.horizon} days), so the "
            "model would never learn the weekly cycle of the days it then forecasts (a probe, horizon 2: 20 origins "
            "7 days apart scored NWRMSLE 0.77 against the weekday baseline's 0.48, 20 origins 3 days apart 0.44): "
            + (f"make features.origin_stride_days not a multiple of 7 (e.g. {stride + 1}) with " if stride % 7 == 0
               else "use ")
            + "enough features.train_origins (and data for them) that their targets cover every weekday, or a "
            "features.horizon of 7 or more")
    return None


def examples_at(history: SalesHistory, spec: FeatureSpec, vocab: Vocabularies, origin_cols: list[int],
                baseline_weeks: int, progress: bool = False, label: str = "examples") -> Examples:
    """Every series' examples at these origins, in one matrix (built chunk by chunk: see pipeline/examples.py)."""
    series, origin = origin_pairs(history.sales.shape[0], origin_cols)
    return ExampleStream(history, spec, vocab, series, origin, baseline_weeks, label=label).materialize(progress)


@dataclass
class PreparedTraining:
    history: SalesHistory
    vocab: Vocabularies
    train: Examples  # every training example when they fit in features.in_memory_examples, else a seeded sample
    inner: Examples
    validation_origin: int
    inner_origin: int
    train_origins: list[int]
    train_stream: ExampleStream | ShardStream  # every training example, built chunk by chunk as training
    # consumes them, or (on a Dask cluster) read back from the feature shards the workers wrote
    in_memory: bool  # ``train`` holds them all (train on it), else stream them
    train_promo_known: np.ndarray  # [len(train)] bool: the data gave the row's target-day promotion
    progress: bool = False  # progress bars while streaming

    @property
    def batch_order(self) -> str:
        """Which order training's batches come in: a held set is the same matrix however it was built, a set
        streamed in this process and one streamed from a cluster's shards come in different orders. A
        checkpoint records it, so a run resumed with the cluster switched on or off starts over."""
        if self.in_memory:
            return "held"
        return "streamed from shards" if isinstance(self.train_stream, ShardStream) else "streamed"

    @property
    def train_examples(self) -> int:
        """Training examples in all (``train`` holds only a sample of them when they stream)."""
        return len(self.train) if self.in_memory else self.train_stream.count_rows()

    def batches_per_epoch(self, batch_size: int) -> int:
        """Batches in each epoch of ``batch_source``: all full but the last (en.data.batches and
        examples.shuffled_batches keep the remainder). A checkpoint's position is counted in them."""
        return -(-self.train_examples // batch_size)

    def batch_source(self, batch_size: int, seed: int):
        """The training batches (pipeline.models.BatchSource): from memory, or streamed when they do not fit."""
        from pipeline import models

        if self.in_memory:
            return models.in_memory_batches(self.train.matrix, self.train.units, self.train.weights, batch_size, seed)
        return self.train_stream.batch_source(batch_size, seed, self.progress)


def training_vocabularies(history: SalesHistory) -> Vocabularies:
    """The categorical vocabularies a model trained on ``history`` knows (the one rule: the train stage and
    ``python -m pipeline.feature_shards`` both read it, so their shards carry the same key).

    Of the series that sold in these days only: a backtest window's history is a view of every series,
    and one that starts later must stay unknown to its model, as a new item is to the candidate."""
    sold = history.observed.any(axis=1)
    return Vocabularies.fit({name: values[sold] for name, values in history.series_categorical().items()})


def prepare_training(history: SalesHistory, fparams: FeatureParams, baseline_weeks: int, seed: int = 0,
                     progress: bool = False, client=None, shard_dir: Path | None = None) -> PreparedTraining:
    """Origins, vocabularies, the inner validation's examples, and the training examples (held or streamed).

    ``train`` is what normalization, the output bias and the drift statistics are
    computed from: all training examples when there are at most
    ``features.in_memory_examples``, else a seeded sample of ``STATISTICS_ROWS``
    (Favorita: 92 M rows stream). The inner validation is a seeded sample of
    ``in_memory_examples / 4`` rows when larger (Favorita: 3.5 M rows).

    With a Dask ``client`` (and ``shard_dir``), the training examples are built by
    the cluster's workers, one store per task (pipeline/feature_shards.py), and
    read back from their shards: the same rows, held in the same order, so the
    same model.
    """
    validation_origin, inner_origin, train_origins = origins(history, fparams)
    spec = fparams.spec
    vocab = training_vocabularies(history)
    series, origin = origin_pairs(history.sales.shape[0], train_origins)
    stream = ExampleStream(history, spec, vocab, series, origin, baseline_weeks=None, label="train")
    in_memory = stream.max_rows <= fparams.in_memory_examples
    held = stream if in_memory else ExampleStream(
        history, spec, vocab, *sample_pairs(series, origin, min(fparams.in_memory_examples, STATISTICS_ROWS),
                                            spec.horizon, seed),
        baseline_weeks=None, label="train sample")
    promo_known = held.target_promotion_known()  # shards hold the same rows in the same order
    if client is not None:
        if shard_dir is None:
            raise ValueError("prepare_training: a Dask client needs a shard_dir for the feature shards")
        shards = build_shards(history, spec, vocab, train_origins, shard_dir, client, progress)
        stream = ShardStream([r["path"] for r in shards], spec)
        held = stream if in_memory else held
    train = held.materialize() if isinstance(held, ShardStream) else held.materialize(progress)
    # The inner validation is scored every few hundred steps: a seeded sample of its series when it is large.
    inner_series, inner_origin_cols = sample_pairs(*origin_pairs(history.sales.shape[0], [inner_origin]),
                                                   fparams.in_memory_examples // 4, spec.horizon, seed + 1)
    inner = ExampleStream(history, spec, vocab, inner_series, inner_origin_cols, baseline_weeks,
                          label="inner validation").materialize(progress)
    if train.units.size == 0 or inner.units.size == 0:
        raise TrainError("no training or inner-validation rows at the chosen origins")
    if promo_known.size != len(train):
        raise TrainError(f"{len(train)} training rows, but promotion-known flags for {promo_known.size}")
    return PreparedTraining(history, vocab, train, inner, validation_origin, inner_origin, train_origins,
                            stream, in_memory, promo_known, progress)


def model_config(tparams: TrainParams, data: PreparedTraining, spec: FeatureSpec):
    from pipeline.models import ModelConfig, normalization

    mean, std, constant = normalization(data.train.matrix.dense)
    log_y = np.log1p(data.train.units.astype(np.float64))
    return ModelConfig(
        kind=tparams.model, dense_size=len(dense_feature_names(spec)),
        vocab_sizes={f: data.vocab.size(f) for f in CATEGORICAL_FIELDS},
        embedding_dims=dict(tparams.embedding_dims), hidden_units=tuple(tparams.hidden_units),
        dense_mean=mean, dense_std=std, dense_constant=constant,
        output_bias=float(np.average(log_y, weights=data.train.weights)),
    )


def eval_interval(tparams: TrainParams, data: PreparedTraining) -> int:
    """Steps between inner-validation scores: ``train.eval_every_steps``, or once an epoch when an epoch is shorter.

    One store's data is a few thousand examples, a dozen steps an epoch: by step 500 the model has seen
    each example 30 times and overfit, so early stopping scored there keeps an overfit model (a team's
    single-store data then lost to the baseline). Streamed data (more than ``in_memory_examples``) has
    epochs of thousands of steps: the param holds.
    """
    if not data.in_memory:
        return tparams.eval_every_steps
    epoch_steps = -(-len(data.train) // tparams.batch_size)
    return max(1, min(tparams.eval_every_steps, epoch_steps))


def fit(tparams: TrainParams, data: PreparedTraining, spec: FeatureSpec, on_eval=None,
        checkpoint_dir: Path | None = None, identity=None, log=None, on_resume=None):
    """Train one model on prepared examples: the train stage's, and one per backtest window.

    Returns (config, result); ``result.expected_factor`` is the expected-units correction fitted on the
    inner validation. With ``checkpoint_dir`` an interrupted call resumes (same ``identity``, a
    pipeline.models.CheckpointIdentity), calling ``on_resume(step)`` when it does.
    """
    from pipeline import models

    config = model_config(tparams, data, spec)
    batches = data.batch_source(tparams.batch_size, tparams.seed)
    result = models.train(config, batches, data.inner.matrix, data.inner.units, data.inner.weights,
                          seed=tparams.seed, max_steps=tparams.max_steps, eval_every=eval_interval(tparams, data),
                          patience=tparams.patience, learning_rate=tparams.learning_rate,
                          checkpoint_dir=checkpoint_dir, identity=identity, on_eval=on_eval, log=log,
                          on_resume=on_resume)
    inner_pred = models.predict_weights(config, result.weights, data.inner.matrix)
    result.expected_factor = models.expected_units_factor(data.inner.units, inner_pred)
    return config, result


def _day(day_number: int) -> str:
    return str(np.datetime64(int(day_number), "D"))


def link_resumed_run(mlflow_run, fingerprint: str, step: int, say) -> None:
    """Tag a resumed run and the interrupted one it continued with each other's id: the interrupted run holds the
    params only (curves and metrics are logged at the end), so without the link MLflow shows a KILLED or FAILED
    run beside a finished one and nothing says the second finished the first's training. Called as the checkpoint
    is resumed, before training goes on: a resumed run interrupted in turn is already linked, and the run that
    continues it links to it, so the chain has no gap."""
    mlflow_client = mlflow_run.client
    interrupted = [run for run in mlflow_client.search_runs(
        [mlflow_run.experiment_id], f"tags.{CHECKPOINT_TAG} = '{fingerprint}' and attributes.status != 'RUNNING'",
        max_results=1, order_by=["attributes.start_time DESC"])]
    tags = {"resumed_at_step": str(step)}
    if interrupted:
        previous = interrupted[0].info.run_id
        tags[RESUMED_FROM_TAG] = previous
        mlflow_client.set_tag(previous, RESUMED_BY_TAG, mlflow_run.run_id)
        say(f"train: MLflow run {mlflow_run.run_id} continues run {previous} (tags {RESUMED_FROM_TAG}, "
            f"{RESUMED_BY_TAG})")
    mlflow_run.set_tags(tags)


def summary_line(summary: dict) -> str:
    """The train stage's one-line summary (without the ``train:`` prefix and the time)."""
    return (f"{summary['model_kind']} best step {summary['best_step']:.0f}/{summary['steps_run']:.0f}, "
            f"inner-validation NWRMSLE {summary['inner_validation_nwrmsle']:.4f} "
            f"(baseline {summary['inner_validation_baseline_nwrmsle']:.4f}), "
            f"expected-units factor {summary['expected_units_factor']:.3f}; "
            f"bundle {summary['bundle']} ({summary['digest'][:12]}), MLflow run {summary['run_id']}")


def _remove_resume_state(home: Path) -> None:
    """The checkpoints and feature shards of a train whose candidate is in place: nothing is left to resume (a
    train killed after the swap is not rerun by DVC when it made the candidate dvc.lock records)."""
    checkpoints = home / CHECKPOINT_DIR
    if checkpoints.is_symlink() or os.path.ismount(checkpoints):  # on another disk: empty it, it stays
        from pipeline.models import clear_checkpoints

        clear_checkpoints(checkpoints)
    else:
        remove_directory(checkpoints)  # whole or gone: a kill mid-delete left a checkpoint that read as damaged
    remove_directory(home / SHARD_DIR)
    parent = checkpoints.parent  # models/checkpoints, removed when empty unless it is a link or a mount point
    if parent.is_dir() and not parent.is_symlink() and not os.path.ismount(parent) and not any(parent.iterdir()):
        parent.rmdir()


@contextlib.contextmanager
def one_train(home: Path):
    """One train at a time in ``home`` (its checkpoints, feature shards and candidate): an flock on the directory
    itself, so nothing is written for it (a train that fails early leaves nothing behind), released with the
    process however it ends. A second train fails at once (DirectoryBusy)."""
    with held_exclusively(os.open(home, os.O_RDONLY),
                          lambda fd: f"another train is running in {home}: run train again once it has finished"):
        yield


def run(root: Path, quiet: bool = False, candidate_root: Path | None = None) -> dict:
    """Train, write the candidate bundle, log the MLflow run; returns a summary.

    ``candidate_root`` (default ``root``) holds the params.yaml to train with and gets the
    candidate (``models/candidate``): ``pipeline.sweep`` trains its best candidate into its own
    directory so. Data and the MLflow store are always the project's (``root``).

    One train at a time in ``candidate_root`` (``one_train``), from its first step to its last; a second one fails
    at once (a ``dvc repro`` killed with SIGKILL leaves its train running; a rerun trained beside it in the same
    checkpoint folder).
    """
    started = time.perf_counter()
    home = root if candidate_root is None else Path(candidate_root)
    raw = load_yaml(home / "params.yaml")
    fparams, tparams = feature_params(raw), train_params(raw)
    model_name_param(raw)  # promote.model_name names the bundle: a bad one refused now, not after training
    validation_within_horizon(raw)
    with one_train(home):
        checkpoints_writable(home / CHECKPOINT_DIR)
        return _run(root, home, raw, fparams, tparams, quiet, started)


def checkpoints_writable(checkpoints: Path) -> None:
    """TrainError, before the data are loaded, where the checkpoint folder (or, not there yet, the folder it is to be
    made in) cannot be written: before, a read-only one failed train at its first checkpoint, ~12 steps in. A file or
    a link to nothing on the way (``models/checkpoints``) is refused too; one at the checkpoint folder itself is not:
    train deletes it (``models.clear_checkpoints``)."""
    folder = next(path for path in (checkpoints, *checkpoints.parents)
                  if path.is_dir() or (path != checkpoints and os.path.lexists(path)))
    made = "" if folder == checkpoints else f" (they go in {checkpoints}, made there)"
    if not folder.is_dir():
        raise TrainError(f"{folder}: train's checkpoints cannot be written there{made}: it is "
                         f"{'a link to nothing' if folder.is_symlink() else 'a file'}, not a folder; move it away (or "
                         "link it to a writable folder), then run train again")
    try:
        check_writable(folder)
    except OSError as exc:
        fix = ("free space on its disk (or link it to a folder on another)" if exc.errno in NO_SPACE_ERRNOS else
               "make it writable by this user (or link it to a writable folder)")
        raise TrainError(f"{folder}: train's checkpoints cannot be written there{made}: {exc.strerror or exc}; "
                         f"{fix}, then run train again") from None


def _run(root: Path, home: Path, raw: dict, fparams: FeatureParams, tparams: TrainParams, quiet: bool,
         started: float) -> dict:
    spec = fparams.spec
    history = load_history([root / TRAIN_DATA], days=days_needed(fparams), progress=not quiet)
    with dask_client(scheduler_address(raw)) as client:  # None (build here) unless a scheduler is configured
        data = prepare_training(history, fparams, tparams.baseline_weeks, seed=tparams.seed, progress=not quiet,
                                client=client, shard_dir=home / SHARD_DIR)
    calendar = future_calendar(root / HOLIDAYS_DATA, history.stores["store_nbr"], history.last_day + 1, spec.horizon)
    # The bundle records what it was made from (code, data); the run's provenance (git commit, time,
    # run id) goes to MLflow only, so the bundle's bytes and dvc.lock's hash of it repeat run after run.
    versions = {"code_version": code_version(), "data_version": data_version(root, [TRAIN_DATA, HOLIDAYS_DATA])}
    data_tag = ",".join(f"{Path(k).name}:{v[:12]}" for k, v in versions["data_version"].items())
    tags = {"git_commit": git_commit(root), "code_version": versions["code_version"][:16],
            "data_version": data_tag, "model_kind": tparams.model, "stage": "train"}
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    first_origin, last_origin = (_day(history.first_day + origin)
                                 for origin in (min(data.train_origins), max(data.train_origins)))
    say(f"train: {data.train_examples:,} examples from {len(data.train_origins)} origins "
        f"({first_origin} .. {last_origin}), "
        f"{data.inner.units.size:,} inner-validation rows at {_day(history.first_day + data.inner_origin)}")

    with tracking.TrainingRun(root, f"train-{tparams.model}", tags) as mlflow_run:
        for run_id in mlflow_run.closed:
            say(f"train: note: {tracking.closed_run_note(run_id)}")
        bundle_params = {"features": fparams.to_json(), "train": tparams.to_json()}
        mlflow_run.log_params(bundle_params)
        mlflow_run.log_data(tracking.RunData(shown_source(root), versions["data_version"], {
            "examples": data.train_examples, "origins": len(data.train_origins), "series": len(history.store_nbr),
            "first_day": _day(history.first_day), "last_day": _day(history.last_day)}), "training")

        def on_eval(step: int, curve: dict) -> None:
            say(f"  step {step:6d}/{tparams.max_steps}  train_loss {curve['train_loss']:.4f}  "
                f"inner-validation NWRMSLE {curve['inner_validation_nwrmsle']:.4f}")

        from pipeline import models

        checkpoints = home / CHECKPOINT_DIR
        identity = models.CheckpointIdentity(data=versions["data_version"], params=bundle_params,
                                             code=versions["code_version"], libraries=runtime_version(),
                                             batch_order=data.batch_order,
                                             batches_per_epoch=data.batches_per_epoch(tparams.batch_size))
        fingerprint = identity.fingerprint
        mlflow_run.set_tags({CHECKPOINT_TAG: fingerprint})
        config, result = fit(tparams, data, spec, on_eval, checkpoint_dir=checkpoints, identity=identity,
                             log=say, on_resume=lambda step: link_resumed_run(mlflow_run, fingerprint, step, say))
        # all of them, also those a resumed run had written before the interruption
        mlflow_run.log_steps([(int(curve["step"]), {CURVE_PREFIX + k: v for k, v in curve.items() if k != "step"})
                              for curve in result.curves])
        inner_pred = models.predict_weights(config, result.weights, data.inner.matrix)
        inner_expected = models.predict_weights(config, result.weights, data.inner.matrix, result.expected_factor)
        metrics = {
            "inner_validation_nwrmsle": nwrmsle(data.inner.units, inner_pred, data.inner.weights),
            "inner_validation_baseline_nwrmsle": nwrmsle(data.inner.units, data.inner.baseline, data.inner.weights),
            "best_step": float(result.best_step), "steps_run": float(result.steps_run),
            "evaluations": float(len(result.curves)), "train_examples": float(data.train_examples),
            "expected_units_factor": result.expected_factor,
            "inner_validation_expected_units_ratio": float(inner_expected.sum() / max(data.inner.units.sum(), 1e-9)),
        }
        snapshot = snapshot_at(history, data.validation_origin, spec.history_days, calendar)
        names = dense_feature_names(spec)
        # The request's promotion flag is compared with the training rows whose promotion the data gave: an
        # unknown one is False to the model, and counted here it made ordinary traffic look promoted.
        request_promo = data.train.matrix.dense[:, names.index("target_onpromotion")][data.train_promo_known]
        served = served_reference(spec, data.vocab, snapshot, request_promo,
                                  predict=lambda matrix: models.predict_weights(config, result.weights, matrix))
        stats = training_statistics(data.train.matrix.dense, names, data.train.matrix.categorical,
                                    CATEGORICAL_FIELDS, data.vocab.values, data.train.units, inner_pred, served)
        graph_io: dict = {}

        def write_graph(directory: Path) -> None:
            graph_io.update(models.export_model(config, result.weights, directory, result.expected_factor))

        metadata = {
            "name": model_name_param(raw),  # the registered model's (promote registers it under it)
            "version": bundle_version(tparams.model, versions["code_version"], versions["data_version"],
                                      bundle_params),
            **versions, "params": bundle_params,
            "metrics": metrics, "model": config.to_json(), "features": spec.to_json(),
            "vocabularies": data.vocab.to_json(), "horizon": spec.horizon,
            "outputs": {
                models.PREDICTION_OUTPUT: "median-like forecast of units sold: expm1 of the predicted log1p(units), "
                                          "the value the log-error metric (NWRMSLE) scores; sums fall short of sales",
                models.EXPECTED_OUTPUT: "expected units sold (bias-corrected mean): expected_units_factor * "
                                        "(prediction + 1) - 1, the factor fitted on the inner validation so that "
                                        "forecasts sum to actual units",
                "expected_units_factor": result.expected_factor,
            },
            "horizon_dates": [_day(snapshot.calendar_days[0]), _day(snapshot.calendar_days[-1])],
            "input_schema": {
                "request": {"store_nbr": "integer", "item_nbr": "integer", "date": "YYYY-MM-DD within horizon_dates",
                            "onpromotion": "boolean"},
                "dense": dense_feature_names(spec), "categorical": list(CATEGORICAL_FIELDS),
            },
        }

        def record(staged: Path, digest: str) -> None:
            """Check and record the complete bundle before it is swapped in as the candidate: its run, FINISHED
            and tagged with its digest, is what evaluate and promote look the candidate up by. Swapped in first, a
            kill before the run finished left a candidate no run was known to have made, which DVC does not
            retrain when it is the model dvc.lock records."""
            bundle = load_bundle(staged)  # the serving loader must reproduce the training process's predictions
            served = bundle.predict_features(data.inner.matrix)
            if not np.allclose(served, inner_pred, rtol=1e-5, atol=1e-5):
                raise TrainError("the exported bundle does not reproduce the trained model's predictions")
            mlflow_run.log_metrics(metrics)
            mlflow_run.set_tags({tracking.BUNDLE_DIGEST_TAG: digest, "bundle_version": metadata["version"]})
            mlflow_run.log_bundle(staged)
            mlflow_run.finish()

        bundle_dir = home / CANDIDATE_DIR
        digest = write_bundle(bundle_dir, write_graph=write_graph, metadata=metadata,
                              snapshot=snapshot, training_stats=stats, before_swap=record)
        _remove_resume_state(home)  # the candidate is in place: nothing is left to resume
    summary = {"run_id": mlflow_run.run_id, "bundle": str(bundle_dir), "digest": digest, "model_kind": tparams.model,
               **metrics, "seconds": time.perf_counter() - started}
    say(f"train: {summary_line(summary)} in {summary['seconds']:.1f} s")
    return summary


def main(argv=None) -> int:
    def body(args) -> str | None:
        with tracking.mlflow_errors_named(args.root):  # refused or unreachable: where, in one line
            summary = run(args.root, quiet=args.quiet)  # prints its own summary, unless quiet
        return summary_line(summary) if args.quiet else None

    return run_stage("train", body, argv,
                     errors=(TrainError, FileNotFoundError, ValueError, ClusterError, DirectoryBusy),
                     description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
