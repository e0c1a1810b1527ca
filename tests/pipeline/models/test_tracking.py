"""MLflow logging and the registry against a real local (sqlite) tracking store in tmp_path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline import tracking
from tests.mlflow_server import mlflow_server, unanswering_server

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml
PRODUCTION = "production"  # promote.alias of the same params.yaml


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def project(store):
    """``store`` as a project: its params.yaml (the repository's) names the registered model the registry calls use."""
    shutil.copyfile(Path(__file__).resolve().parents[3] / "params.yaml", store / "params.yaml")
    return store


def test_default_store_is_inside_the_project(store, monkeypatch):
    assert tracking.tracking_uri(store) == f"sqlite:///{store.resolve().as_posix()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri(store) == "http://mlflow.example:5000"


@pytest.mark.parametrize("folder", ["runs?2", "a%20b", "50% off"])
def test_the_store_is_inside_a_project_whose_folder_name_has_a_query_or_percent_sign(store, folder):
    """A project in `runs?2` wrote its runs to a file `runs` beside it (SQLAlchemy read `?2/mlflow.db` as a query),
    which every project `runs?<anything>` then shared; in `a%20b` every stage failed "unable to open database file"
    (it opened `a b/mlflow.db`)."""
    root = store / folder
    root.mkdir()
    with tracking.TrainingRun(root, "train", {}) as run:
        run.log_metrics({"x": 1.0})
    assert (root / "mlflow.db").is_file()
    # nothing written outside the project (MLflow 3 still makes the escaped name's folder, empty, beside it)
    assert [p for p in store.rglob("*") if p.is_file() and root not in p.parents] == []
    assert tracking.run_data(root, run.run_id)[1] == {"x": 1.0}
    assert tracking.local_store_path(tracking.tracking_uri(root)) == root.resolve() / "mlflow.db"


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


def test_registering_is_idempotent_and_moves_the_alias(project):
    with tracking.TrainingRun(project, "a", {}) as first:
        pass
    with tracking.TrainingRun(project, "b", {}) as second:
        pass
    assert tracking.production_version(project) is None
    v1, created = tracking.register_production(project, first.run_id, "digest-1", {"data_version": "x"})
    assert created and str(v1.version) == "1"
    again, created = tracking.register_production(project, first.run_id, "digest-1", {})
    assert not created and str(again.version) == "1"
    v2, created = tracking.register_production(project, second.run_id, "digest-2", {})
    assert created and str(v2.version) == "2"
    current = tracking.production_version(project)
    assert str(current.version) == "2" and current.tags["bundle_digest"] == "digest-2"
    assert current.source == f"runs:/{second.run_id}/bundle"
    # moving production remembers the version it left: `release rollback` returns there (promote never set it,
    # so a rollback after `make run` twice found nothing, or an older version)
    client = tracking.client(project)
    assert client.get_registered_model("shelfcast-forecaster").tags[tracking.PREVIOUS_PRODUCTION_TAG] == "1"
    tracking.register_production(project, second.run_id, "digest-2", {})  # production again: nothing left
    assert client.get_registered_model("shelfcast-forecaster").tags[tracking.PREVIOUS_PRODUCTION_TAG] == "1"
    tracking.register_production(project, first.run_id, "digest-1", {}, alias="shadow")  # not production
    assert client.get_registered_model("shelfcast-forecaster").tags[tracking.PREVIOUS_PRODUCTION_TAG] == "1"


def test_the_runs_of_a_dvc_temporary_experiment_go_to_the_project_store(tmp_path, monkeypatch):
    """`dvc exp run --temp` runs the stages in <project>/.dvc/tmp/exps/<name>/, deleted afterwards: the runs it made
    went with it, and promote then found no training run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    assert tracking.tracking_uri(copy) == f"sqlite:///{(tmp_path / 'project').resolve().as_posix()}/mlflow.db"
    assert tracking.artifact_root(copy) == ((tmp_path / "project").resolve() / "mlartifacts").as_uri()
    assert tracking.store_home(tmp_path / "project") == (tmp_path / "project").resolve()


def test_a_sqlite_tracking_uri_keeps_a_dvc_temporary_experiments_runs_and_artifacts(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI=sqlite:///… (MLflow's own example) made the experiment with MLflow's default artifact
    root, ./mlruns of the stage's working directory: under `dvc exp run --temp` the copy DVC deletes afterwards, so
    that run's bundle went with it and every later run of the experiment wrote its artifacts under the deleted copy's
    path. A relative one (sqlite:///mlflow.db) put the whole store in the copy."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12cd"
    copy.mkdir(parents=True)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    team = tmp_path / "team store"  # a folder with a space: the file URIs of its artifacts escape it
    team.mkdir()
    monkeypatch.chdir(copy)  # DVC runs the experiment's stages in the copy
    for uri, store in ((tracking.sqlite_uri(team / "mlflow.db"), team), ("sqlite:///mlflow.db", project.resolve())):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking.tracking_uri(copy) == tracking.sqlite_uri(store / "mlflow.db")
        with tracking.TrainingRun(copy, "train", {}) as run:
            run.log_bundle(bundle)
        client = tracking.client(copy)
        artifacts = Path(url2pathname(urlsplit(client.get_run(run.run_id).info.artifact_uri).path))
        assert store / "mlartifacts" in artifacts.parents, artifacts
        assert (artifacts / "bundle" / "bundle.json").is_file()
        assert [a.path for a in client.list_artifacts(run.run_id, "bundle")] == ["bundle/bundle.json"]
    assert sorted(p.name for p in copy.iterdir()) == []  # nothing in the copy DVC deletes
    assert (team / "mlflow.db").is_file() and (project / "mlflow.db").is_file()


def test_an_unreachable_or_scheme_less_tracking_server_is_one_error_at_once(tmp_path, monkeypatch):
    """MLflow retried an unreachable server for about 4 minutes, then printed a traceback."""
    import socket
    import time

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"http://127.0.0.1:{port} .* cannot be reached"):
        tracking.client(tmp_path)
    assert time.monotonic() - started < 5
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingError, match=f"did you mean http://127.0.0.1:{port}"):
        tracking.client(tmp_path)
    # credentials in the URI are MLflow's to use, never shown; a server that listens is left to MLflow (auth, TLS,
    # a slow answer: the check only connects)
    with pytest.raises(tracking.TrackingError) as refused:
        tracking.check_reachable(f"http://alice:s3cret@127.0.0.1:{port}")
    assert "s3cret" not in str(refused.value) and f"http://127.0.0.1:{port}" in str(refused.value)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        tracking.check_reachable(f"https://alice:s3cret@127.0.0.1:{listening.getsockname()[1]}/prefix")


@pytest.mark.parametrize("typed, meant", [("http//127.0.0.1:5000", "http://127.0.0.1:5000"),
                                           ("http:/127.0.0.1:5000/", "http://127.0.0.1:5000/"),
                                           ("HTTPS//mlflow.example", "https://mlflow.example"),
                                           ("http:alice:s3cret@mlflow.example:5000", "http://mlflow.example:5000")])
def test_a_tracking_uri_with_a_mistyped_scheme_is_named_not_made_a_folder(tmp_path, monkeypatch, typed, meant):
    """`http//127.0.0.1:5000` is a relative path to MLflow: MLflow 3.17 refused it as a file store, saying to set
    MLFLOW_ALLOW_FILE_STORE=true, and with that set train recorded its run into ./http/127.0.0.1:5000/ of the project,
    not the server, without a word."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", typed)
    with pytest.raises(tracking.TrackingError, match=f"did you mean {re.escape(meant)}\\?$") as refused:
        tracking.TrainingRun(tmp_path, "train", {})
    assert "s3cret" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def _mlflow_http_settings_unset(monkeypatch) -> None:
    """MLflow's own HTTP defaults, as a user who set none of them has them (restored after the test)."""
    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.setenv(key, "")  # recorded as it was, so that what the code under test sets is undone
        monkeypatch.delenv(key)


