"""Shelfcast's dataflow tensor engine (TensorFlow 1.x style API): ``import engine as en``."""

from engine import config  # noqa: F401  (first: sets Numba/BLAS environment defaults)
