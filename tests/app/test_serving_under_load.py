"""The served app under load, as S1 measures it: gunicorn, concurrent clients, a real Fluentd receiver.

A short run of benchmarks/app_load.py against a tiny real bundle: every request must be
answered 200, and the receiver must get exactly one event per answered request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A real server, client processes and a Fluentd receiver at once: a full-stack load run, so with the
# end-to-end suites (make test-slow, one test at a time) rather than beside make test's parallel workers.
pytestmark = pytest.mark.slow


def test_every_request_is_answered_and_logged_to_fluentd_exactly_once(app_bundles):
    if shutil.which("node") is None:
        pytest.skip("node not found on PATH: the Fluentd forward-protocol receiver needs Node.js >= 18")
    run = subprocess.run([sys.executable, "benchmarks/app_load.py", "--bundle", str(app_bundles[0]), "--clients", "4",
                          "--seconds", "2", "--warm-up", "0.5", "--workers", "2", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["id"] == "S1" and figures["requests"] > 0
    assert figures["errors"] == 0, run.stderr[-2000:]
    assert figures["events_received"] == figures["answered_incl_warm_up"]
    assert figures["duplicate_events"] == 0 and figures["missing_events"] == 0
    assert figures["events_equal_requests"] is True
    assert figures["python_mips"] > 0  # the machine's pace, to compare runs from different hours
    if Path("/proc/net/tcp").exists():  # every client's connection is on one of the workers
        assert sum(figures["connections_per_worker"]) == 4 and len(figures["connections_per_worker"]) == 2
        assert figures["worker_cpu_ms_per_request"] > 0 and len(figures["worker_cores"]) == 2
    assert figures["client_cpu_ms_per_request"] > 0


def test_cpu_per_request_counts_every_event_through_to_the_receiver(app_bundles):
    if shutil.which("node") is None:
        pytest.skip("node not found on PATH: the Fluentd forward-protocol receiver needs Node.js >= 18")
    run = subprocess.run([sys.executable, "benchmarks/app_load.py", "--bundle", str(app_bundles[0]),
                          "--cpu-per-request", "50"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["requests"] == 50 and figures["events_received"] == figures["events_expected"] == 250
    assert 0 < figures["request_thread_us"] <= figures["process_us"]


def test_server_floor_serves_s1_clients_with_the_trivial_app_under_make_serves_settings():
    run = subprocess.run([sys.executable, "benchmarks/app_load.py", "--server-floor", "--clients", "4",
                          "--seconds", "1", "--warm-up", "0.3", "--workers", "2", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["id"] == "S1-floor" and figures["requests"] > 0 and figures["errors"] == 0
    assert figures["workers"] == 2 and figures["p50_ms"] <= figures["p99_ms"]
    if Path("/proc/net/tcp").exists():
        assert sum(figures["connections_per_worker"]) == 4 and figures["worker_cpu_ms_per_request"] > 0
