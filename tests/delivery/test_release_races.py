"""A host whose production move loses the alias to another host's: it must serve what the registry names, not the
version it moved to (which it had installed before moving the alias), without waiting for a `release sync`.

Each command is its own process against the session's real (sqlite) MLflow registry; the promote is held just after
its alias move (tracking.HOLD_ALIAS_SET) while another host moves production, to make the interleaving certain.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.bundle import verify_bundle
from pipeline.registry_fetch import TAG_DIGEST
from pipeline.release_store import PRODUCTION

from .conftest import REPO

NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml


def held_release(root: Path, models: Path, hold: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), tracking.HOLD_ALIAS_SET: str(hold)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.release", *args, "--root", str(root), "--models",
                             str(models)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_held(process: subprocess.Popen, hold: Path) -> None:
    deadline = time.monotonic() + 120
    while not Path(f"{hold}.held").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.05)


@pytest.mark.slow  # two hosts' releases raced, 15 s: make test stays under 10 min
def test_a_release_promote_overtaken_by_another_hosts_move_installs_what_production_names(host, tmp_path):
    """This host promotes the canary (2): installs it, moves the alias; another host then moves production to 1
    (its own promote or rollback) before this one has finished. This host served 2, the registry named 1, until
    someone ran `release sync`. Now it re-reads the alias after its move, installs 1 and says so."""
    root, store, versions = host
    hold = tmp_path / "promote-moved"
    promoting = held_release(root, store.root, hold, "promote")
    wait_held(promoting, hold)
    client = tracking.client(root)
    assert str(client.get_registered_model(NAME).aliases[PRODUCTION]) == versions["canary"]
    # the other host's move
    tracking.point_alias(client, NAME, PRODUCTION, versions["production"], production=PRODUCTION)
    hold.touch()
    out, _ = promoting.communicate(timeout=120)
    assert promoting.returncode == 0, out
    assert str(client.get_registered_model(NAME).aliases[PRODUCTION]) == versions["production"]
    served = verify_bundle(store.variant_dir(PRODUCTION))
    assert served == client.get_model_version(NAME, versions["production"]).tags[TAG_DIGEST], out
    assert f"another move made version {versions['production']} production" in out, out



@pytest.mark.slow  # two hosts' releases raced, 15 s: make test stays under 10 min
def test_a_rollback_right_after_another_hosts_promote_returns_to_the_version_that_promote_replaced(host, tmp_path):
    """Another host promotes the canary (2): its alias move is done, its `previous_production` not yet mirrored
    (held just after the move). An operator rolls back at once: production must return to 1, which version 2's own
    record says it replaced; the tag still said nothing (or an older version), so rollback refused "nothing to roll
    back to" (or went further back than 1)."""
    from pipeline import release

    root, store, versions = host
    hold = tmp_path / "promote-moved"
    promoting = held_release(root, tmp_path / "other-host", hold, "promote")
    wait_held(promoting, hold)
    client = tracking.client(root)
    assert str(client.get_registered_model(NAME).aliases[PRODUCTION]) == versions["canary"]
    try:
        assert release.main(["rollback", "--root", str(root), "--models", str(store.root)]) == 0
    finally:
        hold.touch()
        out, _ = promoting.communicate(timeout=120)
    assert promoting.returncode == 0, out
    model = client.get_registered_model(NAME)
    assert str(model.aliases[PRODUCTION]) == versions["production"]
    assert model.tags[release.PREVIOUS_TAG] == versions["canary"]  # a second rollback undoes this one
    served = verify_bundle(store.variant_dir(PRODUCTION))
    assert served == client.get_model_version(NAME, versions["production"]).tags[TAG_DIGEST]


def test_a_deploy_overtaken_by_another_hosts_move_exits_0_as_release_promote_does():
    """deploy's candidate passed and was promoted, then another host's move named another production, which this
    host installed (outcome superseded): the release did its part, and `release promote` overtaken the same way
    (above) exits 0. It exited 2, a rollback's status, failing the app pipeline's release job with nothing to mend."""
    from pipeline import release

    assert release.deploy_exit_status({"outcome": release.SUPERSEDED}) == 0
    assert release.deploy_exit_status({"outcome": "promoted"}) == 0
    assert release.deploy_exit_status({"outcome": release.NOTHING_TO_DEPLOY}) == 0
    assert release.deploy_exit_status({"outcome": "rolled back"}) == 2
