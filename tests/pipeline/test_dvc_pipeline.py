"""The data stages under the real dvc CLI, in a temporary copy of the repository at a tiny scale."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import REPO, tiny_params, write_kaggle_sample

DATA_STAGES = ("download", "prepare", "split")
STAGES = ("source",) + DATA_STAGES  # source runs on every repro (always_changed); it is cheap
DVC = Path(sys.executable).with_name("dvc")


def _run(args, cwd: Path, **env_extra: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost", **env_extra)
    env.pop("SHELFCAST_DATA_SOURCE", None) if "SHELFCAST_DATA_SOURCE" not in env_extra else None
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
    pipeline["stages"] = {name: pipeline["stages"][name] for name in STAGES}  # later stages are not ours
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n__pycache__/\n")
    _run(["git", "init", "-q"], repo)
    _run([DVC, "init", "-q"], repo)
    return repo


@pytest.mark.slow  # end to end, 20-70 s: make test stays well under its 10 minutes
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
    assert "always changed" in status and "download" not in status  # only the source fingerprint is rechecked
    dag = _run([DVC, "dag"], repo)
    for stage in DATA_STAGES:
        assert stage in dag


def _own_data(repo: Path, name: str = "own") -> Path:
    return write_kaggle_sample(repo.parent / name, compress=("train",))


@pytest.mark.slow  # two real dvc repros, 22 s: make test stays under 10 min
def test_new_content_in_the_source_directory_reruns_download(repo):
    """The source is outside the project: its content fingerprint (data/source.json) is what DVC compares."""
    source = _own_data(repo)
    _set_params(repo, lambda p: p["data"].update(source=str(source)))
    assert _stages_run(_run([DVC, "repro"], repo)) == list(DATA_STAGES)
    assert _stages_run(_run([DVC, "repro"], repo)) == []

    os.utime(source / "items.csv")  # touched, same bytes: nothing to redo
    assert _stages_run(_run([DVC, "repro"], repo)) == []

    train = source / "train.csv.gz"
    text = gzip.decompress(train.read_bytes()).decode()
    last = text.splitlines()[-1].split(",")
    extra = ",".join([str(int(last[0]) + 1), "2014-04-21"] + last[2:]) + "\n"
    train.write_bytes(gzip.compress((text + extra).encode()))  # one more day of sales
    assert _stages_run(_run([DVC, "repro"], repo)) == list(DATA_STAGES)
    assert str(pd.read_parquet(repo / "data/split/validation.parquet")["date"].max().date()) == "2014-04-21"


@pytest.mark.slow
def test_source_from_the_environment_without_editing_params(repo):
    _run([DVC, "repro"], repo)  # synthetic, from params.yaml
    source = _own_data(repo)
    output = _run([DVC, "repro"], repo, SHELFCAST_DATA_SOURCE=str(source))
    assert _stages_run(output) == list(DATA_STAGES)
    assert "(from $SHELFCAST_DATA_SOURCE)" in output
    assert json.loads((repo / "data/source.json").read_text())["source"] == str(source)
    assert (repo / "data/raw/train.csv.gz").read_bytes() == (source / "train.csv.gz").read_bytes()
    assert _stages_run(_run([DVC, "repro"], repo, SHELFCAST_DATA_SOURCE=str(source))) == []
    _run([DVC, "repro"], repo)  # unset: back to params.yaml's (DVC may restore it from its run cache)
    assert json.loads((repo / "data/source.json").read_text())["source"] == "synthetic"
    assert (repo / "data/raw/train.csv.gz").read_bytes() != (source / "train.csv.gz").read_bytes()


@pytest.mark.slow
def test_dvc_exp_run_set_param_chooses_the_source(repo):
    source = _own_data(repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "tiny project"], repo)
    output = _run([DVC, "exp", "run", "-S", f"data.source={source}"], repo)
    assert _stages_run(output) == list(DATA_STAGES)
    assert (repo / "data/raw/items.csv").read_bytes() == (source / "items.csv").read_bytes()
    assert yaml.safe_load((repo / "params.yaml").read_text())["data"]["source"] == str(source)


@pytest.fixture
def served_data(repo):
    """The tiny sample served over HTTP by a plain file server (HEAD gives Last-Modified and Content-Length)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(_own_data(repo, "served"))))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # three repros, ~25 s
def test_a_rotated_token_in_params_reruns_no_stage_and_is_not_written_to_dvc_lock(repo, served_data):
    """download declared all of params.yaml's `data` section, data.source with it: a SAS token rotated there (CI mints
    one a run) reran download, prepare and split on the same data, and dvc.lock recorded the token. The source is
    download's dependency through data/source.json, which holds it without credentials (source_identity)."""
    def use(token: str) -> None:
        _set_params(repo, lambda p: p["data"].update(source=f"{served_data}?version=2&sv=2024-01-01&sig={token}"))

    use("S3CRETone")
    assert _stages_run(_run([DVC, "repro"], repo)) == list(DATA_STAGES)
    use("S3CRETtwo")
    status = _run([DVC, "status"], repo)
    assert "download" not in status and "S3CRET" not in status, status
    assert _stages_run(_run([DVC, "repro"], repo)) == []
    assert "S3CRET" not in (repo / "dvc.lock").read_text()

    _set_params(repo, lambda p: p["data"].update(source=f"{served_data}?version=3&sig=S3CRETtwo"))  # another source
    assert _stages_run(_run([DVC, "repro"], repo)) == ["download"]  # the same bytes: prepare is not rerun
    _set_params(repo, lambda p: p["data"].update(sha256={"items.csv": "0" * 64}))  # download's other params count
    assert "download" in _run([DVC, "status"], repo)