def test_every_stage_bounds_mlflows_http_retries_unless_the_user_set_them(tmp_path, monkeypatch):
    """Found by a probe: only the release commands bounded MLflow's HTTP retries. train, evaluate, promote and
    fetch-model, whose server died or restarted after they reached it, waited out MLflow's defaults (7 retries with
    backoff factor 2: about 4 minutes) before failing; tracking.client now bounds them for every command."""
    import socket
    import time

    _mlflow_http_settings_unset(monkeypatch)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # a user's own setting is kept
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking, "_reached", {uri})  # reached when the stage started; gone since
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"MLflow at {uri}: .*(?:Connection refused|Max retries)"):
        with tracking.mlflow_errors_named(tmp_path):
            tracking.client(tmp_path).get_experiment_by_name(tracking.EXPERIMENT_NAME)
    assert time.monotonic() - started < 15  # 3 tries, 0 + 2 s apart (MLflow's defaults: about 246 s)
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_a_tracking_server_that_takes_connections_and_never_answers_fails_a_stage_in_bounded_time(tmp_path,
                                                                                                  monkeypatch):
    """Found by a probe: a server that accepts TCP connections and never answers (hung, or a proxy in front of one
    that died) passes the reachability check; each request then waited out MLflow's read timeout on every retry.
    The timeout here is 1 s (the user's; the default is 20 s) so that the retries' bound shows within seconds:
    MLflow's own 7 retries took about 4 minutes of backoff on top."""
    import time

    _mlflow_http_settings_unset(monkeypatch)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with unanswering_server() as address:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        started = time.monotonic()
        with pytest.raises(tracking.TrackingError, match=f"MLflow at {address}: .*[Tt]imed out"):
            with tracking.mlflow_errors_named(tmp_path):
                tracking.client(tmp_path).get_experiment_by_name(tracking.EXPERIMENT_NAME)
        assert time.monotonic() - started < 15  # 3 x 1 s, 0 + 2 s apart


