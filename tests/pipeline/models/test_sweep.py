"""pipeline.sweep: candidate x window training runs on a real Dask LocalCluster and in process, logged as MLflow
child runs of one sweep run; the best candidate is trained and gated like `dvc repro`'s and promotable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import promote, stage, sweep, tracking, train
from pipeline.bundle import verify_bundle
from pipeline.cluster import SCHEDULER_ENV
from pipeline.params import ParamsError

REPO = Path(__file__).resolve().parents[3]
GRID = {"train.learning_rate": [0.01, 0.003]}


def sweep_params(tiny_params, grid=None) -> dict:
    """The tiny project's params, trained briefly, 2 backtest windows, a 2-candidate grid."""
    tiny_params["train"].update(max_steps=120, eval_every_steps=40)
    tiny_params["evaluate"]["backtest_windows"] = 2
    tiny_params["sweep"] = {"grid": GRID if grid is None else grid}
    return tiny_params


def sweep_runs(root, parent_run_id: str):
    """(the sweep's parent run, its child runs) in the project's MLflow store."""
    client = tracking.client(root)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_run_id}' and tags.stage = 'sweep'")
    return client.get_run(parent_run_id), children


def child_scores(children) -> dict:
    return {(r.data.tags["sweep_candidate"], int(r.data.tags["backtest_window"])):
            r.data.metrics["heldout_window_candidate_nwrmsle"] for r in children}


@pytest.mark.slow  # a Dask LocalCluster and a sweep of trainings: 23 s in a loaded default run
def test_a_sweep_on_a_local_cluster_logs_a_child_run_per_candidate_and_window_and_gates_the_best(
        tiny_project, tiny_params, set_params, dask_cluster, monkeypatch, capsys):
    root = tiny_project
    set_params(root, sweep_params(tiny_params))
    monkeypatch.setenv(SCHEDULER_ENV, dask_cluster)
    assert sweep.main(["--root", str(root), "--quiet"]) == 0
    assert "threshold test passed" in capsys.readouterr().out
    summary = json.loads((root / "sweep" / "sweep.json").read_text())

    parent, children = sweep_runs(root, summary["parent_run_id"])
    assert len(children) == 4  # 2 candidates x 2 backtest windows, one child run each
    assert set(child_scores(children)) == {(f"train.learning_rate={lr}", w) for lr in ("0.01", "0.003")
                                           for w in (0, 1)}
    assert all(r.info.status == "FINISHED" and r.data.metrics["heldout_window_baseline_nwrmsle"] > 0 for r in children)
    # held-out scores are named as evaluate names them (found by a probe: candidate_nwrmsle, improvement, ... and the
    # parent's candidate_backtest_nwrmsle read like any other figure beside the train runs' heldout_* and curve/*)
    assert {k for r in children for k in r.data.metrics} == {
        *(f"heldout_window_{k}" for k in ("candidate_nwrmsle", "baseline_nwrmsle", "improvement", "improvement_low",
                                           "improvement_high", "rows", "series")), "train_examples", "seconds"}
    assert set(parent.data.metrics) == {"heldout_backtest_candidate_nwrmsle", "heldout_backtest_best_nwrmsle"}
    # trained on the cluster's worker processes, not here
    assert all(f"pid {os.getpid()}" not in r.data.tags["worker"] for r in children)
    assert parent.data.params["sweep.cluster"] == dask_cluster and tracking.PARENT_RUN_TAG not in parent.data.tags

    best = min(summary["candidates"], key=lambda c: c["pooled"]["candidate_nwrmsle"])
    assert summary["best"] == best["candidate"] and parent.data.tags["best_candidate"] == best["label"]
    # the pooled score is the NWRMSLE over all the windows' rows
    windows = best["windows"]
    weighted = sum(w["candidate_nwrmsle"] ** 2 * w["weight_sum"] for w in windows) / sum(w["weight_sum"]
                                                                                          for w in windows)
    assert best["pooled"]["candidate_nwrmsle"] == pytest.approx(weighted ** 0.5)

    # one gated candidate: the best values, trained and evaluated like dvc repro's, beside DVC's outputs
    home = root / "sweep"
    assert yaml.safe_load((home / "params.yaml").read_text())["train"]["learning_rate"] == best["values"][
        "train.learning_rate"]
    evaluation = json.loads((home / "results" / "evaluation.json").read_text())
    assert evaluation["passed"] is True and evaluation["bundle_digest"] == verify_bundle(home / "models/candidate")
    assert not (root / "models" / "candidate").exists() and not (root / "results").exists()
    trained = tracking.client(root).get_run(summary["candidate_run_id"])
    assert trained.data.tags["sweep_run_id"] == parent.info.run_id and trained.data.tags["stage"] == "train"
    assert parent.data.tags[tracking.VERDICT_TAG] == "passed"
    # every run of the sweep records the registered model it was made for (prune tells projects apart by it)
    judged = tracking.run_of_bundle(root, evaluation["bundle_digest"], "evaluate")
    assert {r.data.tags.get(tracking.REGISTERED_MODEL_TAG) for r in (parent, *children, trained, judged)} == {
        tiny_params["promote"]["model_name"]}

    # ... and promotable as any candidate
    assert promote.main(["--root", str(root), "--quiet", "--candidate", "sweep"]) == 0
    assert verify_bundle(root / "models" / "production")
    assert tracking.production_version(root).run_id == summary["candidate_run_id"]

    # Without a scheduler the same runs are made here, one after another, with the same scores.
    monkeypatch.delenv(SCHEDULER_ENV)
    here = sweep.run(root, quiet=True)
    _, local_children = sweep_runs(root, here["parent_run_id"])
    assert here["cluster"] is None and len(local_children) == 4
    assert all(r.data.tags["worker"].endswith(f"pid {os.getpid()}") for r in local_children)
    assert child_scores(local_children) == pytest.approx(child_scores(children), rel=1e-9)
    assert here["best"] == summary["best"]


