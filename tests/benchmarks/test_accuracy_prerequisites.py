"""benchmarks/accuracy.py without what it needs (a fresh clone: no data/; no LightGBM): one line saying what to do,
before any training."""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.benchmarks.conftest import REPO_ROOT, _benchmark_module


@pytest.fixture(scope="module")
def accuracy():
    return _benchmark_module("accuracy")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("accuracy: error: ")
    return err


def test_no_data_says_to_run_the_data_stages(accuracy, tmp_path, capsys):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    assert accuracy.main(["--root", str(tmp_path), "--skip-lightgbm"]) == 1
    assert "dvc repro" in _one_error_line(capsys)


def test_no_params_file_is_one_line(accuracy, tmp_path, capsys):
    assert accuracy.main(["--root", str(tmp_path), "--skip-lightgbm"]) == 1
    assert "params.yaml" in _one_error_line(capsys)


def test_no_lightgbm_is_said_before_anything_runs(accuracy, tmp_path, capsys, monkeypatch):
    """Checked first: the import failed only after the engine's fits (minutes), in a traceback."""
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` raises ImportError
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    assert accuracy.main(["--root", str(tmp_path)]) == 1
    line = _one_error_line(capsys)
    assert "lightgbm==4.7.0" in line and "--skip-lightgbm" in line


@pytest.mark.parametrize("flag, value", [("--windows", "0"), ("--windows", "-2"), ("--threads", "0")])
def test_a_count_below_one_is_a_usage_error(accuracy, flag, value, capsys):
    """--windows 0 quietly became 1 window after minutes of training; --threads 0 was LightGBM's every core."""
    with pytest.raises(SystemExit) as ended:
        accuracy.main([flag, value, "--skip-lightgbm"])
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {flag} must be at least 1, got {value}")