@pytest.mark.slow  # MLflow in other processes, 8-17 s on 2 cores: make test stays under 10 min
def test_a_registry_that_fails_is_not_taken_for_one_without_production(project, monkeypatch):
    """Found by a probe: production_version read every MLflow error as "no production yet", so a tracking server
    that failed that one request (restarting, a proxy's 502) made promote skip the champion/challenger comparison
    ("nothing to compare the candidate with") and register a candidate worse than production; point_alias then
    recorded no previous_production for a rollback. Only a missing alias or registered model is None now."""
    import socket

    client = tracking.client(project)
    assert tracking.production_version(project) is None  # no registered model
    client.create_registered_model(MODEL_NAME)
    assert tracking.production_version(project) is None  # no alias
    _mlflow_http_settings_unset(monkeypatch)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking, "_reached", {uri})  # reached when promote started; gone since
    with pytest.raises(tracking.TrackingError, match=f"model registry at {uri}: .*Connection refused"):
        tracking.production_version(project)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="Connection refused"):  # not read as "no production yet"
        tracking.point_alias(tracking.client(project), MODEL_NAME, PRODUCTION, "2", production=PRODUCTION)


@pytest.mark.slow
def test_promote_against_a_server_that_never_answers_fails_within_about_a_minute(trained_project):
    """The same with every MLflow HTTP setting left at Shelfcast's defaults, through promote's command line: one line
    within 3 x 20 s plus backoff (before: MLflow's 8 x 120 s, about 18 minutes)."""
    import subprocess
    import sys
    import time

    from pipeline import evaluate

    root, _ = trained_project
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0  # an evaluated candidate, in the local store

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    with unanswering_server() as address:
        env.update(MLFLOW_TRACKING_URI=address, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pipeline.promote", "--root", str(root)], env=env,
                              capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
    assert done.returncode != 0 and took < 90, (took, done.stderr)
    assert f"promote: error: MLflow at {address}: " in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_messages_never_show_the_credentials_of_a_tracking_uri(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example:8443/team")
    assert tracking.shown_uri(tmp_path) == "https://mlflow.example:8443/team"
    with pytest.raises(tracking.TrackingError) as error:
        with tracking.mlflow_errors_named(tmp_path):
            raise MlflowException("refused")
    assert "s3cret" not in str(error.value) and "mlflow.example:8443/team" in str(error.value)


def test_a_stage_says_an_mlflow_failure_in_one_line_naming_the_store(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(tracking.TrackingError, match=r"^MLflow at sqlite:///.*: RESOURCE gone$"):
        with tracking.mlflow_errors_named(tmp_path):
            raise MlflowException("RESOURCE gone")
    with pytest.raises(KeyError):  # anything else passes through
        with tracking.mlflow_errors_named(tmp_path):
            raise KeyError("x")


def test_the_experiment_opens_as_model_training_in_mlflow_3(store):
    """MLflow 3's UI shows an experiment without a kind in its GenAI (traces) view."""
    client = tracking.client(store)
    experiment_id = tracking.ensure_experiment(client, store)
    kind = client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG]
    assert kind == tracking.MODEL_TRAINING_KIND == "custom_model_development"


@pytest.mark.slow
def test_a_run_on_a_tracking_server_prints_no_address_of_the_genai_overview(store, tmp_path, monkeypatch, capfd):
    """Found by a probe: against a server, MLflow itself printed `View experiment at: <server>/#/experiments/<id>`
    as every train, evaluate and promote run ended (--quiet too); that address opens MLflow 3.17's GenAI overview,
    no runs (see the test below). The stages name their run id in their own lines instead."""
    with mlflow_server(f"sqlite:///{(tmp_path / 'server.db').as_posix()}") as (address, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        with tracking.TrainingRun(store, "train-mlp", {"stage": "train"}) as run:
            run.log_metrics({"curve/train_loss": 0.3}, step=1)
        out = capfd.readouterr().out
        assert tracking.client(store).get_run(run.run_id).info.status == "FINISHED"
    assert "/#/experiments/" not in out and "View experiment" not in out, out


@pytest.mark.slow
def test_make_mlflow_uis_address_opens_the_experiments_runs_not_the_genai_overview(store, tmp_path):
    """Found by a probe: with the tag set, MLflow 3.17's UI still opened the experiment as a GenAI traces
    overview (its view comes from the address, else a per-browser setting that starts as GenAI). The address
    `make mlflow-ui` prints opens the runs; the plain one, for contrast, the overview."""
    import subprocess

    from tests.e2e.webdriver import find_chromium

    browser = find_chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (scripts/install_browser.sh)")
    client = tracking.client(store)
    run = client.create_run(tracking.ensure_experiment(client, store), run_name="train-mlp")
    client.log_metric(run.info.run_id, "train_loss", 0.3)
    client.set_terminated(run.info.run_id)
    with mlflow_server(tracking.tracking_uri(store)) as (server, _):
        address = tracking.ui_address(server, store)
        assert address.endswith(f"/#/experiments/{run.info.experiment_id}?workflowType=machine_learning")

        def page(url: str) -> str:
            return subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                                   f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
                                   "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout

        shown, plain = page(address), page(address.split("?")[0])
        assert "train-mlp" in shown and "Detect Issues" not in shown, shown[-2000:]
        assert "Detect Issues" in plain and "train-mlp" not in plain  # MLflow's default, why the address says so


def test_an_existing_experiment_gets_the_kind_but_a_users_choice_is_kept(store):
    client = tracking.client(store)
    old = client.create_experiment(tracking.EXPERIMENT_NAME)  # as made before the tag existed
    assert tracking.ensure_experiment(client, store) == old
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    other = client.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "forecasting"})
    tracking.ensure_experiment(client, store, name="chosen")
    assert client.get_experiment(other).tags[tracking.EXPERIMENT_KIND_TAG] == "forecasting"


def test_an_evaluation_is_nested_and_writes_the_verdict_only_on_an_unregistered_run(project):
    with tracking.TrainingRun(project, "train-mlp", {}) as train_run:
        train_run.log_metrics({"curve/inner_validation_nwrmsle": 0.7}, step=0)
    headline = {"threshold_test_passed": 1, "backtest": {"improvement_low": 0.02, "windows": 3}}
    windows = [{"window": 0, "improvement": 0.05, "model": "candidate"}, {"window": 1, "improvement": 0.04}]
    first = tracking.log_evaluation(project, train_run.run_id, passed=True, headline=headline, windows=windows,
                                    params={"evaluate": {"confidence": 0.95}}, artifacts=[])
    assert first.training_run_updated
    _, metrics, tags = tracking.run_data(project, first.run_id)
    assert tags["mlflow.parentRunId"] == train_run.run_id and tags["threshold_test"] == "passed"
    assert metrics["heldout_backtest_improvement_low"] == 0.02 and metrics["heldout_threshold_test_passed"] == 1
    assert tracking.metric_history(project, first.run_id, "heldout_window_improvement") == [(0, 0.05), (1, 0.04)]
    _, train_metrics, train_tags = tracking.run_data(project, train_run.run_id)
    assert train_tags["threshold_test"] == "passed" and train_metrics["curve/inner_validation_nwrmsle"] == 0.7
    curve = tracking.metric_history(project, train_run.run_id, "curve/inner_validation_nwrmsle")
    assert curve == [(0, 0.7)]  # curve untouched

    tracking.register_production(project, train_run.run_id, "digest", {})
    second = tracking.log_evaluation(project, train_run.run_id, passed=False, headline={"threshold_test_passed": 0},
                                     windows=[], params={}, artifacts=[])
    assert not second.training_run_updated
    assert tracking.run_data(project, train_run.run_id)[2]["threshold_test"] == "passed"
    assert tracking.run_data(project, second.run_id)[2]["threshold_test"] == "failed"


def _in_a_new_process(code: str, root):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-c", f"import sys; from pipeline import tracking; {code}", str(root)],
                          cwd=Path(tracking.__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=300)


def _migrations():
    """MLflow's alembic migrations, read with alembic's public ScriptDirectory (no private MLflow helper)."""
    from alembic.script import ScriptDirectory
    import mlflow.store.db_migrations as migrations

    return ScriptDirectory(str(Path(migrations.__file__).parent))


def _schema_head() -> str:
    return _migrations().get_current_head()


def _schema_revision(db) -> str | None:
    """The alembic revision a sqlite store records, read without writing (None: none yet, or busy)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            row = connection.execute("select version_num from alembic_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def test_a_killed_creations_staging_file_and_its_sqlite_journal_are_removed(store):
    """A kill inside one of MLflow's migration transactions left ``.mlflow.db.<pid>.creating-journal`` beside the
    store for good (8 of 30 kills at random moments): the clean-up matched the staging file's name only."""
    import os
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # a process id that has ended
    for suffix in ("", "-journal", "-wal"):
        (store / f".mlflow.db.{dead}.creating{suffix}").write_bytes(b"left by a killed creation")
    alive = store / f".mlflow.db.{os.getppid()}.creating-journal"  # another creation, still running: left alone
    alive.write_bytes(b"")
    tracking.client(store).search_experiments()
    assert sorted(p.name for p in store.iterdir()) == sorted(["mlflow.db", alive.name])


@pytest.mark.slow  # MLflow in other processes, 8-17 s on 2 cores: make test stays under 10 min
def test_a_first_run_killed_while_mlflow_creates_its_store_leaves_none_or_a_whole_one(store):
    """Killed (kill -9, Ctrl-C) among MLflow's schema migrations, the first train left a half-migrated mlflow.db that
    every later run failed on ("duplicate column name", "table ... already exists") until the user deleted it."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    head = _schema_head()
    db = store / "mlflow.db"
    repo = Path(tracking.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    creating = subprocess.Popen([sys.executable, "-c", "import sys; from pipeline import tracking; "
                                 "tracking.client(sys.argv[1]).search_experiments()", str(store)],
                                cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen_partial_db, killed = [], False
    deadline = time.monotonic() + 120
    try:
        while creating.poll() is None and time.monotonic() < deadline:
            if db.exists() and _schema_revision(db) not in (None, head):
                seen_partial_db.append(_schema_revision(db))
            # mid-migration, wherever the schema is being made: kill it there
            partial = [p for p in [db, *store.glob(".mlflow.db*")] if _schema_revision(p) not in (None, head)]
            if partial:
                creating.kill()
                killed = True
                break
            time.sleep(0.01)
    finally:
        creating.kill()
        creating.wait(timeout=30)
    assert killed, "the store was made before the test saw a migration under way"
    assert not seen_partial_db, f"mlflow.db existed half migrated (at revision {seen_partial_db[0]})"
    assert not db.exists() or _schema_revision(db) == head
    # the next run makes the store, whole, and removes what the killed one left
    client = tracking.client(store)
    assert tracking.ensure_experiment(client, store)
    assert _schema_revision(db) == head
    assert sorted(p.name for p in store.iterdir()) == ["mlflow.db"]


def _half_migrated_store(root) -> None:
    """What a kill among the migrations left in mlflow.db before: some later tables missing, the schema stamped at
    an early revision whose successors already ran (so every rerun of them fails)."""
    import sqlite3

    tracking.create_local_store(root / "mlflow.db")
    first = list(_migrations().walk_revisions())[-1].revision
    connection = sqlite3.connect(root / "mlflow.db")
    connection.execute("drop table spans")
    connection.execute("update alembic_version set version_num = ?", (first,))
    connection.commit()
    connection.close()


@pytest.mark.slow  # MLflow in other processes, 8-17 s on 2 cores: make test stays under 10 min
def test_a_broken_local_store_is_one_line_saying_how_to_recover(tmp_path, monkeypatch):
    """A half-migrated or damaged mlflow.db gave a 100+ line SQLAlchemy traceback on every run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    half, garbage = tmp_path / "half", tmp_path / "garbage"
    half.mkdir()
    garbage.mkdir()
    _half_migrated_store(half)
    (garbage / "mlflow.db").write_bytes(b"not sqlite at all" * 300)
    for root in (half, garbage):
        db = root / "mlflow.db"
        with pytest.raises(tracking.TrackingError) as error:
            with tracking.mlflow_errors_named(root):
                tracking.TrainingRun(root, "train", {})
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"MLflow at sqlite:///{db.resolve().as_posix()}: ")
        assert f"broken (half made or damaged): move it aside (mv {db.resolve()} {db.resolve()}.broken)" in message
    # moved aside as the line says, the next run (a new process, as a stage is) makes a new store
    (half / "mlflow.db").rename(half / "mlflow.db.broken")
    rerun = _in_a_new_process("tracking.TrainingRun(sys.argv[1], 'train', {}).__exit__(None, None, None)", half)
    assert rerun.returncode == 0, rerun.stderr
    assert _schema_revision(half / "mlflow.db") == _schema_head()


