"""Numba kernels by family: pure functions on NumPy arrays, no graph knowledge.

Elementwise kernels work on 1-D contiguous data (the wrappers ravel/broadcast first), so each
op compiles once per dtype, not once per (dtype, ndim, layout): a cold cache compiles fast.
"""
