"""benchmarks/app_load.py: finding the server's workers on a machine where other processes come and go."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.benchmarks.conftest import _benchmark_module


def test_a_process_ending_while_the_workers_are_listed_is_skipped(monkeypatch):
    """A busy CI runner ends processes while /proc is read: the workers are still found (the S1 figures were
    None and [] on such a runner)."""
    app_load = _benchmark_module("app_load")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        read = app_load._stat_fields

        def vanishing(pid: int) -> list[str]:
            if pid != child.pid:
                raise FileNotFoundError(f"/proc/{pid}/stat")  # as if every other process had just ended
            return read(pid)

        monkeypatch.setattr(app_load, "_stat_fields", vanishing)
        assert app_load.worker_pids(os.getpid()) == [child.pid]
        assert app_load.workers_cpu(os.getpid()) is not None
    finally:
        child.kill()
        child.wait()
