"""The train stage: time-based origins, the MLflow run, reproducibility, clear errors."""

from __future__ import annotations

import pytest

from pipeline import tracking, train
from pipeline.features import FeatureSpec
from pipeline.history import build_history
from pipeline.model_params import FeatureParams


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


def test_a_train_is_an_mlflow_run_with_params_curves_metrics_tags_and_the_bundle(trained_project):
    root, summary = trained_project
    params, metrics, tags = tracking.run_data(root, summary["run_id"])
    assert params["train.model"] == "mlp" and params["features.history_days"] == "56"
    assert metrics["inner_validation_nwrmsle"] == pytest.approx(summary["inner_validation_nwrmsle"])
    assert tags["model_kind"] == "mlp" and tags["bundle_digest"] == summary["digest"]
    assert "train.parquet:" in tags["data_version"] and tags["git_commit"]
    curve = tracking.metric_history(root, summary["run_id"], "validation_nwrmsle")
    assert len(curve) == summary["epochs_run"] and [s for s, _ in curve] == list(range(len(curve)))
    artifacts = {a.path for a in tracking.client(root).list_artifacts(summary["run_id"], "bundle")}
    assert {"bundle/graph.json", "bundle/weights.npz", "bundle/bundle.json", "bundle/checksums.json"} <= artifacts


def test_the_model_beats_the_baseline_on_the_tiny_data(trained_project):
    _, summary = trained_project
    assert summary["inner_validation_nwrmsle"] < summary["inner_validation_baseline_nwrmsle"]


def test_same_params_and_data_give_the_same_metrics(trained_project):
    root, summary = trained_project
    again = train.run(root, quiet=True)
    assert again["run_id"] != summary["run_id"]
    for key in ("inner_validation_nwrmsle", "inner_validation_baseline_nwrmsle", "best_epoch", "train_examples"):
        assert again[key] == summary[key], key


def test_the_stage_reports_a_bad_param_without_a_traceback(tiny_project, tiny_params, set_params, capsys):
    tiny_params["train"]["model"] = "forest"
    set_params(tiny_project, tiny_params)
    assert train.main(["--root", str(tiny_project)]) == 1
    assert "train.model: must be one of mlp, linear" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, tiny_params, set_params, capsys):
    set_params(tmp_path, tiny_params)
    assert train.main(["--root", str(tmp_path)]) == 1
    assert "train.parquet: not found" in capsys.readouterr().err
