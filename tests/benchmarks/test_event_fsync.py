"""The fsync probe behind the README's crash-loss window: a slow fsync widens the window it reports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.benchmarks.conftest import BENCHMARKS_DIR, REPO_ROOT


def test_the_probe_reports_the_longest_fsync_on_top_of_the_interval(event_fsync, tmp_path: Path,
                                                                    monkeypatch) -> None:
    calls = []

    def slow_second_fsync(fd: int) -> None:  # the second fsync takes 0.3 s, as a busy disk's might
        calls.append(fd)
        if len(calls) == 2:
            time.sleep(0.3)

    monkeypatch.setattr(os, "fsync", slow_second_fsync)
    figures = event_fsync.probe_figures(tmp_path, seconds=0.5)
    assert figures["fsyncs"] == len(calls) >= 2
    assert 300 <= figures["max_ms"] < 1000
    assert figures["window_s"] == round(event_fsync.SYNC_INTERVAL_S + figures["max_ms"] / 1000.0, 3)
    assert not list(tmp_path.iterdir())  # the probe's file is removed


@pytest.mark.parametrize("flags, message", [(["--events", "0"], "--events must be at least 1, got 0"),
                                            (["--events", "-2"], "--events must be at least 1, got -2"),
                                            (["--probe", "-1"], "--probe must be more than 0 seconds, got -1"),
                                            (["--probe", "0"], "--probe must be more than 0 seconds, got 0")])
def test_a_count_or_duration_of_nothing_is_refused_and_leaves_no_file(tmp_path: Path, flags, message) -> None:
    """--events 0 and --probe -1 ended in an IndexError (a percentile of no timings); --events -2 in a ValueError
    that left a temporary .jsonl in --dir."""
    done = subprocess.run([sys.executable, str(BENCHMARKS_DIR / "event_fsync.py"), "--dir", str(tmp_path / "spool"),
                           *flags], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").iterdir())
