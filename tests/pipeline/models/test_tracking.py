"""MLflow logging and the registry against a real local (sqlite) tracking store in tmp_path."""

from __future__ import annotations

import pytest

from pipeline import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_default_store_is_inside_the_project(store, monkeypatch):
    assert tracking.tracking_uri(store) == f"sqlite:///{store.resolve().as_posix()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri(store) == "http://mlflow.example:5000"


def test_a_training_run_logs_params_curves_metrics_tags_and_artifacts(store):
    bundle = store / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    with tracking.TrainingRun(store, "train-mlp", {"model_kind": "mlp", "git_commit": "abc"}) as run:
        run.log_params({"train": {"epochs": 3, "hidden_units": [8, 4]}, "features": {"history_days": 56}})
        for epoch, loss in enumerate([0.9, 0.7, 0.6]):
            run.log_metrics({"train_loss": loss}, step=epoch)
        run.log_metrics({"validation_nwrmsle": 0.55})
        run.set_tags({"data_version": "md5:123"})
        uri = run.log_bundle(bundle)
    params, metrics, tags = tracking.run_data(store, run.run_id)
    assert params["train.hidden_units"] == "[8, 4]" and params["features.history_days"] == "56"
    assert metrics["validation_nwrmsle"] == 0.55
    assert tags["model_kind"] == "mlp" and tags["data_version"] == "md5:123"
    assert tracking.metric_history(store, run.run_id, "train_loss") == [(0, 0.9), (1, 0.7), (2, 0.6)]
    assert uri == f"runs:/{run.run_id}/bundle"
    assert (store / "mlartifacts").is_dir()
    client = tracking.client(store)
    assert [a.path for a in client.list_artifacts(run.run_id, "bundle")] == ["bundle/bundle.json"]
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_failed_train_marks_the_run_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.TrainingRun(store, "train", {}) as run:
            raise RuntimeError("boom")
    assert tracking.client(store).get_run(run.run_id).info.status == "FAILED"


def test_registering_is_idempotent_and_moves_the_alias(store):
    with tracking.TrainingRun(store, "a", {}) as first:
        pass
    with tracking.TrainingRun(store, "b", {}) as second:
        pass
    assert tracking.production_version(store) is None
    v1, created = tracking.register_production(store, first.run_id, "digest-1", {"data_version": "x"})
    assert created and str(v1.version) == "1"
    again, created = tracking.register_production(store, first.run_id, "digest-1", {})
    assert not created and str(again.version) == "1"
    v2, created = tracking.register_production(store, second.run_id, "digest-2", {})
    assert created and str(v2.version) == "2"
    current = tracking.production_version(store)
    assert str(current.version) == "2" and current.tags["bundle_digest"] == "digest-2"
    assert current.source == f"runs:/{second.run_id}/bundle"
