"""promote's failure seams: the host never serves a model the registry does not name, and a bundle promoted again is
installed as its registered version serves it.

promote installed models/production first and registered afterwards: a failed upload (a full artifact store), a
failed registration or a kill in between left the app hot-reloading a model the production alias did not name. And
re-promoting a registered bundle rolled it forward again with the newest training run's provenance and uploaded it
(an orphan), while the registry kept the version's own serving bundle: installed != registered.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from pipeline import atomic, evaluate, promote, release, tracking, train
from pipeline.bundle import load_bundle, verify_bundle
from pipeline.registry_fetch import TAG_DIGEST
from pipeline.release_store import ReleaseStore
from tests.conftest import small_disk

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml

CANDIDATE_STATE = ("models/candidate", "results", "params.yaml")


def copy_state(source: Path, target: Path) -> None:
    for part in CANDIDATE_STATE:
        if (target / part).is_dir():
            shutil.rmtree(target / part)
        (target / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (source / part).is_dir() else shutil.copy2)(source / part, target / part)


def keep(root: Path, name: str) -> Path:
    """A copy of the evaluated candidate's state (bundle, results, params), to promote it later."""
    copy_state(root, root.parent / f"saved-{name}")
    return root.parent / f"saved-{name}"


def use(root: Path, saved: Path) -> None:
    copy_state(saved, root)


@pytest.fixture
def two_candidates(trained_project, tiny_params, set_params):
    """The trained project with two evaluated candidates (seeds 3 and 4) saved aside; the first one in place."""
    root, summary = trained_project
    tiny_params["promote"]["max_regression"] = 1.0  # either may follow the other: the champion rule is not tested here
    set_params(root, tiny_params)
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    first = keep(root, "first")
    tiny_params["train"]["seed"] = 4
    set_params(root, tiny_params)
    second_digest = train.run(root, quiet=True)["digest"]
    assert second_digest != summary["digest"]
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    second = keep(root, "second")
    use(root, first)
    return root, first, second


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def production(root: Path):
    return tracking.production_version(root)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "models").iterdir() if "promoted-" in p.name or ".production." in p.name)


def fail_upload(monkeypatch, root):
    from mlflow.tracking import MlflowClient

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_artifacts", full)


def fail_register(monkeypatch, root):
    def full(*args, **kwargs):
        raise tracking.TrackingError(f"model registry at {tracking.shown_uri(root)}: database or disk is full")

    monkeypatch.setattr(tracking, "register_production", full)