def test_the_grid_is_every_combination_with_its_values_set(tiny_params):
    grid = {"train.learning_rate": [0.01, 0.02], "train.hidden_units": [[8], [16, 8]],
            "features.dow_weeks": [[4]]}
    candidates = sweep.sweep_grid(sweep_params(tiny_params, grid=grid))
    assert [c.values for c in candidates][:2] == [
        {"train.learning_rate": 0.01, "train.hidden_units": [8], "features.dow_weeks": [4]},
        {"train.learning_rate": 0.01, "train.hidden_units": [16, 8], "features.dow_weeks": [4]}]
    assert len(candidates) == 4 and candidates[3].params["train"]["hidden_units"] == [16, 8]
    assert candidates[3].params["train"]["seed"] == tiny_params["train"]["seed"]  # the rest as params.yaml says


@pytest.mark.parametrize("grid, trained, same_as", [
    # a linear model has no hidden layer: its two hidden_units are one model, trained (and ranked) once
    ({"train.model": ["mlp", "linear"], "train.hidden_units": [[8], [16]]},
     [{"train.model": "mlp", "train.hidden_units": [8]}, {"train.model": "mlp", "train.hidden_units": [16]},
      {"train.model": "linear", "train.hidden_units": [8]}],
     [[], [], ['train.model="linear", train.hidden_units=[16]']]),
    ({"train.learning_rate": [1, 1.0, 0.5]}, [{"train.learning_rate": 1}, {"train.learning_rate": 0.5}],
     [["train.learning_rate=1.0"], []]),
])
def test_grid_points_that_train_the_same_model_are_one_candidate(tiny_params, grid, trained, same_as):
    """Before: each was a candidate of its own, trained in every backtest window again and ranked beside its twin."""
    candidates = sweep.sweep_grid(sweep_params(tiny_params, grid=grid))
    assert [c.values for c in candidates] == trained and [c.index for c in candidates] == list(range(len(trained)))
    assert [list(c.same_as) for c in candidates] == same_as


@pytest.mark.parametrize("grid, message", [
    ({"train.learnin_rate": [0.01]}, "sweep.grid.train.learnin_rate: unknown key: train has no 'learnin_rate'"),
    ({"evaluate.min_improvement": [-1.0]}, "sweep.grid.evaluate.min_improvement: only features.<key> and train."),
    ({"train.learning_rate": 0.01}, "sweep.grid.train.learning_rate: expected a non-empty list of values"),
    ({"train.learning_rate": [0.01, 0.01]}, "sweep.grid.train.learning_rate: a value is listed twice"),
    ({"train.learning_rate": ["fast"]},
     "sweep.grid: candidate train.learning_rate=\"fast\": train.learning_rate: expected a number, got 'fast'"),
    ({"features.horizon": [16, 7]},
     "sweep.grid: candidate features.horizon=7: split.validation_days: 16 days are longer than features.horizon (7)"),
    ({}, "sweep.grid: expected a mapping of param -> list of values"),
    # a list-valued param's grid written as one list: said as that, not as candidate hidden_units=32's "expected a
    # list of integers, got 32", which named a value the user never wrote
    ({"train.hidden_units": [32, 16]}, "sweep.grid.train.hidden_units: train.hidden_units is a list ([32, 16]), so "
                                       "each value to try is one and the grid a list of lists, e.g. [[32, 16], ...]; "
                                       "got [32, 16]"),
    ({"features.mean_windows": [[7, 28], 14]}, "sweep.grid.features.mean_windows: features.mean_windows is a list"),
])
def test_a_bad_grid_names_its_key(tiny_params, grid, message):
    with pytest.raises(ParamsError) as error:
        sweep.sweep_grid(sweep_params(tiny_params, grid=grid))
    assert message in str(error.value)


