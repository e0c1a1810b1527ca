"""Hyperparameter sweep: every grid point x backtest window is one training run, fanned out as Dask tasks.

The grid is params.yaml's ``sweep.grid``: ``features.*`` / ``train.*`` params
and the values to try; the candidates are every combination, less a grid point
that trains the very model an earlier one trains (``training_identity``: with
``train.model: linear`` hidden_units and embedding_dims are unused), which is
named, listed under its twin's ``same_as`` and not run again. Each candidate
is scored exactly as ``evaluate`` scores the training recipe: on
``evaluate.backtest_windows`` windows of ``split.validation_days`` days (window
0 the validation window, window k the k-th before it), each by a model trained
as ``pipeline.train`` trains on the days before that window
(``pipeline.backtest.window_from_files``). One candidate x window is one task of
``pipeline.cluster.run_tasks``: on the workers of the configured Dask scheduler,
else here, one after another.

Tasks take the project path and the candidate's params and return the window's
scores; the driver (this process) logs them to MLflow, one child run per task
under one parent run for the sweep. So a worker needs the data (the same path:
a shared file system or the same checkout) but no access to the tracking store,
and a task that is retried on another worker logs nothing twice.

A window whose training diverges (a learning rate far too high) is a result, not
an error: its child run is FAILED with a ``diverged`` tag saying why, its
candidate is left out of the ranking (``"diverged"`` in sweep.json) and the
others go on; only a grid whose every candidate diverged stops, naming each.

The best candidate (lowest NWRMSLE pooled over the windows) then goes through
the same gate as ``dvc repro``'s: it is trained by ``pipeline.train`` and
judged by ``pipeline.evaluate``'s threshold test, in a directory of its own
laid out like the project (``sweep/params.yaml`` with the winning values,
``sweep/models/candidate``, ``sweep/results/``), so DVC's ``models/candidate``
is never touched. ``python -m pipeline.promote --candidate sweep`` promotes it
like any candidate; or copy the winning values into params.yaml and
``dvc repro``. Exits 2 when the best candidate fails the threshold test.

    python -m pipeline.sweep [--root DIR]      (make sweep)
"""

from __future__ import annotations

import pipeline.blas  # noqa: F401 - first: pins OpenBLAS's kernels before numpy loads it (pipeline/blas.py)
import copy
import dataclasses
import itertools
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline import tracking
from pipeline.backtest import TRAIN_DATA, VALIDATION_DATA, BacktestError, window_from_files
from pipeline.cluster import ClusterError, dask_client, run_tasks, scheduler_address
from pipeline.evaluate import EVALUATION_FILE, THRESHOLD_FAILED, EvaluateError, window_summary
from pipeline.history import HistoryError
from pipeline.io import atomic_file
from pipeline.model_params import (FeatureParams, TrainParams, evaluate_params, feature_params, train_params,
                                   validation_within_horizon)
from pipeline.models import ModelConfig, TrainingDiverged
from pipeline.params import ParamsError, _Section, load_yaml, names_file
from pipeline.stage import run_stage
from pipeline.train import TrainError, weekdays_missed

SWEEP_DIR = "sweep"  # the best candidate's params.yaml, models/candidate and results/ (promote --candidate sweep)
SUMMARY_FILE = "sweep.json"  # every candidate's scores per window and pooled, the MLflow runs, the verdict
SWEPT_SECTIONS = ("features", "train")
MAX_CANDIDATES = 1000
DIVERGED = "diverged"  # a window's result when its training diverged: why, instead of scores


@dataclass(frozen=True)
class Candidate:
    """One grid point: the values it sets, and the params sections they give."""

    index: int
    values: dict[str, Any]  # "train.learning_rate" -> 0.004
    params: dict[str, Any] = field(repr=False)  # the features, train and evaluate sections with the values set
    same_as: tuple[str, ...] = ()  # labels of later grid points that train this very model: not run again

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={json.dumps(value)}" for key, value in self.values.items())