def test_a_database_error_from_the_store_is_one_line_naming_it(tmp_path, monkeypatch):
    """Errors raised by SQLAlchemy or sqlite3 while talking to the store passed through as tracebacks."""
    import sqlite3

    import sqlalchemy

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(tracking.TrackingError, match=r"^MLflow at sqlite:///.*mlflow\.db: database is locked$"):
        with tracking.mlflow_errors_named(tmp_path):
            raise sqlite3.OperationalError("database is locked")  # not the schema: no advice to move the file
    with pytest.raises(tracking.TrackingError, match=r"^MLflow at sqlite:///.*mlflow\.db: no such table: missing; "
                                                     r"the store file is broken"):
        with tracking.mlflow_errors_named(tmp_path), engine.connect() as connection:
            connection.execute(sqlalchemy.text("select * from missing"))


def test_mlflows_own_errors_never_show_the_credentials_of_the_tracking_uri(tmp_path, monkeypatch):
    """Found by a probe: with MLFLOW_TRACKING_URI=http://user:password@host, a server gone mid-stage (reached once,
    then restarted or down) made MLflow raise "API request to http://alice:s3cret@host/api/2.0/... failed", and the
    stage's one line, promote's upload error and a fetch's download error printed the password as it was."""
    import socket
    from types import SimpleNamespace

    from pipeline import registry_fetch

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    uri = f"http://alice:s3cret@127.0.0.1:{port}/"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once
    monkeypatch.setattr(tracking, "_reached", {uri})  # reached when the stage started; gone since
    with pytest.raises(tracking.TrackingError) as error:
        with tracking.mlflow_errors_named(tmp_path):
            tracking.client(tmp_path).get_experiment_by_name(tracking.EXPERIMENT_NAME)
    assert "s3cret" not in str(error.value) and f"127.0.0.1:{port}" in str(error.value), error.value
    version = SimpleNamespace(version="1", run_id="0" * 32,
                              tags={registry_fetch.TAG_DIGEST: "d" * 64, tracking.VERDICT_TAG: "passed"})
    with pytest.raises(registry_fetch.FetchError) as fetched:
        registry_fetch.download_version(tmp_path, version, tmp_path / "production")
    assert "s3cret" not in str(fetched.value) and f"127.0.0.1:{port}" in str(fetched.value), fetched.value
    assert tracking.without_credentials("to https://a:b@h:1/x and s3://k@bucket/p, user@host") == \
        "to https://h:1/x and s3://bucket/p, user@host"


