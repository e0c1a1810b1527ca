"""Two promotes on two hosts at once: two clones of the project sharing one real `mlflow server`, as two CI runners
do. Each clone's own writer lock (models/.writer.lock) cannot see the other, so both promotes run whole.

Found by review: both found no version of the bundle, both registered it (two versions, one digest) and each moved
the alias to its own, so where it ended depended on the interleaving. Now the registry keeps one version per bundle,
the lowest, and the alias ends there whoever finishes first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import evaluate, registry_fetch, tracking
from pipeline.bundle import verify_bundle
from tests.mlflow_server import mlflow_server
from tests.pipeline.models.conftest import copy_tree
from tests.pipeline.models.test_promote_faults import two_candidates, use  # noqa: F401 (a fixture)

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml
PRODUCTION = "production"  # promote.alias of the same params.yaml

REPO = Path(__file__).resolve().parents[3]


def promote_process(root: Path, address: str, **env: str) -> subprocess.Popen:
    """``python -m pipeline.promote --root ROOT`` on its own, against the server (as another host runs it)."""
    environ = {**os.environ, "MLFLOW_TRACKING_URI": address, "PYTHONPATH": str(REPO), **env}
    environ.pop("SHELFCAST_PROMOTE_ALIAS", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline.promote", "--root", str(root)], cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def race(held: Path, runs_through: Path, address: str, tmp_path: Path) -> list[tuple[int, str]]:
    """The interleaving that made two versions, made certain: the promote in ``held`` stops where it has uploaded its
    serving bundle and is about to register it (tracking.HOLD_BEFORE_REGISTER); the one in ``runs_through`` then
    runs whole (registers, moves the alias, installs); then the first goes on. (exit status, output) of each."""
    release = tmp_path / "release-the-held-promote"
    first = promote_process(held, address, **{tracking.HOLD_BEFORE_REGISTER: str(release)})
    deadline = time.monotonic() + 300
    while not Path(f"{release}.held").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.1)
    second = promote_process(runs_through, address)
    second_out, _ = second.communicate(timeout=300)
    release.touch()
    first_out, _ = first.communicate(timeout=300)
    return [(first.returncode, first_out), (second.returncode, second_out)]


def versions(root: Path) -> list:
    return tracking.client(root).search_model_versions(f"name='{MODEL_NAME}'")


def on_a_shared_server(tmp_path: Path, root: Path):
    """A real `mlflow server` over a copy of the project's store (its training and evaluation runs)."""
    (tmp_path / "server.db").write_bytes((root / "mlflow.db").read_bytes())
    return mlflow_server(f"sqlite:///{(tmp_path / 'server.db').as_posix()}")