def training_identity(fparams: FeatureParams, tparams: TrainParams) -> str:
    """What decides the model a candidate trains, as one string: two grid points with the same train one model.

    The params as a checkpoint's fingerprint records them, with the architecture ``models.ModelConfig`` makes of
    them (a linear model has no hidden layer and one weight per category value: its hidden_units and
    embedding_dims are not used), and numbers as the params read them (1 and 1.0 are one learning rate)."""
    config = ModelConfig(kind=tparams.model, dense_size=0, vocab_sizes={}, embedding_dims=dict(tparams.embedding_dims),
                         hidden_units=tuple(tparams.hidden_units))
    train = {**tparams.to_json(), "hidden_units": list(config.hidden_units), "embedding_dims": config.embedding_dims}
    return json.dumps({"features": fparams.to_json(), "train": train}, sort_keys=True)


def _set(params: dict, dotted: str, value: Any) -> None:
    *path, name = dotted.split(".")
    for part in path:
        params = params[part]
    params[name] = copy.deepcopy(value)


def _check_key(raw: Mapping, key: Any) -> Any:
    """The value ``key`` (dotted) has in ``raw``; ParamsError unless it names a swept section's param."""
    where = f"sweep.grid.{key}"
    if not isinstance(key, str) or key.split(".")[0] not in SWEPT_SECTIONS or "." not in key:
        raise ParamsError(f"{where}: only features.<key> and train.<key> params can be swept (evaluate is the "
                          "gate every candidate is judged by; data and split change what is scored)")
    node: Any = raw
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            parent = ".".join(key.split(".")[:depth])
            known = ", ".join(sorted(node)) if isinstance(node, Mapping) else "none: it is not a mapping"
            raise ParamsError(f"{where}: unknown key: {parent} has no '{part}' (known: {known})")
        node = node[part]
    return node


@names_file
def sweep_grid(raw: Mapping[str, Any]) -> list[Candidate]:
    """The candidates of params.yaml's ``sweep.grid`` (every combination), each one's params validated."""
    section = _Section.of(raw, "sweep", ("grid",))
    grid = section._get("grid")
    example = "e.g. {train.learning_rate: [0.002, 0.004], train.hidden_units: [[128, 64], [64, 32]]}"
    if not isinstance(grid, Mapping) or not grid:
        raise ParamsError(f"sweep.grid: expected a mapping of param -> list of values to try, {example}; "
                          f"got {grid!r}")
    for key, values in grid.items():
        current = _check_key(raw, key)
        if not isinstance(values, list) or not values:
            raise ParamsError(f"sweep.grid.{key}: expected a non-empty list of values to try, got {values!r}")
        if isinstance(current, list) and not all(isinstance(value, list) for value in values):
            raise ParamsError(f"sweep.grid.{key}: {key} is a list ({current!r}), so each value to try is one and "
                              f"the grid a list of lists, e.g. [{current!r}, ...]; got {values!r}")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) < len(seen):
            raise ParamsError(f"sweep.grid.{key}: a value is listed twice in {values!r}")
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_CANDIDATES:
        raise ParamsError(f"sweep.grid: {count} candidates (the product of the list lengths); at most "
                          f"{MAX_CANDIDATES}")
    base = {name: copy.deepcopy(raw.get(name)) for name in (*SWEPT_SECTIONS, "split", "evaluate")}
    candidates: list[Candidate] = []
    trains: dict[str, int] = {}  # training_identity -> its candidate's position
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid.keys(), combination))
        params = copy.deepcopy(base)
        for key, value in values.items():
            _set(params, key, value)
        candidate = Candidate(len(candidates), values, params)
        try:
            fparams, tparams, _ = feature_params(params), train_params(params), evaluate_params(params)
            validation_within_horizon(params)
        except ParamsError as exc:
            raise ParamsError(f"sweep.grid: candidate {candidate.label}: {exc}") from None
        # what train would refuse of any data: said now, naming the candidate, not by its first training run
        missed = weekdays_missed([-k * fparams.origin_stride_days for k in range(fparams.train_origins)], fparams)
        if missed:
            raise ParamsError(f"sweep.grid: candidate {candidate.label}: {missed}")
        identity = training_identity(fparams, tparams)
        if identity in trains:  # e.g. train.model linear with two hidden_units: one model, trained once
            first = candidates[trains[identity]]
            candidates[trains[identity]] = dataclasses.replace(first, same_as=(*first.same_as, candidate.label))
            continue
        trains[identity] = len(candidates)
        candidates.append(candidate)
    return candidates


