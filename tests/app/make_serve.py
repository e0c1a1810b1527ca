"""`make serve` as an operator runs it, for the tests of the one-line refusals of a bad serving setting
(tests/app/test_served_bind_forms.py: SHELFCAST_BIND; tests/app/test_config.py: SHELFCAST_WORKERS)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping

from app import launch


def make_serve(tmp_path: Path, settings: Mapping[str, str]) -> tuple[int, list[str]]:
    """`make serve` with ``settings`` (SHELFCAST_WORKERS=1 unless they say otherwise), in a copy of the project's make
    files whose .venv runs this Python's gunicorn on the project's app/: its exit status and the lines it printed
    that are no make's own. One that serves is stopped after 60 s (the check under test let its setting through)."""
    project = tmp_path / "project"
    (project / "monitoring").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "monitoring/delivery.mk"):
        (project / name).write_bytes((launch.REPO / name).read_bytes())
    (project / "app").symlink_to(launch.REPO / "app")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "gunicorn").write_text(f'#!/bin/sh\nexec "{launch.gunicorn_command()[0]}" "$@"\n', encoding="utf-8")
    (bin_dir / "gunicorn").chmod(0o755)
    (project / ".venv" / ".installed").touch()
    env = {**os.environ, "PYTHONPATH": str(launch.REPO), "SHELFCAST_WORKERS": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"), "SHELFCAST_CONTROL_SOCKET": str(tmp_path / "c.ctl"),
           **settings}
    process = subprocess.Popen(["make", "--no-print-directory", "-s", "serve"], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # it serves: the check under test let the setting through
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    return process.returncode, [line for line in output.splitlines()
                                if line.strip() and "[INFO]" not in line and not line.startswith("make")]
