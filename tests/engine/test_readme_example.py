"""README's engine example (section "The engine"), run as written: it trains, exports and imports, and saves in a
folder of the user's own, not a fixed name in the shared /tmp (there a second user got a PermissionError on the
first user's /tmp/linear)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def engine_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## The engine\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_engine_example_runs_and_saves_in_a_folder_of_its_own(tmp_path):
    code = engine_example()
    assert not re.search(r"""["']/tmp/""", code), "a fixed path in the shared /tmp: another user may own it"
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(temp)))
    assert done.returncode == 0, done.stderr
    mse = float(done.stdout.split()[1])
    assert mse < 1e-6
    saved = [p.name for p in temp.iterdir()]
    assert len(saved) == 1 and saved[0].startswith("linear-") and (temp / saved[0] / "graph.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
