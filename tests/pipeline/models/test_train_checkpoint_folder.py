"""A checkpoint folder train cannot write is refused before training, not at its first checkpoint."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline import tracking, train


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` unwritable for this process for the block: mode 0555, or for root (whom modes do not stop) the
    immutable attribute (chattr +i), skipped where the file system or the container does not allow it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root, and chattr +i is not available here: no folder is read-only to root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("read_only", ["models/checkpoints/train", "models/checkpoints"])
def test_a_checkpoint_folder_train_cannot_write_is_one_line_before_training(tiny_project, capsys, read_only):
    """Found by review: a read-only models/checkpoints/train failed train at its first checkpoint, after the data were
    loaded, the MLflow run opened and ~12 steps trained. Now the folder (or the one it is to be made in) is tried with
    a file written as checkpoints are, before anything else: one line naming it and the fix, no MLflow run."""
    folder = tiny_project / read_only
    folder.mkdir(parents=True)
    with _read_only(folder):
        assert train.main(["--root", str(tiny_project), "--quiet"]) == 1
    printed = capsys.readouterr()
    checkpoints = re.escape(str(tiny_project / train.CHECKPOINT_DIR))
    made = "" if read_only.endswith("train") else f" \\(they go in {checkpoints}, made there\\)"
    assert printed.out == ""
    assert re.fullmatch(rf"train: error: {re.escape(str(folder))}: train's checkpoints cannot be written there{made}: "
                        r"(Permission denied|Operation not permitted); make it writable by this user \(or link it to "
                        r"a writable folder\), then run train again\n", printed.err), printed.err
    assert not tracking.client(tiny_project).search_runs(
        [e.experiment_id for e in tracking.client(tiny_project).search_experiments()])
    assert [p.name for p in folder.iterdir()] == []  # the probe is gone: nothing was written
    assert train.main(["--root", str(tiny_project), "--quiet"]) == 0  # writable again: train runs



def test_a_disk_without_room_for_checkpoints_is_one_line_before_training(tiny_project):
    """Found by review (the last note left it alone): the probe was an empty file, which a full disk still takes (it
    needs no block), so train loaded the data, opened its MLflow run and failed there ("disk I/O error"). The probe
    is 1 MiB now; every file train writes is capped below that (the kernel refuses the write, EFBIG, as a full disk
    refuses one, ENOSPC, without root to mount a small disk): one line naming the folder and the fix, no MLflow
    store made."""
    import resource
    import signal
    import sys

    from pipeline.atomic import WRITABLE_PROBE_BYTES

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (WRITABLE_PROBE_BYTES // 2,) * 2)

    repo = Path(train.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pipeline.train", "--root", str(tiny_project), "--quiet"],
                          capture_output=True, text=True, timeout=300, preexec_fn=cap,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr == (f"train: error: {tiny_project}: train's checkpoints cannot be written there (they go in "
                           f"{tiny_project / train.CHECKPOINT_DIR}, made there): File too large; free space on its "
                           "disk (or link it to a folder on another), then run train again\n"), done.stderr
    assert not (tiny_project / "mlflow.db").exists() and not (tiny_project / "mlruns").exists()
    assert not list(tiny_project.glob(".writable-probe*"))  # the refused probe is not left behind


@pytest.mark.parametrize("link", [False, True])
def test_a_file_where_the_checkpoints_folder_goes_is_one_line_before_training(tiny_project, capsys, link):
    """Found by review: the check walked up to the first folder and wrote its probe there, so a file (or a link to
    nothing) at models/checkpoints passed, and train failed after loading the data and opening its MLflow run:
    `models/checkpoints/train: Not a directory`. It is refused first, in one line naming it and the fix. (A file at
    models/checkpoints/train itself is not refused: train deletes it, as it clears any checkpoint folder.)"""
    blocker = tiny_project / "models/checkpoints"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    if link:
        blocker.symlink_to(tiny_project / "nowhere")
    else:
        blocker.write_text("not a folder\n", encoding="utf-8")
    assert train.main(["--root", str(tiny_project), "--quiet"]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (f"train: error: {blocker}: train's checkpoints cannot be written there (they go in "
                           f"{tiny_project / train.CHECKPOINT_DIR}, made there): it is "
                           f"{'a link to nothing' if link else 'a file'}, not a folder; move it away (or link it to a "
                           "writable folder), then run train again\n"), printed.err
    assert not tracking.client(tiny_project).search_runs(
        [e.experiment_id for e in tracking.client(tiny_project).search_experiments()])
    blocker.unlink()
    assert train.main(["--root", str(tiny_project), "--quiet"]) == 0  # moved away: train runs


def test_a_bundle_file_past_a_file_size_limit_is_named_not_only_its_folder(tmp_path):
    """Past the checkpoint probe, the candidate's files are written whole into a staging folder; a write refused for
    want of room (a file size limit's EFBIG, a full disk's ENOSPC) names no file, and train said only
    `models/candidate: File too large`. 4,800 series make history.npz 1.5 MB, every other file under 1 MiB: capped at
    1.2 MB, the line names history.npz, and no candidate nor staging copy is left."""
    import resource
    import signal
    import sys

    from .conftest import TINY_PARAMS, write_params, write_tiny_project

    root = write_tiny_project(tmp_path / "project", items=2400)
    write_params(root, TINY_PARAMS)

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_200_000,) * 2)

    repo = Path(train.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pipeline.train", "--root", str(root), "--quiet"],
                          capture_output=True, text=True, timeout=300, preexec_fn=cap,
                          env=dict(os.environ, PYTHONPATH=str(repo)))
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(rf"train: error: {re.escape(str(root / train.CANDIDATE_DIR / 'history.npz'))}: File too large "
                        rf"\(while writing {re.escape(str(root / 'models'))}/\.candidate\.[^/]+\.tmp/history\.npz\)\n",
                        done.stderr), done.stderr
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoints"]  # its checkpoint is kept to resume