def test_a_grid_value_whose_targets_miss_a_weekday_is_named_before_any_training(tiny_params):
    """train refuses a horizon under 7 whose origins, a whole number of weeks apart, give targets on only some
    weekdays. A sweep learnt that from its first training run of such a candidate, after every earlier candidate's
    runs, in words that named no candidate (`sweep: error: features: the training targets fall on 2 of the 7
    weekdays ...`). The grid is refused before any training, naming the candidate, as a bad grid value is."""
    params = sweep_params(tiny_params, grid={"features.origin_stride_days": [8, 14]})
    params["split"]["validation_days"] = 2
    params["features"].update(horizon=2, train_origins=6, origin_stride_days=8)  # 6 origins 8 days apart: 7 weekdays
    with pytest.raises(ParamsError) as refused:
        sweep.sweep_grid(params)
    assert str(refused.value).startswith("sweep.grid: candidate features.origin_stride_days=14: features: the "
                                         "training targets fall on 2 of the 7 weekdays"), refused.value
    params["sweep"]["grid"] = {"features.origin_stride_days": [8, 15]}
    assert len(sweep.sweep_grid(params)) == 2


def test_a_bad_grid_key_stops_the_command_before_any_training(tiny_project, tiny_params, set_params, capsys):
    set_params(tiny_project, sweep_params(tiny_params, grid={"train.hiden_units": [[8]]}))
    assert sweep.main(["--root", str(tiny_project), "--quiet"]) == 1
    assert (f"sweep: error: {tiny_project / 'params.yaml'}: sweep.grid.train.hiden_units: unknown key: train has no "
            "'hiden_units'") in capsys.readouterr().err
    assert not (tiny_project / "sweep").exists() and not (tiny_project / "mlflow.db").exists()


def test_the_default_grid_in_params_yaml_loads():
    from pathlib import Path

    from pipeline.params import load_yaml

    candidates = sweep.sweep_grid(load_yaml(Path(__file__).resolve().parents[3] / "params.yaml"))
    assert len(candidates) == 4 and {"train.learning_rate", "train.hidden_units"} == set(candidates[0].values)


def test_without_the_split_data_the_command_says_what_to_run(tiny_project, tiny_params, set_params, capsys):
    set_params(tiny_project, sweep_params(tiny_params))
    (tiny_project / "data" / "split" / "validation.parquet").unlink()
    assert sweep.main(["--root", str(tiny_project), "--quiet"]) == 1
    assert "validation.parquet: not found (run the data stages first: dvc repro split)" in capsys.readouterr().err
    assert not (tiny_project / "mlflow.db").exists()


def test_evaluate_trains_its_backtest_windows_on_the_cluster_with_the_same_scores(
        trained_project, set_params, dask_cluster, monkeypatch, capsys):
    from pipeline import evaluate

    root, _ = trained_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["backtest_windows"] = 3  # windows 1 and 2 are each trained on the days before them
    set_params(root, params)
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    evaluate.run(root, quiet=True)
    here = json.loads((root / "results" / "backtest.json").read_text())["windows"]
    monkeypatch.setenv(SCHEDULER_ENV, dask_cluster)
    evaluate.run(root)
    assert "evaluate: backtest windows 1..2 as Dask tasks" in capsys.readouterr().out
    there = json.loads((root / "results" / "backtest.json").read_text())["windows"]
    assert [w["window"] for w in there] == [0, 1, 2]
    for ours, theirs in zip(here, there):
        numbers = {k for k, v in ours.items() if isinstance(v, float)}
        assert {k: theirs[k] for k in numbers} == pytest.approx({k: ours[k] for k in numbers}, rel=1e-9)
        assert {k: v for k, v in theirs.items() if k not in numbers} == {k: v for k, v in ours.items()
                                                                         if k not in numbers}


