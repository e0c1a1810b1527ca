"""Numba kernels by family: pure functions on NumPy arrays, no graph knowledge. Elementwise kernels work on 1-D
contiguous data (the wrappers ravel/broadcast first): one compilation per dtype, not per (dtype, ndim, layout).
"""
