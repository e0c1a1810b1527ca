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


def test_this_test_process_runs_them_too() -> None:
    """tests/conftest.py imports pipeline.blas first: a model trained here equals one a stage process trains."""
    import numpy  # noqa: F401 - loads OpenBLAS, if nothing has yet
    import threadpoolctl

    kernels = [i.get("architecture") for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]
    assert kernels and {k.lower() for k in kernels} == {os.environ[blas.ENV_BLAS_KERNELS].lower()}  # every OpenBLAS


def blas_threads() -> set[int]:
    """Thread counts of the BLAS libraries pipeline.blas limits: those loaded when it was first used (numpy's;
    a BLAS loaded later, such as SciPy's, is not the engine's)."""
    assert blas._controller is not None
    return {lib.get_num_threads() for lib in blas._controller.select(user_api="blas").lib_controllers}


def test_a_thread_leaving_one_blas_thread_does_not_lift_it_from_another_still_inside() -> None:
    """A served app forecasts in several threads at once: B, still computing when A leaves, keeps one thread
    (a plain threadpoolctl limit in each gave B two: A put back the count it had found)."""
    import threading

    import threadpoolctl

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        inside_b, a_left, seen_in_b = threading.Event(), threading.Event(), []

        def b() -> None:
            with blas.one_blas_thread():
                inside_b.set()
                a_left.wait(10)
                seen_in_b.append(blas_threads())

        with blas.one_blas_thread():
            other = threading.Thread(target=b)
            other.start()
            assert inside_b.wait(10)
        a_left.set()
        other.join(10)
        assert seen_in_b == [{1}]


def test_the_count_before_comes_back_when_the_last_holder_leaves() -> None:
    import threadpoolctl

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with blas.one_blas_thread():
            with blas.one_blas_thread():
                assert blas_threads() == {1}
            assert blas_threads() == {1}
        assert blas_threads() == {2}


def test_a_held_blas_thread_stays_one_through_forecasts() -> None:
    import threadpoolctl

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        blas.hold_one_blas_thread()
        try:
            with blas.one_blas_thread():
                pass
            assert blas_threads() == {1}
        finally:
            blas._release()  # the hold is for a process's life; this test gives it back
        assert blas_threads() == {2}


def test_a_hold_taken_before_numpy_is_loaded_still_limits_numpys_blas() -> None:
    code = ("from pipeline import blas\nblas.hold_one_blas_thread()\nimport json, threadpoolctl\n"
            "print(json.dumps([i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_NUM")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1]
