"""Two moves of the production alias at once (two promotes or releases on two hosts, one registry): the version a
rollback returns to (``previous_production``) must be the one that was production just before the current one.

Found by review: each mover read production (A), recorded it as previous and moved the alias. Racing, both read A:
one moved production to B, the other to C, and C's record said A: a rollback from C skipped B. Here each mover is
its own process against one real (sqlite) MLflow registry, stopped at the documented hold points of
tracking.point_alias (HOLD_ALIAS_MOVE: it has read production and not yet moved it; HOLD_ALIAS_SET: it has moved the
alias and not yet said so) to make each interleaving certain.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tracking
from tests.pipeline.models.test_alias_races_many import finish, wait_held  # one hold protocol, bounded

REPO = Path(__file__).resolve().parents[3]
NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml
PRODUCTION = "production"  # promote.alias of the same params.yaml


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A project whose registry holds versions 1, 2 and 3 of one run; production is version 1."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    with tracking.TrainingRun(project, "train-mlp", {"stage": "train"}) as run:
        pass
    client = tracking.client(project)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, f"runs:/{run.run_id}/bundle", run_id=run.run_id)
    tracking.point_alias(client, NAME, PRODUCTION, "1", production=PRODUCTION)
    return project


def mover(project: Path, version: str, **holds: Path) -> subprocess.Popen:
    """A process that moves production to ``version`` (as promote and release do), held where ``holds`` say."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **{variable: str(file) for variable, file in holds.items()}}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pipeline import tracking\n"
         "tracking.point_alias(tracking.client(sys.argv[1]), 'shelfcast-forecaster', 'production', sys.argv[2],\n"
         "    production='production')",
         str(project), version], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def production_and_previous(project: Path) -> tuple[str, str | None]:
    model = tracking.client(project).get_registered_model(NAME)
    return str(model.aliases[PRODUCTION]), (model.tags or {}).get(tracking.PREVIOUS_PRODUCTION_TAG)


def test_two_moves_from_the_same_production_leave_previous_on_the_one_moved_first(registry, tmp_path):
    """Both read production (1); the move to 2 finishes; then the move to 3, which read 1 before 2 was production.
    Production is 3 and a rollback must return to 2, not to 1."""
    to_two, to_three = tmp_path / "two-moves", tmp_path / "three-moves"
    first = mover(registry, "2", **{tracking.HOLD_ALIAS_MOVE: to_two})
    second = mover(registry, "3", **{tracking.HOLD_ALIAS_MOVE: to_three})
    wait_held(first, to_two)
    wait_held(second, to_three)  # both have read production: version 1
    finish(first, to_two)
    assert production_and_previous(registry) == ("2", "1")
    finish(second, to_three)
    assert production_and_previous(registry) == ("3", "2")
    # and the record goes on from there: a rollback (a move to previous) returns to 2 and remembers 3
    tracking.point_alias(tracking.client(registry), NAME, PRODUCTION, "2", production=PRODUCTION)
    assert production_and_previous(registry) == ("2", "3")


def test_a_mover_overtaken_before_it_said_it_moved_repairs_the_record_of_the_one_that_overtook_it(registry, tmp_path):
    """Both read production (1); the move to 2 moves the alias and stops before it says so; the move to 3 runs
    whole (it cannot see that 2 was production, and records 1); then the move to 2 finds 3 production, moved from
    the same production it read, and records 2 as the version 3 replaced."""
    to_two, set_two, to_three = tmp_path / "two-moves", tmp_path / "two-set", tmp_path / "three-moves"
    first = mover(registry, "2", **{tracking.HOLD_ALIAS_MOVE: to_two, tracking.HOLD_ALIAS_SET: set_two})
    second = mover(registry, "3", **{tracking.HOLD_ALIAS_MOVE: to_three})
    wait_held(first, to_two)
    wait_held(second, to_three)
    to_two.touch()
    wait_held(first, set_two)  # production is 2 now
    assert production_and_previous(registry)[0] == "2"
    finish(second, to_three)
    assert production_and_previous(registry)[0] == "3"
    finish(first, set_two)
    assert production_and_previous(registry) == ("3", "2")


def test_a_move_nobody_races_records_what_it_replaced(registry):
    client = tracking.client(registry)
    tracking.point_alias(client, NAME, PRODUCTION, "3", production=PRODUCTION)
    assert production_and_previous(registry) == ("3", "1")
    tracking.point_alias(client, NAME, PRODUCTION, "3", production=PRODUCTION)  # not a move: the record stays
    assert production_and_previous(registry) == ("3", "1")


def test_a_production_set_back_by_hand_is_not_taken_for_a_race_with_an_old_move(registry):
    """Production 1 -> 2 (a move from version 1's tenure), then set back to 1 by hand in the MLflow UI (no record);
    a move 1 -> 3 must record 1, not take the old move to 2 (from the same tenure, done) for a racer before it."""
    client = tracking.client(registry)
    tracking.point_alias(client, NAME, PRODUCTION, "2", production=PRODUCTION)
    client.set_registered_model_alias(NAME, PRODUCTION, "1")  # by hand: no record
    tracking.point_alias(client, NAME, PRODUCTION, "3", production=PRODUCTION)
    assert production_and_previous(registry) == ("3", "1")


def test_a_production_alias_deleted_by_hand_and_named_again_keeps_the_rollback_target(registry):
    """Production 1 -> 2 -> 3, then the alias is deleted by hand; `release promote --version 3` names the version the
    host serves again (what `release` itself says to run). The first move ever (to 1, from no production) is a move
    from "no production" that is done: the new move from no production must not be taken for its racer and record
    version 1 as what 3 replaced, or a rollback returns to the first version ever, not to 2."""
    client = tracking.client(registry)
    tracking.point_alias(client, NAME, PRODUCTION, "2", production=PRODUCTION)
    tracking.point_alias(client, NAME, PRODUCTION, "3", production=PRODUCTION)
    assert production_and_previous(registry) == ("3", "2")
    client.delete_registered_model_alias(NAME, PRODUCTION)  # by hand
    tracking.point_alias(client, NAME, PRODUCTION, "3", production=PRODUCTION)
    assert production_and_previous(registry) == ("3", "2")


def test_prune_keeps_the_version_a_move_killed_before_it_was_marked_done_replaced(registry, tmp_path):
    """Production 1 -> 2 (previous_production 1), then a move to 3 killed once the alias moved, before it was marked
    done and mirrored: production is 3, whose record says it replaced 2, and `release rollback` returns there (the
    tag still says 1). prune must keep 2 as it keeps the tag's version; it deleted it, leaving no rollback."""
    from pipeline import prune

    tracking.point_alias(tracking.client(registry), NAME, PRODUCTION, "2", production=PRODUCTION)
    hold = tmp_path / "three-set"
    killed = mover(registry, "3", **{tracking.HOLD_ALIAS_SET: hold})
    wait_held(killed, hold)
    killed.kill()
    killed.communicate(timeout=120)
    assert production_and_previous(registry) == ("3", "1")
    plan = prune.plan(registry, prune.PruneParams(keep_versions=0, keep_runs=0, dvc_remote=False), NAME, [])
    assert "2" in plan.kept_versions and "2" not in plan.versions, plan.summary()
