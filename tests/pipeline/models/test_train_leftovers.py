"""What an interrupted train leaves is bounded: its MLflow run is closed by the next train, its checkpoints go once
the candidate is in place (and stay for a resume until then)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import atomic, tracking, train

REPO = Path(__file__).resolve().parents[3]


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


@pytest.fixture
def quick_project(tiny_project, tiny_params, set_params):
    tiny_params["train"]["max_steps"] = 40
    set_params(tiny_project, tiny_params)
    return tiny_project


def test_a_train_marks_killed_the_runs_left_running_by_stage_processes_gone_from_this_host(quick_project):
    """A train killed with SIGKILL left its run RUNNING in MLflow for ever; so did an evaluate, its verdict tag on a
    run that never finished. Any stage's run closes them (a probe's evaluate, `kill -9`-ed, stayed RUNNING)."""
    host, dead = socket.gethostname(), _dead_pid()
    left = {}
    for case, tags in {"killed": {"stage": "train", tracking.PROCESS_TAG: f"{host}:{dead}"},
                       "live": {"stage": "train", tracking.PROCESS_TAG: f"{host}:{os.getpid()}"},
                       "other host": {"stage": "train", tracking.PROCESS_TAG: f"{host}-elsewhere:{dead}"},
                       "untagged": {"stage": "train"},
                       "evaluate": {"stage": "evaluate", tracking.VERDICT_TAG: "passed",
                                    tracking.PROCESS_TAG: f"{host}:{dead}"}}.items():
        left[case] = tracking.TrainingRun(quick_project, "train-mlp", tags).run_id  # never closed: RUNNING
    summary = train.run(quick_project, quiet=True)
    client = tracking.client(quick_project)
    status = {case: client.get_run(run_id).info.status for case, run_id in left.items()}
    assert status == {"killed": "KILLED", "live": "RUNNING", "other host": "RUNNING", "untagged": "RUNNING",
                      "evaluate": "KILLED"}
    run = client.get_run(summary["run_id"])
    assert run.data.tags[tracking.PROCESS_TAG] == f"{host}:{os.getpid()}" and run.info.status == "FINISHED"


def test_a_train_run_the_older_code_left_running_is_closed_after_an_upgrade(quick_project):
    """The code before 2026-12-05 tagged a train run with its process as ``train_process`` (now ``stage_process``):
    a train killed outright before an upgrade stayed RUNNING in MLflow for ever after it (an upgrade probe: the
    run of 907d910's `dvc repro -f -s train`, `kill -9`-ed, still RUNNING after the new code's train and promote).
    The next stage's run marks it KILLED; one of another host, or of a live process, is left as it is."""
    host, dead = socket.gethostname(), _dead_pid()
    client = tracking.client(quick_project)
    experiment_id = tracking.ensure_experiment(client, quick_project)
    left = {case: client.create_run(experiment_id, run_name="train-mlp",  # tagged as the older train tagged its run
                                    tags={"stage": "train", "train_process": owner}).info.run_id
            for case, owner in {"killed": f"{host}:{dead}", "live": f"{host}:{os.getpid()}",
                                "other host": f"{host}-elsewhere:{dead}"}.items()}
    with tracking.TrainingRun(quick_project, "evaluate", {"stage": "evaluate"}) as run:
        assert run.closed == [left["killed"]]
    status = {case: client.get_run(run_id).info.status for case, run_id in left.items()}
    assert status == {"killed": "KILLED", "live": "RUNNING", "other host": "RUNNING"}


