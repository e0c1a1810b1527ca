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


def test_default_scale_fits_its_share_of_p1():
    code, records = _run("--default-scale", timeout=300)
    total = records[-1]
    assert [r["id"] for r in records] == ["P1-data.download", "P1-data.prepare", "P1-data.split", "P1-data"]
    assert code == 0, total
    assert total["wall_s"] <= 40 and total["peak_rss_gb"] <= 1.5 and total["grid_rows"] > 1_000_000


@pytest.mark.slow
def test_full_scale_p2_meets_its_targets():
    code, records = _run(timeout=30 * 60)
    total = records[-1]
    assert total["id"] == "P2" and total["stores"] == 54
    assert code == 0, total
    assert total["wall_s"] <= 15 * 60 and total["peak_rss_gb"] <= 8