def test_a_deleted_experiment_says_how_to_restore_or_remove_it(store):
    """Found by a probe: an experiment deleted in the UI (a clean-up) failed every later train and evaluate with
    MLflow's "The experiment 1 must be in the 'active' state. Current state is deleted.", saying no way out."""
    client = tracking.client(store)
    experiment_id = tracking.ensure_experiment(client, store)
    client.delete_experiment(experiment_id)
    with pytest.raises(tracking.TrackingError, match=f"experiment 'shelfcast' \\(id {experiment_id}\\) was deleted.*"
                       f"mlflow experiments restore --experiment-id {experiment_id}.*mlflow gc"):
        tracking.TrainingRun(store, "train-mlp", {"stage": "train"})
    client.restore_experiment(experiment_id)  # what the message says: runs are recorded again
    with tracking.TrainingRun(store, "train-mlp", {"stage": "train"}) as run:
        pass
    assert client.get_run(run.run_id).info.experiment_id == experiment_id


def test_a_deleted_experiments_way_out_works_as_typed_in_any_folder(store):
    """The message's commands, run as printed from another folder: before, a bare `mlflow experiments restore
    --experiment-id 1` read MLflow's own default store there (it made a `mlflow.db` in that folder and failed, "No
    Experiment with id=1 exists"), and `mlflow gc --experiment-ids 1` failed "Tracking URL is not set"."""
    import os
    import subprocess
    import sys

    root = store / "my project"  # a space: the commands quote the store's URI
    elsewhere = store / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    client = tracking.client(root)
    experiment_id = tracking.ensure_experiment(client, root)
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = bin_dir + os.pathsep + env["PATH"]

    def way_out() -> list[str]:
        client.delete_experiment(experiment_id)
        with pytest.raises(tracking.TrackingError) as refused:
            tracking.TrainingRun(root, "train-mlp", {})
        return re.findall(r"`([^`]*mlflow [^`]*)`", str(refused.value))

    restore, gc = way_out()
    subprocess.run(restore, shell=True, cwd=elsewhere, env=env, check=True, capture_output=True, timeout=120)
    assert client.get_experiment(experiment_id).lifecycle_stage == "active" and list(elsewhere.iterdir()) == []
    with tracking.TrainingRun(root, "train-mlp", {}) as before:
        pass
    restore, gc = way_out()
    subprocess.run(gc, shell=True, cwd=elsewhere, env=env, check=True, capture_output=True, timeout=120)
    assert client.search_runs([experiment_id], run_view_type=3) == [] and list(elsewhere.iterdir()) == []  # all gone
    with tracking.TrainingRun(root, "train-mlp", {}) as run:  # the next run makes a new experiment of the name
        pass
    assert client.get_experiment_by_name("shelfcast").lifecycle_stage == "active" and run.run_id != before.run_id


