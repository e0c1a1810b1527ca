"""benchmarks/event_delivery.py run as operators run it, one fast case, so the README's cited command cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from app.launch import REPO
from tests.app.conftest import receiver_command

pytestmark = pytest.mark.slow


def test_the_sigterm_case_runs_through_the_script_and_keeps_the_promise(app_bundles):
    receiver_command()  # skips (no Node.js) or fails (not installed) as the receiver tests do
    run = subprocess.run([sys.executable, "benchmarks/event_delivery.py", "--bundle", str(app_bundles[0]),
                          "--cases", "sigterm", "--seconds", "2", "--clients", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    row = re.search(r"^sigterm:\n\s+answered \|.*\n\s+([\d,]+) \|\s+([\d,]+) \|\s+[\d,]+ \|\s+0 \|\s+0$", run.stdout,
                    re.M)
    assert row and int(row.group(1).replace(",", "")) > 50 and row.group(1) == row.group(2), run.stdout
    assert run.stdout.rstrip().endswith("0 uncounted lost: as the README promises"), run.stdout


def test_an_interrupted_case_leaves_no_server_running(app_bundles, monkeypatch):
    """Found by a probe: a SIGINT (Ctrl-C) 9 s into two-servers landed in the first server's stop; the second one
    served on after the script exited (gunicorn and 2 workers, 51 s later still up), its spool in the work folder the
    script had removed. Every server a case starts is stopped however the case ends; the Ctrl-C here is raised as
    Python raises it, once both servers serve."""
    from tests.benchmarks.conftest import _benchmark_module

    receiver_command()
    delivery = _benchmark_module("event_delivery")
    started = []

    def interrupted(case, seconds):
        started.extend([case.serve(1), case.serve(1)])
        raise KeyboardInterrupt

    monkeypatch.setitem(delivery.CASES, "interrupted", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            delivery.run_case("interrupted", app_bundles[0], 1.0, 1, delivery.port_source(0))
        assert len(started) == 2 and [served.pid for served in started if served.process.poll() is None] == []
    finally:
        for served in started:
            served.stop()