@dataclass(frozen=True, eq=False)
class WindowRun:
    """One training run of the sweep, what a worker gets: the project's path and one candidate's params."""

    root: str  # workers read data/split there: a shared file system, or the same checkout on each machine
    candidate: int
    label: str
    window: int  # 0: the validation window; k: the k-th window of the same length before it
    params: dict = field(repr=False)

    def __repr__(self) -> str:  # how a failed task is named
        return f"candidate {self.candidate} ({self.label}), backtest window {self.window}"


def train_window(run: WindowRun) -> dict:
    """Train the candidate on the days before its window and score the window (a Dask task: module level).

    Returns the window's row of results/backtest.json (``evaluate.window_summary``) plus what the driver
    pools and logs; nothing is written here, so a worker needs no MLflow and no write access.
    """
    started = time.time()
    fparams, tparams, eparams = feature_params(run.params), train_params(run.params), evaluate_params(run.params)
    where = {"candidate": run.candidate, "window": run.window, "worker": f"{socket.gethostname()} pid {os.getpid()}",
             "started_ms": int(started * 1000)}
    try:
        scores = window_from_files(run.window, run.root, fparams, tparams)
    except TrainingDiverged as exc:  # the grid's value, not the project: a result, so the other candidates go on
        return {**where, DIVERGED: str(exc), "ended_ms": int(time.time() * 1000)}
    return {**window_summary(scores, eparams), **where, "weight_sum": float(scores.weights.sum()),
            "ended_ms": int(time.time() * 1000)}


def diverged(results: list[dict]) -> str | None:
    """Why a candidate is out of the ranking: its first window whose training diverged, named; None if none did."""
    for result in results:
        if DIVERGED in result:
            return f"backtest window {result['window']}: {result[DIVERGED]}"
    return None


def pooled(results: list[dict]) -> dict:
    """A candidate's NWRMSLE over all its windows' rows, from each window's score and weight (exact, no rows)."""
    weight = sum(r["weight_sum"] for r in results)
    out = {name: math.sqrt(sum(r[name] ** 2 * r["weight_sum"] for r in results) / weight)
           for name in ("candidate_nwrmsle", "baseline_nwrmsle")}
    out.update(rows=sum(r["rows"] for r in results), windows=len(results),
               improvement=1.0 - out["candidate_nwrmsle"] / out["baseline_nwrmsle"])
    return out


# A child run's metrics: its window's held-out scores named as evaluate names a window's (heldout_window_*, so
# Compare lines them up with evaluate runs and no held-out score reads like a training figure), then its training's.
HELDOUT_WINDOW = tracking.HELDOUT_PREFIX + "window_"
CHILD_METRICS = {**{HELDOUT_WINDOW + key: key for key in ("candidate_nwrmsle", "baseline_nwrmsle", "improvement",
                                                          "improvement_low", "improvement_high", "rows", "series")},
                 "train_examples": "train_examples"}


BACKTEST_SCORE = tracking.HELDOUT_PREFIX + "backtest_candidate_nwrmsle"  # the sweep run's, one step per candidate
BEST_BACKTEST_SCORE = tracking.HELDOUT_PREFIX + "backtest_best_nwrmsle"


