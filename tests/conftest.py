"""Loaded before the other conftests: this test process runs the pipeline's OpenBLAS kernels
(pipeline/blas.py), as the stage processes the tests start do, so what each makes agrees."""

import pipeline.blas  # noqa: F401 - first, before anything loads numpy
