"""The training run's git_commit tag (pipeline.versions.git_commit): where git refuses, the reason is said."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.versions import git_commit

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]


def a_clone(path: Path) -> Path:
    subprocess.run([*GIT, "init", "-q", str(path)], check=True)
    (path / "params.yaml").write_text("a: 1\n", encoding="utf-8")
    subprocess.run([*GIT, "add", "params.yaml"], cwd=path, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "one"], cwd=path, check=True)
    return path


def test_a_clone_gives_its_head(tmp_path):
    root = a_clone(tmp_path / "clone")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert git_commit(root) == head
    (root / "params.yaml").write_text("a: 2\n", encoding="utf-8")
    assert git_commit(root) == f"{head}-dirty"


def test_outside_git_it_is_unknown_without_a_word(tmp_path, capsys):
    assert git_commit(tmp_path) == "unknown"
    assert capsys.readouterr().err == ""


def test_a_repository_without_commits_is_unknown_and_says_why(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(tmp_path) == "unknown"
    err = capsys.readouterr().err
    assert err.startswith(f"note: git_commit is 'unknown': `git rev-parse HEAD` failed in {tmp_path}: ")
    assert err.count("\n") == 1 and "HEAD" in err.split(": ", 3)[-1]


def test_a_clone_another_user_owns_is_unknown_and_names_gits_refusal(tmp_path, capsys):
    """CI containers run as root over the runner's checkout: git refuses it ("dubious ownership"), and the
    training run's git_commit (and the served model's) was 'unknown' with nothing said."""
    if os.geteuid() != 0 or shutil.which("chown") is None:
        pytest.skip("needs root, to give the clone to another user")
    root = a_clone(tmp_path / "clone")
    subprocess.run(["chown", "-R", "65534:65534", str(root)], check=True)
    assert git_commit(root) == "unknown"
    err = capsys.readouterr().err
    assert err.startswith(f"note: git_commit is 'unknown': `git rev-parse HEAD` failed in {root}: ")
    assert "dubious ownership" in err and "safe.directory" in err and err.count("\n") == 1