def fail_alias(monkeypatch, root):
    """The version is created, then the alias cannot be moved."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def full(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", full)


@pytest.mark.parametrize("fault", [fail_upload, fail_register, fail_alias])
def test_a_promote_that_fails_before_the_alias_moved_leaves_production_as_it_was(two_candidates, monkeypatch, capsys,
                                                                                fault):
    root, first, second = two_candidates
    assert promote.main(["--root", str(root), "--quiet"]) == 0
    v1 = production(root)
    before = files(root / "models/production")
    use(root, second)
    with monkeypatch.context() as patch:
        fault(patch, root)
        capsys.readouterr()
        assert promote.main(["--root", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("promote: error: ") and "Traceback" not in err
    assert "No space left on device" in err or "database or disk is full" in err
    assert files(root / "models/production") == before  # what the app serves: byte for byte, still version 1
    assert leftovers(root) == []
    assert str(production(root).version) == str(v1.version)
    # the next promote installs the new bundle and moves the alias (a version registered without it is reused)
    summary = promote.run(root, quiet=True)
    assert summary["installed"] and summary["version"] == "2"
    assert verify_bundle(root / "models/production") == production(root).tags[TAG_DIGEST]
    assert str(production(root).version) == "2" and leftovers(root) == []


@pytest.fixture
def tiny_disk_under():
    """Mount a 16 KiB tmpfs at a folder (needs root; skips otherwise)."""
    with contextlib.ExitStack() as mounts:
        yield lambda folder: mounts.enter_context(small_disk(folder, "16k"))


def test_a_full_artifact_store_leaves_production_as_it_was(two_candidates, tiny_disk_under, capsys):
    """A real full disk where the serving bundle is uploaded (the second candidate's run's serving_bundle/)."""
    root, first, second = two_candidates
    assert promote.main(["--root", str(root), "--quiet"]) == 0
    before = files(root / "models/production")
    use(root, second)
    trained = tracking.run_of_bundle(root, verify_bundle(root / "models/candidate"))
    artifacts = Path(urllib.parse.urlparse(trained.info.artifact_uri).path)
    tiny_disk_under(artifacts / "serving_bundle")
    capsys.readouterr()
    assert promote.main(["--root", str(root), "--quiet"]) == 1
    assert files(root / "models/production") == before
    assert leftovers(root) == [] and str(production(root).version) == "1"
    err = capsys.readouterr().err
    assert err.startswith(f"promote: error: uploading {root / 'models/promoted-production'} to run ")
    assert "No space left on device" in err


def release_status(root: Path, capsys) -> tuple[dict, str]:
    """`python -m pipeline.release status`: (its JSON, its stderr)."""
    capsys.readouterr()
    assert release.main(["status", "--root", str(root), "--models", str(root / "models")]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_killed_between_the_alias_move_and_the_swap_release_sync_installs_what_the_alias_names(two_candidates,
                                                                                               monkeypatch, capsys):
    """The registry is then ahead of the host (never the other way round): `make release-sync`, or promote again,
    installs the version the alias names."""
    root, first, second = two_candidates
    promote.run(root, quiet=True)
    before = files(root / "models/production")
    use(root, second)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(promote, "swap_in_directory", killed)
        with pytest.raises(KeyboardInterrupt):
            promote.run(root, quiet=True)
    assert str(production(root).version) == "2" and files(root / "models/production") == before
    status, warning = release_status(root, capsys)  # says so, and what mends it
    assert status["in_sync"] is False and status["host"]["production"]["in_sync"] is False
    assert status["host"]["production"]["version"] == "2" and "make release-sync" in warning
    assert release.sync(root, ReleaseStore(root / "models"))["production"] == "2"
    status, warning = release_status(root, capsys)
    assert status["in_sync"] is True and warning == ""
    assert status["host"]["production"]["served_digest"] == production(root).tags[TAG_DIGEST]
    assert verify_bundle(root / "models/production") == production(root).tags[TAG_DIGEST]
    again = promote.run(root, quiet=True)
    assert again["version"] == "2" and not again["registered"] and not again["installed"]


def test_a_bundle_promoted_again_is_installed_as_its_registered_version_serves_it(two_candidates, capsys):
    """Retrained (`dvc repro -f -s train`: a newer run, the same bundle), production moved to another version, then
    promoted again: version 1's own serving bundle is installed, nothing is uploaded again."""
    root, first, second = two_candidates
    promote.run(root, quiet=True)
    v1 = production(root)
    use(root, second)
    assert promote.run(root, quiet=True)["version"] == "2"
    use(root, first)
    retrained = train.run(root, quiet=True)
    assert retrained["digest"] == v1.tags[tracking.BUNDLE_DIGEST_TAG] and retrained["run_id"] != v1.run_id
    capsys.readouterr()
    summary = promote.run(root)
    out = capsys.readouterr().out
    assert summary["version"] == "1" and not summary["registered"] and summary["installed"]
    assert "version 1 (already registered) is now 'production'; models/production installed" in out
    assert verify_bundle(root / "models/production") == v1.tags[TAG_DIGEST]
    assert load_bundle(root / "models/production").metadata["mlflow_run_id"] == v1.run_id
    assert tracking.client(root).list_artifacts(retrained["run_id"], "serving_bundle") == []  # no orphan upload
    assert str(production(root).version) == "1" and leftovers(root) == []
    assert release.sync(root, ReleaseStore(root / "models"))["production"] == "1"
    assert verify_bundle(root / "models/production") == v1.tags[TAG_DIGEST]  # what sync installs: the same
    again = promote.run(root, quiet=True)
    assert again["version"] == "1" and not again["installed"]


