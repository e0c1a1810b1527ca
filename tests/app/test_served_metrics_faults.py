"""/metrics' folder (PROMETHEUS_MULTIPROC_DIR) failing under a running gunicorn: removed while serving, or a dead
worker's counts that cannot be written into retired.json. The server keeps serving either way."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import launch, metrics_files

from .test_served_by_gunicorn import predict_body, request
from .test_served_lifecycle import _children


def _replace_a_worker(served) -> None:
    """SIGKILL one worker and wait until its replacement answers /readyz (the master still running)."""
    before = _children(served.pid)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and served.process.poll() is None:
        now = _children(served.pid)
        if before[0] not in now and len(now) == len(before):
            break
        time.sleep(0.2)
    assert served.process.poll() is None, f"the master stopped:\n{served.log_tail()}"
    while time.monotonic() < deadline and served.process.poll() is None:
        try:
            if request(served.port, "GET", "/readyz").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no ready worker after the kill:\n{served.log_tail()}")


def _predictions(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "shelfcast_predictions":
            return sum(s.value for s in family.samples if s.name == "shelfcast_predictions_total")
    return 0.0


def _metrics(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_a_scrape_of_a_removed_folder_says_so():
    """Found by a probe: a 500 and a FileNotFoundError traceback for metrics.lock."""
    missing = "/nonexistent/shelfcast-metrics-gone"
    with pytest.raises(metrics_files.DirectoryGone, match=f"PROMETHEUS_MULTIPROC_DIR {missing} was removed"):
        metrics_files.exposition(missing)


def _two_workers_counting_into(folder: Path, bundle: Path, tmp_path: Path):
    """gunicorn with 2 workers serving ``bundle``, its metrics in ``folder``."""
    return launch.start({"SHELFCAST_WORKERS": "2", "SHELFCAST_MODEL_DIR": str(bundle),
                         "SHELFCAST_PREDICTION_LOG": str(tmp_path / "p.jsonl"),
                         "PROMETHEUS_MULTIPROC_DIR": str(folder)}, tmp_path / "gunicorn.log")


@pytest.mark.slow  # a server started, a worker killed: ~8 s on 2 cores
def test_a_metrics_folder_removed_while_serving_does_not_stop_the_server(app_bundles, tmp_path):
    """Found by a probe (a /tmp cleaner, or rm -r, taking the folder of a running server): every later scrape was a
    500, and the next worker started (a crash, --max-requests, a reload) could not make its metric files, failed to
    boot, and gunicorn stopped the whole server (exit 3). Now the folder is made again and the server goes on."""
    folder = tmp_path / "metrics"
    served = _two_workers_counting_into(folder, app_bundles[0], tmp_path)
    try:
        body = predict_body(served.port)
        shutil.rmtree(folder)
        status, text = _metrics(served.port)
        assert status in (200, 503), text[:300]
        if status == 503:
            assert f"PROMETHEUS_MULTIPROC_DIR {folder} was removed while the server ran" in text
        for _ in range(6):  # both workers, each making a series it had not made before
            assert request(served.port, "GET", "/api/v1/model").status == 200
            assert request(served.port, "POST", "/api/v1/predict", body,
                           {"Content-Type": "application/json"}).status == 200
        _replace_a_worker(served)
        assert (folder / metrics_files.SERVER_LOCK).exists(), "the folder is not held again"
        status, text = _metrics(served.port)
        assert status == 200, text[:300]
        list(text_string_to_metric_families(text))  # well formed
        assert "was removed while the server ran: made again" in served.log_tail(20000)
    finally:
        assert served.stop() == 0, served.log_tail()


@pytest.mark.slow  # a server started, a worker killed: ~8 s on 2 cores
def test_a_dead_workers_counts_that_cannot_be_folded_stay_counted(app_bundles, tmp_path):
    """Found by a probe (a full disk for the folder): retired.json could not be written, the exception left
    gunicorn's child_exit hook, "Unhandled exception in main loop", and the master stopped with every worker.
    Here its staging file cannot be written (a directory stands in its place): the worker's files stay, counted."""
    folder = tmp_path / "metrics"
    served = _two_workers_counting_into(folder, app_bundles[0], tmp_path)
    try:
        body = predict_body(served.port)
        (folder / f"{metrics_files.RETIRED}.tmp").mkdir()
        for _ in range(10):
            assert request(served.port, "POST", "/api/v1/predict", body,
                           {"Content-Type": "application/json"}).status == 200
        _replace_a_worker(served)
        status, text = _metrics(served.port)
        assert status == 200, text[:300]
        assert _predictions(text) == 10
        assert "its metrics not folded into" in served.log_tail(20000)
    finally:
        assert served.stop() == 0, served.log_tail()
