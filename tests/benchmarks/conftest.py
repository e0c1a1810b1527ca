"""Fixtures for the benchmark scripts' tests: the modules under benchmarks/ and how to run the script."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
SCRIPT = BENCHMARKS_DIR / "engine_vs_torch.py"


def _benchmark_module(name: str):
    """benchmarks/ is a folder of scripts, not a package: import them as the scripts see each other."""
    if str(BENCHMARKS_DIR) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS_DIR))
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def common():
    return _benchmark_module("common")


@pytest.fixture(scope="session")
def bench():
    return _benchmark_module("engine_vs_torch")


@pytest.fixture(scope="session")
def hand_step():
    return _benchmark_module("e1_hand_step")


@pytest.fixture(scope="session")
def event_fsync():
    return _benchmark_module("event_fsync")


@pytest.fixture(scope="session")
def noise_floor():
    return _benchmark_module("noise_floor")


def engine_unavailable_reason() -> str | None:
    """Why the engine's public API cannot be used yet (None when it can)."""
    try:
        import engine as en
    except Exception as error:  # noqa: BLE001 - a half-built engine can fail to import with any error; it is reported
        return f"engine not importable: {type(error).__name__}: {error}"
    needed = ("Graph", "Session", "placeholder", "Variable", "gather", "concat", "matmul", "relu",
              "reduce_mean", "square", "global_variables_initializer", "train")
    missing = [name for name in needed if not hasattr(en, name)]
    if missing or not hasattr(getattr(en, "train", None), "AdamOptimizer"):
        return f"engine public API incomplete (missing: {', '.join(missing) or 'train.AdamOptimizer'})"
    return None


@pytest.fixture(scope="session")
def engine_api():
    reason = engine_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def run_script():
    """Run benchmarks/engine_vs_torch.py with arguments; returns (exit status, stdout, stderr)."""

    def run(*args: str, timeout: float = 600):
        done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO_ROOT, env=dict(os.environ))
        return done.returncode, done.stdout, done.stderr

    return run


@pytest.fixture(scope="session")
def json_lines():
    """The JSON objects a --json run printed, one per line."""
    return lambda stdout: [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
