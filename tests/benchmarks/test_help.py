"""Every benchmark script's --help: it exits 0 and its description is a whole sentence (two were cut at the end of
their docstring's first line: '... on loopback, 30 s,' and '... (README "Monitoring", *The forecasts and')."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.benchmarks.conftest import BENCHMARKS_DIR, REPO_ROOT

SCRIPTS = ["accuracy", "app_load", "drift_replay", "e1_hand_step", "engine_vs_torch", "event_delivery", "event_fsync",
           "pipeline_scale", "release_load"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_script_in_whole_sentences(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS_DIR / f"{script}.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT, env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    description = re.split(r"\n\s*\n", done.stdout)[1]  # after the usage paragraph, before "options:"
    assert not description.startswith("options:"), done.stdout
    assert description.rstrip().endswith((".", ")")), description