def test_a_first_promote_racing_another_for_the_new_registered_model_registers_its_version(project, monkeypatch):
    """Found by a probe: two first promotes into a new registry (CI's shadow and a person's production, on two
    hosts) both found no registered model and both created it; the later one failed with "Registered Model
    (name=shelfcast-forecaster) already exists" after its upload, and nothing of it was registered."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    with tracking.TrainingRun(project, "a", {}) as run:
        pass
    real = MlflowClient.get_registered_model

    def lost_the_race(self, name):  # not there yet when asked; the other promote creates it right after
        monkeypatch.setattr(MlflowClient, "get_registered_model", real)
        self.create_registered_model(name, tags={"owner": "other-team"})
        raise MlflowException(f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(MlflowClient, "get_registered_model", lost_the_race)
    version, created = tracking.register_production(project, run.run_id, "digest-1", {})
    assert created and str(tracking.production_version(project).version) == str(version.version) == "1"
    assert tracking.client(project).get_registered_model(MODEL_NAME).tags == {"owner": "other-team"}


@pytest.mark.slow
def test_a_stage_failing_while_the_server_is_gone_says_its_own_error_at_once(store, tmp_path, monkeypatch):
    """Found by a probe: a stage that failed while its tracking server was down (stopped, restarting) waited out
    MLflow's retries once more to mark its run FAILED (about 4 minutes at MLflow's defaults), then said MLflow's
    connection error instead of its own. Its error now comes at once; the run, left RUNNING, is marked KILLED by
    the next stage on this host, as a killed stage's is."""
    import time

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # ~4 s of retries (MLflow's default: minutes)
    backend = f"sqlite:///{(tmp_path / 'server.db').as_posix()}"
    with mlflow_server(backend) as (address, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        run = tracking.TrainingRun(store, "train-mlp", {"stage": "train"})
    started = time.monotonic()  # the server is gone now
    with pytest.raises(OSError, match="disk full"):
        with run:
            raise OSError(28, "disk full")
    assert time.monotonic() - started < 3
    with mlflow_server(backend) as (address, _):  # back: the next stage closes the run the failed one left open
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        monkeypatch.setattr(tracking, "process_alive", lambda pid: False)  # this test's process stands in for it
        with tracking.TrainingRun(store, "train-mlp", {"stage": "train"}) as later:
            assert later.closed == [run.run_id]
        assert tracking.client(store).get_run(run.run_id).info.status == "KILLED"


@pytest.mark.slow  # MLflow in other processes, 8-17 s on 2 cores: make test stays under 10 min
def test_the_race_safe_client_pickles_into_another_process_as_mlflows_does(store):
    """Found by review: tracking.client's class (MlflowClient with INSERT_RACED_WRITES retried) was made at run time
    and in no module's namespace, so pickling a client failed ("attribute lookup InsertRaceSafeClient on
    pipeline.tracking failed"), where an MlflowClient pickles: handing one to a process pool or a Dask task broke.
    It now unpickles in a fresh process as the same class, reading the same store."""
    import pickle
    import subprocess
    import sys

    client = tracking.client(store)
    experiment_id = tracking.ensure_experiment(client, store)
    read = ("import pickle, sys; c = pickle.loads(sys.stdin.buffer.read()); "
            "print(type(c).__name__, c.set_tag.__name__, c.get_experiment_by_name('shelfcast').experiment_id)")
    done = subprocess.run([sys.executable, "-c", read], input=pickle.dumps(client), capture_output=True,
                          cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == [tracking.RACE_SAFE_CLIENT, "set_tag", experiment_id]