def log_child_run(parent: tracking.TrainingRun, candidate: Candidate, result: dict) -> str:
    """One training run of the sweep as an MLflow run nested under the sweep's (``mlflow.parentRunId``)."""
    from mlflow.entities import Metric, Param

    window = result["window"]
    tags = {tracking.PARENT_RUN_TAG: parent.run_id, "stage": "sweep", "sweep_candidate": candidate.label,
            "backtest_window": str(window), "worker": result["worker"], **parent.model_tag()}
    if DIVERGED in result:
        tags[DIVERGED] = result[DIVERGED][:5000]
    run = parent.client.create_run(parent.experiment_id, start_time=result["started_ms"], tags=tags,
                                   run_name=f"candidate-{candidate.index}-window-{window}")
    child = run.info.run_id
    flat = {**tracking.flatten({k: candidate.params[k] for k in SWEPT_SECTIONS}),
            "sweep.candidate": str(candidate.index), "backtest.window": str(window)}
    if DIVERGED not in result:
        flat.update({"backtest.first_day": result["first_day"], "backtest.last_day": result["last_day"]})
    items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
    for start in range(0, len(items), 100):
        parent.client.log_batch(child, params=items[start:start + 100])
    if DIVERGED in result:  # no scores: a failed run, its tag saying why
        parent.client.set_terminated(child, status="FAILED", end_time=result["ended_ms"])
        return child
    seconds = (result["ended_ms"] - result["started_ms"]) / 1000
    metrics = {**{name: float(result[key]) for name, key in CHILD_METRICS.items()}, "seconds": seconds}
    parent.client.log_batch(child, metrics=[Metric(k, v, result["ended_ms"], 0) for k, v in sorted(metrics.items())])
    parent.client.set_terminated(child, status="FINISHED", end_time=result["ended_ms"])
    return child


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_candidate_params(root: Path, home: Path, raw: Mapping[str, Any], candidate: Candidate) -> None:
    """``home/params.yaml``: the project's params with the candidate's values (what train/evaluate/promote read).

    ``raw`` is params.yaml as the sweep read it at its start, the params every candidate was scored with: not
    read again, so an edit while the sweep runs (minutes to hours) never changes what its best is trained with."""
    raw = copy.deepcopy(dict(raw))
    for key, value in candidate.values.items():
        _set(raw, key, value)
    home.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by python -m pipeline.sweep: {root.resolve() / 'params.yaml'} with the best candidate's\n"
              f"# values ({candidate.label}). Promote: python -m pipeline.promote --candidate {SWEEP_DIR}\n")
    with atomic_file(home / "params.yaml") as tmp:
        tmp.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def run(root: Path, quiet: bool = False) -> dict:
    """Fan the grid's training runs out, log them, then train and gate the best candidate; returns a summary."""
    from pipeline import evaluate, train

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    root = Path(root)
    raw = load_yaml(root / "params.yaml")
    candidates = sweep_grid(raw)
    windows = evaluate_params(raw).backtest_windows
    address = scheduler_address(raw)
    for data in (TRAIN_DATA, VALIDATION_DATA):  # said here, once, rather than by every task
        if not (root / data).is_file():
            raise EvaluateError(f"{root / data}: not found (run the data stages first: dvc repro split)")
    runs = [WindowRun(str(root.resolve()), c.index, c.label, k, c.params) for c in candidates for k in range(windows)]
    where = f"on the Dask cluster at {address}" if address else "in this process (no Dask scheduler configured)"
    say(f"sweep: {len(candidates)} candidate(s) x {windows} backtest window(s) = {len(runs)} training runs, {where}")
    for candidate in candidates:
        for label in candidate.same_as:
            say(f"  {label}: trains the same model as {candidate.label}; not run again")
    home = root / SWEEP_DIR
    with tracking.TrainingRun(root, "sweep", {"stage": "sweep"}) as parent:
        parent.log_params({"sweep": {"grid": {k: json.dumps(v) for k, v in raw["sweep"]["grid"].items()},
                                     "candidates": len(candidates), "windows": windows, "runs": len(runs),
                                     "cluster": address or "in process"}})
        with dask_client(address) as client:
            results = run_tasks(train_window, runs, client=client, desc="sweep: training runs", progress=not quiet,
                                same_blas_kernels=True)
        board = []
        for candidate in candidates:
            mine = [r for r in results if r["candidate"] == candidate.index]
            for result in mine:
                result["mlflow_run_id"] = log_child_run(parent, candidate, result)
            why = diverged(mine)
            board.append({"candidate": candidate.index, "values": candidate.values, "label": candidate.label,
                          "same_as": list(candidate.same_as),
                          "pooled": None if why else pooled(mine), DIVERGED: why, "windows": mine})
            if not why:
                parent.log_metrics({BACKTEST_SCORE: board[-1]["pooled"]["candidate_nwrmsle"]}, step=candidate.index)
        out = [entry for entry in board if entry[DIVERGED]]
        if out:
            parent.set_tags({"diverged_candidates": str(len(out))})
        if len(out) == len(board):  # nothing to rank: the grid's values, each named
            raise ParamsError("sweep.grid: " + "; ".join(f"candidate {e['label']}: {e[DIVERGED]}" for e in out))
        ranked = sorted((entry for entry in board if not entry[DIVERGED]),
                        key=lambda entry: (entry["pooled"]["candidate_nwrmsle"], entry["candidate"]))
        for rank, entry in enumerate(ranked, start=1):
            p = entry["pooled"]
            also = f" (also {'; '.join(entry['same_as'])})" if entry["same_as"] else ""
            say(f"  #{rank} {entry['label']}{also}: backtest NWRMSLE {p['candidate_nwrmsle']:.4f} "
                f"(baseline {p['baseline_nwrmsle']:.4f}, {p['improvement']:+.1%}) over {p['windows']} window(s)")
        for entry in out:
            say(f"  diverged, not ranked: {entry['label']}: {entry[DIVERGED]}")
        best = candidates[ranked[0]["candidate"]]
        parent.log_metrics({BEST_BACKTEST_SCORE: ranked[0]["pooled"]["candidate_nwrmsle"]})
        parent.set_tags({"best_candidate": best.label})
        say(f"sweep: best {best.label}; training it as the train stage does into {home}, then the threshold test")
        # no verdict or summary of an earlier sweep stands beside the new winner's params.yaml, even if this one
        # is stopped before it writes its own: sweep.json, when there, describes what sweep/ holds
        for stale in (SUMMARY_FILE, EVALUATION_FILE):
            (home / stale).unlink(missing_ok=True)
        write_candidate_params(root, home, raw, best)
        trained = train.run(root, quiet=quiet, candidate_root=home)
        tracking.client(root).set_tag(trained["run_id"], "sweep_run_id", parent.run_id)
        metrics, failures = evaluate.run(root, quiet=quiet, candidate_root=home)
        verdict = "failed" if failures else "passed"
        parent.set_tags({tracking.VERDICT_TAG: verdict, "candidate_run_id": trained["run_id"]})
        summary = {"parent_run_id": parent.run_id, "cluster": address, "windows": windows,
                   "runs": len(runs), "best": best.index, "best_values": best.values,
                   "candidate_run_id": trained["run_id"], "candidate_dir": str(home / train.CANDIDATE_DIR),
                   "threshold_test_passed": not failures, "failures": failures,
                   "backtest": metrics["backtest"], "candidates": board}
        _write_json(home / SUMMARY_FILE, summary)
    return summary


