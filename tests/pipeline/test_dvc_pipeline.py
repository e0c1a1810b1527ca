"""The data stages under the real dvc CLI, in a temporary copy of the repository at a tiny scale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, tiny_params

DATA_STAGES = ("download", "prepare", "split")
DVC = Path(sys.executable).with_name("dvc")


def _run(args, cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _stages_run(output: str) -> list[str]:
    return [stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output]


def _set_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if not DVC.exists():
        pytest.fail(f"dvc CLI not found next to {sys.executable}")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {name: pipeline["stages"][name] for name in DATA_STAGES}  # later stages are not ours
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n__pycache__/\n")
    _run(["git", "init", "-q"], repo)
    _run([DVC, "init", "-q"], repo)
    return repo


def test_repro_is_incremental_and_param_changes_rerun_exactly_their_stages(repo):
    first = _run([DVC, "repro"], repo)
    assert _stages_run(first) == list(DATA_STAGES)
    for path in ("data/raw/train.csv.gz", "data/prepared/sales.parquet", "data/split/train.parquet",
                 "data/split/validation.parquet"):
        assert (repo / path).exists(), path

    again = _run([DVC, "repro"], repo)
    assert _stages_run(again) == []

    _set_params(repo, lambda p: p["split"].update(validation_days=10))
    assert _stages_run(_run([DVC, "repro"], repo)) == ["split"]

    _set_params(repo, lambda p: p["prepare"].update(grid="full"))
    assert _stages_run(_run([DVC, "repro"], repo)) == ["prepare", "split"]

    _set_params(repo, lambda p: p["data"]["synthetic"].update(seed=99))
    assert _stages_run(_run([DVC, "repro"], repo)) == list(DATA_STAGES)

    status = _run([DVC, "status"], repo)
    assert "up to date" in status
    dag = _run([DVC, "dag"], repo)
    for stage in DATA_STAGES:
        assert stage in dag
