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
