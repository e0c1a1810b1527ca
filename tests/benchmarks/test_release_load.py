"""benchmarks/release_load.py (S2): counts and phases that would measure nothing are refused before any work."""

from __future__ import annotations

import pytest

from tests.benchmarks.conftest import _benchmark_module


@pytest.mark.parametrize("flags, message", [
    (["--clients", "0"], "--clients must be at least 1, got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--phase-s", "0.5"], "--phase-s must be more than 0.5 s (each release step starts 0.5 s into its phase's "
                           "load), got 0.5"),
    (["--phase-s", "-1"], "--phase-s must be more than 0.5 s"),
])
def test_a_run_that_would_measure_nothing_is_refused_before_any_work(flags, message, monkeypatch, capsys) -> None:
    """--clients 0 trained the registry and started gunicorn, then failed on a percentile of no latencies; a phase of
    0.5 s or less ended its clients (launched 1.0 s after the phase began) before its release step (1.5 s), so S2's
    "0 failed" was met with no request in flight during the step."""
    release_load = _benchmark_module("release_load")

    def no_work(*args):
        raise AssertionError("release_load ran its phases")

    monkeypatch.setattr(release_load, "run", no_work)
    with pytest.raises(SystemExit) as stopped:
        release_load.main(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
