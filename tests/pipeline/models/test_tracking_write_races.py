"""Experiment and run writes that stages make at once on one key (a real `mlflow server` with sqlite behind it, and
a project's local sqlite store).

Stages run at once where a team shares one tracking server (two CI runners) and where DVC runs experiments in
parallel (``dvc exp run --run-all --jobs 2``: copies of the project recording into its one ``mlflow.db``). Two first
trains both found no ``shelfcast`` experiment and both created it: the second got RESOURCE_ALREADY_EXISTS and its
stage failed, in every round measured (six writers a round; server and local store)."""

from __future__ import annotations

import threading

import pytest

from pipeline import tracking
from tests.mlflow_server import mlflow_server

WRITERS = 6

pytestmark = pytest.mark.slow  # a real mlflow server (9 s to start), a local store, rounds of racing writers


@pytest.fixture(scope="module", params=["server", "local"])
def store(request, tmp_path_factory):
    """(project, tracking URI): a real server's address, or None for the project's local sqlite store."""
    home = tmp_path_factory.mktemp(request.param)
    project = home / "project"
    project.mkdir()
    if request.param == "local":
        yield project, None
        return
    with mlflow_server(f"sqlite:///{(home / 'server.db').as_posix()}", "--default-artifact-root",
                       (home / "artifacts").as_uri()) as (uri, _):
        yield project, uri


@pytest.fixture
def writers(store, monkeypatch):
    """(project, one tracking.client per writer) on the store."""
    project, uri = store
    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return project, [tracking.client(project) for _ in range(WRITERS)]


def at_once(clients, write, rounds: int) -> tuple[list[str], list[list]]:
    """Each round, every client calls ``write(client, writer, round)`` at one barrier: (the failures as one line
    each, what each round's calls returned)."""
    failures: list[str] = []
    returned: list[list] = []

    def one(client, writer: int, round_: int, start: threading.Barrier, out: list) -> None:
        start.wait()
        try:
            out.append(write(client, writer, round_))
        except Exception as exc:  # noqa: BLE001 - every failure is the finding, named below
            failures.append(f"round {round_}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    for round_ in range(rounds):
        start, out = threading.Barrier(len(clients)), []
        threads = [threading.Thread(target=one, args=(client, writer, round_, start, out))
                   for writer, client in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        returned.append(out)
    return failures, returned


def test_stages_creating_the_experiment_at_once_all_record_into_one(writers):
    project, clients = writers
    failures, ids = at_once(clients, lambda client, _, round_: tracking.ensure_experiment(
        client, project, name=f"fresh{round_}"), rounds=5)
    assert not failures, failures
    assert all(len(set(found)) == 1 for found in ids), ids
    made = clients[0].get_experiment_by_name("fresh4")
    assert made.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING_KIND

