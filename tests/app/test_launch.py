"""app/launch.py: the one gunicorn command line, and a server that cannot become ready."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from app import launch


def test_make_serve_and_the_container_run_the_command_line_launch_builds():
    """The tests and benchmarks start what operators start: `make serve` and the image's CMD."""
    arguments = [str(launch.CONFIG.relative_to(launch.REPO)) if a == str(launch.CONFIG) else a
                 for a in launch.gunicorn_command()[1:]]
    make_serve = re.search(r"^serve:.*\n\t\$\(BIN\)/gunicorn (.+)$", (launch.REPO / "Makefile").read_text(), re.M)
    assert make_serve and shlex.split(make_serve.group(1)) == arguments
    cmd = re.search(r"^CMD \[(.+)\]$", (launch.REPO / "Dockerfile").read_text(), re.M)
    assert cmd and [part.strip().strip('"') for part in cmd.group(1).split(",")] == ["gunicorn", *arguments]


def test_a_server_that_does_not_become_ready_is_stopped_and_its_log_shown(tmp_path):
    with pytest.raises(launch.ServerNotReady) as failed:
        launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(tmp_path / "no-model"),
                      "SHELFCAST_LOG_LEVEL": "info"},
                     tmp_path / "gunicorn.log", timeout_s=6)
    assert "did not answer /readyz within 6 s" in str(failed.value) and "Booting worker" in str(failed.value)
    with pytest.raises(ProcessLookupError):  # stopped and reaped: no gunicorn left behind
        os.kill(failed.value.pid, 0)


def test_a_server_that_exits_at_start_says_so(tmp_path):
    with pytest.raises(launch.ServerNotReady, match=r"gunicorn exited \(\d+\) before it was ready"):
        launch.start({"SHELFCAST_WORKERS": "1"}, tmp_path / "gunicorn.log", wsgi_app="no_such_module:app",
                     timeout_s=60)


def test_a_served_worker_keeps_blas_on_one_thread_between_forecasts(tmp_path):
    """app.wsgi holds BLAS to one thread for the worker's life: a request's forecast leaves it there."""
    import json
    import subprocess
    import sys

    code = ("import app.wsgi, json, threadpoolctl\n"
            "from pipeline.blas import one_blas_thread\n"
            "with one_blas_thread(): pass\n"
            "print(json.dumps([i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUENTD_", "SHELFCAST_", "OPENBLAS_NUM"))}
    env.update(SHELFCAST_MODEL_DIR=str(tmp_path / "models" / "production"),
               SHELFCAST_PREDICTION_LOG=str(tmp_path / "predictions.jsonl"))
    done = subprocess.run([sys.executable, "-c", code], cwd=launch.REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1]
