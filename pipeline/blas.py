"""One BLAS thread wherever the pipeline trains or forecasts: the same bits in any process.

OpenBLAS's sums depend on its thread count with some of its kernels (its Haswell kernels, which
this project's CI machines are set to use), and Dask's workers start with one thread. So training,
the forecasts that scores are computed from, and the bundle's forecasts all hold BLAS to one
thread; a batch of ~1k rows gains nothing from a second one on 2 cores anyway.
"""

from __future__ import annotations

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None


def one_blas_thread():
    """A context manager: BLAS limited to one thread inside it (process-wide, as BLAS's own setting is)."""
    global _controller
    if _controller is None:  # made on first use, when numpy has loaded its BLAS (finding it scans the libraries)
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
