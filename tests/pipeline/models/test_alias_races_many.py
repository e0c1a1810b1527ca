"""Three and four moves of the production alias at once (promotes, releases and rollbacks on as many hosts, one
real `mlflow server`): whatever the interleaving, the registry must end in a state one sequence of moves explains.

Found by probing past what tracking.point_alias promised ("two racers at a time are ordered"): three movers read
production 1, and the moves to 2, 3 and 4 finished one after another; 4's record said it replaced 2, as did 3's, so
`release rollback` from 4 returned to 2 and version 3's time in production was skipped (no sequence of moves gives
two versions that each replaced 2). Each mover here is its own process against a real tracking server, held at the
documented hold points of point_alias (HOLD_ALIAS_MOVE: it has read production; HOLD_ALIAS_SET: it has moved the
alias, not yet said so) to make an interleaving certain, or not held at all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from tests.mlflow_server import mlflow_server

REPO = Path(__file__).resolve().parents[3]
NAME = "shelfcast-forecaster"
PRODUCTION = "production"
LIMIT_S = 90  # the most any one process or hold of these tests may take: a hung mover fails the test, never hangs it


pytestmark = pytest.mark.slow  # a real mlflow server and 3-4 processes a test, each importing MLflow: a minute


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mlflow server` (sqlite behind it) shared by this module's tests: its address."""
    home = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(f"sqlite:///{(home / 'mlflow.db').as_posix()}", "--default-artifact-root",
                       (home / "artifacts").as_uri()) as (uri, _):
        yield uri


@pytest.fixture
def served(server, tmp_path, monkeypatch):
    """(tracking URI, project): the registered model afresh, versions 1-5 of one run, production version 1."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    project = tmp_path / "project"
    project.mkdir()
    client = tracking.client(project)
    try:
        client.delete_registered_model(NAME)  # the previous test's
    except MlflowException:
        pass
    experiment = client.get_experiment_by_name("races")
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment("races")).info.run_id
    client.create_registered_model(NAME)
    for _ in range(5):
        client.create_model_version(NAME, f"runs:/{run}/bundle", run_id=run)
    tracking.point_alias(client, NAME, PRODUCTION, "1", production=PRODUCTION)
    return server, project


def mover(uri: str, project: Path, version: str, **holds: Path) -> subprocess.Popen:
    """A process that moves production to ``version`` as promote, `release promote` and `release rollback` do."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri,
           **{variable: str(file) for variable, file in holds.items()}}
    return subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pipeline import tracking\n"
         "tracking.point_alias(tracking.client(sys.argv[1]), 'shelfcast-forecaster', 'production', sys.argv[2],\n"
         "    production='production')", str(project), version],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_held(process: subprocess.Popen, hold: Path) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not Path(f"{hold}.held").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.05)


def finish(process: subprocess.Popen, hold: Path | None = None) -> None:
    if hold is not None:
        hold.touch()
    try:
        out, _ = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    assert process.returncode == 0, out


def one_sequence_explains(project: Path, start: str, moved: set[str]) -> list[str]:
    """Production's move records followed back to ``start``: each version in ``moved`` exactly once (each replaced the
    one before it, none skipped), and previous_production the first step. Returns the sequence, oldest first."""
    client = tracking.client(project)
    model = client.get_registered_model(NAME)
    chain = [str(model.aliases[PRODUCTION])]
    while chain[-1] != start:
        before = tracking.recorded_previous(client.get_model_version(NAME, chain[-1]))
        assert before is not None and before not in chain and len(chain) <= len(moved), (chain, before)
        chain.append(before)
    assert set(chain[:-1]) == moved, f"production's records go {' <- '.join(chain)}; moved: {sorted(moved)}"
    assert (model.tags or {}).get(tracking.PREVIOUS_PRODUCTION_TAG) == chain[1], (model.tags, chain)
    return chain[::-1]


@pytest.mark.parametrize("versions", [("2", "3", "4"), ("4", "3", "2"), ("2", "3", "4", "5")])
def test_moves_from_one_production_finishing_one_after_another_leave_one_sequence(served, tmp_path, versions):
    """Every mover reads production 1, then each finishes in turn: the last is production, and the records chain
    every one of them back to 1 (in the order they finished: each found the ones before it done)."""
    uri, project = served
    holds = {v: tmp_path / f"to-{v}" for v in versions}
    movers = {v: mover(uri, project, v, **{tracking.HOLD_ALIAS_MOVE: holds[v]}) for v in versions}
    for v in versions:
        wait_held(movers[v], holds[v])  # all have read production: version 1
    for v in versions:
        finish(movers[v], holds[v])
    assert one_sequence_explains(project, "1", set(versions)) == ["1", *versions]


def test_a_mover_overtaken_before_it_said_it_moved_by_three_others_leaves_one_sequence(served, tmp_path):
    """Four read production 1; the move to 2 moves the alias and stops before it says so; the moves to 3, 4 and 5 run
    whole, one after another; then the move to 2 finishes, production being 5."""
    uri, project = served
    holds = {v: tmp_path / f"to-{v}" for v in "2345"}
    set_two = tmp_path / "two-set"
    movers = {v: mover(uri, project, v, **{tracking.HOLD_ALIAS_MOVE: holds[v],
                                           **({tracking.HOLD_ALIAS_SET: set_two} if v == "2" else {})})
              for v in "2345"}
    for v in "2345":
        wait_held(movers[v], holds[v])
    holds["2"].touch()
    wait_held(movers["2"], set_two)
    for v in "345":
        finish(movers[v], holds[v])
    finish(movers["2"], set_two)
    sequence = one_sequence_explains(project, "1", set("2345"))
    assert sequence[-1] == "5", sequence


def test_four_moves_let_loose_at_once_leave_one_sequence(served):
    """No holds: four processes move production at once, as four hosts' releases would; then one more round."""
    uri, project = served
    movers = [mover(uri, project, v) for v in "2345"]
    for process in movers:
        finish(process)
    one_sequence_explains(project, "1", set("2345"))


def test_two_racers_overtaken_by_a_later_move_before_the_second_said_it_moved_leave_one_sequence(served, tmp_path):
    """Found by review: the moves to 3 and to 2 read production 1; 3 moves the alias, then 2; the move to 4 reads
    production 2 and runs whole; then 3 and 2 say they moved. Production (4) was no racer of theirs, so neither
    mover knew which of them held production last, and the records went by version number: 2 then 3, so 3 and 4
    each recorded replacing 2 and 3's time in production was left out of the sequence. 4's record says it replaced
    2: that is the racers' last."""
    uri, project = served
    read = {v: tmp_path / f"to-{v}" for v in "32"}
    set_ = {v: tmp_path / f"set-{v}" for v in "32"}
    movers = {v: mover(uri, project, v, **{tracking.HOLD_ALIAS_MOVE: read[v], tracking.HOLD_ALIAS_SET: set_[v]})
              for v in "32"}
    for v in "32":
        wait_held(movers[v], read[v])  # both have read production 1
    for v in "32":
        read[v].touch()
        wait_held(movers[v], set_[v])  # the alias names 3, then 2
    finish(mover(uri, project, "4"))
    for v in "32":
        finish(movers[v], set_[v])
    assert one_sequence_explains(project, "1", set("234")) == ["1", "3", "2", "4"]