@pytest.mark.slow
def test_two_hosts_promoting_the_same_bundle_at_once_register_one_version(trained_project, tmp_path, monkeypatch):
    root, summary = trained_project
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    other = copy_tree(root, tmp_path / "other-host")  # a second runner's clone: the same commit, data and candidate
    with on_a_shared_server(tmp_path, root) as (address, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        results = race(root, other, address, tmp_path)
        assert [code for code, _ in results] == [0, 0], results
        made = [v for v in versions(root) if v.tags.get(tracking.BUNDLE_DIGEST_TAG) == summary["digest"]]
        assert [str(v.version) for v in made] == ["1"], [(v.version, v.tags) for v in made]  # one, the first
        production = tracking.production_version(root)
        assert str(production.version) == "1"
        want = registry_fetch.promoted_digest(production)
        for host in (root, other):  # each host installed what the registry serves
            assert verify_bundle(host / "models/production") == want
        fetched = registry_fetch.fetch(root, "production", tmp_path / "fetched")
        assert fetched.version == "1" and fetched.digest == want
        # the one that registered second says so, and its duplicate is gone (not merely moved off)
        (_, held_out), (_, through_out) = results
        assert "version 1 (newly registered) is now 'production'" in through_out, through_out
        assert "another promote registered this bundle meanwhile as version 1" in held_out, held_out
        assert "version 1 (already registered) is now 'production'" in held_out, held_out
        model = tracking.client(root).get_registered_model(MODEL_NAME)
        assert {k: str(v) for k, v in model.aliases.items()} == {"production": "1"}
        assert tracking.PREVIOUS_PRODUCTION_TAG not in model.tags  # production never left version 1


@pytest.mark.slow
def test_two_hosts_promoting_different_bundles_at_once_leave_the_alias_on_a_complete_version(
        two_candidates, tmp_path, monkeypatch):  # noqa: F811 (the fixture imported above)
    """Held before registering, the first registers after the second has moved the alias: the alias ends on the
    first's version (whichever moves it last wins), complete (its serving bundle downloads and verifies), never on a
    version a racer deleted, and each bundle is one version; a rollback returns to the second."""
    root, first, second = two_candidates
    other = copy_tree(root, tmp_path / "other-host")
    use(other, second)
    with on_a_shared_server(tmp_path, root) as (address, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        results = race(root, other, address, tmp_path)
        assert [code for code, _ in results] == [0, 0], results
        made = versions(root)
        digests = sorted(v.tags[tracking.BUNDLE_DIGEST_TAG] for v in made)
        assert len(made) == 2 and len(set(digests)) == 2, [(v.version, v.tags) for v in made]
        production = tracking.production_version(root)
        assert str(production.version) == "2" and production.tags[tracking.BUNDLE_DIGEST_TAG] == \
            verify_bundle(first / "models/candidate")
        model = tracking.client(root).get_registered_model(MODEL_NAME)
        assert model.tags[tracking.PREVIOUS_PRODUCTION_TAG] == "1"
        fetched = registry_fetch.fetch(root, "production", tmp_path / "fetched")  # complete: downloads and verifies
        assert fetched.digest == registry_fetch.promoted_digest(production)


@pytest.mark.slow
def test_a_duplicate_the_account_may_not_delete_is_marked_and_never_chosen(tmp_path, monkeypatch):
    """A CI account with EDIT on the registered model, not MANAGE, may register a version but not delete one
    (MLflow's basic-auth server answers 403): the racer's duplicate then stays, tagged ``duplicate_of``, and
    neither the alias nor a later promote ever takes it."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth]'s Flask-WTF: pyproject.toml's test extra pins it")
    from mlflow.server.auth.client import AuthServiceClient

    from tests.mlflow_server import ADMIN, basic_auth_mlflow_server

    users = {"alice": "alice-password-1", "ci-runner": "ci-runner-password-2"}
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(REPO / "params.yaml", project / "params.yaml")  # its promote.model_name names the model
    with basic_auth_mlflow_server(tmp_path / "server", users) as (address, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        for key, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), ADMIN):
            monkeypatch.setenv(key, value)
        client = tracking.client(project)
        client.create_registered_model(MODEL_NAME)
        for user, permission in (("alice", "MANAGE"), ("ci-runner", "EDIT")):
            AuthServiceClient(address).grant_user_permission(user, "registered_model", MODEL_NAME,
                                                             permission)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", users["alice"])
        with tracking.TrainingRun(project, "train-mlp", {"stage": "train"}) as run:
            pass
        release = tmp_path / "release"
        runner = subprocess.Popen(
            [sys.executable, "-c", "import sys\nfrom pipeline import tracking\n"
             "version, created = tracking.register_production(sys.argv[1], sys.argv[2], 'digest-1', {})\n"
             "print(version.version, created)", str(project), run.run_id], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_USERNAME": "ci-runner",
                 "MLFLOW_TRACKING_PASSWORD": users["ci-runner"], tracking.HOLD_BEFORE_REGISTER: str(release)})
        deadline = time.monotonic() + 120
        while not Path(f"{release}.held").exists():  # it has looked, found no version of digest-1, and waits
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[0]
            time.sleep(0.1)
        first, created = tracking.register_production(project, run.run_id, "digest-1", {})  # alice, meanwhile
        assert created and str(first.version) == "1"
        release.touch()
        out, _ = runner.communicate(timeout=120)
        assert runner.returncode == 0 and out.strip().splitlines()[-1] == "1 False", out
        kept = {str(v.version): v.tags for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
        assert kept["2"][tracking.DUPLICATE_TAG] == "1" and tracking.DUPLICATE_TAG not in kept["1"], kept
        assert str(tracking.production_version(project).version) == "1"
        assert str(tracking.version_of_bundle(project, "digest-1").version) == "1"


@pytest.mark.slow
def test_a_promote_overtaken_by_another_hosts_move_installs_what_production_names(
        two_candidates, tmp_path, monkeypatch):  # noqa: F811 (the fixture imported above)
    """This host promotes the second candidate (version 2): registers it, moves the alias; another host then moves
    production back to version 1 (its own promote or rollback) before this one has installed. This host then
    served version 2 while the registry named 1, until someone ran `release sync`; now it re-reads the alias after
    its move, installs version 1's serving bundle and says so."""
    from pipeline import promote

    root, first, second = two_candidates
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert promote.main(["--root", str(root), "--quiet"]) == 0  # version 1, the first candidate
    use(root, second)
    hold = tmp_path / "promote-moved"
    promoting = promote_process(root, tracking.tracking_uri(root), **{tracking.HOLD_ALIAS_SET: str(hold)})
    deadline = time.monotonic() + 300
    while not Path(f"{hold}.held").exists():
        assert promoting.poll() is None and time.monotonic() < deadline, promoting.communicate()[0]
        time.sleep(0.1)
    client = tracking.client(root)
    assert str(tracking.production_version(root).version) == "2"
    tracking.point_alias(client, MODEL_NAME, PRODUCTION, "1", production=PRODUCTION)  # the other host's move
    hold.touch()
    out, _ = promoting.communicate(timeout=300)
    assert promoting.returncode == 0, out
    assert str(tracking.production_version(root).version) == "1"
    assert verify_bundle(root / "models/production") == registry_fetch.promoted_digest(
        client.get_model_version(MODEL_NAME, "1")), out
    assert "another move made version 1 'production'" in out, out
    assert not list((root / "models").glob("promoted-*"))
