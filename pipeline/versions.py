"""Code and data versions: what train records in the bundle, evaluate records next to its verdict, and promote checks.

A candidate may be promoted only for the data, code and params it was
evaluated on; these hashes are how promote tells. They are facts about the
inputs, never about the run (no time, no git commit, no run id): the tracked
outputs that record them (models/candidate via dvc.lock, results/) come out
byte-identical from every run of the same inputs, so `make run` leaves git
as it found it. The run's own provenance lives in MLflow (pipeline/tracking.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.atomic import file_digest
from pipeline.url_credentials import shown_url

# The source stage's record of the data source in effect and its files' digests (pipeline/source.py).
SOURCE_FINGERPRINT_PATH = Path("data/source.json")

# The code a model and its evaluation depend on: exactly the train + evaluate deps in dvc.yaml,
# so that any change here reruns evaluate (and a promote never waits on an evaluation DVC would not rerun).
MODEL_CODE = ("engine", "pipeline/features.py", "pipeline/history.py", "pipeline/examples.py",
              "pipeline/feature_shards.py", "pipeline/cluster.py", "pipeline/models.py", "pipeline/bundle.py",
              "pipeline/blas.py", "pipeline/train.py", "pipeline/evaluate.py", "pipeline/backtest.py",
              "pipeline/metrics.py", "pipeline/model_params.py", "pipeline/drift_stats.py", "pipeline/closed_days.py",
              "pipeline/tracking.py", "pipeline/url_credentials.py",
              "pipeline/versions.py", "pipeline/params.py", "pipeline/names.py", "pipeline/io.py", "pipeline/atomic.py",
              "pipeline/stage.py", "pipeline/__init__.py")


# The code a training example is computed by: a feature shard built by other code is built again
EXAMPLE_CODE = ("pipeline/features.py", "pipeline/history.py", "pipeline/examples.py", "pipeline/feature_shards.py")


def data_version(root: Path, relative_paths: Iterable[str]) -> dict[str, str]:
    """md5 of each input file, keyed by its path relative to the project."""
    out = {}
    for rel in relative_paths:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run the data stages first: dvc repro)")
        out[rel] = file_digest(path, "md5")
    return out


PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def code_version(root: Path | None = None, entries: Iterable[str] = MODEL_CODE) -> str:
    """sha256 over the model code (MODEL_CODE, or the given part of it) that is running, independent of git state."""
    root = PACKAGE_ROOT if root is None else Path(root)
    digest = hashlib.sha256()
    for entry in entries:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()


# What else decides a trained model's bits besides code, data and params: the numerical libraries and the BLAS
# kernels (pipeline/blas.py). Not a bundle fact (a bundle is judged by its data, code and params), but a
# checkpoint's: a train resumed under other libraries would be neither the old run's model nor the new one's.
RUNTIME_PACKAGES = ("numpy", "numba")


def runtime_version() -> dict[str, str]:
    """The Python, numerical libraries and BLAS kernels this process trains with (a checkpoint's identity). The
    kernels are those OpenBLAS runs (pipeline/blas.py kernels_in_use), not OPENBLAS_CORETYPE's text: ``haswell``,
    ``Zen`` and an unset variable pinned to ``Haswell`` run the same kernels (a resume was refused for it), and
    ``Skylake``, a name OpenBLAS does not know, runs the kernels the CPU picks, which differ between machines.
    Thread counts are no part of it: the model's bits do not depend on them (README "Configuration")."""
    from pipeline.blas import kernels_in_use  # here, not at the top: importing pipeline.blas pins the kernels, which
    # a process that only reads versions (promote, the app) has no reason to do

    versions = {"python": platform.python_version(), "blas_kernels": kernels_in_use()}
    for package in RUNTIME_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = ""
    return versions


def params_version(params: Mapping) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def bundle_version(model_kind: str, code: str, data: Mapping[str, str], params: Mapping) -> str:
    """``<model kind>-<12 hex>``: the same for every bundle trained from the same code, data and params
    (training is deterministic for a seed), different when any of them differs."""
    facts = {"code_version": code, "data_version": dict(data), "params_version": params_version(params)}
    return f"{model_kind}-{params_version(facts)[:12]}"


def git_commit(root: Path) -> str:
    """HEAD's commit, with ``-dirty`` when the work tree differs; ``unknown`` outside git.

    Run provenance: an MLflow tag of the training run, never part of a tracked output. In a clone where git
    refuses (a checkout another user owns: "detected dubious ownership", as in CI containers that run as root over
    the runner's checkout; a repository without commits) it is ``unknown`` too, and git's reason is one line on
    stderr: it was lost silently, and the served model said ``git_commit: unknown``.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            if (Path(root) / ".git").exists():
                print(f"note: git_commit is 'unknown': `git rev-parse HEAD` failed in {Path(root).absolute()}: "
                      f"{' '.join(head.stderr.split())}", file=sys.stderr)
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=20)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def shown_source(root: Path) -> str:
    """The source the data stages last read (``data/source.json``) as it may be recorded and shown: a URL without
    its user, password, query or fragment (they may hold a token); "unknown" before the source stage ran."""
    try:
        source = str(json.loads((Path(root) / SOURCE_FINGERPRINT_PATH).read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    return shown_url(source)
