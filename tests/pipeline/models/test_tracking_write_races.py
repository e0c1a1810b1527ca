"""Experiment and run writes that stages make at once on one key (a real `mlflow server` with sqlite behind it, and
a project's local sqlite store).

Stages run at once where a team shares one tracking server (two CI runners) and where DVC runs experiments in
parallel (``dvc exp run --run-all --jobs 2``: copies of the project recording into its one ``mlflow.db``). Two first
trains both found no ``shelfcast`` experiment and both created it: the second got RESOURCE_ALREADY_EXISTS and its
stage failed, in every round measured (six writers a round; server and local store). MLflow's store writes an
experiment tag (the ``mlflow.experimentKind`` mark on an experiment made without it), a run tag (two evaluates or
promotes of one candidate tag its training run) and a dataset (two stages reading the same data log it in the one
experiment) by reading the row and inserting it when absent, and the second insert of one new key failed, "UNIQUE
constraint failed". Measured before the retry (tracking.INSERT_RACED_WRITES), six writers a round, 40 rounds: the
experiment's mark lost in 11 and 13 rounds (server, local store), a run tag in 2 and 9, a dataset in 22 and 26."""

from __future__ import annotations

import threading

import pytest

from pipeline import tracking
from tests.mlflow_server import mlflow_server

WRITERS = 6

pytestmark = pytest.mark.slow  # a real mlflow server (9 s to start), a local store, 70 rounds of racing writers


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


def test_stages_marking_an_unmarked_experiment_at_once_all_succeed(writers):
    """An experiment an older Shelfcast (or a user) made without the kind tag: every stage sets it when absent."""
    project, clients = writers
    for round_ in range(15):
        clients[0].create_experiment(f"older{round_}")
    failures, _ = at_once(clients, lambda client, _, round_: tracking.ensure_experiment(
        client, project, name=f"older{round_}"), rounds=15)
    assert not failures, failures
    assert all(clients[0].get_experiment_by_name(f"older{round_}").tags[tracking.EXPERIMENT_KIND_TAG]
               == tracking.MODEL_TRAINING_KIND for round_ in range(15))


def test_run_tags_and_datasets_written_at_once_all_succeed(writers):
    """Evaluates of one candidate tag its training run at once; stages of one data log its dataset at once."""
    project, clients = writers
    experiment = tracking.ensure_experiment(clients[0], project)
    candidate = clients[0].create_run(experiment).info.run_id
    own_runs = [clients[0].create_run(experiment).info.run_id for _ in clients]

    def tag(client, writer: int, round_: int) -> None:
        client.set_tag(candidate, f"{tracking.VERDICT_TAG}{round_}", str(writer))

    def dataset(client, writer: int, round_: int) -> None:
        data = tracking.RunData(f"data/source{round_}", {"train.csv": "0" * 64}, {"rows": 1})
        client.log_inputs(own_runs[writer], datasets=[data.dataset_input("training")])

    tag_failures, _ = at_once(clients, tag, rounds=40)
    dataset_failures, _ = at_once(clients, dataset, rounds=10)
    assert not tag_failures + dataset_failures, tag_failures + dataset_failures
    assert {f"{tracking.VERDICT_TAG}{round_}" for round_ in range(40)} <= set(
        clients[0].get_run(candidate).data.tags)
    assert all(len(clients[0].get_run(run).inputs.dataset_inputs) == 10 for run in own_runs)