def test_a_grid_value_that_makes_training_diverge_is_named_without_a_traceback(tiny_project, tiny_params, set_params,
                                                                             capsys):
    """Before: a traceback from deep in the sweep (`MetricInputError: predicted: 752 non-finite value(s)`). A grid whose
    every candidate diverges has nothing to rank: one line naming each, and sweep/ is left alone."""
    params = sweep_params(tiny_params, {"train.learning_rate": [1e6]})
    params["evaluate"]["backtest_windows"] = 1
    set_params(tiny_project, params)
    assert sweep.main(["--root", str(tiny_project), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sweep: error: sweep.grid: candidate train.learning_rate=1000000.0: backtest window 0: "
                          "train.learning_rate: training diverged by step ") and "Traceback" not in err, err
    assert not (tiny_project / "sweep").exists()


def test_a_candidate_that_diverges_is_reported_and_the_others_are_still_ranked_and_gated(tiny_project, tiny_params,
                                                                                        set_params, capsys):
    """Before: one learning rate too high of a grid stopped the whole sweep (`sweep: error: ... training diverged`),
    the other candidates' trainings thrown away, nothing ranked and nothing in sweep/."""
    params = sweep_params(tiny_params, {"train.learning_rate": [0.01, 1e6]})
    params["evaluate"]["backtest_windows"] = 1
    set_params(tiny_project, params)
    assert sweep.main(["--root", str(tiny_project), "--quiet"]) == 0
    assert "threshold test passed" in capsys.readouterr().out
    summary = json.loads((tiny_project / "sweep" / "sweep.json").read_text())
    good, bad = summary["candidates"]
    assert summary["best"] == 0 and summary["threshold_test_passed"] and good["diverged"] is None
    assert bad["pooled"] is None and bad["diverged"].startswith(
        "backtest window 0: train.learning_rate: training diverged by step "), bad
    parent, children = sweep_runs(tiny_project, summary["parent_run_id"])
    runs = {r.data.tags["sweep_candidate"]: r for r in children}
    assert runs["train.learning_rate=1000000.0"].info.status == "FAILED"
    assert runs["train.learning_rate=1000000.0"].data.tags["diverged"] == bad["windows"][0]["diverged"]
    assert runs["train.learning_rate=0.01"].info.status == "FINISHED"
    assert parent.data.tags["best_candidate"] == "train.learning_rate=0.01"
    assert parent.data.tags["diverged_candidates"] == "1"
    assert yaml.safe_load((tiny_project / "sweep" / "params.yaml").read_text())["train"]["learning_rate"] == 0.01


def test_a_sweep_stopped_while_it_trains_its_best_leaves_no_summary_of_the_earlier_sweep(tiny_project, tiny_params,
                                                                                        set_params, monkeypatch):
    """Before: a rerun stopped (SIGTERM) while training its best left sweep/params.yaml with the new winner's values
    beside the earlier sweep's sweep.json, which named the earlier winner, its values and its MLflow runs as the
    sweep's result. The stop lands inside the best's training here by construction: on a quiet machine the tiny
    project trains in under a second, and a signal sent a second after `sweep: best` found the sweep done."""
    params = sweep_params(tiny_params, {"train.learning_rate": [0.01]})
    params["evaluate"]["backtest_windows"] = 1
    set_params(tiny_project, params)
    assert sweep.run(tiny_project, quiet=True)["best_values"] == {"train.learning_rate": 0.01}
    home = tiny_project / "sweep"
    assert (home / "sweep.json").is_file()

    params["sweep"]["grid"] = {"train.learning_rate": [0.003]}
    set_params(tiny_project, params)

    def stopped_while_training(*args, **kwargs):
        raise stage.Terminated  # what SIGTERM raises where the stage is (pipeline/stage.py)

    monkeypatch.setattr(train, "run", stopped_while_training)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(tiny_project, quiet=True)
    assert yaml.safe_load((home / "params.yaml").read_text())["train"]["learning_rate"] == 0.003
    assert not (home / "sweep.json").exists() and not (home / "results" / "evaluation.json").exists()


def test_params_yaml_edited_while_the_sweep_runs_does_not_change_what_its_best_is_trained_with(
        tiny_project, tiny_params, set_params, tmp_path, monkeypatch):
    """Before: the sweep read params.yaml again once its training runs were done, so an edit made meanwhile (here
    train.max_steps 120 -> 7) went into sweep/params.yaml: the best was trained and gated with other params than it
    was scored with (and a half-saved file stopped the sweep after all its trainings)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = sweep_params(tiny_params, {"train.learning_rate": [0.01, 0.003]})
    set_params(tiny_project, params)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "stderr", "w") as err, subprocess.Popen(
            [sys.executable, "-m", "pipeline.sweep", "--root", str(tiny_project)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=err, text=True) as run:
        assert run.stdout.readline().startswith("sweep: 2 candidate(s) x 2 backtest window(s)")
        edited = json.loads(json.dumps(params))
        edited["train"]["max_steps"] = 7
        set_params(tiny_project, edited)  # the next experiment's params, saved while this one trains
        run.communicate(timeout=300)
    assert run.returncode == 0, (tmp_path / "stderr").read_text()
    home = tiny_project / "sweep"
    written = yaml.safe_load((home / "params.yaml").read_text())
    assert written["train"]["max_steps"] == 120 and written["train"]["learning_rate"] in (0.01, 0.003)
    summary = json.loads((home / "sweep.json").read_text())
    assert tracking.client(tiny_project).get_run(summary["candidate_run_id"]).data.params["train.max_steps"] == "120"
