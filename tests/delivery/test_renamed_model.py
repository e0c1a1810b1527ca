"""A project whose params.yaml names another registered model (``promote.model_name: acme-forecaster``, two teams
sharing one MLflow server) is that model everywhere: promote, release, fetch-model, the bundle's name (the app's
/api/v1/model and every prediction event) and the validation-metrics event, against a real `mlflow server`.

Found by a probe: promote registered "acme-forecaster" while `release`, `make fetch-model` and the workflows that
run them spoke of the constant "shelfcast-forecaster" (no such model: every release command failed), the bundle
said "shelfcast-forecaster" in /api/v1/model and in each prediction event, and so did the metrics event."""

from __future__ import annotations

import copy
import json

import pytest

from pipeline import registry_fetch, release, tracking
from pipeline.bundle import load_bundle, verify_bundle
from pipeline.release_store import CANARY, PRODUCTION
from tests.mlflow_server import mlflow_server

from .conftest import evaluate_and_promote, prepare_registry, tiny_bundle_module

ACME = "acme-forecaster"


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    """(project root, tracking URI, {alias: version}): a tiny project of ACME promoted through a real server,
    version 1 production, version 2 canary (as CI's promote to a candidate alias leaves it)."""
    base = tmp_path_factory.mktemp("renamed")
    with mlflow_server(f"sqlite:///{(base / 'mlflow.db').as_posix()}") as (uri, _):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            prepare_registry(uri, base / "artifacts")
            tiny = tiny_bundle_module()
            params = copy.deepcopy(tiny.TINY_APP_PARAMS)
            params["promote"]["model_name"] = ACME
            root = base / "acme"
            tiny.build_tiny_project(root, params)
            first = evaluate_and_promote(root, PRODUCTION)
            tiny.retrain(root, seed=4)
            second = evaluate_and_promote(root, CANARY)
        yield root, uri, {PRODUCTION: first["version"], CANARY: second["version"]}


@pytest.fixture
def acme_env(acme, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", acme[1])
    return acme


def registered_names(root) -> list[str]:
    return sorted(m.name for m in tracking.client(root).search_registered_models())


def test_promote_registers_params_name_and_the_bundles_and_metrics_event_carry_it(acme_env):
    from monitoring.metrics_events import metrics_event

    root, _, versions = acme_env
    assert registered_names(root) == [ACME]
    assert versions == {PRODUCTION: "1", CANARY: "2"}
    assert load_bundle(root / "models/candidate").metadata["name"] == ACME
    assert load_bundle(root / "models/production").metadata["name"] == ACME
    evaluation = json.loads((root / "results/evaluation.json").read_text())
    metrics = json.loads((root / "results/metrics.json").read_text())
    event = metrics_event(metrics, evaluation)
    assert (event["model_name"], event["model_version"]) == (ACME, evaluation["bundle_version"])
    assert tracking.production_version(root).version == "1"  # the project's name, no argument


def test_release_fetch_model_and_the_app_use_params_name(acme_env, tmp_path, capsys):
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink

    root, _, versions = acme_env
    host = tmp_path / "models"
    cli = ["--root", str(root), "--models", str(host)]  # as `make release-*` runs it: no --name
    try:
        assert release.main(["status", *cli]) == 0, capsys.readouterr().err
        status = json.loads(capsys.readouterr().out.splitlines()[0])
        assert status["aliases"] == {PRODUCTION: "1", CANARY: "2"}
        assert release.main(["sync", *cli]) == 0, capsys.readouterr().err
        assert release.main(["promote", *cli]) == 0, capsys.readouterr().err
        assert str(tracking.client(root).get_registered_model(ACME).aliases[PRODUCTION]) == versions[CANARY]
        assert release.main(["rollback", *cli]) == 0, capsys.readouterr().err
        model = tracking.client(root).get_registered_model(ACME)
        assert str(model.aliases[PRODUCTION]) == versions[PRODUCTION]
        fetched = tmp_path / "fetched"  # `make fetch-model`: no --name
        assert registry_fetch.main(["--root", str(root), "--to", str(fetched)]) == 0, capsys.readouterr().err
        assert f"models:/{ACME}@production = version 1" in capsys.readouterr().out
        assert verify_bundle(fetched) == \
            tracking.client(root).get_model_version(ACME, "1").tags[registry_fetch.TAG_DIGEST]
    finally:
        tracking.client(root).set_registered_model_alias(ACME, PRODUCTION, versions[PRODUCTION])
        tracking.client(root).set_registered_model_alias(ACME, CANARY, versions[CANARY])
    assert registered_names(root) == [ACME]  # nothing made or asked of the shipped name

    log = tmp_path / "events" / "predictions.jsonl"
    sink = PredictionEventSink.from_environment({}, log_path=log, spool_root=log.parent / "spool")
    client = create_app(AppSettings(model_dir=host / PRODUCTION, reload_interval_s=3600.0), sink=sink).test_client()
    try:
        assert client.get("/api/v1/model").json["name"] == ACME
        bundle = load_bundle(host / PRODUCTION)
        store, item = (int(bundle.metadata["vocabularies"][field][0]) for field in ("store_nbr", "item_nbr"))
        day = bundle.metadata["horizon_dates"][0]
        answer = client.post("/api/v1/predict", json={"instances": [
            {"store_nbr": store, "item_nbr": item, "date": day, "onpromotion": False}]})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert answer.json["model"]["name"] == ACME
    finally:
        sink.close()
    [event] = [json.loads(line) for line in log.read_text().splitlines()]
    assert event["model_name"] == ACME


def test_release_and_fetch_model_without_params_yaml_say_so_and_take_name(acme_env, tmp_path, capsys):
    """A folder without params.yaml has no model name: one line naming the file and --name, nothing assumed."""
    bare = tmp_path / "bare"
    bare.mkdir()
    assert release.main(["status", "--root", str(bare), "--models", str(bare / "models")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("release: error: ") and "params.yaml" in err and "--name" in err, err
    assert registry_fetch.main(["--root", str(bare), "--alias", PRODUCTION]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fetch-model: error: ") and "params.yaml" in err and "--name" in err, err
    assert not (bare / "models").exists()
    assert release.main(["status", "--root", str(bare), "--models", str(bare / "models"), "--name", ACME]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["aliases"] == {PRODUCTION: "1", CANARY: "2"}


def test_promote_refuses_a_candidate_named_otherwise_than_params(acme_env, capsys):
    """promote.model_name changed after train: the bundle would be registered under a name it does not carry."""
    from pipeline import promote

    root, _, _ = acme_env
    params = root / "params.yaml"
    before = params.read_text()
    params.write_text(before.replace(f"model_name: {ACME}", "model_name: beta-forecaster"))
    try:
        with pytest.raises(promote.PromotionRefused, match="named 'acme-forecaster', promote.model_name is "
                                                           "'beta-forecaster'; run `dvc repro`"):
            promote.run(root, quiet=True)
    finally:
        params.write_text(before)
    assert registered_names(root) == [ACME]
