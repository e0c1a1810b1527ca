"""The fsync probe behind the README's crash-loss window: a slow fsync widens the window it reports."""

from __future__ import annotations

import os
import time
from pathlib import Path


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
