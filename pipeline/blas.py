"""The pipeline's BLAS policy: the same kernels on every x86-64 machine, one thread: the same bits anywhere.

- **Kernels.** OpenBLAS picks its kernels by CPU, and they sum in different orders: with its SkylakeX
  kernels (an AVX-512 machine's own choice) the same seed trained a model that differed in its last bits
  from the Haswell kernels' one, and every score, dvc.lock and results/ with it. So a pipeline process
  pins the Haswell kernels (AVX2 + FMA: every x86-64 machine of the last decade) before numpy loads
  OpenBLAS, unless OPENBLAS_CORETYPE is set: importing this module does it, so the modules that train or
  forecast for scores (train, evaluate, sweep) import it first.
- **One thread.** With those kernels the sums also depend on the thread count, and Dask's workers start
  with one. So training, the forecasts that scores are computed from, and the bundle's forecasts all hold
  BLAS to one thread (`one_blas_thread`); a batch of ~1k rows gains nothing from a second one on 2 cores.
  BLAS's thread count is one setting for the whole process, so holders are counted: the first sets one
  thread, the last gives back what was there before, and a thread leaving never lifts the limit from
  under another still computing (a served app forecasts in 8 threads at once). A server holds it for
  its life (`hold_one_blas_thread`), which makes each forecast's hold a counter step.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
from typing import Iterator

from threadpoolctl import ThreadpoolController

BLAS_KERNELS = "Haswell"  # OpenBLAS's name for its AVX2 + FMA kernels
ENV_BLAS_KERNELS = "OPENBLAS_CORETYPE"

_controller: ThreadpoolController | None = None
_holders_lock = threading.Lock()
_holders = 0
_limiter = None  # threadpoolctl's limit while anyone holds one thread; it restores the count before


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS limited to one thread inside (process-wide, as BLAS's own setting is), from any number of threads."""
    _hold()
    try:
        yield
    finally:
        _release()


def hold_one_blas_thread() -> None:
    """BLAS on one thread from now on, for this process's life (a server whose workers are the cores)."""
    _hold()


def _hold() -> None:
    global _controller, _holders, _limiter
    with _holders_lock:
        if _holders == 0:
            if _controller is None:  # made on first use; it finds the BLAS libraries loaded by then, so numpy's first
                import numpy  # noqa: F401 - loads numpy's OpenBLAS, if nothing has yet
                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _holders += 1


def _release() -> None:
    global _holders, _limiter
    with _holders_lock:
        _holders -= 1
        if _holders == 0 and _limiter is not None:
            # OpenBLAS (0.3.31 seen) ignores a raise from another thread than the one that lowered the count:
            # then the process stays on one thread, which every user here asks for anyway
            _limiter.restore_original_limits()
            _limiter = None


def pin_blas_kernels() -> str | None:
    """Set OPENBLAS_CORETYPE to BLAS_KERNELS if it can still take effect and the CPU has them; what was set."""
    if ENV_BLAS_KERNELS in os.environ or "numpy" in sys.modules:
        return None  # the user's choice, or too late: numpy has loaded OpenBLAS already
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= _cpu_flags():
        return None  # other kernels altogether (ARM), or a CPU without them
    os.environ[ENV_BLAS_KERNELS] = BLAS_KERNELS
    return BLAS_KERNELS


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:  # not Linux
        pass
    return set()


pin_blas_kernels()  # at import: see the module docstring
