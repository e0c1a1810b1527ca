"""benchmarks/pipeline_scale.py: the data stages' wall time and peak memory against their targets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO

SCRIPT = REPO / "benchmarks" / "pipeline_scale.py"


def _run(*args: str, timeout: int) -> tuple[int, list[dict]]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--json", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, records


@pytest.mark.slow  # end to end, 20-70 s: make test stays well under its 10 minutes
def test_default_scale_fits_its_share_of_p1():
    code, records = _run("--default-scale", timeout=300)
    total = records[-1]
    assert [r["id"] for r in records] == ["P1-data.download", "P1-data.prepare", "P1-data.split", "P1-data"]
    # Wall time is printed, not asserted: on a shared CI runner it measures the neighbours (BENCHMARKS.md P1 is
    # the timed figure). So the script's 2 (a target missed: 77 s against 40 once, at load ~6) passes where memory
    # held; 1 is a stage that failed. Memory does not depend on load, so its bound stays.
    assert code in (0, 2), total
    print(f"default-scale data stages: {total['wall_s']:.1f} s wall, {total['peak_rss_gb']:.2f} GB peak")
    assert total["peak_rss_gb"] <= 1.5 and total["grid_rows"] > 1_000_000


@pytest.mark.slow
@pytest.mark.long
def test_full_scale_p2_meets_its_targets():
    code, records = _run(timeout=30 * 60)
    total = records[-1]
    assert total["id"] == "P2" and total["stores"] == 54
    assert code == 0, total
    assert total["wall_s"] <= 15 * 60 and total["peak_rss_gb"] <= 8


def test_p3_refuses_the_default_scale_it_does_not_measure():
    result = subprocess.run([sys.executable, str(SCRIPT), "--through", "evaluate", "--default-scale"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "--default-scale measures the data stages only" in result.stderr


@pytest.mark.slow
@pytest.mark.long
def test_p3_runs_every_stage_through_evaluate_within_the_memory_target():
    """P3's plumbing at one store (the full-scale figure is measured by hand: BENCHMARKS.md, about 45 min)."""
    code, records = _run("--through", "evaluate", "--scale", "0.02", timeout=40 * 60)
    assert [r["id"] for r in records] == ["P3.download", "P3.prepare", "P3.split", "P3.train", "P3.evaluate", "P3"]
    total = records[-1]
    assert total["stores"] == 1 and total["peak_rss_gb"] <= 8 and code in (0, 2), total


@pytest.mark.slow
@pytest.mark.long
def test_p4_builds_the_features_on_two_workers_each_within_its_memory_limit():
    """P4's plumbing at one store (the figures in BENCHMARKS.md are measured by hand at a larger scale)."""
    code, records = _run("--through", "features", "--stores", "1", "--compare", "--train-steps", "20",
                         timeout=30 * 60)
    assert [r["id"] for r in records] == ["P4.download", "P4.prepare", "P4.split", "P4.feature_shards",
                                          "P4.train_stream", "P4-single.feature_shards", "P4"]
    total = records[-1]
    assert total["stores"] == 1 and total["workers"] == 2 and total["training_examples"] > 500_000
    assert len(total["worker_peak_rss_gb"]) == 2 and code == 0, total
    assert all(0 < peak <= total["worker_memory_limit_gb"] for peak in total["worker_peak_rss_gb"])
    assert records[4]["train_step_ms"] > 0 and records[4]["read_rows_per_s"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--train-steps", "-1"], "--train-steps must be 0 (none) or more, got -1"),
])
def test_a_cluster_of_no_workers_or_a_negative_step_count_is_refused_at_once(flags, message, tmp_path):
    """--workers 0 generated nothing for 60 s, then the download stage failed ("no Dask worker ... for 60 s")."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--through", "features", "--stores", "1",
                             "--workdir", str(tmp_path / "w"), *flags], capture_output=True, text=True, timeout=20,
                            cwd=REPO)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "w").exists()
