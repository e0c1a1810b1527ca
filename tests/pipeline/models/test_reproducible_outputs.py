"""`make run` leaves git as it found it: the same inputs give byte-identical tracked outputs, run after run.

dvc.lock records the hash of models/candidate and git holds results/, so neither may depend on when,
from which commit, in which process or as which MLflow run the pipeline ran: that provenance lives in
MLflow (found by the bundle digest) and in the git-ignored production bundle. A timestamp, run id or
commit put back into the bundle or the evaluation, or training that is not deterministic for its seed
(across processes too: another PYTHONHASHSEED reorders sets of strings), fails these tests.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import evaluate, promote, tracking, train

from .conftest import TINY_PARAMS, write_params, write_tiny_project

REPO = Path(__file__).resolve().parents[3]


def tracked_outputs(root: Path) -> dict[str, bytes]:
    """models/candidate (hashed into dvc.lock) and results/ (committed): every file's bytes by path."""
    files = [p for base in ("models/candidate", "results") for p in sorted((root / base).rglob("*")) if p.is_file()]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def first_difference(name: str, a: bytes, b: bytes) -> str:
    try:
        lines = difflib.unified_diff(a.decode().splitlines(), b.decode().splitlines(), lineterm="", n=0)
        return f"{name}:\n" + "\n".join(list(lines)[:12])
    except UnicodeDecodeError:
        return f"{name}: binary, {len(a)} vs {len(b)} bytes"


def test_train_and_evaluate_in_another_process_give_byte_identical_outputs(trained_project, tmp_path):
    root, _ = trained_project  # trained in this process
    evaluate.run(root, quiet=True)
    other = write_tiny_project(tmp_path / "other")  # the same data, params and code; a process of its own
    write_params(other, TINY_PARAMS)
    script = ("import sys; from pathlib import Path; from pipeline import evaluate, train; "
              "root = Path(sys.argv[1]); train.run(root, quiet=True); evaluate.run(root, quiet=True)")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run([sys.executable, "-c", script, str(other)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = tracked_outputs(root), tracked_outputs(other)
    assert sorted(first) == sorted(second)
    differ = [first_difference(name, first[name], second[name]) for name in first if first[name] != second[name]]
    assert not differ, "\n".join(differ)
    # two runs, one bundle: each run is in its own store, and says which bundle it made
    digest = json.loads(first["results/evaluation.json"])["bundle_digest"]
    runs = {tracking.run_of_bundle(project, digest).info.run_id for project in (root, other)}
    assert len(runs) == 2


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_retrain_evaluate_and_promote_leave_the_git_tree_as_they_found_it(trained_project):
    """As in a clone of the repository: its .gitignore, DVC without a remote, results/ committed."""
    root, _ = trained_project
    shutil.copy2(REPO / ".gitignore", root / ".gitignore")
    _git(root, "init", "-q")
    assert promote._dvc(root, "init", "-q").returncode == 0
    evaluate.run(root, quiet=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "the reference run's results")
    assert "results/evaluation.json" in _git(root, "ls-files")

    train.run(root, quiet=True)  # a new MLflow run, the same bundle
    evaluate.run(root, quiet=True)
    summary = promote.run(root, quiet=True)
    assert summary["installed"] and "no DVC remote configured" in summary["dvc"]
    assert _git(root, "status", "--porcelain", "--untracked-files=all") == ""
