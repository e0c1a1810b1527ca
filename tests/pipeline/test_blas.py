"""The pipeline's BLAS policy (pipeline/blas.py): the stages that train or score run OpenBLAS's Haswell
kernels whatever the CPU would pick, so the committed dvc.lock and results/ come out the same on every
x86-64 machine. Each case starts a fresh process without OPENBLAS_CORETYPE: on an AVX-512 machine OpenBLAS
would pick its SkylakeX kernels there, and the first test fails without the pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import blas

from .conftest import REPO

pytestmark = pytest.mark.skipif(not {"avx2", "fma"} <= blas._cpu_flags(),
                                reason="the CPU has no AVX2 + FMA: OpenBLAS's Haswell kernels cannot run here")


def openblas_kernels_after_importing(module: str, **environ: str) -> list[str]:
    """The kernels (threadpoolctl's `architecture`) of every OpenBLAS a fresh process has loaded."""
    code = (f"import {module}, json, threadpoolctl; print(json.dumps([i.get('architecture') for i in "
            "threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']))")
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_BLAS_KERNELS} | environ
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["pipeline.train", "pipeline.evaluate", "pipeline.sweep"])
def test_a_module_that_trains_or_scores_loads_openblas_with_the_pinned_kernels(module: str) -> None:
    assert openblas_kernels_after_importing(module) == [blas.BLAS_KERNELS]


def test_kernels_chosen_in_the_environment_are_kept() -> None:
    assert openblas_kernels_after_importing("pipeline.train", OPENBLAS_CORETYPE="Sandybridge") == ["Sandybridge"]


def test_an_empty_openblas_coretype_counts_as_unset() -> None:
    """CI systems pass unset variables as empty: OpenBLAS reads an empty OPENBLAS_CORETYPE as none and picks by
    CPU (SkylakeX on an AVX-512 machine: another model than the committed one), so the pin must still apply."""
    assert openblas_kernels_after_importing("pipeline.train", OPENBLAS_CORETYPE="") == [blas.BLAS_KERNELS]
    assert openblas_kernels_after_importing("pipeline.train", OPENBLAS_CORETYPE="  ") == [blas.BLAS_KERNELS]


def libraries_recorded_by_a_checkpoint(**environ: str) -> dict[str, str]:
    """versions.runtime_version() (a checkpoint's `libraries`) in a fresh training process."""
    code = "import pipeline.train, json; from pipeline import versions; print(json.dumps(versions.runtime_version()))"
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_BLAS_KERNELS} | environ
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # trains in a subprocess per BLAS setting, 16 s: make test stays under 10 min
def test_a_checkpoint_records_the_kernels_openblas_runs_not_the_variables_text() -> None:
    """It recorded OPENBLAS_CORETYPE as written: a train killed with `haswell` (or `Zen`, OpenBLAS's name for the
    same kernels) and rerun without it (pinned `Haswell`) said `is of other libraries (OPENBLAS_CORETYPE Haswell ->
    haswell); starting over`, for the same bits; and a name OpenBLAS does not know (`Skylake`) was recorded as such,
    where the kernels it ran were the CPU's pick, which differ between machines."""
    pinned = libraries_recorded_by_a_checkpoint()
    assert pinned["blas_kernels"] == blas.BLAS_KERNELS
    for written in ("haswell", "Zen", ""):
        assert libraries_recorded_by_a_checkpoint(OPENBLAS_CORETYPE=written) == pinned, written
    other = libraries_recorded_by_a_checkpoint(OPENBLAS_CORETYPE="Sandybridge")
    assert other == {**pinned, "blas_kernels": "Sandybridge"}
    unknown = libraries_recorded_by_a_checkpoint(OPENBLAS_CORETYPE="Skylake")["blas_kernels"]
    assert unknown != "Skylake" and unknown == cpus_own_pick()


def cpus_own_pick() -> str:
    code = "import numpy, threadpoolctl; print(threadpoolctl.threadpool_info()[0]['architecture'])"
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_BLAS_KERNELS}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_this_test_process_runs_them_too() -> None:
    """tests/conftest.py imports pipeline.blas first: a model trained here equals one a stage process trains."""
    import numpy  # noqa: F401 - loads OpenBLAS, if nothing has yet
    import threadpoolctl

    kernels = [i.get("architecture") for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]
    assert kernels and {k.lower() for k in kernels} == {os.environ[blas.ENV_BLAS_KERNELS].lower()}  # every OpenBLAS


def test_blas_stays_on_one_thread_for_the_process_life_whichever_thread_computes() -> None:
    """OpenBLAS ignores a count set from another thread than the one that set it last: a limit given back
    after a forecast in the main thread (`python -m app --dev` warms up there) could not be taken again in a
    request thread, whose forecasts then ran on two threads with other bits. Once lowered, it stays lowered."""
    code = """
import json, threading
from pipeline import blas
import numpy as np, threadpoolctl
rng = np.random.default_rng(0)
a, w = rng.standard_normal((1000, 300)).astype(np.float32), rng.standard_normal((300, 256)).astype(np.float32)
two = a @ w
blas.use_one_blas_thread()
one = a @ w
seen = {}
def request_thread():
    blas.use_one_blas_thread()
    seen["threads"] = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    seen["same_bits"] = bool(np.array_equal(a @ w, one))
thread = threading.Thread(target=request_thread)
thread.start()
thread.join()
seen["two_threads_differ"] = not np.array_equal(two, one)
print(json.dumps(seen))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_NUM")} | {"OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["threads"] == [1] and seen["same_bits"], seen
    if not seen["two_threads_differ"]:
        pytest.skip("two BLAS threads give the same bits here: the test cannot tell them apart")


def test_one_thread_set_before_numpy_is_loaded_still_limits_numpys_blas() -> None:
    code = ("from pipeline import blas\nblas.use_one_blas_thread()\nimport json, threadpoolctl\n"
            "print(json.dumps([i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_NUM")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1]
