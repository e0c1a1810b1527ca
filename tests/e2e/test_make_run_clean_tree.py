"""`make run` on a fresh clone leaves `git status` as it found it, and the app names the run that made its model.

The whole default pipeline (the data stages, train, evaluate with its backtest windows, promote), then serving:
the committed dvc.lock and results/ must be what this machine's run writes, byte for byte, and nothing else may
appear for git. The session's environment stands in for `make venv` (`.venv` is linked to it, and the clone's
pyproject.toml is dated before its install stamp, so make does not reinstall), so this takes the pipeline's time
only: a few minutes on 2 cores. The README walkthrough (tests/e2e/test_readme.py, marker long) does the same
from scratch. The clone lies in a folder whose path has a space and a non-ASCII letter, as a user's may (`my
projects/shélfcast`): the Makefile's commands, DVC's stages, MLflow's store and file: artifact URIs and the
served bundle all take such a path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 25 * 60  # a loaded 2-core machine; about 3 min on a quiet one


def _readme_helpers():
    """fresh_clone, free_port, newcomer_environment, Background: tests/e2e/test_readme.py's, by path."""
    spec = importlib.util.spec_from_file_location("shelfcast_e2e_readme_helpers", Path(__file__).with_name(
        "test_readme.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True, check=True, timeout=120).stdout


def test_make_run_on_a_fresh_clone_leaves_git_status_empty(tmp_path):
    if not (Path(sys.prefix) / ".installed").is_file():
        pytest.skip(f"{sys.prefix} was not made by `make venv` (no .installed stamp): make would install anew")
    helpers = _readme_helpers()
    clone = helpers.fresh_clone(tmp_path / "my projects" / "shélfcast")
    (clone / ".venv").symlink_to(Path(sys.prefix))  # the environment this test runs in
    with open(clone / ".git" / "info" / "exclude", "a", encoding="utf-8") as exclude:
        exclude.write("/.venv\n")  # a link, which `.venv/` in .gitignore (a directory pattern) does not match
    os.utime(clone / "pyproject.toml", (0, 0))  # older than the stamp: `make run` does not reinstall (same bytes)
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""

    port = helpers.free_port()
    env = helpers.newcomer_environment(port, helpers.free_port())
    url = f"http://127.0.0.1:{port}"
    serving = helpers.Background("make run", clone, env, tmp_path / "make-run.log")
    try:
        seconds = serving.wait_until(f"{url}/readyz", RUN_TIMEOUT_S)
        print(f"make run on a fresh clone: serving after {seconds / 60:.1f} min")
        with urllib.request.urlopen(f"{url}/api/v1/model", timeout=30) as response:
            model = json.loads(response.read())
    finally:
        serving.interrupt()

    status = git(clone, "status", "--porcelain", "--untracked-files=all")
    assert status == "", (f"make run left the tree changed:\n{status}\n" + git(clone, "diff", "--stat")
                          + git(clone, "diff", "dvc.lock")[:4000])
    # The provenance git no longer holds: the served bundle names the training run, its commit and time.
    head = git(clone, "rev-parse", "HEAD").strip()
    assert model["git_commit"] == head and model["created"] and len(model["mlflow_run_id"]) == 32, model
    evaluation = json.loads((clone / "results" / "evaluation.json").read_text(encoding="utf-8"))
    assert model["version"] == evaluation["bundle_version"]