def main(argv=None) -> int:
    return run_stage("sweep", _main, argv, description=__doc__.splitlines()[0],
                     errors=(ClusterError, BacktestError, TrainError, EvaluateError, HistoryError, FileNotFoundError))


def _main(args) -> str | int:
    summary = run(args.root, quiet=args.quiet)
    pooled_best = summary["backtest"]
    line = (f"{summary['runs']} training runs (MLflow parent run {summary['parent_run_id']}); best "
            f"{summary['candidates'][summary['best']]['label']}: backtest NWRMSLE "
            f"{pooled_best['candidate_nwrmsle']:.4f} vs baseline {pooled_best['baseline_nwrmsle']:.4f} "
            f"[{pooled_best['improvement_low']:.1%}, {pooled_best['improvement_high']:.1%}]")
    if summary["failures"]:
        print(f"sweep: {line}", file=sys.stderr)
        print("sweep: THRESHOLD TEST FAILED for the best candidate", file=sys.stderr)
        for failure in summary["failures"]:
            print(f"  - {failure}", file=sys.stderr)
        return THRESHOLD_FAILED
    return (f"{line}; threshold test passed: promote it with "
            f"python -m pipeline.promote --candidate {SWEEP_DIR}")


if __name__ == "__main__":
    sys.exit(main())
