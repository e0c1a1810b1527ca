"""The machines of the workflow test: a "GitHub repository" made from this working tree, and fresh clones
of it, each with a ready virtual environment, standing in for fresh runners.

The repository is a git repository holding the working tree's tracked and not-ignored files (so
uncommitted work is tested too), plus what the test commits on top (its small-scale params.yaml, its
DVC remote). ``clone`` is ``git clone`` of it: no .venv, data, models, MLflow store or DVC cache.
The clone's ``.venv`` is then seeded the way a runner's dependency cache would restore it: a venv of
this interpreter whose site-packages path file adds the clone itself and the test environment's
installed packages, its console scripts rewritten for it, and its ``.installed`` stamp newer than
pyproject.toml — so the workflow's own `make venv` step runs and finds nothing to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

from .conftest import tiny_bundle_module

GIT = ["git", "-c", "user.name=workflow-test", "-c", "user.email=workflow-test@localhost",
       "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def source_repository(working_tree: Path, path: Path) -> Path:
    """A git repository with the working tree's tracked and not-ignored files, committed on main."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=working_tree, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = working_tree / name
        if source.is_file() and not source.is_symlink():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    git(path, "init", "-q")
    commit(path, "the working tree")
    return path


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def clone(repository: Path, path: Path) -> Path:
    """A fresh runner's checkout (what actions/checkout leaves) with its dependency cache restored."""
    git(path.parent, "clone", "-q", str(repository), str(path))
    seed_venv(path)
    return path


def seed_venv(root: Path) -> None:
    venv = root / ".venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    installed = Path(sysconfig.get_paths()["purelib"])  # this test environment's packages
    (purelib / "shelfcast-runner.pth").write_text(f"{root}\n{installed}\n", encoding="utf-8")
    for script in Path(sys.executable).parent.iterdir():
        target = venv / "bin" / script.name
        if target.exists() or target.is_symlink() or not script.is_file():
            continue
        head = script.read_bytes()[:256]
        if head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]:
            body = script.read_text(encoding="utf-8").split("\n", 1)[1]
            target.write_text(f"#!{venv / 'bin' / 'python'}\n{body}", encoding="utf-8")
            target.chmod(0o755)
        else:
            target.symlink_to(script.resolve())  # native binaries (hadolint ...)
    (venv / ".installed").touch()


def small_scale(params: dict, **train) -> dict:
    """params.yaml at tests/app/tiny_bundle.py's scale (a whole pipeline in well under a minute), the gate at
    "at most 20 % worse than the baseline, with confidence" (a trained model passes, an untrained one fails)."""
    tiny = tiny_bundle_module().TINY_APP_PARAMS
    for section in ("data", "prepare", "split", "features", "train", "evaluate"):
        params[section] = json.loads(json.dumps(tiny[section]))
    params["evaluate"]["min_improvement"] = -0.2
    params["train"].update(train)
    return params


def set_params(repository: Path, message: str, **train) -> None:
    """Commit the small-scale params.yaml (with these train params) to the repository."""
    path = repository / "params.yaml"
    path.write_text(yaml.safe_dump(small_scale(yaml.safe_load(path.read_text(encoding="utf-8")), **train),
                                   sort_keys=False), encoding="utf-8")
    commit(repository, message)
