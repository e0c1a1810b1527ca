"""The pipeline's BLAS policy: the same kernels on every x86-64 machine, one thread: the same bits anywhere.

- **Kernels.** OpenBLAS picks its kernels by CPU, and they sum in different orders: with its SkylakeX
  kernels (an AVX-512 machine's own choice) the same seed trained a model that differed in its last bits
  from the Haswell kernels' one, and every score, dvc.lock and results/ with it. So a pipeline process
  pins the Haswell kernels (AVX2 + FMA: every x86-64 machine of the last decade) before numpy loads
  OpenBLAS, unless OPENBLAS_CORETYPE is set: importing this module does it, so the modules that train or
  forecast for scores (train, evaluate, sweep) import it first.
- **One thread.** With those kernels the sums also depend on the thread count, and Dask's workers start
  with one. So training, the forecasts that scores are computed from, and the bundle's forecasts all run
  BLAS on one thread (`use_one_blas_thread`); a batch of ~1k rows gains nothing from a second one on 2 cores.
  BLAS's thread count is one setting for the whole process, and once lowered it stays lowered for the
  process's life: OpenBLAS (0.3.31 seen) ignores a count set from another thread than the one that set it
  last, so a limit given back after a forecast in the main thread could not be taken again by a forecast
  in a request thread, which then ran on two threads and gave other bits (a served app forecasts in
  request threads; `python -m app --dev` warms up in the main thread first). Calls after the first cost a
  flag check.
"""

from __future__ import annotations

import os
import platform
import sys
import threading

from threadpoolctl import ThreadpoolController

BLAS_KERNELS = "Haswell"  # OpenBLAS's name for its AVX2 + FMA kernels
ENV_BLAS_KERNELS = "OPENBLAS_CORETYPE"

_controller: ThreadpoolController | None = None
_lock = threading.Lock()
_limiter = None  # threadpoolctl's limit, kept for the process's life (see the module docstring)


def use_one_blas_thread() -> None:
    """BLAS on one thread from now on, in the whole process (see the module docstring); cheap once done."""
    global _controller, _limiter
    if _limiter is not None:
        return
    with _lock:
        if _limiter is None:
            if _controller is None:  # made on first use: it finds the BLAS libraries loaded by then, so numpy's first
                import numpy  # noqa: F401 - loads numpy's OpenBLAS, if nothing has yet
                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")


def kernels_in_use() -> str:
    """The kernels the loaded BLAS libraries run, as OpenBLAS names them (``Haswell``; loads numpy's if nothing
    has yet): what a model's bits depend on, where OPENBLAS_CORETYPE is only a request. OpenBLAS takes ``haswell``
    and ``Zen`` for its Haswell kernels too, and a name it does not know (``Skylake``), or none, for "pick by CPU"
    (SkylakeX on an AVX-512 machine). Several libraries (numpy's and scipy's OpenBLAS) read the same variable, so
    they are named once; a BLAS that names no kernels (MKL) by its library, ``mkl``."""
    import numpy  # noqa: F401 - loads numpy's BLAS, if nothing has yet
    import threadpoolctl

    names = {info.get("architecture") or info["internal_api"]
             for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"}
    return ", ".join(sorted(names))


def pin_blas_kernels() -> str | None:
    """Set OPENBLAS_CORETYPE to BLAS_KERNELS if it can still take effect and the CPU has them; what was set.

    Set but empty counts as unset (CI systems and `docker run -e OPENBLAS_CORETYPE` pass unset variables as
    empty), as for every other setting: OpenBLAS reads an empty one as none and picks by CPU, so on an AVX-512
    machine an empty OPENBLAS_CORETYPE trained another model (its SkylakeX kernels) than an unset one."""
    if os.environ.get(ENV_BLAS_KERNELS, "").strip() or "numpy" in sys.modules:
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
