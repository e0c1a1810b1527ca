"""A team's tracking server behind MLflow's own authentication (`mlflow server --app-name basic-auth`): the stages
work with an account's credentials, and a refused login or permission is one line saying what to set, never the
password, with nothing half written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import registry_fetch, tracking
from tests.mlflow_server import basic_auth_mlflow_server

USERS = {"alice": "alice-password-1", "reader": "reader-password-2"}  # MLflow asks for 12 characters


def _as(monkeypatch, user: str | None, password: str | None = None) -> None:
    for key, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)


def test_the_refusals_of_a_tracking_server_say_which_credentials_or_permission_to_set(monkeypatch):
    """Found by a probe: a wrong password, none, or an account with READ only failed every command with MLflow's
    "failed with error code 401 != 200 ... You are not authenticated" (or "403 ... Permission denied"), naming no
    setting; fetch-model added that a new registry has no production model yet. The line now says what to set."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED

    unauthenticated = MlflowException("failed with error code 401 != 200", UNAUTHENTICATED)
    _as(monkeypatch, None)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    assert tracking.store_error_text(unauthenticated).endswith(
        "; the tracking server asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
        "MLFLOW_TRACKING_TOKEN) to an account of that server")
    _as(monkeypatch, "alice", "wrong-s3cret")
    text = tracking.store_error_text(unauthenticated)
    assert "refused user 'alice': check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in text
    assert "wrong-s3cret" not in text
    denied = tracking.store_error_text(MlflowException("failed with error code 403 != 200", PERMISSION_DENIED))
    assert "user 'alice' (MLFLOW_TRACKING_USERNAME) lacks the permission" in denied and "EDIT" in denied
    response = requests.Response()  # an artifact upload's refusal, as MLflow raises it
    response.status_code = 403
    assert "lacks the permission" in tracking.access_hint(requests.HTTPError("403 Client Error", response=response))
    assert tracking.access_hint(MlflowException("gone", RESOURCE_DOES_NOT_EXIST)) == ""
    assert tracking.access_hint(OSError("Connection refused")) == ""


@pytest.mark.slow
def test_the_stages_against_a_basic_auth_tracking_server(tmp_path, monkeypatch):
    pytest.importorskip("flask_wtf", reason="mlflow[auth]'s Flask-WTF: pyproject.toml's test extra pins it")
    with basic_auth_mlflow_server(tmp_path / "server", USERS) as (address, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        project = tmp_path / "project"
        project.mkdir()
        shutil.copyfile(Path(__file__).resolve().parents[3] / "params.yaml", project / "params.yaml")  # the name
        # an account's credentials: a run with a bundle through the server's artifact proxy, a version, the alias
        _as(monkeypatch, "alice", USERS["alice"])
        assert tracking.production_version(project) is None  # the server answers 403 for a model not made yet
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "bundle.json").write_text("{}", encoding="utf-8")
        with tracking.TrainingRun(project, "train-mlp", {"stage": "train"}) as run:
            run.log_metrics({"inner_validation_nwrmsle": 0.5})
            run.log_bundle(bundle)
        version, _ = tracking.register_production(project, run.run_id, "digest-1", {})
        assert str(tracking.production_version(project).version) == str(version.version) == "1"

        # a wrong password, and none: one line naming what to set, never the password
        for user, password, says in (("alice", "wrong-s3cret", "refused user 'alice': check MLFLOW_TRACKING_USERNAME"),
                                     (None, None, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")):
            _as(monkeypatch, user, password)
            with pytest.raises(tracking.TrackingError) as refused, tracking.mlflow_errors_named(project):
                tracking.TrainingRun(project, "train-mlp", {"stage": "train"})  # as train and evaluate start
            assert says in str(refused.value) and "wrong-s3cret" not in str(refused.value)
            assert "\n" not in str(refused.value), refused.value
            with pytest.raises(registry_fetch.FetchError) as fetched:
                registry_fetch.resolve(project, "production")
            assert says in str(fetched.value) and "no production model until" not in str(fetched.value)

        # READ only (the default): a serving host resolves production; no run is left behind, and the alias stays
        _as(monkeypatch, "reader", USERS["reader"])
        assert str(registry_fetch.resolve(project, "production").version) == "1"
        with pytest.raises(tracking.TrackingError, match="user 'reader' .* lacks the permission: .*EDIT"), \
                tracking.mlflow_errors_named(project):
            tracking.TrainingRun(project, "train-mlp", {"stage": "train"})
        with pytest.raises(tracking.TrackingError, match="user 'reader' .* lacks the permission"):
            tracking.register_production(project, run.run_id, "digest-2", {})
        assert str(tracking.production_version(project).version) == "1"
        client = tracking.client(project)
        experiment = client.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id
        assert [r.info.run_id for r in client.search_runs([experiment])] == [run.run_id]