@pytest.mark.slow  # a stage killed mid-way, 7-15 s on 2 cores: make test stays under 10 min
def test_an_evaluate_killed_outright_is_closed_by_the_next_stage_run(quick_project):
    """The process of an evaluate is killed (SIGKILL) while its run is open: the run, tagged with its verdict, stays
    RUNNING; the next stage that opens a run (here an evaluate's) marks it KILLED and says so."""
    code = ("import os, sys; from pipeline import tracking; "
            "run = tracking.TrainingRun(sys.argv[1], 'evaluate', "
            "{'stage': 'evaluate', tracking.VERDICT_TAG: 'passed'}); "
            "print(run.run_id, flush=True); os.kill(os.getpid(), 9)")
    done = subprocess.run([sys.executable, "-c", code, str(quick_project)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == -9, done.stderr
    killed = done.stdout.split()[0]
    client = tracking.client(quick_project)
    assert client.get_run(killed).info.status == "RUNNING"
    with tracking.TrainingRun(quick_project, "evaluate", {"stage": "evaluate"}) as run:
        assert run.closed == [killed]
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(killed).data.tags[tracking.VERDICT_TAG] == "passed"  # what it had recorded stays


class Killed(BaseException):
    """Stands for a SIGKILL at that point: nothing after it runs."""


def _kill_at(monkeypatch, name: str) -> None:
    def killed(*args, **kwargs):
        raise Killed(name)

    monkeypatch.setattr(train, name, killed)


def test_checkpoints_go_once_the_candidate_is_in_place(quick_project, monkeypatch):
    """Killed after the swap, a train left models/checkpoints/ for ever (DVC does not rerun a train whose candidate
    is the one dvc.lock records): they went only once the bundle had been loaded back and logged to MLflow. Those
    steps now come before the swap (the run is FINISHED first: see the test below), and the checkpoints' removal is
    the one step after it."""
    steps = []
    real_swap, real_remove = atomic.swap_in_directory, train._remove_resume_state

    def swap(staging, target):
        real_swap(staging, target)
        steps.append(f"swap {Path(target).name}")

    def recorded(name, real):
        def step(*args, **kwargs):
            steps.append(name)
            return real(*args, **kwargs)
        return step

    monkeypatch.setattr(atomic, "swap_in_directory", swap)
    monkeypatch.setattr(train, "_remove_resume_state", recorded("remove checkpoints", real_remove))
    for name in ("log_metrics", "set_tags", "log_bundle", "finish"):
        monkeypatch.setattr(tracking.TrainingRun, name, recorded(name, getattr(tracking.TrainingRun, name)))
    train.run(quick_project, quiet=True)
    swapped = steps.index("swap candidate")
    assert steps[swapped:] == ["swap candidate", "remove checkpoints"]
    assert steps[swapped - 2:swapped] == ["log_bundle", "finish"]
    assert not (quick_project / train.CHECKPOINT_DIR).parent.exists()


# A train process that SIGKILLs itself as its candidate is swapped in: just before, or just after
KILLED_AT_THE_SWAP = """
import os, signal, sys
from pathlib import Path
from pipeline import atomic, train

candidate, when = (Path(sys.argv[1]) / train.CANDIDATE_DIR).resolve(), sys.argv[2]
swap = atomic.swap_in_directory

def swap_and_die(staging, target):
    if Path(target).resolve() == candidate and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    swap(staging, target)
    if Path(target).resolve() == candidate:
        os.kill(os.getpid(), signal.SIGKILL)

atomic.swap_in_directory = swap_and_die
sys.exit(train.main(["--root", sys.argv[1], "--quiet"]))
"""


@pytest.mark.slow  # a stage killed mid-way, 7-15 s on 2 cores: make test stays under 10 min
@pytest.mark.parametrize("when", ["after", "before"])
def test_a_train_killed_at_its_candidates_swap_leaves_the_candidate_findable_by_promote(quick_project, when):
    """Found by a probe: SIGKILL just after the candidate was swapped in, and before its MLflow run had the
    bundle_digest tag and was FINISHED, left a model in models/candidate that no run was known to have made. DVC
    does not rerun a train whose candidate is the one dvc.lock records (a deterministic retrain of committed
    inputs), so evaluate then logged nothing ('no finished MLflow training run ... made bundle') and promote
    refused ('no finished MLflow training run ... is tagged with the candidate's bundle digest') until a forced
    retrain. The candidate is now swapped in last, once its run is FINISHED: killed after the swap, its run is
    found as it is; killed before it, the rerun DVC then makes resumes the checkpoint to the same candidate."""
    from pipeline import promote
    from pipeline.bundle import verify_bundle

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", KILLED_AT_THE_SWAP, str(quick_project), when], cwd=quick_project,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    candidate = quick_project / train.CANDIDATE_DIR
    client = tracking.client(quick_project)
    if when == "after":  # DVC sees nothing to do: evaluate and promote look the candidate's run up as it is
        digest = verify_bundle(candidate)
        run = promote.training_run(quick_project, digest)
        assert run.info.status == "FINISHED"
        assert client.list_artifacts(run.info.run_id, tracking.BUNDLE_ARTIFACT_PATH)  # the bundle is logged
    else:  # no candidate: DVC reruns train, which resumes the checkpoint the killed one left
        assert not candidate.exists()
        assert (quick_project / train.CHECKPOINT_DIR / "state.json").is_file()
    summary = train.run(quick_project, quiet=True)
    digest = verify_bundle(candidate)
    assert summary["digest"] == digest
    run = promote.training_run(quick_project, digest)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.BUNDLE_DIGEST_TAG] == digest
    runs = client.search_runs([run.info.experiment_id], "tags.stage = 'train'")
    assert len(runs) == 2 and "RUNNING" not in {r.info.status for r in runs}
    if when == "after":  # the killed train's run is as complete as the rerun's
        assert all(r.info.status == "FINISHED" and r.data.tags.get(tracking.BUNDLE_DIGEST_TAG) == digest
                   for r in runs)
    else:  # the rerun resumed the killed train's checkpoint, and says so
        killed = next(r for r in runs if r.info.run_id != summary["run_id"])
        assert client.get_run(summary["run_id"]).data.tags[train.RESUMED_FROM_TAG] == killed.info.run_id
    assert not (quick_project / train.CHECKPOINT_DIR).parent.exists()


@pytest.mark.slow  # a stage killed mid-way, 7-15 s on 2 cores: make test stays under 10 min
def test_checkpoints_stay_for_a_resume_until_the_candidate_is_in_place(quick_project, monkeypatch):
    _kill_at(monkeypatch, "write_bundle")
    with pytest.raises(Killed):
        train.run(quick_project, quiet=True)
    assert not (quick_project / train.CANDIDATE_DIR).exists()
    assert (quick_project / train.CHECKPOINT_DIR / "state.json").is_file()


@pytest.mark.slow  # a stage killed mid-way, 7-15 s on 2 cores: make test stays under 10 min
def test_a_kill_while_the_checkpoints_are_deleted_leaves_them_whole_or_gone(quick_project, monkeypatch, capsys):
    """The checkpoints were deleted file by file: a probe's SIGKILL mid-delete left best-3500.json without its
    .npz, and the next train said the checkpoint 'cannot be resumed (... does not exist)' and trained again."""
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        if path.name.startswith(".train.old-") and files:
            files[0].unlink()  # one file deleted, then the process dies
            raise Killed(str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", killed_midway)
    with pytest.raises(Killed):
        train.run(quick_project, quiet=True)
    monkeypatch.undo()
    checkpoints = quick_project / train.CHECKPOINT_DIR
    assert not checkpoints.exists()  # gone as a whole: what is half deleted is the copy renamed aside
    assert [p.name for p in checkpoints.parent.iterdir()] == [f".train.old-{os.getpid()}"]
    capsys.readouterr()
    train.run(quick_project)
    printed = capsys.readouterr()
    assert "cannot be resumed" not in printed.out + printed.err
    assert not checkpoints.parent.exists()  # the aside copy went with the next removal


def test_remove_directory_leaves_a_symbolic_link_and_removes_a_dead_process_copy(tmp_path):
    target, elsewhere = tmp_path / "train", tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "f").write_text("x")
    target.symlink_to(elsewhere)
    atomic.remove_directory(target)
    assert target.is_symlink() and (elsewhere / "sub" / "f").exists()
    target.unlink()
    dead = tmp_path / f".train.old-{_dead_pid()}"
    dead.mkdir()
    (dead / "last-10.npz").write_bytes(b"x")
    atomic.remove_directory(target)  # nothing to remove but the copy a killed process renamed aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


@pytest.mark.parametrize("linked", ["models/checkpoints", "models/checkpoints/train"])
def test_checkpoints_on_another_disk_are_emptied_and_the_link_stays(quick_project, tmp_path, linked):
    """Found by a probe: with models/checkpoints a symbolic link (or a mount point) every train failed after writing
    its candidate ('Not a directory', 'Device or resource busy': the parent's rmdir, the rename aside), and with
    models/checkpoints/train a link its checkpoints were never deleted."""
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    link = quick_project / linked
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    summary = train.run(quick_project, quiet=True)
    assert (quick_project / "models" / "candidate" / "bundle.json").is_file() and summary["digest"]
    assert link.is_symlink() and elsewhere.is_dir()
    assert not any((quick_project / train.CHECKPOINT_DIR).iterdir()) if linked.endswith("train") else \
        not (quick_project / train.CHECKPOINT_DIR).exists()


@pytest.mark.slow  # a stage killed mid-way, 7-15 s on 2 cores: make test stays under 10 min
def test_a_train_started_while_another_trains_the_project_fails_at_once_naming_it(quick_project, monkeypatch, capsys):
    """`dvc repro` killed with SIGKILL leaves its train running, orphaned; the rerun trained beside it in the same
    checkpoint folder: each deleted the other's staged files and checkpoints, and one of them failed with a bare
    `[Errno 2] No such file or directory: .../last-25.npz-d715d25dfd4e2fa4 -> ...` (8 of 8 such pairs)."""
    _kill_at(monkeypatch, "write_bundle")  # leaves a checkpoint to resume, as the orphan's would be
    with pytest.raises(Killed):
        train.run(quick_project, quiet=True)
    monkeypatch.undo()
    checkpoints = quick_project / train.CHECKPOINT_DIR
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    capsys.readouterr()
    with train.one_train(quick_project):  # the orphaned train, still at work
        assert train.main(["--root", str(quick_project), "--quiet"]) == 1
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", f"train: error: another train is running in {quick_project}: run train "
                                              "again once it has finished\n")
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before  # nothing touched
    assert not (quick_project / train.CANDIDATE_DIR).exists()
    assert train.main(["--root", str(quick_project), "--quiet"]) == 0  # once it has finished, the rerun resumes
    assert not checkpoints.exists()