def test_a_candidate_alias_promoted_again_as_production_is_neither_uploaded_nor_moved(two_candidates, monkeypatch):
    """The retrained candidate is production's bundle (the same digest): nothing is uploaded, and the candidate
    alias is not moved onto production's own version (a release would judge it against itself)."""
    root, first, second = two_candidates
    promote.run(root, quiet=True)
    v1 = production(root)
    retrained = train.run(root, quiet=True)
    monkeypatch.setenv("SHELFCAST_PROMOTE_ALIAS", "shadow")
    summary = promote.run(root, quiet=True)
    assert summary["version"] == "1" and not summary["registered"] and not summary["installed"]
    assert summary["alias"] == "shadow" and summary["moved"] is False
    assert "shadow" not in tracking.client(root).get_registered_model(MODEL_NAME).aliases
    assert tracking.client(root).list_artifacts(retrained["run_id"], "serving_bundle") == []
    assert verify_bundle(root / "models/production") == v1.tags[TAG_DIGEST] and leftovers(root) == []


def test_a_bundle_registered_by_hand_without_a_serving_bundle_is_refused(trained_project, capsys):
    """No serving bundle to install: refused before anything is written (it was reused, the upload's tags lost)."""
    root, summary = trained_project
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    client = tracking.client(root)
    client.create_registered_model(MODEL_NAME)
    client.create_model_version(MODEL_NAME, f"runs:/{summary['run_id']}/bundle",
                                run_id=summary["run_id"], tags={tracking.BUNDLE_DIGEST_TAG: summary["digest"]})
    capsys.readouterr()
    assert promote.main(["--root", str(root), "--quiet"]) == promote.REFUSED
    err = capsys.readouterr().err
    assert "version 1 is this bundle" in err and "delete that version in the registry and promote again" in err
    assert not (root / "models/production").exists() and tracking.production_version(root) is None


def hold_models_directory(directory: Path, command: str) -> subprocess.Popen:
    """Another process holding ``directory``'s writer lock as ``command`` does, until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from pipeline.atomic import one_writer\n"
         "with one_writer(Path(sys.argv[1]), sys.argv[2]):\n    print('held', flush=True); time.sleep(600)",
         str(directory), command], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_one_promote_or_release_writes_a_models_directory_at_a_time(trained_project, capsys):
    """Two promotes at once shared models/promoted-production/ (each removing what the other staged) and swapped in
    whichever finished last; a release on the same directory likewise. The second now fails at once, naming the
    first, and leaves everything as it was; a killed holder's lock goes with it."""
    root, _ = trained_project
    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    holder = hold_models_directory(root / "models", "promote")
    try:
        capsys.readouterr()
        assert promote.main(["--root", str(root), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"models is being written by promote (pid {holder.pid} on " in err and "run promote again" in err
        assert not (root / "models" / "production").exists() and not (root / "models" / "promoted-production").exists()
        assert tracking.production_version(root) is None  # nothing registered
        assert release.main(["sync", "--root", str(root), "--models", str(root / "models")]) == 1
        assert f"being written by promote (pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()  # as kill -9: the lock goes with the process
        holder.wait()
    assert promote.main(["--root", str(root), "--quiet"]) == 0
    served = verify_bundle(root / "models" / "production")

    holder = hold_models_directory(root / "models", "release deploy")
    try:
        capsys.readouterr()
        assert promote.main(["--root", str(root), "--quiet"]) == 1
        assert f"being written by release deploy (pid {holder.pid}" in capsys.readouterr().err
        status, _ = release_status(root, capsys)  # reading needs no lock
        assert status["aliases"] == {"production": "1"}
    finally:
        holder.kill()
        holder.wait()
    assert verify_bundle(root / "models" / "production") == served


def test_the_writer_lock_of_a_directory_shared_with_another_user_still_locks(tmp_path, monkeypatch):
    """A release store two users write (a shared group): the lock file the first made (0644 under umask 022) cannot
    be opened for writing by the second, who must still take the lock (an flock needs only a read descriptor)
    rather than fail with EACCES. Root may open any file, so that refusal is made here by hand."""
    shared = tmp_path / "store"
    with atomic.one_writer(shared, "release sync"):
        pass  # the lock file now exists
    opened = os.open

    def another_users_file(path, flags, *args):
        if Path(path).name == atomic.WRITER_LOCK and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", another_users_file)
    with atomic.one_writer(shared, "release promote"):
        pass
    holder = hold_models_directory(shared, "release deploy")  # the same lock, held by the first user
    try:
        with pytest.raises(atomic.DirectoryBusy, match="being written by release deploy"):
            with atomic.one_writer(shared, "release promote"):
                pass
    finally:
        holder.kill()
        holder.wait()
