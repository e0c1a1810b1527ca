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