def test_train_and_the_models_writers_take_the_one_lock_of_pipeline_atomic(tmp_path):
    """train's lock repeated one_writer's flock lines (pipeline/train.py one_train): both now hold it through
    atomic.held_exclusively, the only flock in pipeline/, which fails at once with the caller's message and closes
    the descriptor however the block ends."""
    callers = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "pipeline").glob("*.py")
                     if "fcntl.flock(" in path.read_text(encoding="utf-8"))
    assert callers == ["pipeline/atomic.py"]
    held = os.open(tmp_path, os.O_RDONLY)
    with atomic.held_exclusively(held, lambda fd: "unused"):
        second = os.open(tmp_path, os.O_RDONLY)  # another open file description: flock sees another holder
        with pytest.raises(atomic.DirectoryBusy, match=f"^busy, told by descriptor {second}$"):
            with atomic.held_exclusively(second, lambda fd: f"busy, told by descriptor {fd}"):
                pass
        with pytest.raises(OSError):
            os.fstat(second)  # closed, though it never held the lock
    with pytest.raises(OSError):
        os.fstat(held)
    with train.one_train(tmp_path), atomic.one_writer(tmp_path, "promote"):  # two locks, two files: no conflict
        with pytest.raises(atomic.DirectoryBusy, match=f"^another train is running in {tmp_path}: run train again"):
            with train.one_train(tmp_path):
                pass


