"""`make fetch-model` without MLFLOW_TRACKING_URI: the bundle already installed, verified, in one line.

Found by a probe: in a fresh clone (no models/production yet) the target's `python -c "...verify_bundle(...)"` was a
BundleError traceback (6 lines) before make's error; `make build-image` needs fetch-model, so it failed the same way.
The local case is now `python -m pipeline.registry_fetch --from local`: its one line, or `fetch-model: error: ...`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import project_with_make

REPO = Path(__file__).resolve().parents[3]


def make_fetch_model(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(["make", "--no-print-directory", "-s", "fetch-model"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_make_fetch_model_without_a_registry_names_the_local_bundle_or_its_absence(trained_project, tmp_path):
    from pipeline.bundle import verify_bundle

    root = project_with_make(tmp_path / "clone")
    done = make_fetch_model(root)
    told = [line for line in done.stderr.splitlines() if not line.startswith("make")]  # make: or make[1]: (CI)
    assert done.returncode != 0 and done.stdout == "", done.stderr
    assert told == ["fetch-model: error: models/production: no model bundle here (run the train stage, or promote "
                    "a model)"], done.stderr  # before: a BundleError traceback

    project, _ = trained_project
    shutil.copytree(project / "models" / "candidate", root / "models" / "production")
    done = make_fetch_model(root)
    digest = verify_bundle(root / "models" / "production")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == f"fetch-model: no MLFLOW_TRACKING_URI; local models/production {digest[:12]}\n"
