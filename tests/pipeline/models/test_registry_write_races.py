"""Registry writes that race on one new key (a real `mlflow server`, sqlite behind it).

Found by CI: four releases moving production at once each wrote the registered model's ``previous_production`` tag
for the first time; MLflow's store reads the row, finds none and inserts it, so the second insert failed ("UNIQUE
constraint failed") and that release ended in a traceback. The same holds for a version's tag and an alias. Six
threads here write each new key at once, ten rounds: before the retry (tracking._insert_races_retried) a round
lost a race in about half the rounds measured (14 of 30 for the model tag, 5 of 30 for the alias)."""

from __future__ import annotations

import threading

import pytest

from pipeline import tracking
from tests.mlflow_server import mlflow_server

NAME = "races"
WRITERS = 6
ROUNDS = 10

pytestmark = pytest.mark.slow  # a real mlflow server (9 s to start) and 60 racing writers: 19 s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server holding registered model NAME, version 1: its address (one for the module: its start is 9 s)."""
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("registry")
    with mlflow_server(f"sqlite:///{(home / 'server.db').as_posix()}", "--default-artifact-root",
                       (home / "artifacts").as_uri()) as (uri, _):
        client = MlflowClient(uri, uri)
        client.create_registered_model(NAME)
        run = client.create_run(client.create_experiment("races")).info.run_id
        client.create_model_version(NAME, f"runs:/{run}/bundle", run_id=run)
        yield uri


@pytest.fixture
def served(server, tmp_path, monkeypatch):
    """A project whose tracking URI is the server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    return tmp_path


def test_writers_of_one_new_tag_or_alias_at_once_all_succeed(served):
    clients = [tracking.client(served) for _ in range(WRITERS)]
    failures: list[str] = []

    def write(client, writer: int, key: str, start: threading.Barrier) -> None:
        start.wait()
        for call in (lambda: client.set_registered_model_tag(NAME, key, str(writer)),
                     lambda: client.set_model_version_tag(NAME, "1", key, str(writer)),
                     lambda: client.set_registered_model_alias(NAME, key, "1")):
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - every failure is the finding, named below
                failures.append(f"{key}: {str(exc).splitlines()[0]}")

    for round_ in range(ROUNDS):
        key, start = f"key{round_}", threading.Barrier(WRITERS)
        threads = [threading.Thread(target=write, args=(client, writer, key, start))
                   for writer, client in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not failures, failures
    model = clients[0].get_registered_model(NAME)
    keys = {f"key{round_}" for round_ in range(ROUNDS)}
    assert keys <= set(model.tags) and keys <= set(model.aliases)
    assert keys <= set(clients[0].get_model_version(NAME, "1").tags)


def test_a_write_refused_for_another_reason_is_not_retried_as_a_race(served):
    """A tag on a version that does not exist is MLflow's own error at once, not five tries of it."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(served)
    with pytest.raises(MlflowException) as refused:
        client.set_model_version_tag(NAME, "99", "key", "value")
    assert not tracking.lost_insert_race(refused.value)