@pytest.mark.slow  # a stage killed mid-way, 7-15 s on 2 cores: make test stays under 10 min
def test_a_kill_while_checkpoints_on_another_disk_are_emptied_leaves_nothing_said_to_be_damaged(quick_project, tmp_path,
                                                                                               monkeypatch, capsys):
    """Found by a probe: a checkpoint folder that is a link (or a mount point) is emptied file by file, not renamed
    aside, and a kill in the middle left state.json naming checkpoints already deleted: the next train said the
    checkpoint 'cannot be resumed (... unreadable checkpoint manifest ...)' and trained again. The state goes first
    now, so what a kill leaves is no checkpoint at all (gone, as a renamed-aside folder is)."""
    from pipeline import models

    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    link = quick_project / train.CHECKPOINT_DIR
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    real_clear, real_unlink, real_iterdir = models.clear_checkpoints, Path.unlink, Path.iterdir

    def killed_midway(directory):
        def unlink(path, missing_ok=False):
            real_unlink(path, missing_ok=missing_ok)
            if path.name != models.STATE_FILE:  # a checkpoint's file deleted, then the process dies
                raise Killed(str(path))

        monkeypatch.setattr(Path, "unlink", unlink)
        # listed by name, as a file system may list them (the order is its own): state.json after the checkpoints
        monkeypatch.setattr(Path, "iterdir", lambda path: iter(sorted(real_iterdir(path))))
        try:
            real_clear(directory)
        finally:
            monkeypatch.setattr(Path, "unlink", real_unlink)
            monkeypatch.setattr(Path, "iterdir", real_iterdir)

    monkeypatch.setattr(models, "clear_checkpoints", killed_midway)
    with pytest.raises(Killed):
        train.run(quick_project, quiet=True)
    monkeypatch.undo()
    assert link.is_symlink() and any(elsewhere.iterdir()), sorted(p.name for p in elsewhere.iterdir())  # some left
    capsys.readouterr()
    train.run(quick_project)
    printed = capsys.readouterr()
    assert "cannot be resumed" not in printed.out + printed.err
    assert link.is_symlink() and not any(elsewhere.iterdir())
