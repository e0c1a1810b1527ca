"""A store that refuses (here: its disk is full) is one line wherever MLflow is asked: train, promote, release, fetch.

Before, MLflow logged SQLAlchemy's traceback (91 lines with the statement and a run's parameters) ahead of the
stage's line, and promote, release and registry_fetch printed MLflow's message as it came: 5 lines. The full disk
is a real one: a 2 MiB tmpfs mounted for the test (needs root or CAP_SYS_ADMIN; skips otherwise).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import registry_fetch, release, tracking
from pipeline.stage import run_stage
from tests.conftest import small_disk

FULL = "database or disk is full"


@pytest.fixture
def full_store(tmp_path, monkeypatch):
    """A project whose local store (with one finished run) lies on a disk with no room left; its root."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with small_disk(tmp_path / "disk", "2m") as disk:
        root = disk / "project"
        root.mkdir()
        shutil.copyfile(Path(__file__).resolve().parents[3] / "params.yaml", root / "params.yaml")  # the model's name
        with tracking.TrainingRun(root, "train", {"stage": "train"}):
            pass
        try:
            with open(disk / "filler", "wb") as filler:
                for _ in range(1024):  # 4 MiB at most: more than the disk holds
                    filler.write(b"x" * 4096)
                    filler.flush()
        except OSError:
            pass
        else:
            pytest.fail("the 2 MiB disk never filled")
        yield root


def _one_line_naming_the_cause(message: str) -> None:
    assert "\n" not in message and message.endswith(FULL), message
    assert "[SQL" not in message and "parameters" not in message and "sqlalche.me" not in message


def test_a_stage_whose_store_is_full_says_one_line_and_mlflow_no_traceback(full_store: Path, capsys):
    def body(args):
        with tracking.mlflow_errors_named(full_store):
            tracking.TrainingRun(full_store, "train", {"stage": "train"})

    assert run_stage("train", body, []) == 1
    db = (full_store / "mlflow.db").resolve().as_posix()
    captured = capsys.readouterr()
    assert captured.err == f"train: error: MLflow at sqlite:///{db}: {FULL}\n" and captured.out == ""


def test_registering_in_a_full_store_is_one_line(full_store: Path):
    run_id = tracking.client(full_store).search_runs([tracking.ensure_experiment(tracking.client(full_store),
                                                                                 full_store)])[0].info.run_id
    with pytest.raises(tracking.TrackingError) as error:
        tracking.register_production(full_store, run_id, "digest", {})
    assert str(error.value).startswith("model registry at sqlite:///")
    _one_line_naming_the_cause(str(error.value))


def test_release_and_fetch_say_a_refusing_store_in_one_line(full_store: Path, monkeypatch):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:  # what MLflow raises for a store it cannot write
        tracking.client(full_store).create_registered_model("another")
    assert "\n" in refused.value.message  # MLflow's message: the error, the statement, its parameters, a link

    class RefusingClient:
        def __getattr__(self, name):
            def refuse(*args, **kwargs):
                raise refused.value
            return refuse

    monkeypatch.setattr(tracking, "client", lambda root=".", create=True: RefusingClient())
    with pytest.raises(release.ReleaseError) as error:
        release.aliases(full_store)
    _one_line_naming_the_cause(str(error.value))
    with pytest.raises(release.ReleaseError) as error:
        release.ensure_release(full_store, None, "3")
    _one_line_naming_the_cause(str(error.value))
    with pytest.raises(registry_fetch.FetchError) as error:
        registry_fetch.resolve(full_store, "canary")
    _one_line_naming_the_cause(str(error.value))


def test_store_error_text_follows_the_cause_and_drops_sqlalchemys_appendix():
    import sqlite3

    import sqlalchemy
    from mlflow.exceptions import MlflowException

    statement = "UPDATE registered_models\nSET last_updated_time=? WHERE name = ?"
    database = sqlalchemy.exc.OperationalError(statement, ("x", "[8, 4]"), sqlite3.OperationalError(FULL))
    wrapped = MlflowException(message=database)
    wrapped.__cause__ = database
    assert tracking.store_error_text(wrapped) == FULL
    assert tracking.store_error_text(MlflowException(message=str(database))) == f"(sqlite3.OperationalError) {FULL}"
    assert tracking.store_error_text(MlflowException("RESOURCE_DOES_NOT_EXIST:\n  no  such\nmodel")) == \
        "RESOURCE_DOES_NOT_EXIST: no such model"


def test_is_gone_tells_what_a_real_store_does_not_hold_from_its_other_errors(tmp_path):
    """One place says "the registry says it's gone" (tracking.is_gone): prune's counting of what another prune
    deleted, release's "nothing registered yet" hint, promote's creation of the registered model and no_such_alias
    all read it. Asked of a real sqlite store: a missing model, version and run are gone; a refusal of another kind
    (a name taken) and an error that is no MLflow error are not."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking.sqlite_uri(tmp_path / "store.db")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("present")
    asked = [lambda: client.get_registered_model("absent"), lambda: client.get_model_version("present", "7"),
             lambda: client.get_run("0" * 32), lambda: client.create_registered_model("present")]
    verdicts = []
    for ask in asked:
        with pytest.raises(MlflowException) as caught:
            ask()
        verdicts.append(tracking.is_gone(caught.value))
    assert verdicts == [True, True, True, False]
    assert not tracking.is_gone(OSError("Connection refused"))


def test_is_gone_is_no_404_of_a_server_that_is_no_registry_nor_a_missing_alias(tmp_path):
    """Found by review: a looser is_gone (any "not found" in the message) passed the test above, and would let
    prune count versions of a registry it never reached as deleted by another. A tracking URI whose server answers
    every path 404 (a wrong prefix, a proxy: MLflow's ENDPOINT_NOT_FOUND, "File not found") and a sqlite store's
    missing alias (INVALID_PARAMETER_VALUE "... not found", no_such_alias's, not is_gone's) are not gone."""
    import http.server
    import threading

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = tracking.sqlite_uri(tmp_path / "store.db")
    local = MlflowClient(tracking_uri=uri, registry_uri=uri)
    local.create_registered_model("present")
    try:
        nowhere = f"http://127.0.0.1:{server.server_address[1]}/no-registry-here"
        proxied = MlflowClient(tracking_uri=nowhere, registry_uri=nowhere)
        asked = [lambda: proxied.delete_model_version("present", "1"),
                 lambda: local.get_model_version_by_alias("present", "production")]
        for ask in asked:
            with pytest.raises(MlflowException) as caught:
                ask()
            assert not tracking.is_gone(caught.value), caught.value
        assert tracking.no_such_alias(caught.value)
    finally:
        server.shutdown()
        server.server_close()
