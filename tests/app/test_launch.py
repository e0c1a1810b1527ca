"""app/launch.py: the one gunicorn command line, and a server that cannot become ready."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from gunicorn.arbiter import Arbiter

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
                      "SHELFCAST_LOG_LEVEL": "info", "SHELFCAST_PREDICTION_LOG": str(tmp_path / "predictions.jsonl")},
                     tmp_path / "gunicorn.log", timeout_s=6)
    assert "did not answer /readyz within 6 s" in str(failed.value) and "Booting worker" in str(failed.value)
    with pytest.raises(ProcessLookupError):  # stopped and reaped: no gunicorn left behind
        os.kill(failed.value.pid, 0)


def test_a_server_that_exits_at_start_says_so(tmp_path):
    with pytest.raises(launch.ServerNotReady, match=r"gunicorn exited \(\d+\) before it was ready"):
        launch.start({"SHELFCAST_WORKERS": "1"}, tmp_path / "gunicorn.log", wsgi_app="no_such_module:app",
                     timeout_s=60)


def _import_wsgi(tmp_path, environ: dict, before: str = "pass") -> subprocess.CompletedProcess:
    """`import app.wsgi` (what gunicorn's worker does) in a fresh process, in ``tmp_path``, after ``before``."""
    env = {**os.environ, "PYTHONPATH": str(launch.REPO), "SHELFCAST_MODEL_DIR": str(tmp_path / "no-model"),
           "SHELFCAST_EVENT_SPOOL": str(tmp_path / "spool"), **environ}
    return subprocess.run([sys.executable, "-c", f"{before}; import app.wsgi"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_setting_the_app_cannot_start_with_is_one_line_and_the_boot_error_code(tmp_path):
    started = _import_wsgi(tmp_path, {"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": "twenty"})
    assert started.returncode == Arbiter.WORKER_BOOT_ERROR, started.stderr
    assert "cannot start: SettingsError: prediction event sink: FLUENTD_PORT" in started.stderr
    assert "Traceback" not in started.stderr


def test_a_bad_series_cache_size_is_refused_at_start_in_one_line(tmp_path):
    started = _import_wsgi(tmp_path, {"SHELFCAST_SERIES_CACHE_ENTRIES": "-1"})
    assert started.returncode == Arbiter.WORKER_BOOT_ERROR, started.stderr
    assert ("cannot start: SettingsError: SHELFCAST_SERIES_CACHE_ENTRIES: expected a value >= 0, got '-1'"
            in started.stderr), started.stderr
    assert "Traceback" not in started.stderr and len(started.stderr.strip().splitlines()) == 1, started.stderr


def test_a_bug_at_start_keeps_its_traceback(tmp_path):
    """The one-line message is for what the operator set; a ValueError from a bug was hidden behind it too."""
    started = _import_wsgi(tmp_path, {}, before="import app; app.create_app = lambda: int('a bug')")
    assert started.returncode not in (0, Arbiter.WORKER_BOOT_ERROR)
    assert "Traceback" in started.stderr and "ValueError: invalid literal for int()" in started.stderr
    assert "cannot start" not in started.stderr


def test_a_server_given_a_port_listens_there(app_bundles, tmp_path):
    """On a shared machine a benchmark keeps to an agreed range (benchmarks/event_delivery.py --port-base)."""
    port = launch.free_port()
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "predictions.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}, tmp_path / "gunicorn.log",
                          port=port)
    try:
        assert served.port == port and served.url == f"http://127.0.0.1:{port}"
        assert launch.listening_sockets(port) in (1, None)  # None: no Linux /proc to look in
    finally:
        served.stop()
