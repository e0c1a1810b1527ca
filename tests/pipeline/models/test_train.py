"""The train stage: time-based origins, the MLflow run, reproducibility, clear errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import tracking, train
from pipeline.bundle import load_bundle
from pipeline.features import FeatureSpec, rows_from_snapshot
from pipeline.history import build_history
from pipeline.model_params import FeatureParams

from .conftest import TINY_PARAMS, write_params, write_tiny_project

REPO = Path(__file__).resolve().parents[3]


def test_origins_never_look_ahead(tiny_frame):
    history = build_history(tiny_frame[0])
    spec = FeatureSpec(history_days=28, mean_windows=(7, 28), dow_weeks=(4,), promo_windows=(14,))
    validation, inner, origins = train.origins(history, FeatureParams(spec, train_origins=5, origin_stride_days=7))
    assert validation == history.days - 1 and inner == validation - 16
    assert all(o + 16 <= inner for o in origins) and all(o - 27 >= 0 for o in origins)
    assert origins == sorted(origins, reverse=True) and origins[0] - origins[1] == 7


def test_too_little_data_names_the_params(tiny_frame):
    history = build_history(tiny_frame[0][tiny_frame[0]["date"] < "2017-03-01"])
    spec = FeatureSpec(history_days=56, mean_windows=(56,), dow_weeks=(8,), promo_windows=(14,))
    with pytest.raises(train.TrainError, match="features.history_days"):
        train.origins(history, FeatureParams(spec, 3, 7))


def test_data_shorter_than_two_horizons_is_not_told_to_shorten_its_windows_to_nothing(tiny_frame):
    """24 days and a horizon of 16: the two horizons alone take 32. Before, the refusal said "shorten those windows to
    at most 0 days", which no params.yaml can do (every window is at least a day)."""
    history = build_history(tiny_frame[0][tiny_frame[0]["date"] < "2017-01-25"])
    spec = FeatureSpec(history_days=56, mean_windows=(7, 56), dow_weeks=(4,), promo_windows=(14,))
    with pytest.raises(train.TrainError) as refused:
        train.origins(history, FeatureParams(spec, 4, 7))
    message = str(refused.value)
    assert "the training data has 24 days" in message and "at most 0 days" not in message, message
    assert ("the two horizons alone take 32 days, so no window fits: use more data (at least 33 days, with a window "
            "of 1 day), or a shorter features.horizon (and split.validation_days, at most it)") in message, message


