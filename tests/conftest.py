"""Loaded before the other conftests: this test process runs the pipeline's OpenBLAS kernels
(pipeline/blas.py), as the stage processes the tests start do, so what each makes agrees."""

import os

import pipeline.blas  # noqa: F401 - first, before anything loads numpy

# MLflow 3 reports usage to its servers and writes ~/.config/mlflow from every process: the tests (and the
# stages, servers and clones they start, which inherit this) stay on 127.0.0.1 and out of the user's home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def honouring_file_modes(command: list[str]) -> list[str]:
    """``command`` as a process that file modes stop: as is for a plain user; for root (CI), under setpriv
    without the capabilities that let root read a mode-000 file (a skip when setpriv is missing)."""
    import os
    import shutil

    import pytest

    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root reads a file of mode 000, and setpriv (util-linux) is not here to drop that")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