def test_a_train_is_an_mlflow_run_with_params_curves_metrics_tags_and_the_bundle(trained_project):
    root, summary = trained_project
    params, metrics, tags = tracking.run_data(root, summary["run_id"])
    assert params["train.model"] == "mlp" and params["features.history_days"] == "56"
    # every param that changes the model is recorded, as in the bundle and the checkpoint fingerprint
    for section in ("features", "train"):
        for key in TINY_PARAMS[section]:
            name = f"{section}.{key}"
            assert name in params or any(p.startswith(f"{name}.") for p in params), f"{name} is not recorded"
    assert metrics["inner_validation_nwrmsle"] == pytest.approx(summary["inner_validation_nwrmsle"])
    assert tags["model_kind"] == "mlp" and tags["bundle_digest"] == summary["digest"]
    assert "train.parquet:" in tags["data_version"] and tags["git_commit"]
    # the data it read, as MLflow's Datasets panel shows it (an MLflow user looks there, not in the tags)
    (dataset_input,) = tracking.client(root).get_run(summary["run_id"]).inputs.dataset_inputs
    assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "training")]
    dataset = dataset_input.dataset
    assert tags["data_source"] == json.loads(dataset.source)["uri"] and dataset.name and len(dataset.digest) == 16
    assert json.loads(dataset.profile)["examples"] == summary["train_examples"]
    curve = tracking.metric_history(root, summary["run_id"], train.CURVE_PREFIX + "inner_validation_nwrmsle")
    assert len(tracking.metric_history(root, summary["run_id"], train.CURVE_PREFIX + "train_loss")) == len(curve)
    assert not any(name.startswith(("validation", "train_loss")) for name in metrics)  # curves apart: curve/*
    # once an epoch: the tiny data's epoch (train examples / batch size) is shorter than eval_every_steps
    epoch_steps = -(-int(summary["train_examples"]) // TINY_PARAMS["train"]["batch_size"])
    every = min(TINY_PARAMS["train"]["eval_every_steps"], epoch_steps)
    assert every < TINY_PARAMS["train"]["eval_every_steps"]
    assert len(curve) == summary["evaluations"]
    assert [s for s, _ in curve] == [every * (i + 1) for i in range(len(curve))]
    assert summary["steps_run"] == every * len(curve) and summary["best_step"] % every == 0
    artifacts = {a.path for a in tracking.client(root).list_artifacts(summary["run_id"], "bundle")}
    assert {"bundle/graph.json", "bundle/weights.npz", "bundle/bundle.json", "bundle/checksums.json"} <= artifacts


def test_a_train_logs_its_curves_in_one_request_not_one_per_evaluation(tiny_project, monkeypatch):
    """The curves were logged one MLflow request per evaluation: a train resumed at step 3,000 (150 evaluations) spent
    34 s of its 45 s sending them to a tracking server on the same machine. MLflow takes 1,000 metrics a request."""
    from mlflow import MlflowClient

    requests = []
    log_batch = MlflowClient.log_batch

    def counted(self, run_id, metrics=(), *args, **kwargs):
        requests.append([m.key for m in metrics])
        return log_batch(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counted)
    summary = train.run(tiny_project, quiet=True)
    assert summary["evaluations"] > 2
    curve_requests = [keys for keys in requests if any(k.startswith(train.CURVE_PREFIX) for k in keys)]
    assert len(curve_requests) == 1, [len(keys) for keys in curve_requests]
    for name in ("inner_validation_nwrmsle", "train_loss"):
        history = tracking.metric_history(tiny_project, summary["run_id"], train.CURVE_PREFIX + name)
        assert len(history) == summary["evaluations"] and len({step for step, _ in history}) == len(history)


def test_the_model_beats_the_baseline_on_the_tiny_data(trained_project):
    _, summary = trained_project
    assert summary["inner_validation_nwrmsle"] < summary["inner_validation_baseline_nwrmsle"]


def test_same_params_and_data_give_the_same_metrics(trained_project):
    root, summary = trained_project
    again = train.run(root, quiet=True)
    assert again["run_id"] != summary["run_id"]
    for key in ("inner_validation_nwrmsle", "inner_validation_baseline_nwrmsle", "best_step", "train_examples"):
        assert again[key] == summary[key], key


def test_the_stage_reports_a_bad_param_without_a_traceback(tiny_project, tiny_params, set_params, capsys):
    tiny_params["train"]["model"] = "forest"
    set_params(tiny_project, tiny_params)
    assert train.main(["--root", str(tiny_project)]) == 1
    assert "train.model: must be one of mlp, linear" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_validation_window_longer_than_the_horizon_is_refused_before_any_work(tmp_path, tiny_params, set_params,
                                                                                 capsys, stage):
    """Before: train trained for minutes, then evaluate stopped at the first row past the horizon."""
    from pipeline import evaluate

    tiny_params["split"]["validation_days"] = 20
    set_params(tmp_path, tiny_params)  # and no data: the check comes first
    assert {"train": train, "evaluate": evaluate}[stage].main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "split.validation_days: 20 days are longer than features.horizon (16)" in err and "Traceback" not in err


def test_missing_data_is_a_clear_error(tmp_path, tiny_params, set_params, capsys):
    set_params(tmp_path, tiny_params)
    assert train.main(["--root", str(tmp_path)]) == 1
    assert "train.parquet: not found" in capsys.readouterr().err


def test_origins_spread_over_a_year_where_the_padded_history_allows(tiny_frame):
    """Yearly features need 392 days of window; origins only need their short windows inside the data."""
    history = build_history(tiny_frame[0], first_day=int(tiny_frame[0]["date"].min().to_datetime64()
                                                         .astype("datetime64[D]").astype(np.int64)) - 400)
    spec = FeatureSpec(history_days=392, mean_windows=(7, 28), dow_weeks=(4,), promo_windows=(14,), yearly=True)
    _, inner, origins = train.origins(history, FeatureParams(spec, train_origins=26, origin_stride_days=7))
    first_known = int(np.argmax(history.observed.any(axis=0)))
    assert min(origins) >= first_known + 27 and min(origins) - 391 < first_known  # windows reach before the data
    assert len(origins) == (inner - 16 - (first_known + 27)) // 7 + 1


def test_the_bundle_says_what_its_outputs_mean(trained_project):
    root, _ = trained_project
    outputs = load_bundle(root / train.CANDIDATE_DIR).metadata["outputs"]
    assert "median-like" in outputs["prediction"] and "bias-corrected" in outputs["expected_units"]
    assert outputs["expected_units_factor"] > 1  # a median of skewed counts is below their mean


def test_expected_units_sum_within_5_percent_of_actual_units_on_the_validation_window(trained_project):
    """Served through the bundle, as the app serves them: the validation window the model never saw."""
    root, _ = trained_project
    bundle = load_bundle(root / train.CANDIDATE_DIR)
    validation = pd.read_parquet(root / "data/split/validation.parquet")
    rows = rows_from_snapshot(bundle.snapshot, validation["store_nbr"].to_numpy(), validation["item_nbr"].to_numpy(),
                              validation["date"].to_numpy().astype("datetime64[D]"),
                              validation["onpromotion"].to_numpy().astype(np.uint8))
    out = bundle.forecast_features(bundle.features(rows))
    actual = validation["unit_sales"].clip(lower=0).sum()
    assert abs(out["expected_units"].sum() / actual - 1) <= 0.05, (out["expected_units"].sum(), actual)
    assert out["prediction"].sum() < 0.95 * actual  # the median-like forecast alone falls short


def _state(root: Path) -> dict | None:
    try:
        return json.loads((root / train.CHECKPOINT_DIR / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.slow
def test_a_killed_train_stage_resumes_and_ends_as_an_uninterrupted_run(trained_project_template, tmp_path):
    """SIGKILL the stage's process mid-epoch, rerun it: it continues from the checkpoint to the same model."""
    template, uninterrupted = trained_project_template
    root = write_tiny_project(tmp_path / "project")
    write_params(root, TINY_PARAMS)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--root", str(root)], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    state = None
    while time.monotonic() < deadline and process.poll() is None:
        state = _state(root)
        if state is not None:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the stage ended before it could be killed: {process.stderr.read()}"
    state = _state(root)  # the checkpoint on disk when it died (it may have moved on since the poll)
    assert state["step"] < uninterrupted["steps_run"] and state["batch"] > 0  # mid-training, mid-epoch
    assert not (root / train.CANDIDATE_DIR).exists()

    resumed = train.run(root, quiet=True)
    for key in ("inner_validation_nwrmsle", "best_step", "steps_run", "expected_units_factor"):
        assert resumed[key] == uninterrupted[key], key
    weights = [(r / train.CANDIDATE_DIR / "weights.npz").read_bytes() for r in (root, template)]
    assert weights[0] == weights[1]
    assert not (root / train.CHECKPOINT_DIR).exists()  # a finished run leaves nothing to resume
    # MLflow links the two runs: the killed one (params only) and the one that finished its training
    from pipeline import tracking

    client = tracking.client(root)
    finished = client.get_run(resumed["run_id"])
    killed = client.get_run(finished.data.tags[train.RESUMED_FROM_TAG])
    assert killed.info.status == "KILLED" and killed.data.tags[train.RESUMED_BY_TAG] == resumed["run_id"]
    assert int(finished.data.tags["resumed_at_step"]) == state["step"]


@pytest.mark.slow
def test_a_train_stage_sent_sigterm_says_so_keeps_its_checkpoint_and_resumes_to_the_same_model(
        trained_project_template, tmp_path):
    """``docker stop``, systemd, a cancelled CI job: SIGTERM mid-epoch. Before, the stage died silently (exit -15) and
    its MLflow run stayed RUNNING; now it is one line, exit 143, the run FAILED, and the rerun resumes, bit for bit."""
    template, uninterrupted = trained_project_template
    root = write_tiny_project(tmp_path / "project")
    write_params(root, TINY_PARAMS)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--root", str(root), "--quiet"], cwd=root,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if _state(root) is not None:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.002)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 143, (process.returncode, stderr)
    assert stderr == ("train: terminated (SIGTERM); rerun it (an output is only ever replaced whole: none is "
                      "half-written)\n")
    state = _state(root)
    assert 0 < state["step"] < uninterrupted["steps_run"] and not (root / train.CANDIDATE_DIR).exists()
    client = tracking.client(root)
    terminated = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id])
    assert [run.info.status for run in terminated] == ["FAILED"]  # not RUNNING until another stage marks it KILLED

    resumed = train.run(root, quiet=True)
    assert (root / train.CANDIDATE_DIR / "weights.npz").read_bytes() == \
        (template / train.CANDIDATE_DIR / "weights.npz").read_bytes()
    assert int(client.get_run(resumed["run_id"]).data.tags["resumed_at_step"]) == state["step"]


CTRL_C_TWICE_WHILE_CHECKPOINTING = '''
import os, signal, sys

CHECKPOINTS, SENT, sent = os.environ["CHECKPOINTS"], os.environ["SENT"], []


def audit(event, args):
    if event == "os.rename" and not sent and str(args[1]).startswith(CHECKPOINTS) \\
            and os.path.exists(os.path.join(CHECKPOINTS, "state.json")):
        sent.append("first")  # Ctrl-C as a later checkpoint's file is renamed into place
        with open(SENT, "a") as record:
            record.write("first ")
        os.kill(os.getpid(), signal.SIGINT)
    elif event == "os.remove" and sent == ["first"]:
        sent.append("second")  # Ctrl-C again as the interrupted save deletes what it staged
        with open(SENT, "a") as record:
            record.write("second ")
        os.kill(os.getpid(), signal.SIGINT)


sys.addaudithook(audit)
'''


@pytest.mark.slow
def test_ctrl_c_twice_while_a_checkpoint_is_saved_is_one_line_and_the_rerun_resumes_the_last_complete_one(
        trained_project_template, tmp_path):
    """Ctrl-C as a checkpoint's file is renamed into place, and again as the interrupted save cleans up: the stage
    ends at once with its one line and 130 (no traceback), and the checkpoint on disk is the last complete one:
    the rerun resumes it and ends, bit for bit, as an uninterrupted run."""
    template, uninterrupted = trained_project_template
    root = write_tiny_project(tmp_path / "project")
    write_params(root, TINY_PARAMS)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CTRL_C_TWICE_WHILE_CHECKPOINTING)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]), CHECKPOINTS=str(root / train.CHECKPOINT_DIR),
               SENT=str(tmp_path / "sent"))
    done = subprocess.run([sys.executable, "-m", "pipeline.train", "--root", str(root), "--quiet"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (
        130, "", "train: interrupted; rerun it (an output is only ever replaced whole: none is half-written)\n")
    assert (tmp_path / "sent").read_text() == "first second "
    state = _state(root)
    assert 0 < state["step"] < uninterrupted["steps_run"] and not (root / train.CANDIDATE_DIR).exists()

    resumed = train.run(root, quiet=True)
    assert (root / train.CANDIDATE_DIR / "weights.npz").read_bytes() == \
        (template / train.CANDIDATE_DIR / "weights.npz").read_bytes()
    assert int(tracking.client(root).get_run(resumed["run_id"]).data.tags["resumed_at_step"]) == state["step"]


class Interrupted(BaseException):
    """Stands for Ctrl-C at that point (the run's MLflow status becomes FAILED, as SIGINT's does)."""


def test_a_resume_interrupted_too_keeps_every_run_named_by_the_one_that_continued_it(trained_project_template,
                                                                                    tmp_path, monkeypatch):
    """Killed, resumed, killed again, resumed: each run names the one it continued and is named by it. Before, the
    link was written only when a resumed run's training ended, so the first run (which made the checkpoint) stayed
    a FAILED/KILLED run named by nobody, and the second named nothing: the chain broke at the second interruption."""
    from pipeline import models

    template, uninterrupted = trained_project_template
    root = write_tiny_project(tmp_path / "project")
    write_params(root, TINY_PARAMS)
    real_write = models.TrainingState.write

    def interrupted_after(evaluations: int):
        written = []

        def write(state, directory):
            kept = real_write(state, directory)  # the checkpoints its two states name
            written.append(state.step)
            if len(written) == evaluations:
                raise Interrupted(state.step)
            return kept
        return write

    steps = []
    for evaluations in (2, 1):  # the first run, then its resume, each interrupted after a checkpoint
        monkeypatch.setattr(models.TrainingState, "write", interrupted_after(evaluations))
        with pytest.raises(Interrupted) as interruption:
            train.run(root, quiet=True)
        steps.append(interruption.value.args[0])
    monkeypatch.setattr(models.TrainingState, "write", real_write)
    finished = train.run(root, quiet=True)
    assert (root / train.CANDIDATE_DIR / "weights.npz").read_bytes() == \
        (template / train.CANDIDATE_DIR / "weights.npz").read_bytes()
    assert finished["steps_run"] == uninterrupted["steps_run"] > steps[1] > steps[0]

    client = tracking.client(root)
    last = client.get_run(finished["run_id"])
    second = client.get_run(last.data.tags[train.RESUMED_FROM_TAG])
    first = client.get_run(second.data.tags[train.RESUMED_FROM_TAG])
    assert (second.info.status, first.info.status) == ("FAILED", "FAILED")
    assert second.data.tags[train.RESUMED_BY_TAG] == finished["run_id"]
    assert first.data.tags[train.RESUMED_BY_TAG] == second.info.run_id
    assert train.RESUMED_FROM_TAG not in first.data.tags
    assert [int(run.data.tags["resumed_at_step"]) for run in (second, last)] == steps


def test_on_small_data_the_linear_model_trains_fully_and_beats_the_baseline(tiny_frame):
    """48 series: a handful of batches per epoch, yet the step budget trains the linear model past the baseline."""
    import dataclasses

    from pipeline.metrics import nwrmsle
    from pipeline.model_params import feature_params, train_params
    from pipeline.models import predict_weights

    fparams, tparams = feature_params(TINY_PARAMS), train_params(TINY_PARAMS)
    data = train.prepare_training(build_history(tiny_frame[0]), fparams, tparams.baseline_weeks)
    config, result = train.fit(dataclasses.replace(tparams, model="linear"), data, fparams.spec)
    assert result.steps_run > 10 * -(-data.train.units.size // tparams.batch_size)  # many epochs' worth of steps
    inner = predict_weights(config, result.weights, data.inner.matrix)
    assert nwrmsle(data.inner.units, inner, data.inner.weights) < nwrmsle(data.inner.units, data.inner.baseline,
                                                                         data.inner.weights)


def test_a_checkpoint_of_other_libraries_is_not_resumed(trained_project_template, tmp_path, monkeypatch, capsys):
    """Found by a probe: numpy and numba were no part of a checkpoint's identity, so a train killed, then rerun after
    a library upgrade, resumed the old libraries' checkpoint (a model neither version makes). The rerun here sees
    another numba version: it starts over, says so (naming numba and both versions, where it once said only `of
    other data, params, code or libraries`), links to no run, and ends as an uninterrupted run."""
    from pipeline import models, versions

    template, _ = trained_project_template
    root = write_tiny_project(tmp_path / "project")
    write_params(root, TINY_PARAMS)
    real_write = models.TrainingState.write

    def write_then_interrupt(state, directory):
        real_write(state, directory)
        raise Interrupted(state.step)

    monkeypatch.setattr(models.TrainingState, "write", write_then_interrupt)
    with pytest.raises(Interrupted):
        train.run(root, quiet=True)
    monkeypatch.setattr(models.TrainingState, "write", real_write)
    upgraded = {**versions.runtime_version(), "numba": "99.0.0"}
    monkeypatch.setattr(train, "runtime_version", lambda: upgraded)
    capsys.readouterr()
    finished = train.run(root)
    out = capsys.readouterr().out
    numba = versions.runtime_version()["numba"]
    assert f"is of other libraries (numba {numba} -> 99.0.0); starting over" in out, out  # only what changed
    assert "resuming" not in out
    assert train.RESUMED_FROM_TAG not in tracking.client(root).get_run(finished["run_id"]).data.tags
    assert (root / train.CANDIDATE_DIR / "weights.npz").read_bytes() == \
        (template / train.CANDIDATE_DIR / "weights.npz").read_bytes()


def test_a_learning_rate_that_overflows_the_weights_is_named(tiny_project, tiny_params, set_params, capsys):
    """Before: `train: error: predicted: 752 non-finite value(s), first at row 0 (np.float64(nan))`, naming no
    param; and no candidate is written."""
    tiny_params["train"]["learning_rate"] = 1e6
    set_params(tiny_project, tiny_params)
    assert train.main(["--root", str(tiny_project), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"train: error: train\.learning_rate: training diverged by step \d+ .*lower it \(now 1e\+06\)",
                     err), err
    assert "Traceback" not in err and not (tiny_project / "models" / "candidate").exists()


# Put first on PYTHONPATH of a test's stage (as sitecustomize.py): the stage's first import of MODULE, inside its body
# (after run_stage started), writes MARKER and waits there for the test's signal, in the module's own code or in a
# class's descriptor (``__set_name__``, which Python 3.11 wraps an exception of in RuntimeError), then imports it.
SLOW_IMPORT = '''
import importlib.abc, importlib.machinery, sys, time
from pathlib import Path

MODULE, MARKER, WHERE = {module!r}, Path({marker!r}), {where!r}


def wait_for_the_signal():
    MARKER.write_text("importing")
    time.sleep(60)


class WaitingDescriptor:
    def __set_name__(self, owner, name):
        wait_for_the_signal()


class SlowFirstImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                if WHERE == "module code":
                    wait_for_the_signal()
                else:
                    class Lazy:
                        attribute = WaitingDescriptor()
                real.exec_module(module)

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, SlowFirstImport())
'''


@pytest.mark.parametrize("where", ["module code", "a descriptor's __set_name__"])
@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_stage_body_imports_mlflow_is_the_one_line_and_nothing_written(
        tiny_project, tmp_path, where, signal_name, status):
    """train imports MLflow in its body (tracking.TrainingRun), a second or more after run_stage started. A signal
    there that Python turned into another error (3.11: RuntimeError "Error calling __set_name__ on 'cached_property'
    instance 'data' in 'LazyLocalNamespace'", 1 of 40 Ctrl-Cs at random moments of `import mlflow`) was a
    traceback and exit 1; it is run_stage's one line and 130 or 143, like any other, and the project is as it was."""
    hook, marker = tmp_path / "hook", tmp_path / "importing"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_IMPORT.format(module="mlflow", marker=str(marker), where=where))
    before = sorted(str(path.relative_to(tiny_project)) for path in tiny_project.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO)])
    process = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--root", str(tiny_project), "--quiet"],
                               cwd=tiny_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), f"the stage never imported mlflow: {process.communicate(timeout=60)}"
    process.send_signal(getattr(signal, signal_name))
    out, err = process.communicate(timeout=60)
    word = "terminated (SIGTERM)" if signal_name == "SIGTERM" else "interrupted"
    assert (process.returncode, out, err) == (
        status, "", f"train: {word}; rerun it (an output is only ever replaced whole: none is half-written)\n")
    assert sorted(str(path.relative_to(tiny_project)) for path in tiny_project.rglob("*")) == before
